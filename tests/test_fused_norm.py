"""spot_jax/fused_norm.py: the one-kernel residual add + dropout + RMSNorm (Pallas, interpreted on
CPU) computes what the XLA form computes, both ways, and the model gives the same loss and prompt
gradient with it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import dropout, fused_norm, train_step
from spot_jax import model as M
from spot_jax.config import size_config


def _xla_form(x, o, scale, key, rate, eps, h_dtype):
  """What the model's XLA path computes: `x + Dropout(per_element_bits=True)(o)`, then RMSNorm."""
  keep, keep_prob = dropout._keep_mask(key, o.shape, rate, True)
  new_x = x + jnp.where(keep, o / jnp.asarray(keep_prob, o.dtype), jnp.zeros_like(o))
  x32 = new_x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return new_x, (normed * scale.astype(jnp.float32)).astype(h_dtype)


@pytest.mark.parametrize("dtype,d,rate", [(jnp.float32, 24, 0.3), (jnp.float32, 32, 0.0),
                                          (jnp.bfloat16, 40, 0.1)])
def test_kernel_matches_the_xla_form_forward_and_backward(dtype, d, rate):
  """15 rows (not a multiple of the kernel's rows per program) of a width that is not a power of
  two, too."""
  assert 15 % fused_norm.ROWS
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  x, o, g, dh = (jax.random.normal(k, (3, 5, d), jnp.float32).astype(dtype) for k in ks[:4])
  scale = (1 + 0.1 * jax.random.normal(ks[4], (d,))).astype(dtype)
  key = jax.random.key(3)
  words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  fused = lambda x, o, s: fused_norm.add_dropout_rmsnorm(x, o, s, words, rate, 1e-6, dtype)
  xla = lambda x, o, s: _xla_form(x, o, s, key, rate, 1e-6, dtype)
  (got, f_vjp), (want, x_vjp) = jax.vjp(fused, x, o, scale), jax.vjp(xla, x, o, scale)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(got, want):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol,
                               atol=tol)
  if dtype == jnp.bfloat16:  # rounded where the XLA form rounds: the new stream is bit-equal
    np.testing.assert_array_equal(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32))
  grads, reference = f_vjp((g, dh)), x_vjp((g, dh))
  for a, b in zip(grads, reference):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol,
                               atol=tol)
  dropped = np.asarray(grads[1], np.float32) == 0
  assert (dropped.mean() > 0.05) == (rate > 0)  # the mask is there when asked for, not otherwise


def test_copies_get_their_own_gradients_and_the_kernel_adds_them():
  """`copies=3`: three outputs equal to the one norm; their three gradients give what the one
  norm's gradient gives for their sum."""
  ks = jax.random.split(jax.random.PRNGKey(1), 6)
  x, o, g, *dhs = (jax.random.normal(k, (10, 24), jnp.float32) for k in ks[:6])
  scale, words = jnp.linspace(0.5, 1.5, 24), jnp.array([7, 9], jnp.uint32)
  one = lambda x, o: fused_norm.add_dropout_rmsnorm(x, o, scale, words, 0.2, 1e-6, jnp.float32)
  three = lambda x, o: fused_norm.add_dropout_rmsnorm(x, o, scale, words, 0.2, 1e-6, jnp.float32,
                                                      copies=3)
  (new_x, normed), one_vjp = jax.vjp(one, x, o)
  (new_x3, copies), three_vjp = jax.vjp(three, x, o)
  assert len(copies) == 3 and all(np.array_equal(c, normed) for c in copies)
  np.testing.assert_array_equal(new_x3, new_x)
  summed = one_vjp((g, dhs[0] + dhs[1] + dhs[2]))
  for a, b in zip(three_vjp((g, tuple(dhs))), summed):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(three_vjp((g, tuple(dhs)))[0] - one_vjp((g, dhs[0]))[0]).max()) > 1e-3


def test_bad_shapes_and_tpus_are_refused_saying_what_to_do():
  from spot_jax import target_platform
  x = jnp.zeros((3, 8))
  with target_platform.compiling_for("tpu"), pytest.raises(ValueError, match="norm_impl='xla'"):
    fused_norm.add_dropout_rmsnorm(x, x, jnp.ones(8), jnp.zeros(2, jnp.uint32), 0.1, 1e-6,
                                   jnp.float32)
  with pytest.raises(ValueError, match=r"x \(3, 8\), o \(3, 4\)"):
    fused_norm.add_dropout_rmsnorm(x, jnp.zeros((3, 4)), jnp.ones(8), jnp.zeros(2, jnp.uint32),
                                   0.1, 1e-6, jnp.float32)


def test_model_gives_the_same_loss_and_prompt_gradient_with_the_kernel(monkeypatch, dtype="float32"):
  """Same parameters, same dropout keys (the kernel's masks are the per-element ones): training
  with `norm_impl="pallas"` computes what `norm_impl="xla"` computes. (bfloat16 rounding is the
  kernel test's; the interpreted kernels make this test slow, so one dtype.)"""
  cfg = size_config("tiny", vocab_size=96, dropout_rate=0.3, dropout_bits="per_element",
                    dtype=dtype, num_decoder_layers=1)  # the kernel is the encoder's: one decoder layer
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  assert jax.tree.structure(M.init_params(cfg.replace(norm_impl="pallas"), jax.random.PRNGKey(0))) \
      == jax.tree.structure(params)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 96, size=(2, 9)).astype(np.int32)
  enc[1, 6:] = 0
  dec = rng.integers(2, 96, size=(2, 5)).astype(np.int32)
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
           "decoder_target_tokens": np.roll(dec, -1, axis=1),
           "decoder_loss_weights": np.ones(dec.shape, np.float32)}
  prompt = jnp.asarray(rng.normal(size=(3, cfg.d_model)), jnp.float32)
  results, copies, kernel = {}, [], fused_norm.add_dropout_rmsnorm
  monkeypatch.setattr(fused_norm, "add_dropout_rmsnorm",
                      lambda *a, **k: copies.append(a[7:9]) or kernel(*a, **k))
  for impl in ("xla", "pallas"):
    # the kernel's launch tiling is configuration (a list, as gin or JSON give it, works)
    loss_fn = train_step.make_loss_fn(cfg.replace(norm_impl=impl, norm_tiling=[1, 2]),
                                      enable_dropout=True)
    copies.clear()
    jaxpr = str(jax.make_jaxpr(lambda p: loss_fn(p, params, batch, jax.random.PRNGKey(1))[0])(prompt))
    # Every encoder norm but the first runs in the kernel: 2 per layer - 1, + the final norm.
    assert jaxpr.count("pallas_call") == (2 * cfg.num_encoder_layers if impl == "pallas" else 0)
    if impl == "pallas":  # the attention norms hand out three copies, the MLP norms two
      assert sorted(c for c, _ in copies) == \
          [1] + [2] * cfg.num_encoder_layers + [3] * (cfg.num_encoder_layers - 1)
      assert {tiling for _, tiling in copies} == {(1, 2)}
    step = jax.jit(jax.value_and_grad(lambda p, key: loss_fn(p, params, batch, key)[0]))
    results[impl] = step(prompt, jax.random.PRNGKey(1))
  tol = 1e-5 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(results["pallas"][0], results["xla"][0], rtol=tol)
  assert float(jnp.abs(results["xla"][1]).max()) > 1e-4
  np.testing.assert_allclose(results["pallas"][1], results["xla"][1], rtol=tol,
                             atol=tol * float(jnp.abs(results["xla"][1]).max()))
  # Without dropout (evaluation) too, and a different key would have given another loss.
  logits = {impl: jax.jit(M.T5(cfg.replace(norm_impl=impl)).apply)({"params": params}, enc, dec, prompt)
            for impl in ("xla", "pallas")}
  np.testing.assert_allclose(np.asarray(logits["pallas"], np.float32),
                             np.asarray(logits["xla"], np.float32), rtol=tol, atol=tol)
  other = step(prompt, jax.random.PRNGKey(2))[0]  # the kernel's step (the loop's last), another key
  assert abs(float(other) - float(results["pallas"][0])) > 1e-4


def test_unknown_norm_impl_and_bad_launch_settings_are_refused():
  with pytest.raises(ValueError, match="norm_impl"):
    size_config("tiny", norm_impl="triton")
  with pytest.raises(ValueError, match=r"norm_tiling=\(2,\) must be 0 or 2 positive integers"):
    size_config("tiny", norm_tiling=(2,))
  with pytest.raises(ValueError, match="pallas_attention_launch=.* must be 4 positive integers"):
    size_config("tiny", pallas_attention_launch=(64, 64, 0, 2))
  with pytest.raises(ValueError, match="pallas_attention_backward='atomic' is not supported"):
    size_config("tiny", pallas_attention_backward="atomic")
  config = size_config("tiny", pallas_attention_launch=[128, 64, 8, 3], norm_tiling=["2", 8])
  assert config.pallas_attention_launch == (128, 64, 8, 3) and config.norm_tiling == (2, 8)
  assert hash(config) == hash(size_config("tiny", pallas_attention_launch=(128, 64, 8, 3),
                                          norm_tiling=(2, 8)))

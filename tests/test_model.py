"""The Flax T5: masks, prompt handling, incremental decoding, parameter names and axes (its layers' own
tests are test_layers.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import layers as layers_lib
from spot_jax import model as M

from tiny_t5 import CFG, DEC, ENC

V10 = CFG.replace(feed_forward="relu", tie_word_embeddings=True)


@pytest.fixture(scope="module", params=[CFG, V10], ids=["t5_1_1", "t5_1_0"])
def model_and_params(request):
  cfg = request.param
  return cfg, M.T5(cfg), M.init_params(cfg, jax.random.PRNGKey(0))


def test_parameter_names_follow_t5x():
  p = M.init_params(CFG, jax.random.PRNGKey(0))
  assert p["token_embedder"]["embedding"].shape == (96, 64)
  enc0 = p["encoder"]["layers_0"]
  assert set(enc0) == {"attention", "mlp", "pre_attention_layer_norm", "pre_mlp_layer_norm"}
  assert set(enc0["mlp"]) == {"wi_0", "wi_1", "wo"}
  assert enc0["attention"]["query"]["kernel"].shape == (64, 64)
  dec0 = p["decoder"]["layers_1"]
  assert set(dec0) == {"self_attention", "encoder_decoder_attention", "mlp", "pre_self_attention_layer_norm",
                       "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"}
  assert p["encoder"]["relpos_bias"]["rel_embedding"].shape == (4, 8)
  assert p["decoder"]["logits_dense"]["kernel"].shape == (64, 96)
  p10 = M.init_params(V10, jax.random.PRNGKey(0))
  assert set(p10["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
  assert "logits_dense" not in p10["decoder"]


def test_every_parameter_has_logical_axes():
  axes = M.param_logical_axes(CFG)
  shapes = M.param_shapes(CFG)
  flat_axes = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_shapes = dict(jax.tree_util.tree_leaves_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple)))
  assert len(flat_axes) == len(flat_shapes)
  for path, spec in flat_axes:
    assert len(spec) == len(flat_shapes[path]) and all(isinstance(a, str) for a in spec), path
  assert axes["token_embedder"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert axes["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")


def test_padding_does_not_change_logits(model_and_params):
  cfg, m, p = model_and_params
  base = m.apply({"params": p}, ENC, DEC)
  more_padding = np.concatenate([ENC, np.zeros((2, 5), np.int32)], axis=1)
  np.testing.assert_allclose(m.apply({"params": p}, more_padding, DEC), base, atol=1e-5)
  # Tokens after the padding boundary are ignored only if they are padding: a real token changes things.
  changed = ENC.copy()
  changed[1, 3] = 11
  assert np.abs(m.apply({"params": p}, changed, DEC)[1] - base[1]).max() > 1e-4


def test_prompt_changes_encoder_output_and_logits(model_and_params):
  cfg, m, p = model_and_params
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (3, cfg.d_model)).astype(np.float32)
  plain = m.apply({"params": p}, ENC, method=M.T5.encode)
  prompted = m.apply({"params": p}, ENC, prompt=prompt, method=M.T5.encode)
  assert prompted.shape == (2, 3 + ENC.shape[1], cfg.d_model)
  assert np.abs(prompted[:, 3:] - plain).max() > 1e-3
  batched = np.broadcast_to(prompt, (2,) + prompt.shape)
  np.testing.assert_allclose(m.apply({"params": p}, ENC, DEC, prompt=batched),
                             m.apply({"params": p}, ENC, DEC, prompt=prompt), atol=1e-6)


def test_wrong_prompt_width_is_a_clear_error(model_and_params):
  cfg, m, p = model_and_params
  with pytest.raises(ValueError, match=r"prompt has shape .*expected \[P, 64\]"):
    m.apply({"params": p}, ENC, DEC, prompt=np.zeros((3, 32), np.float32))


def test_incremental_decoding_matches_full_forward(model_and_params):
  cfg, m, p = model_and_params
  prompt = np.random.RandomState(1).normal(size=(2, cfg.d_model)).astype(np.float32)
  full = m.apply({"params": p}, ENC, DEC, prompt=prompt)
  encoded = m.apply({"params": p}, ENC, prompt=prompt, method=M.T5.encode)
  valid = M.encoder_mask(jnp.asarray(ENC), 2)
  _, state = m.apply({"params": p}, encoded, valid, jnp.zeros_like(DEC), decode=True,
                     method=M.T5.decode, mutable=["cache"])
  cache, steps = state["cache"], []
  for t in range(DEC.shape[1]):
    logits, state = m.apply({"params": p, "cache": cache}, encoded, valid, DEC[:, t:t + 1], decode=True,
                            method=M.T5.decode, mutable=["cache"])
    cache = state["cache"]
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_dropout_is_deterministic_only_when_disabled():
  cfg = CFG.replace(dropout_rate=0.5)
  m, p = M.T5(cfg), M.init_params(cfg, jax.random.PRNGKey(0))
  a = m.apply({"params": p}, ENC, DEC)
  np.testing.assert_array_equal(a, m.apply({"params": p}, ENC, DEC))
  b = m.apply({"params": p}, ENC, DEC, enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert np.abs(a - b).max() > 1e-3


def test_bfloat16_activations_stay_close_to_float32():
  m32, p = M.T5(CFG), M.init_params(CFG, jax.random.PRNGKey(0))
  m16 = M.T5(CFG.replace(dtype="bfloat16"))
  a, b = m32.apply({"params": p}, ENC, DEC), m16.apply({"params": p}, ENC, DEC)
  assert b.dtype == jnp.float32
  assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_ffn_preactivations_shape():
  p = M.init_params(CFG, jax.random.PRNGKey(0))
  acts = M.ffn_preactivations(CFG, p, ENC[:1, :1], np.ones((3, 64), np.float32))
  assert acts.shape == (2, 1, 4, 128)
  assert (acts > 0).any() and (acts < 0).any()


def test_cache_created_by_the_first_step_matches_full_forward(model_and_params):
  cfg, m, p = model_and_params
  full = m.apply({"params": p}, ENC, DEC)
  encoded = m.apply({"params": p}, ENC, method=M.T5.encode)
  valid = M.encoder_mask(jnp.asarray(ENC), 0)
  logits, state = m.apply({"params": p}, encoded, valid, DEC[:, :1], decode=True,
                          cache_length=DEC.shape[1], method=M.T5.decode, mutable=["cache"])
  steps = [logits]
  for t in range(1, DEC.shape[1]):
    logits, state = m.apply({"params": p, "cache": state["cache"]}, encoded, valid, DEC[:, t:t + 1],
                            decode=True, method=M.T5.decode, mutable=["cache"])
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_fused_attention_matches_the_einsum_form_on_right_padded_inputs():
  """`attention_impl="fused"` (jax.nn.dot_product_attention, lengths instead of a mask) gives the
  same logits and prompt gradient as T5X's einsum form; padded rows never leak into valid ones."""
  fused = CFG.replace(attention_impl="fused")
  params = M.init_params(CFG, jax.random.PRNGKey(0))
  prompt = jnp.asarray(np.random.default_rng(0).normal(size=(3, CFG.d_model)), jnp.float32)
  dec = DEC * (DEC < CFG.vocab_size)
  run = lambda cfg, p: M.T5(cfg).apply({"params": params}, ENC, dec, p)
  a, b = jax.jit(lambda p: run(CFG, p))(prompt), jax.jit(lambda p: run(fused, p))(prompt)
  assert not np.isnan(np.asarray(b)).any()
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  loss = lambda cfg: lambda p: jnp.sum(run(cfg, p) ** 2) * 1e-3
  ga, gb = jax.jit(jax.grad(loss(CFG)))(prompt), jax.jit(jax.grad(loss(fused)))(prompt)
  assert float(jnp.abs(ga).max()) > 1e-3
  np.testing.assert_allclose(np.asarray(gb), np.asarray(ga), atol=1e-5)
  with pytest.raises(ValueError, match="attention_impl"):
    CFG.replace(attention_impl="flash")


def test_cross_attention_einsum_beside_a_fused_encoder(monkeypatch):
  """`cross_attention_impl="einsum"` keeps T5X's form for the decoder's cross-attention while the
  encoder uses the fused one: only the encoder's layers call `fused_attention`, same logits."""
  calls, fused_call = [], layers_lib.fused_attention
  monkeypatch.setattr(layers_lib, "fused_attention", lambda *a: calls.append(a[0].shape) or fused_call(*a))
  params = M.init_params(CFG, jax.random.PRNGKey(0))
  prompt = jnp.asarray(np.random.default_rng(0).normal(size=(3, CFG.d_model)), jnp.float32)
  dec = DEC * (DEC < CFG.vocab_size)
  run = lambda cfg: M.T5(cfg).apply({"params": params}, ENC, dec, prompt)
  for cross, layers in (("auto", CFG.num_encoder_layers + CFG.num_decoder_layers),
                        ("einsum", CFG.num_encoder_layers)):
    calls.clear()
    got = run(CFG.replace(attention_impl="fused", cross_attention_impl=cross))
    assert len(calls) == layers, cross
    np.testing.assert_allclose(np.asarray(got), np.asarray(run(CFG)), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_broadcast_prompt_gradient_is_the_batch_sum_computed_as_a_matmul(dtype):
  """Same values and gradient as `jnp.broadcast_to`, but the batch sum is a dot (so XLA's GPU
  layout assignment sees no reduce over the batch) accumulated in float32."""
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.normal(size=(5, 6)), dtype)
  weights = jnp.asarray(rng.normal(size=(7, 5, 6)), dtype)
  plain = lambda p: jnp.broadcast_to(p[None], (7,) + p.shape)
  loss = lambda f: lambda p: jnp.sum((jnp.sin(f(p).astype(jnp.float32)) * weights).astype(dtype))
  np.testing.assert_array_equal(M.broadcast_prompt(prompt, 7), plain(prompt))
  grad = jax.grad(loss(lambda p: M.broadcast_prompt(p, 7)))(prompt)
  reference = jnp.sum(jnp.cos(plain(prompt).astype(jnp.float32)) * weights.astype(jnp.float32), 0)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(grad, np.float32), reference, rtol=tol, atol=tol)
  backward = str(jax.make_jaxpr(jax.grad(loss(lambda p: M.broadcast_prompt(p, 7))))(prompt))
  assert "dot_general" in backward and "preferred_element_type=float32" in backward
  plain_backward = str(jax.make_jaxpr(jax.grad(loss(plain)))(prompt))
  assert "reduce_sum[axes=(0,)" in plain_backward and "reduce_sum[axes=(0,)" not in backward


def test_matmul_dtype_bfloat16_stays_close_to_float32(model_and_params):
  cfg, m, p = model_and_params
  a = m.apply({"params": p}, ENC, DEC)
  b = M.T5(cfg.replace(matmul_dtype="bfloat16")).apply({"params": p}, ENC, DEC)
  assert b.dtype == jnp.float32
  assert 0 < np.abs(a - b).max() < 0.05 * np.abs(a).max()
  with pytest.raises(ValueError, match="matmul_dtype"):
    cfg.replace(matmul_dtype="float16")


def test_bfloat16_embedding_is_gathered_without_a_float32_copy_of_the_table():
  """bfloat16 weights under float32 activations: the embedded rows are the table's rows, exactly,
  and the compiled encoder holds no float32 copy of the whole table (66 MB for T5 1.1)."""
  cfg = CFG.replace(vocab_size=1000)
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  widened = jax.tree.map(lambda a: a.astype(jnp.float32), bf16)
  encode = jax.jit(lambda p, t: M.T5(cfg).apply({"params": p}, t, method=M.T5.encode))
  np.testing.assert_array_equal(encode(bf16, ENC), encode(widened, ENC))
  assert f"f32[{cfg.vocab_size},{cfg.d_model}]" not in encode.lower(bf16, ENC).compile().as_text()
  assert f"f32[{cfg.vocab_size},{cfg.d_model}]" in encode.lower(widened, ENC).compile().as_text()

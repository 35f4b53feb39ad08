"""spot_jax/pallas_attention.py: our flash kernels (interpreted on CPU) compute T5's biased, key-
masked softmax attention and its q, k, v gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax.pallas_attention import flash_attention, t5_flash_attention


def _reference(q, k, v, bias, lengths):
  """The model's einsum form: float32 scores + bias, keys at or past the length masked; then the
  padding rows zeroed (what cuDNN's `q_lengths` and our kernels give them)."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias.astype(jnp.float32)
  valid = jnp.arange(k.shape[1])[None, :] < lengths[:, None]
  scores = jnp.where(valid[:, None, None, :], scores, -1e10)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))
  return jnp.where(valid[:, :, None, None], out, 0.0).astype(q.dtype)


@pytest.mark.parametrize("blocks,dtype,backward", [
    ((16, 16), jnp.float32, "two_kernels"), ((32, 16), jnp.float32, "two_kernels"),
    ((16, 32), jnp.bfloat16, "two_kernels"), ((32, 16), jnp.float32, "atomic_dq"),
    ((16, 32), jnp.bfloat16, "atomic_dq")])
def test_matches_the_einsum_form_and_its_gradients(blocks, dtype, backward):
  """37 positions (not a multiple of any block); rows padded after 20 keys (whole 16-blocks of
  padding, skipped), after 5 (less than one block) and after 0 (all padding: zeros, no NaN).
  Either backward pass: two kernels, or one that adds `dq` up with atomics."""
  b, n, h, d = 4, 37, 2, 16
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  q, k, v, d_out = (jax.random.normal(key, (b, n, h, d)).astype(dtype) for key in ks[:4])
  bias = jax.random.normal(ks[4], (1, h, n, n)).astype(dtype)
  lengths = jnp.array([37, 20, 5, 0])
  ours = lambda q, k, v: t5_flash_attention(q, k, v, bias, lengths, *blocks, backward=backward)
  (out, vjp), (want, want_vjp) = jax.vjp(ours, q, k, v), jax.vjp(
      lambda q, k, v: _reference(q, k, v, bias, lengths), q, k, v)
  tol = 2e-5 if dtype == jnp.float32 else 5e-2
  assert out.dtype == dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=tol,
                             rtol=tol)
  for got, ref in zip(vjp(d_out), want_vjp(d_out)):
    scale = float(jnp.abs(ref.astype(jnp.float32)).max())
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                               atol=tol * scale, rtol=tol)
  assert not np.any(np.asarray(out[1, 20:], np.float32)) and not np.any(np.asarray(out[3],
                                                                                  np.float32))
  # the padding takes no part: changing its keys, values and queries changes nothing
  pad = lambda x: x.at[1, 20:].set(100.0)
  np.testing.assert_array_equal(np.asarray(ours(pad(q), pad(k), pad(v))), np.asarray(out))


def test_a_bias_by_offset_gives_what_its_full_tensor_gives():
  """T5's bias depends on `j - i` alone: passed as `[H, 2L-1]`, the kernels give the output and
  gradients of the same bias written out as `[H, L, L]`, and of the einsum form."""
  b, n, h, d = 2, 37, 2, 16
  ks = jax.random.split(jax.random.PRNGKey(3), 5)
  q, k, v, d_out = (jax.random.normal(key, (b, n, h, d)) for key in ks[:4])
  offsets = jax.random.normal(ks[4], (h, 2 * n - 1))
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  full = offsets[:, j - i + n - 1]                                   # [H, L, L]
  lengths = jnp.array([37, 22])
  by_offset, vjp = jax.vjp(lambda *x: t5_flash_attention(*x, offsets, lengths, 16, 32), q, k, v)
  written_out, full_vjp = jax.vjp(lambda *x: t5_flash_attention(*x, full, lengths, 16, 32), q, k, v)
  np.testing.assert_array_equal(np.asarray(by_offset), np.asarray(written_out))
  for got, want in zip(vjp(d_out), full_vjp(d_out)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_allclose(np.asarray(by_offset),
                             np.asarray(_reference(q, k, v, full[None], lengths)), atol=2e-5,
                             rtol=2e-5)
  with pytest.raises(ValueError, match=r"\[H, 2L-1\] = \(2, 73\)"):
    t5_flash_attention(q, k, v, offsets[:, 1:], lengths)


def test_relative_position_bias_by_offset_is_the_full_bias():
  """The model's `RelativePositionBias(offsets=True)` band holds the full `[1, H, L, L]` bias."""
  from spot_jax import model as M
  from spot_jax.config import size_config
  cfg = size_config("tiny")
  for bidirectional in (True, False):
    module = M.RelativePositionBias(cfg, bidirectional)
    params = module.init(jax.random.PRNGKey(0), 9, 9)
    full = np.asarray(module.apply(params, 9, 9))[0]
    band = np.asarray(module.apply(params, 9, 9, offsets=True))
    i, j = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    assert band.shape == (cfg.num_heads, 17)
    np.testing.assert_array_equal(band[:, j - i + 8], full)


def _cross_reference(q, k, v, bias, q_lengths, kv_lengths):
  """Einsum attention of `[B, Lq, H, D]` over `[B, Lk, H, D]`: keys past `kv_lengths` masked,
  rows past `q_lengths` zeroed."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  if bias is not None:
    scores = scores + bias
  keys = jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None]
  probs = jax.nn.softmax(jnp.where(keys[:, None, None, :], scores, -1e10), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  rows = jnp.arange(q.shape[1])[None, :] < q_lengths[:, None]
  return jnp.where(rows[:, :, None, None], out, 0.0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_cross_attention_other_lengths_for_queries_and_keys(with_bias):
  """The decoder's cross-attention: 5 queries (all rows valid, as the model computes them) over 23
  keys padded after 23 and 9; and, with a written-out `[H, Lq, Lk]` bias, rows padded too."""
  b, n_q, n_k, h, d = 2, 5, 23, 2, 16
  ks = jax.random.split(jax.random.PRNGKey(5), 6)
  q, d_out = (jax.random.normal(key, (b, n_q, h, d)) for key in ks[:2])
  k, v = (jax.random.normal(key, (b, n_k, h, d)) for key in ks[2:4])
  kv_lengths = jnp.array([23, 9])
  bias = jax.random.normal(ks[4], (h, n_q, n_k)) if with_bias else None
  q_lengths = jnp.array([5, 3]) if with_bias else None
  ours = lambda q, k, v: flash_attention(q, k, v, bias, q_lengths, kv_lengths, 16, 16)
  want_fn = lambda q, k, v: _cross_reference(
      q, k, v, bias, jnp.array([n_q, n_q]) if q_lengths is None else q_lengths, kv_lengths)
  (out, vjp), (want, want_vjp) = jax.vjp(ours, q, k, v), jax.vjp(want_fn, q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5, rtol=2e-5)
  for got, ref in zip(vjp(d_out), want_vjp(d_out)):
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5 * scale, rtol=2e-5)
  with pytest.raises(ValueError, match="self-attention"):
    flash_attention(q, k, v, jnp.zeros((h, 2 * n_k - 1)), None, kv_lengths)
  with pytest.raises(ValueError, match=r"\[B, Lq, H, D\]"):
    flash_attention(q, k[..., :8], v[..., :8], None, None, kv_lengths)


def test_launch_settings_change_nothing_but_speed():
  b, n, h, d = 1, 40, 1, 16
  ks = jax.random.split(jax.random.PRNGKey(1), 4)
  q, k, v = (jax.random.normal(key, (b, n, h, d)) for key in ks[:3])
  bias, lengths = jax.random.normal(ks[3], (h, n, n)), jnp.array([33])
  base = t5_flash_attention(q, k, v, bias, lengths, 16, 16)
  other = t5_flash_attention(q, k, v, bias, lengths, 16, 16, num_warps=8, num_stages=3)
  np.testing.assert_array_equal(np.asarray(other), np.asarray(base))
  with pytest.raises(ValueError, match="num_warps"):
    t5_flash_attention(q, k, v, bias, lengths, num_warps=3)
  with pytest.raises(ValueError, match=r"backward='atomic' is not one of \('two_kernels', "
                                       r"'atomic_dq'\)"):
    t5_flash_attention(q, k, v, bias, lengths, backward="atomic")


def test_bad_shapes_and_blocks_are_refused_naming_them():
  from spot_jax import target_platform
  x = jnp.zeros((1, 8, 2, 16))
  with target_platform.compiling_for("tpu"), \
      pytest.raises(ValueError, match="attention_impl='fused'"):
    t5_flash_attention(x, x, x, jnp.zeros((2, 8, 8)), jnp.array([8]))
  with pytest.raises(ValueError, match=r"bias \(2, 8, 9\)"):
    t5_flash_attention(x, x, x, jnp.zeros((2, 8, 9)), jnp.array([8]))
  with pytest.raises(ValueError, match="powers of two"):
    t5_flash_attention(x, x, x, jnp.zeros((2, 8, 8)), jnp.array([8]), block_q=48)
  with pytest.raises(ValueError, match="self-attention"):
    t5_flash_attention(x, jnp.zeros((1, 4, 2, 16)), x, jnp.zeros((2, 8, 8)), jnp.array([8]))


@pytest.mark.parametrize("backward", ["two_kernels", "atomic_dq"])
def test_the_model_with_attention_impl_pallas_gives_the_einsum_forms_logits_and_gradient(
    monkeypatch, backward, cross="pallas"):
  """Right-padded rows of different lengths: same logits and prompt gradient as T5X's einsum form
  (the encoder self-attention through our kernels, with the configured launch settings and
  backward, and the cross-attention too, `cross_attention_impl="pallas"`, with its own launch and
  two backward kernels; with "auto" it is cuDNN's as with "fused": bench/attention_check's test
  covers that form)."""
  from spot_jax import model as M
  from spot_jax import pallas_attention
  from spot_jax.config import size_config
  cfg = size_config("tiny", vocab_size=96, dropout_rate=0.0)
  ours = cfg.replace(attention_impl="pallas", pallas_attention_launch=(16, 32, 8, 3),
                     pallas_attention_backward=backward, cross_attention_impl=cross)
  launches, kernel = [], pallas_attention.flash_attention
  monkeypatch.setattr(pallas_attention, "flash_attention",
                      lambda *a, **kw: launches.append((a[1].shape[1], a[6:], kw)) or kernel(*a, **kw))
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 96, size=(2, 11)).astype(np.int32)
  enc[1, 7:] = 0
  dec = rng.integers(2, 96, size=(2, 5)).astype(np.int32)
  prompt = jnp.asarray(rng.normal(size=(3, cfg.d_model)), jnp.float32)
  run = lambda c, p: M.T5(c).apply({"params": params}, enc, dec, p)
  assert "pallas_call" in str(jax.make_jaxpr(lambda p: run(ours, p))(prompt))
  # the encoder's 14 keys per layer (3 prompt + 11) with the configured launch, and the decoder's
  # cross-attention over the same keys with its own
  assert launches == [(14, (16, 32, 8, 3, backward), {})] * cfg.num_encoder_layers + (
      [(14, pallas_attention.CROSS_LAUNCH, {})] * cfg.num_decoder_layers if cross == "pallas"
      else [])
  # One jitted program per form: eager dispatch of the interpreted kernels is what costs here.
  loss = lambda c: lambda p: jnp.sum(run(c, p) ** 2) * 1e-3
  both = lambda c: jax.jit(lambda p: (run(c, p), jax.grad(loss(c))(p)))(prompt)
  (got_logits, got), (want_logits, want) = both(ours), both(cfg)
  np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), atol=1e-5)
  assert float(jnp.abs(want).max()) > 1e-3
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_cross_attention_impl_is_checked():
  from spot_jax.config import size_config
  with pytest.raises(ValueError, match="needs attention_impl 'fused' or 'pallas'"):
    size_config("tiny", cross_attention_impl="pallas")
  with pytest.raises(ValueError, match="cross_attention_impl='cudnn' is not supported"):
    size_config("tiny", attention_impl="fused", cross_attention_impl="cudnn")

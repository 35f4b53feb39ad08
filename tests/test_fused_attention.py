"""spot_jax/fused_attention.py: the function it computes, and the cuDNN call it makes on a GPU."""
import jax
import jax.numpy as jnp
import numpy as np

from spot_jax import fused_attention as F


def test_matches_a_reference_softmax_over_valid_keys_with_bias():
  """Right-padded rows: each valid query attends to the first kv_lengths keys, plus the bias."""
  rng = np.random.default_rng(0)
  B, Q, K, H, D = 2, 5, 7, 3, 8
  q, k, v = (rng.normal(size=(B, n, H, D)).astype(np.float32) for n in (Q, K, K))
  bias = rng.normal(size=(1, H, Q, K)).astype(np.float32)
  q_len, kv_len = np.array([5, 3], np.int32), np.array([7, 4], np.int32)
  out = np.asarray(F.fused_attention(q, k, v, bias, q_len, kv_len))
  for b in range(B):
    scores = np.einsum("qhd,khd->hqk", q[b], k[b]) + bias[0]
    scores[:, :, kv_len[b]:] = -np.inf
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("hqk,khd->qhd", p, v[b])
    np.testing.assert_allclose(out[b, :q_len[b]], ref[:q_len[b]], atol=1e-5)
  # no bias (cross-attention) is the same function with a zero bias
  np.testing.assert_allclose(np.asarray(F.fused_attention(q, k, v, None, q_len, kv_len)),
                             np.asarray(F.fused_attention(q, k, v, 0 * bias, q_len, kv_len)),
                             atol=1e-6)


def test_the_cudnn_call_asks_for_no_bias_gradient(monkeypatch):
  """Traced (not run: no GPU here) through JAX's private cuDNN module: forward and backward carry
  `(has_bias, has_dbias) = (True, False)`. If JAX changes that interface this fails, instead of the
  model silently falling back to the public call, which computes the unused bias gradient."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
  monkeypatch.setattr(cudnn_fa, "check_cudnn_version", lambda: 91000)
  B, L, H, D = 2, 128, 4, 64
  q = jnp.zeros((B, L, H, D), jnp.bfloat16)
  bias = jnp.zeros((1, H, L, L), jnp.bfloat16)
  lengths = jnp.array([128, 100], jnp.int32)
  loss = lambda q: F._cudnn_attention_without_bias_grad(q, q, q, bias, lengths, lengths).astype(
      jnp.float32).sum()
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(q))
  assert jaxpr.count("variadic_args=(True, False)") == 2  # forward and backward
  assert "variadic_args=(True, True)" not in jaxpr

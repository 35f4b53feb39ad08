"""Attention that never writes the `[B, H, Q, K]` probabilities: cuDNN flash attention on GPU.

Used by the model's `attention_impl="fused"`; on other backends it is `jax.nn.dot_product_attention`'s
XLA form, which computes the same function (tests/test_model.py holds them equal to the einsum form).
"""
from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

from spot_jax import target_platform


def _cudnn_attention_without_bias_grad(q, k, v, bias, q_lengths, kv_lengths):
  """cuDNN flash attention told that the bias needs no gradient.

  The public `jax.nn.dot_product_attention` asks cuDNN for the bias gradient whenever a bias is
  passed, and its backward kernel then writes a `[H, L, L]` sum over the batch that the frozen
  relative-position table never uses. JAX exposes the switch only in its private cuDNN module, so
  this returns None (and the caller takes the public path) when that module's interface differs.
  """
  try:
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
    version = cudnn_fa.check_cudnn_version()
    layout = cudnn_fa._normalize_layout("BTNH")
    cudnn_fa.check_layout(q, k, v, bias, q_lengths, kv_lengths, None, None, None, None, layout)
    unused = jnp.zeros(0, q.dtype)
    padded = q_lengths is not None
    mask = cudnn_fa.MaskType.PADDING if padded else cudnn_fa.MaskType.NO_MASK
    # Its arguments by name: jax 0.12 added `score_mod_args` and `score_mod` to jax 0.10/0.11's.
    values = dict(
        query=q, key=k, value=v, bias=bias, q_seqlen=q_lengths if padded else unused,
        kv_seqlen=kv_lengths if padded else unused, q_offsets=unused, kv_offsets=unused,
        page_table_k=unused, page_table_v=unused, score_mod_args=(), scale=1.0, seed=42,
        dropout_rate=0.0, variadic_args=(True, False), mask_type=mask, layout=layout.value,
        sliding_window_length=None, score_mod=None, cudnn_version=version, return_residual=False)
    names = list(inspect.signature(cudnn_fa._dot_product_attention).parameters)
    if not set(names) <= set(values):
      return None  # an interface this code does not know
    return cudnn_fa._dot_product_attention(*(values[name] for name in names))
  except (ImportError, AttributeError, TypeError):
    return None


def fused_attention(q, k, v, bias, q_lengths, kv_lengths):
  """Attention over right-padded `[B, L, H, Dh]` rows (`q_lengths`/`kv_lengths` valid positions
  each) that never writes the `[B, H, Q, K]` probabilities: cuDNN on GPU, XLA's reference
  elsewhere. `bias` (`[1, H, Q, K]`, frozen) may be None, as in cross-attention; the lengths may
  be None together (no padding mask)."""
  on_gpu = target_platform.platform() == "gpu"
  if on_gpu and bias is not None:
    out = _cudnn_attention_without_bias_grad(q, k, v, bias, q_lengths, kv_lengths)
    if out is not None:
      return out
  return jax.nn.dot_product_attention(
      q, k, v, bias=bias, scale=1.0, query_seq_lengths=q_lengths,
      key_value_seq_lengths=kv_lengths, implementation="cudnn" if on_gpu else "xla")

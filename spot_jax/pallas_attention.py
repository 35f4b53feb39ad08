"""Flash attention with T5's relative-position bias and a key padding mask, in Pallas (Triton).

cuDNN's flash kernels run T5-large's attention at about 130 TFLOP/s on the H200, a fifth of its
matmul rate (docs/bench.md), and JAX's own flash kernels take no bias. This is the form a kernel of
our own takes: for each `[block_q, block_k]` tile, `q kᵀ` plus the bias tile (frozen, shared by the
batch; T5's depends on the offset `j - i` alone, so it is read as a band of an `[H, 2L-1]` vector
rather than a slice of an `[H, L, L]` tensor), keys at or past the row's length masked, an online
softmax, and `p v`; the backward pass recomputes the probabilities from the saved log-sum-exp, one
kernel for `dk, dv` (a program per key block) and one for `dq` (a program per query block). Tiles
wholly in a row's padding are skipped, so the work follows the valid length (fine-tuning batches
padded to 512 are mostly padding). No gradient for the bias (the table is frozen), no dropout on the
probabilities (as with cuDNN), no 1/sqrt(d) scaling (T5 folds it into the query projection). Lengths
need not be multiples of the blocks: loads and stores are masked. On CPU it runs in Pallas'
interpreter (tests); on a GPU it is the model's `attention_impl="pallas"` and
`bench.attention_kernels`' `pallas_t5*` rows.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from spot_jax import target_platform

_LOG2E = math.log2(math.e)
_MASKED = -1e30  # finite: a fully masked tile must not make exp2(-inf - -inf) = NaN


def _scores(q, k, bias_ref, h, rows, cols, n, kv_length):
  """`(q kᵀ + bias) · log2(e)` for one tile in float32, with keys past `kv_length` masked. The
  bias is `[H, L, L]`, or `[H, 2L-1]` by offset: entry `j - i + L - 1` for query `i`, key `j`."""
  from jax.experimental.pallas import triton as plgpu
  inside = (rows < n)[:, None] & (cols < n)[None, :]
  if len(bias_ref.shape) == 2:
    index = (h, cols[None, :] - rows[:, None] + (n - 1))
  else:
    index = (h, rows[:, None], cols[None, :])
  bias = plgpu.load(bias_ref.at[index], mask=inside, other=0.0)
  s = (plgpu.dot(q, k.T) + bias.astype(jnp.float32)) * _LOG2E
  return jnp.where((cols < kv_length)[None, :], s, _MASKED)


def _rows_of(ref, b, h, index, n, depth):
  """`[len(index), depth]` rows `index` of head `h`, batch `b` of a `[B, L, H, D]` ref (masked)."""
  from jax.experimental.pallas import triton as plgpu
  return plgpu.load(ref.at[b, index[:, None], h, jnp.arange(depth)[None, :]],
                    mask=(index < n)[:, None], other=0.0)


def _store_rows(ref, b, h, index, n, value):
  from jax.experimental.pallas import triton as plgpu
  plgpu.store(ref.at[b, index[:, None], h, jnp.arange(value.shape[1])[None, :]],
              value.astype(ref.dtype), mask=(index < n)[:, None])


def _blocks_to_visit(own, own_block, length, other_block):
  """How many blocks of the other axis program `own` loops over: those holding valid positions,
  none when its own block lies wholly in the padding. The work then scales with the valid
  length squared, as cuDNN's with sequence lengths, not with the padded length."""
  from jax.experimental import pallas as pl
  return jnp.where(own * own_block < length, pl.cdiv(length, other_block), 0)


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, o_ref, lse_ref, *, block_q, block_k):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  _, n, _, depth = q_ref.shape
  rows = i * block_q + jnp.arange(block_q)
  q = _rows_of(q_ref, b, h, rows, n, depth)
  kv_length = len_ref[b]

  def body(j, carry):
    acc, m, l = carry
    cols = j * block_k + jnp.arange(block_k)
    s = _scores(q, _rows_of(k_ref, b, h, cols, n, depth), bias_ref, h, rows, cols, n, kv_length)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.exp2(s - m_new[:, None])
    correction = jnp.exp2(m - m_new)
    v = _rows_of(v_ref, b, h, cols, n, depth)
    acc = acc * correction[:, None] + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, l * correction + jnp.sum(p, axis=1)

  init = (jnp.zeros((block_q, depth), jnp.float32), jnp.full((block_q,), _MASKED, jnp.float32),
          jnp.zeros((block_q,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, _blocks_to_visit(i, block_q, kv_length, block_k), body, init)
  valid = rows < kv_length  # padding rows: zeros, as cuDNN's rows past `q_lengths`
  l = jnp.where(l > 0, l, 1.0)  # a block wholly in the padding visited no key
  _store_rows(o_ref, b, h, rows, n, jnp.where(valid[:, None], acc / l[:, None], 0.0))
  plgpu.store(lse_ref.at[b, h, rows], m + jnp.log2(l), mask=rows < n)  # log2-sum-exp2


def _dkdv_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref,
                 *, block_q, block_k):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  b, h, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  _, n, _, depth = q_ref.shape
  cols = j * block_k + jnp.arange(block_k)
  k, v = _rows_of(k_ref, b, h, cols, n, depth), _rows_of(v_ref, b, h, cols, n, depth)
  kv_length = len_ref[b]

  def body(i, carry):
    dk, dv = carry
    rows = i * block_q + jnp.arange(block_q)
    q = _rows_of(q_ref, b, h, rows, n, depth)
    do = _rows_of(do_ref, b, h, rows, n, depth)
    lse = plgpu.load(lse_ref.at[b, h, rows], mask=rows < n, other=0.0)
    delta = plgpu.load(delta_ref.at[b, h, rows], mask=rows < n, other=0.0)
    p = jnp.exp2(_scores(q, k, bias_ref, h, rows, cols, n, kv_length) - lse[:, None])
    p = jnp.where((rows < kv_length)[:, None], p, 0.0)  # padding rows pass no gradient
    dv = dv + plgpu.dot(p.astype(do.dtype).T, do)
    ds = p * (plgpu.dot(do, v.T) - delta[:, None])
    return dk + plgpu.dot(ds.astype(q.dtype).T, q), dv

  zeros = jnp.zeros((block_k, depth), jnp.float32)
  dk, dv = jax.lax.fori_loop(0, _blocks_to_visit(j, block_k, kv_length, block_q), body,
                             (zeros, zeros))
  _store_rows(dk_ref, b, h, cols, n, dk)
  _store_rows(dv_ref, b, h, cols, n, dv)


def _dq_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, delta_ref, dq_ref,
               *, block_q, block_k):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  _, n, _, depth = q_ref.shape
  rows = i * block_q + jnp.arange(block_q)
  q, do = _rows_of(q_ref, b, h, rows, n, depth), _rows_of(do_ref, b, h, rows, n, depth)
  lse = plgpu.load(lse_ref.at[b, h, rows], mask=rows < n, other=0.0)
  delta = plgpu.load(delta_ref.at[b, h, rows], mask=rows < n, other=0.0)
  kv_length = len_ref[b]

  def body(j, dq):
    cols = j * block_k + jnp.arange(block_k)
    k, v = _rows_of(k_ref, b, h, cols, n, depth), _rows_of(v_ref, b, h, cols, n, depth)
    p = jnp.exp2(_scores(q, k, bias_ref, h, rows, cols, n, kv_length) - lse[:, None])
    ds = p * (plgpu.dot(do, v.T) - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, _blocks_to_visit(i, block_q, kv_length, block_k), body,
                         jnp.zeros((block_q, depth), jnp.float32))
  _store_rows(dq_ref, b, h, rows, n, jnp.where((rows < kv_length)[:, None], dq, 0.0))


def _call(kernel, grid_blocks, blocks, out_shape, *args, name):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  batch, n, heads, _ = args[0].shape
  block_q, block_k, num_warps, num_stages = blocks
  return pl.pallas_call(
      functools.partial(kernel, block_q=block_q, block_k=block_k), out_shape=out_shape,
      grid=(batch, heads, pl.cdiv(n, grid_blocks)), name=name,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=target_platform.platform() == "cpu")(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, bias, kv_lengths, blocks):
  return _forward(q, k, v, bias, kv_lengths, blocks)[0]


def _forward(q, k, v, bias, kv_lengths, blocks):
  batch, n, heads, _ = q.shape
  out, lse = _call(_forward_kernel, blocks[0], blocks,
                   (jax.ShapeDtypeStruct(q.shape, q.dtype),
                    jax.ShapeDtypeStruct((batch, heads, n), jnp.float32)),
                   q, k, v, bias, kv_lengths, name="t5_flash_attention")
  return out, (q, k, v, bias, kv_lengths, out, lse)


def _backward(blocks, residuals, d_out):
  q, k, v, bias, kv_lengths, out, lse = residuals
  batch, n, heads, _ = q.shape
  # delta_i = Σ_d out·d_out: the softmax backward's row term, in XLA (one read of each).
  delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), d_out.astype(jnp.float32))
  args = (q, k, v, bias, kv_lengths, d_out.astype(q.dtype), lse, delta)
  dk, dv = _call(_dkdv_kernel, blocks[1], blocks, (jax.ShapeDtypeStruct(k.shape, k.dtype),
                                                   jax.ShapeDtypeStruct(v.shape, v.dtype)),
                 *args, name="t5_flash_attention_dkdv")
  dq = _call(_dq_kernel, blocks[0], blocks, jax.ShapeDtypeStruct(q.shape, q.dtype), *args,
             name="t5_flash_attention_dq")
  return (dq, dk, dv, jnp.zeros_like(bias), np.zeros(kv_lengths.shape, jax.dtypes.float0))


_attention.defvjp(_forward, _backward)


def t5_flash_attention(q, k, v, bias, kv_lengths, block_q: int = 64, block_k: int = 64,
                       num_warps: int = 4, num_stages: int = 2):
  """Softmax attention of right-padded `[B, L, H, D]` `q, k, v` (self-attention: one length) with
  an additive bias: `[H, L, L]` or `[1, H, L, L]`, or, where it depends on the offset `j - i`
  alone as T5's relative-position bias does, `[H, 2L-1]` indexed by `j - i + L - 1`
  (`RelativePositionBias(offsets=True)`; each tile then reads a few KiB instead of its own
  `[block_q, block_k]` slice of an `[H, L, L]` tensor). Positions at or past `kv_lengths[b]` are
  padding: as keys they take no part, as query rows they give zeros and pass no gradient (cuDNN's
  `q_lengths`); tiles wholly in the padding are skipped. Gradients for `q, k, v` only (the bias is
  taken as frozen). `num_warps`, `num_stages`: Triton's launch settings for all three kernels."""
  if q.shape != k.shape or q.shape != v.shape:
    raise ValueError(f"t5_flash_attention: q {q.shape}, k {k.shape}, v {v.shape} must be one "
                     "[B, L, H, D] shape (self-attention)")
  heads, n = q.shape[2], q.shape[1]
  if bias.ndim != 2:
    bias = bias.reshape(bias.shape[-3:])
  if bias.shape not in ((heads, n, n), (heads, 2 * n - 1)):
    raise ValueError(f"t5_flash_attention: bias {bias.shape} must be [H, L, L] = {(heads, n, n)} "
                     f"or, by offset, [H, 2L-1] = {(heads, 2 * n - 1)}")
  for block in (block_q, block_k):
    if block < 16 or block & (block - 1):
      raise ValueError(f"t5_flash_attention: blocks must be powers of two >= 16, got {block}")
  if num_warps not in (1, 2, 4, 8, 16) or num_stages < 1:
    raise ValueError(f"t5_flash_attention: num_warps must be a power of two <= 16 and num_stages "
                     f">= 1, got {num_warps} and {num_stages}")
  settings = (int(block_q), int(block_k), int(num_warps), int(num_stages))
  return _attention(q, k, v, bias, kv_lengths.astype(jnp.int32), settings)

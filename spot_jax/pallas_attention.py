"""Flash attention with T5's relative-position bias and a key padding mask, in Pallas (Triton).

cuDNN's flash kernels run T5-large's attention at about 130 TFLOP/s on the H200, a fifth of its
matmul rate (docs/bench.md), and JAX's own flash kernels take no bias. This is the form a kernel of
our own takes: for each `[block_q, block_k]` tile, `q kᵀ` plus the bias tile (frozen, shared by the
batch; T5's depends on the offset `j - i` alone, so it is read as a band of an `[H, 2L-1]` vector
rather than a slice of an `[H, L, L]` tensor), keys at or past the row's length masked, an online
softmax, and `p v`; the backward pass recomputes the probabilities from the saved log-sum-exp, one
kernel for `dq` (a program per query block, which also writes the rows' `Σ out·d_out`) and then one
for `dk, dv` (a program per key block); or (`backward="atomic_dq"`) one kernel per key block that
also adds each tile's share of `dq` into a float32 sum with atomic adds, as FlashAttention-2 does,
which recomputes two tile products fewer and costs a zeroed float32 `dq` and its cast. Tiles
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
from spot_jax.config import PALLAS_ATTENTION_BACKWARDS as BACKWARDS

_LOG2E = math.log2(math.e)
# The decoder's cross-attention (tens of queries over the encoder's keys): one block of 32 query
# rows per program, the keys in blocks of 64, 4 warps, 2 stages; `bench.attention_kernels`'
# `cross_pallas` row times exactly this.
CROSS_LAUNCH = (32, 64, 4, 2)
_MASKED = -1e30  # finite: a fully masked tile must not make exp2(-inf - -inf) = NaN


def _scores(q, k, bias_ref, bias_kind, h, rows, cols, n_q, n_k, kv_length):
  """`(q kᵀ + bias) · log2(e)` for one tile in float32, with keys past `kv_length` masked. The
  bias is `[H, Lq, Lk]`, or `[H, 2L-1]` by offset (`"offset"`: entry `j - i + L - 1` for query
  `i`, key `j`), or none."""
  from jax.experimental.pallas import triton as plgpu
  s = plgpu.dot(q, k.T)
  if bias_kind != "none":
    inside = (rows < n_q)[:, None] & (cols < n_k)[None, :]
    if bias_kind == "offset":
      index = (h, cols[None, :] - rows[:, None] + (n_k - 1))
    else:
      index = (h, rows[:, None], cols[None, :])
    s = s + plgpu.load(bias_ref.at[index], mask=inside, other=0.0).astype(jnp.float32)
  return jnp.where((cols < kv_length)[None, :], s * _LOG2E, _MASKED)


def _rows_of(ref, b, h, index, n, depth):
  """`[len(index), depth]` rows `index` of head `h`, batch `b` of a `[B, L, H, D]` ref (masked)."""
  from jax.experimental.pallas import triton as plgpu
  return plgpu.load(ref.at[b, index[:, None], h, jnp.arange(depth)[None, :]],
                    mask=(index < n)[:, None], other=0.0)


def _store_rows(ref, b, h, index, n, value):
  from jax.experimental.pallas import triton as plgpu
  plgpu.store(ref.at[b, index[:, None], h, jnp.arange(value.shape[1])[None, :]],
              value.astype(ref.dtype), mask=(index < n)[:, None])


def _blocks_to_visit(own, own_block, own_length, other_length, other_block):
  """How many blocks of the other axis program `own` loops over: those holding valid positions,
  none when its own block lies wholly in the padding. The work then scales with the valid
  lengths, as cuDNN's with sequence lengths, not with the padded ones."""
  from jax.experimental import pallas as pl
  return jnp.where(own * own_block < own_length, pl.cdiv(other_length, other_block), 0)


def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, o_ref, lse_ref, *, block_q, block_k,
                    bias_kind):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_q, n_k, depth = q_ref.shape[1], k_ref.shape[1], q_ref.shape[3]
  rows = i * block_q + jnp.arange(block_q)
  q = _rows_of(q_ref, b, h, rows, n_q, depth)
  q_length, kv_length = len_ref[0, b], len_ref[1, b]

  def body(j, carry):
    acc, m, l = carry
    cols = j * block_k + jnp.arange(block_k)
    s = _scores(q, _rows_of(k_ref, b, h, cols, n_k, depth), bias_ref, bias_kind, h, rows, cols,
                n_q, n_k, kv_length)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.exp2(s - m_new[:, None])
    correction = jnp.exp2(m - m_new)
    v = _rows_of(v_ref, b, h, cols, n_k, depth)
    acc = acc * correction[:, None] + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, l * correction + jnp.sum(p, axis=1)

  init = (jnp.zeros((block_q, depth), jnp.float32), jnp.full((block_q,), _MASKED, jnp.float32),
          jnp.zeros((block_q,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(
      0, _blocks_to_visit(i, block_q, q_length, kv_length, block_k), body, init)
  valid = rows < q_length  # padding rows: zeros, as cuDNN's rows past `q_lengths`
  l = jnp.where(l > 0, l, 1.0)  # a block wholly in the padding visited no key
  _store_rows(o_ref, b, h, rows, n_q, jnp.where(valid[:, None], acc / l[:, None], 0.0))
  plgpu.store(lse_ref.at[b, h, rows], m + jnp.log2(l), mask=rows < n_q)  # log2-sum-exp2


def _dkdv_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, delta_ref, *out_refs,
                 block_q, block_k, bias_kind):
  """`dk, dv` for one key block, over the query blocks. Its outputs are `dk_ref, dv_ref`, or, for
  `backward="atomic_dq"`, `(dq_zeros_ref, dk_ref, dv_ref, dq_ref)`: then each tile's `ds k` is
  also added into the float32 `dq` (aliased to the zeros) with atomic adds, five tile products per
  tile instead of the two kernels' seven (`q kᵀ` and `d_out vᵀ` are not recomputed for `dq`),
  for atomic traffic on the `dq` sum; the order of its float32 additions varies from run to run."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  if len(out_refs) == 4:
    _, dk_ref, dv_ref, dq_ref = out_refs  # the zeros are dq_ref's own buffer
  else:
    (dk_ref, dv_ref), dq_ref = out_refs, None
  b, h, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_q, n_k, depth = q_ref.shape[1], k_ref.shape[1], q_ref.shape[3]
  cols = j * block_k + jnp.arange(block_k)
  k, v = _rows_of(k_ref, b, h, cols, n_k, depth), _rows_of(v_ref, b, h, cols, n_k, depth)
  q_length, kv_length = len_ref[0, b], len_ref[1, b]

  def body(i, carry):
    dk, dv = carry
    rows = i * block_q + jnp.arange(block_q)
    q = _rows_of(q_ref, b, h, rows, n_q, depth)
    do = _rows_of(do_ref, b, h, rows, n_q, depth)
    lse = plgpu.load(lse_ref.at[b, h, rows], mask=rows < n_q, other=0.0)
    delta = plgpu.load(delta_ref.at[b, h, rows], mask=rows < n_q, other=0.0)
    s = _scores(q, k, bias_ref, bias_kind, h, rows, cols, n_q, n_k, kv_length)
    p = jnp.where((rows < q_length)[:, None], jnp.exp2(s - lse[:, None]), 0.0)  # padding rows:
    dv = dv + plgpu.dot(p.astype(do.dtype).T, do)                             # no gradient
    ds = (p * (plgpu.dot(do, v.T) - delta[:, None])).astype(q.dtype)
    if dq_ref is not None:
      # No mask: `dq_ref` has whole blocks of rows, and rows past `n_q` add zeros (p is 0 there).
      plgpu.atomic_add(dq_ref, (b, rows[:, None], h, jnp.arange(depth)[None, :]),
                       plgpu.dot(ds, k))
    return dk + plgpu.dot(ds.T, q), dv

  zeros = jnp.zeros((block_k, depth), jnp.float32)
  dk, dv = jax.lax.fori_loop(
      0, _blocks_to_visit(j, block_k, kv_length, q_length, block_q), body, (zeros, zeros))
  _store_rows(dk_ref, b, h, cols, n_k, dk)
  _store_rows(dv_ref, b, h, cols, n_k, dv)


def _dq_kernel(q_ref, k_ref, v_ref, bias_ref, len_ref, do_ref, lse_ref, o_ref, dq_ref, delta_ref,
               *, block_q, block_k, bias_kind):
  """Runs before `_dkdv_kernel`: besides `dq` it writes the softmax backward's row term
  `delta_i = Σ_d out·d_out` for its rows, which it needs first and which the `dk, dv` kernel
  reads. Its program holds those rows of `d_out` already, so the term costs one read of `out`
  here rather than a separate pass over `out` and `d_out`."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_q, n_k, depth = q_ref.shape[1], k_ref.shape[1], q_ref.shape[3]
  rows = i * block_q + jnp.arange(block_q)
  q, do = _rows_of(q_ref, b, h, rows, n_q, depth), _rows_of(do_ref, b, h, rows, n_q, depth)
  out = _rows_of(o_ref, b, h, rows, n_q, depth)
  delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=1)
  plgpu.store(delta_ref.at[b, h, rows], delta, mask=rows < n_q)
  lse = plgpu.load(lse_ref.at[b, h, rows], mask=rows < n_q, other=0.0)
  q_length, kv_length = len_ref[0, b], len_ref[1, b]

  def body(j, dq):
    cols = j * block_k + jnp.arange(block_k)
    k, v = _rows_of(k_ref, b, h, cols, n_k, depth), _rows_of(v_ref, b, h, cols, n_k, depth)
    s = _scores(q, k, bias_ref, bias_kind, h, rows, cols, n_q, n_k, kv_length)
    ds = jnp.exp2(s - lse[:, None]) * (plgpu.dot(do, v.T) - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, _blocks_to_visit(i, block_q, q_length, kv_length, block_k), body,
                         jnp.zeros((block_q, depth), jnp.float32))
  _store_rows(dq_ref, b, h, rows, n_q, jnp.where((rows < q_length)[:, None], dq, 0.0))


def _call(kernel, grid_length, grid_block, settings, out_shape, *args, name, aliases=None):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  batch, _, heads, _ = args[0].shape
  block_q, block_k, num_warps, num_stages, bias_kind, _ = settings
  return pl.pallas_call(
      functools.partial(kernel, block_q=block_q, block_k=block_k, bias_kind=bias_kind),
      out_shape=out_shape, grid=(batch, heads, pl.cdiv(grid_length, grid_block)), name=name,
      input_output_aliases=aliases or {},
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=target_platform.platform() == "cpu")(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, bias, lengths, settings):
  return _forward(q, k, v, bias, lengths, settings)[0]


def _forward(q, k, v, bias, lengths, settings):
  batch, n_q, heads, _ = q.shape
  out, lse = _call(_forward_kernel, n_q, settings[0], settings,
                   (jax.ShapeDtypeStruct(q.shape, q.dtype),
                    jax.ShapeDtypeStruct((batch, heads, n_q), jnp.float32)),
                   q, k, v, bias, lengths, name="t5_flash_attention")
  return out, (q, k, v, bias, lengths, out, lse)


def _backward(settings, residuals, d_out):
  q, k, v, bias, lengths, out, lse = residuals
  d_out = d_out.astype(q.dtype)
  batch, n_q, heads, _ = q.shape
  kv_shapes = (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype))
  if settings[5] == "atomic_dq":
    # delta_i = Σ_d out·d_out, the softmax backward's row term, in XLA: no kernel here holds
    # whole rows of `d_out` before it needs the term.
    delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), d_out.astype(jnp.float32))
    rows = -(-n_q // settings[0]) * settings[0]  # whole query blocks: the adds need no mask
    dq_sum = jnp.zeros((batch, rows) + q.shape[2:], jnp.float32)
    dk, dv, dq = _call(_dkdv_kernel, k.shape[1], settings[1], settings,
                       kv_shapes + (jax.ShapeDtypeStruct(dq_sum.shape, jnp.float32),),
                       q, k, v, bias, lengths, d_out, lse, delta, dq_sum,
                       name="t5_flash_attention_backward", aliases={8: 2})
    dq = dq[:, :n_q].astype(q.dtype)
  else:
    dq, delta = _call(_dq_kernel, n_q, settings[0], settings,
                      (jax.ShapeDtypeStruct(q.shape, q.dtype),
                       jax.ShapeDtypeStruct((batch, heads, n_q), jnp.float32)),
                      q, k, v, bias, lengths, d_out, lse, out, name="t5_flash_attention_dq")
    dk, dv = _call(_dkdv_kernel, k.shape[1], settings[1], settings, kv_shapes,
                   q, k, v, bias, lengths, d_out, lse, delta, name="t5_flash_attention_dkdv")
  return (dq, dk, dv, jnp.zeros_like(bias), np.zeros(lengths.shape, jax.dtypes.float0))


_attention.defvjp(_forward, _backward)


def flash_attention(q, k, v, bias, q_lengths, kv_lengths, block_q: int = 64, block_k: int = 64,
                    num_warps: int = 4, num_stages: int = 2, backward: str = "two_kernels"):
  """Softmax attention of right-padded `[B, Lq, H, D]` queries over `[B, Lk, H, D]` keys and
  values, with an additive bias or none. The bias is `[H, Lq, Lk]` or `[1, H, Lq, Lk]`, or, where
  it depends on the offset `j - i` alone as T5's relative-position bias does (self-attention,
  `Lq == Lk`), `[H, 2L-1]` indexed by `j - i + L - 1` (`RelativePositionBias(offsets=True)`; each
  tile then reads a few KiB instead of its own `[block_q, block_k]` slice of an `[H, L, L]`
  tensor). Keys at or past `kv_lengths[b]` take no part; query rows at or past `q_lengths[b]`
  (None: every row is valid) give zeros and pass no gradient (cuDNN's `q_lengths`); tiles wholly
  in the padding are skipped. Gradients for `q, k, v` only (the bias is taken as frozen).
  `num_warps`, `num_stages`: Triton's launch settings for all three kernels; a block longer than
  its axis is cut to the axis (rounded up to a power of two, at least 16). `backward`:
  "two_kernels" (a `dq` kernel, then a `dk, dv` kernel; deterministic) or "atomic_dq" (one kernel
  that adds `dq` up with float32 atomics: fewer products, run-to-run rounding differences)."""
  if target_platform.platform() not in ("gpu", "cpu"):
    raise ValueError(f"attention_impl='pallas' and cross_attention_impl='pallas' run Triton "
                     f"kernels, for GPUs; this backend is {target_platform.platform()}: use "
                     "attention_impl='fused' and cross_attention_impl='auto'")
  if (q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0]
      or k.shape[2:] != q.shape[2:]):
    raise ValueError(f"flash_attention: q {q.shape}, k {k.shape}, v {v.shape} must be "
                     "[B, Lq, H, D], [B, Lk, H, D], [B, Lk, H, D]")
  batch, n_q, heads, _ = q.shape
  n_k = k.shape[1]
  if bias is None:
    bias, kind = jnp.zeros((1, 1), q.dtype), "none"
  elif bias.ndim == 2:
    if n_q != n_k or bias.shape != (heads, 2 * n_k - 1):
      raise ValueError(f"flash_attention: a bias by offset must be [H, 2L-1] = "
                       f"{(heads, 2 * n_k - 1)} for self-attention, got {bias.shape} for "
                       f"{n_q} queries over {n_k} keys")
    kind = "offset"
  else:
    bias, kind = bias.reshape(bias.shape[-3:]), "full"
    if bias.shape != (heads, n_q, n_k):
      raise ValueError(f"flash_attention: bias {bias.shape} must be [H, Lq, Lk] = "
                       f"{(heads, n_q, n_k)} or, by offset, [H, 2L-1] = {(heads, 2 * n_k - 1)}")
  for block in (block_q, block_k):
    if block < 16 or block & (block - 1):
      raise ValueError(f"flash_attention: blocks must be powers of two >= 16, got {block}")
  if backward not in BACKWARDS:
    raise ValueError(f"flash_attention: backward={backward!r} is not one of {BACKWARDS}")
  if num_warps not in (1, 2, 4, 8, 16) or num_stages < 1:
    raise ValueError(f"flash_attention: num_warps must be a power of two <= 16 and num_stages "
                     f">= 1, got {num_warps} and {num_stages}")
  fit = lambda block, n: int(min(block, max(16, 1 << (n - 1).bit_length())))
  q_lengths = jnp.full((batch,), n_q, jnp.int32) if q_lengths is None else q_lengths
  lengths = jnp.stack([jnp.asarray(q_lengths, jnp.int32), jnp.asarray(kv_lengths, jnp.int32)])
  settings = (fit(block_q, n_q), fit(block_k, n_k), int(num_warps), int(num_stages), kind,
              backward)
  return _attention(q, k, v, bias, lengths, settings)


def t5_flash_attention(q, k, v, bias, kv_lengths, block_q: int = 64, block_k: int = 64,
                       num_warps: int = 4, num_stages: int = 2, backward: str = "two_kernels"):
  """T5's encoder self-attention: `flash_attention` with one length for rows and keys (positions
  at or past `kv_lengths[b]` are padding in both roles) and the relative-position bias, written
  out or by offset."""
  if q.shape != k.shape or q.shape != v.shape:
    raise ValueError(f"t5_flash_attention: q {q.shape}, k {k.shape}, v {v.shape} must be one "
                     "[B, L, H, D] shape (self-attention)")
  return flash_attention(q, k, v, bias, kv_lengths, kv_lengths, block_q, block_k, num_warps,
                         num_stages, backward)

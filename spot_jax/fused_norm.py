"""The residual add, its dropout and the next RMSNorm as one Triton kernel (Pallas), each way.

Between two matmuls a T5 layer does `x = x + dropout(o); h = rmsnorm(x)`. XLA fuses these into a
reduction kernel and an elementwise one, and in the backward a reduction over the norm's incoming
gradient and then an elementwise pass that reads the same tensors again: on the H200 the encoder's
norms, residual adds and dropouts moved about half of the step's elementwise bytes (docs/bench.md).
XLA's own single-kernel normalization fusion takes one input only, so it never applies here. These
kernels do each direction in one pass over rows: forward reads `x` and `o` and writes the new `x`
and `h`; backward reads the two incoming gradients and the new `x` (the norm's statistics are
recomputed) and writes the gradients of `x` and `o`.

The dropout mask is `spot_jax.dropout`'s per-element hash of the element's index under the same
key, so the kernel drops exactly the elements the XLA form drops (`dropout_bits="per_element"`).
On CPU the kernels run in Pallas' interpreter (for tests; slow); TPUs have no Triton.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spot_jax import dropout, target_platform

# Rows per program (a power of two) and, in `default_tiling`, warps for about 8 elements of each
# operand per thread (Triton's layer-norm heuristic): the backward kernel holds five operands in
# registers. `python -m bench.norm_kernels` times other tilings on a GPU.
ROWS = 2


def default_tiling(n_cols: int) -> tuple[int, int]:
  """`(rows per program, warps)` for rows of `n_cols` elements."""
  width = 1 << max(int(n_cols) - 1, 0).bit_length()  # the next power of two
  return ROWS, int(min(max(ROWS * width // 256, 1), 8))


def _tile(n_rows: int, n_cols: int, block_rows: int):
  """Row and column indices of this program's `[block_rows, next_pow2(n_cols)]` tile and its mask."""
  from jax.experimental import pallas as pl
  rows = pl.program_id(0) * block_rows + jnp.arange(block_rows)
  cols = jnp.arange(pl.next_power_of_2(n_cols))
  mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
  return rows, cols, mask


def _keep(rows, cols, n_cols: int, key_ref, threshold: int):
  """`dropout._keep_mask(per_element=True)`'s mask for this tile: its hash of each element's
  row-major index, keyed by the two key words."""
  counter = (rows[:, None] * n_cols + cols[None, :]).astype(jnp.uint32)
  return dropout._fmix32(counter, (key_ref[0], key_ref[1])) >= jnp.uint32(threshold)


def _forward_kernel(x_ref, o_ref, scale_ref, key_ref, x_out_ref, h_ref, *, eps, rate, block_rows):
  from jax.experimental.pallas import triton as plgpu
  n_rows, n_cols = x_ref.shape
  rows, cols, mask = _tile(n_rows, n_cols, block_rows)
  at = lambda ref: ref.at[rows[:, None], cols[None, :]]
  # Arithmetic in float32, rounded where the XLA form rounds (Triton divides no bfloat16).
  rounded = lambda t: t.astype(x_ref.dtype).astype(jnp.float32)
  x32 = plgpu.load(at(x_ref), mask=mask, other=0.0).astype(jnp.float32)
  o32 = plgpu.load(at(o_ref), mask=mask, other=0.0).astype(jnp.float32)
  if rate > 0.0:
    threshold, keep_prob = dropout.per_element_threshold(rate)
    keep = _keep(rows, cols, n_cols, key_ref, threshold)
    o32 = jnp.where(keep, rounded(o32 / rounded(jnp.float32(keep_prob))), 0.0)
  x32 = rounded(x32 + o32)
  plgpu.store(at(x_out_ref), x32.astype(x_out_ref.dtype), mask=mask)
  inv = jax.lax.rsqrt(jnp.sum(x32 * x32, axis=1) / n_cols + eps)
  scale = plgpu.load(scale_ref.at[cols], mask=cols < n_cols, other=0.0).astype(jnp.float32)
  plgpu.store(at(h_ref), (x32 * inv[:, None] * scale[None, :]).astype(h_ref.dtype), mask=mask)


def _backward_kernel(x_ref, scale_ref, key_ref, dx_in_ref, *refs, eps, rate, block_rows):
  """`refs`: the gradients of each copy of the normed output, then the two outputs."""
  from jax.experimental.pallas import triton as plgpu
  *dh_refs, dx_ref, do_ref = refs
  n_rows, n_cols = x_ref.shape
  rows, cols, mask = _tile(n_rows, n_cols, block_rows)
  at = lambda ref: ref.at[rows[:, None], cols[None, :]]
  x32 = plgpu.load(at(x_ref), mask=mask, other=0.0).astype(jnp.float32)
  inv = jax.lax.rsqrt(jnp.sum(x32 * x32, axis=1) / n_cols + eps)[:, None]
  scale = plgpu.load(scale_ref.at[cols], mask=cols < n_cols, other=0.0).astype(jnp.float32)
  dh = sum(plgpu.load(at(ref), mask=mask, other=0.0).astype(jnp.float32) for ref in dh_refs)
  dhs = dh * scale[None, :]
  mean = (jnp.sum(dhs * x32, axis=1) / n_cols)[:, None]
  d_norm = inv * dhs - x32 * (inv * inv * inv) * mean
  rounded = lambda t: t.astype(x_ref.dtype).astype(jnp.float32)
  dx = rounded(plgpu.load(at(dx_in_ref), mask=mask, other=0.0).astype(jnp.float32)
               + rounded(d_norm))
  plgpu.store(at(dx_ref), dx.astype(dx_ref.dtype), mask=mask)
  if rate > 0.0:
    threshold, keep_prob = dropout.per_element_threshold(rate)
    keep = _keep(rows, cols, n_cols, key_ref, threshold)
    dx = jnp.where(keep, dx, 0.0) / rounded(jnp.float32(keep_prob))
  plgpu.store(at(do_ref), dx.astype(do_ref.dtype), mask=mask)


def _call(kernel, tiling, out_shapes, *args, name: str):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  n_rows, _ = args[0].shape
  block_rows, warps = tiling
  return pl.pallas_call(
      functools.partial(kernel, block_rows=block_rows), out_shape=out_shapes,
      grid=(pl.cdiv(n_rows, block_rows),), name=name,
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=1),
      interpret=target_platform.platform() == "cpu")(*args)


def _rows(t):
  return t.reshape(-1, t.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _add_dropout_rmsnorm(x, o, scale, key_words, rate, eps, h_dtype, copies, tiling):
  return _forward(x, o, scale, key_words, rate, eps, h_dtype, copies, tiling)[0]


def _forward(x, o, scale, key_words, rate, eps, h_dtype, copies, tiling):
  shape = x.shape
  x_out, h = _call(functools.partial(_forward_kernel, eps=eps, rate=rate), tiling,
                   (jax.ShapeDtypeStruct(_rows(x).shape, x.dtype),
                    jax.ShapeDtypeStruct(_rows(x).shape, h_dtype)),
                   _rows(x), _rows(o), scale, key_words, name="add_dropout_rmsnorm")
  x_out, h = x_out.reshape(shape), h.reshape(shape)
  return (x_out, *[h] * copies), (x_out, scale, key_words)


def _backward(rate, eps, h_dtype, copies, tiling, residuals, cotangents):
  x_out, scale, key_words = residuals
  dx_in, *dhs = cotangents
  shape = x_out.shape
  dx, do = _call(functools.partial(_backward_kernel, eps=eps, rate=rate), tiling,
                 (jax.ShapeDtypeStruct(_rows(x_out).shape, x_out.dtype),
                  jax.ShapeDtypeStruct(_rows(x_out).shape, x_out.dtype)),
                 _rows(x_out), scale, key_words, _rows(dx_in).astype(x_out.dtype),
                 *[_rows(dh).astype(h_dtype) for dh in dhs], name="add_dropout_rmsnorm_bwd")
  # The scale's gradient, in XLA: a column sum no prompt-tuning step asks for (the norm is frozen,
  # and XLA drops this when nothing reads it).
  x32 = x_out.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  dh = sum(dh.astype(jnp.float32) for dh in dhs)
  dscale = jnp.sum((dh * normed).reshape(-1, shape[-1]), axis=0)
  return (dx.reshape(shape), do.reshape(shape), dscale.astype(scale.dtype),
          np.zeros(key_words.shape, jax.dtypes.float0))


_add_dropout_rmsnorm.defvjp(_forward, _backward)


def add_dropout_rmsnorm(x, o, scale, key_words, rate: float, eps: float, h_dtype, copies: int = 1,
                        tiling: tuple[int, int] | None = None):
  """`x + dropout(o)` and T5's RMSNorm of it with `scale`, as `(new_x, normed)`, in one kernel.

  `key_words` is the dropout key's `uint32[2]` data (`dropout._key_words`); `rate` 0 drops nothing
  (the key is then unused). `new_x` has `x`'s dtype, `normed` has `h_dtype`. Same values as the XLA
  form `new_x = x + Dropout(rate, per_element_bits=True)(o); RMSNorm(eps)(new_x)` (tests).

  `copies` > 1 returns `normed` as that many outputs (one array, written once), one per matmul
  that reads it: each then gets its own gradient, which the backward kernel adds up as it reads
  them, instead of XLA writing their sum first. `tiling`: `(rows per program, warps)`, rows a
  power of two (default `default_tiling`)."""
  if target_platform.platform() not in ("gpu", "cpu"):
    raise ValueError(f"norm_impl='pallas' runs Triton kernels, for GPUs; this backend is "
                     f"{target_platform.platform()}: use norm_impl='xla'")
  if x.shape != o.shape or scale.shape != x.shape[-1:]:
    raise ValueError(f"add_dropout_rmsnorm: x {x.shape}, o {o.shape} and scale {scale.shape} "
                     "must be [..., d], [..., d] and [d]")
  if copies < 1:
    raise ValueError(f"add_dropout_rmsnorm: copies must be >= 1, got {copies}")
  tiling = default_tiling(x.shape[-1]) if tiling is None else tuple(int(t) for t in tiling)
  if tiling[0] < 1 or tiling[0] & (tiling[0] - 1) or tiling[1] < 1:
    raise ValueError(f"add_dropout_rmsnorm: tiling {tiling} must be (a power of two, warps >= 1)")
  new_x, *normed = _add_dropout_rmsnorm(x, o.astype(x.dtype), scale, key_words.astype(jnp.uint32),
                                        float(rate), float(eps), jnp.dtype(h_dtype), int(copies),
                                        tiling)
  return new_x, normed[0] if copies == 1 else tuple(normed)

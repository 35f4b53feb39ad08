"""Where the fused attention's time goes: the step's attention calls timed alone, in variants.

  python -m bench.attention_kernels --size large --batch 64 [--input-length 512 --prompt-length 100
      --target-length 32] [--repeats 20] [--json out.json]

On the H200 a third of T5-large's step is cuDNN attention running at about 130 TFLOP/s of model
FLOPs while its matmuls run near the chip's ceiling (docs/bench.md). This times the encoder
self-attention exactly as the model calls it (`fused_attention` with the relative-position bias and
the padding mask) against the same call without the bias, without the mask, without both, with the
sequence padded to a multiple of 128, the einsum form, JAX's Pallas (Triton) flash kernel
without a bias, and our own Pallas kernel with the bias (`spot_jax.pallas_attention`) in several
block shapes and launch settings, reading the bias by offset as the model passes it (and once
written out as cuDNN reads it); the model's call and ours again with every row valid for a third
of the length only (fine-tuning batches are mostly padding); and the decoder's cross-attention,
fused, in the einsum form and through our kernel. Each row gives the
forward and forward+backward time (the gradient of q, k and v, as in training), model TFLOP/s
(forward 4·B·H·Q·K·Dh, backward twice that, as bench/flops.py counts) and the time a whole step
spends on it (× layers). `max |Δ|` compares each output with the row named under `vs` on the same
inputs (`no_bias` against the model differs by design). On CPU the fused rows
run XLA's reference form instead of cuDNN and the Pallas kernel is interpreted: the times mean
little, the values still compare. The Mosaic GPU row runs on Hopper GPUs only and is skipped
elsewhere, saying so.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time


def _einsum_attention(q, k, v, bias, kv_lengths):
  """T5X's form: `[B, H, Q, K]` scores and probabilities written out (float32), keys masked."""
  import jax
  import jax.numpy as jnp
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  valid = jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None]
  scores = jnp.where(valid[:, None, None, :], scores, -1e10)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _mosaic_flash_attention(q, k, v):
  """JAX's FlashAttention-3 (Pallas on Mosaic GPU) forward and backward, on float16 copies.

  Its kernel needs lengths in whole blocks and has no bias or mask; in this jax it rejects
  bfloat16, hence the casts (counted in its time, a few percent of it)."""
  import jax.numpy as jnp
  from jax.experimental.pallas.ops.gpu import attention_mgpu
  config = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2,
                                       block_q_dkv=64, block_kv_dkv=64, block_q_dq=64,
                                       block_kv_dq=64)
  f16 = lambda x: x.astype(jnp.float16)
  return attention_mgpu.attention(f16(q), f16(k), f16(v), config).astype(q.dtype)


def toeplitz_bias(key, heads: int, length: int, dtype):
  """A random `[1, H, L, L]` bias that, like T5's, depends on the offset `j - i` alone."""
  import jax
  import jax.numpy as jnp
  offsets = jax.random.normal(key, (heads, 2 * length - 1), jnp.float32).astype(dtype)
  rows, cols = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
  return offsets[:, cols - rows + length - 1][None]


def band_of(bias):
  """The `[H, 2L-1]` by-offset form of a `toeplitz_bias`: its last row, then its first row's rest."""
  import jax.numpy as jnp
  return jnp.concatenate([bias[0, :, -1, :], bias[0, :, 0, 1:]], axis=-1)


def _ours(q, k, v, bias, lengths, blocks, full_bias: bool = False):
  """`spot_jax.pallas_attention`: the model's function (bias, key lengths), our own kernels, with
  the bias by offset as the model passes it (or written out, `full_bias`); `blocks`: its block
  shape and launch settings."""
  from spot_jax.pallas_attention import t5_flash_attention
  return t5_flash_attention(q, k, v, bias if full_bias else band_of(bias), lengths, *blocks)


def _needs_hopper() -> str | None:
  """Why the Mosaic GPU row cannot run on this backend, or None when it can."""
  import jax
  device = jax.devices()[0]
  if jax.default_backend() != "gpu":
    return f"Mosaic GPU kernels need an NVIDIA Hopper GPU; this backend is {jax.default_backend()}"
  capability = getattr(device, "compute_capability", "")
  if not str(capability).startswith("9"):
    return f"Mosaic GPU's FlashAttention-3 needs compute capability 9.x; this GPU has {capability}"
  return None


# Our kernel's rows: name → its launch settings (block_q, block_k, num_warps, num_stages), the
# values of `T5Config.pallas_attention_launch`, and for some its backward
# (`T5Config.pallas_attention_backward`; else "two_kernels"). `bench.suite_choice` picks the fastest.
PALLAS_LAUNCHES = {"pallas_t5": (64, 64, 4, 2), "pallas_t5_128x64": (128, 64, 4, 2),
                   "pallas_t5_64x128": (64, 128, 4, 2), "pallas_t5_s3": (64, 64, 4, 3),
                   "pallas_t5_128x64_w8s3": (128, 64, 8, 3),
                   "pallas_t5_atomic": (64, 64, 4, 2, "atomic_dq"),
                   "pallas_t5_64x128_atomic": (64, 128, 4, 2, "atomic_dq")}


def _variants(length: int, pallas_interpret: bool):
  """name → (function of q, k, v, bias, lengths; what it is; the row whose output it must equal).

  A row with no such row (None) is either the model's call or a function of its own by design."""
  import jax.numpy as jnp
  from spot_jax.fused_attention import fused_attention

  pad = -length % 128
  grow = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))

  def padded(q, k, v, bias, lengths):
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad), (0, pad)))
    return fused_attention(grow(q), grow(k), grow(v), bias, lengths, lengths)[:, :length]

  def padded_plain(q, k, v, bias, lengths):
    return fused_attention(grow(q), grow(k), grow(v), None, None, None)[:, :length]

  def mosaic(q, k, v, bias, lengths):
    return _mosaic_flash_attention(grow(q), grow(k), grow(v))[:, :length]

  def pallas(q, k, v, bias, lengths):
    # JAX's Pallas (Triton) flash kernel takes no bias and whole 128-blocks: padding gets segment 0.
    from jax.experimental.pallas.ops.gpu import attention as pallas_attention
    segments = (jnp.arange(length + pad)[None, :] < lengths[:, None]).astype(jnp.int32)
    return pallas_attention.mha(grow(q), grow(k), grow(v), segments, sm_scale=1.0,
                                interpret=pallas_interpret)[:, :length]

  short = length // 3

  def zero_padding(out, lengths):
    return jnp.where((jnp.arange(length)[None, :] < lengths[:, None])[:, :, None, None], out, 0)

  def model_short(q, k, v, bias, lengths):
    lengths = jnp.minimum(lengths, short)
    return zero_padding(fused_attention(q, k, v, bias, lengths, lengths), lengths)

  def ours_short(q, k, v, bias, lengths):
    return _ours(q, k, v, bias, jnp.minimum(lengths, short), blocks=(64, 64))

  ours = {name: (functools.partial(_ours, blocks=settings),
                 f"our Pallas (Triton) flash kernel with T5's bias and the padding mask, blocks "
                 f"{settings[0]}x{settings[1]}, {settings[2]} warps, {settings[3]} stages"
                 + (", backward in one kernel (dq by atomic adds)" if settings[4:] else ""), "model")
          for name, settings in PALLAS_LAUNCHES.items()}
  ours["pallas_t5_full_bias"] = (
      functools.partial(_ours, blocks=(64, 64, 4, 2), full_bias=True),
      "pallas_t5 reading the bias as an [H, L, L] tensor (as cuDNN does), not by offset", "model")
  return {
      "model": (lambda q, k, v, b, n: fused_attention(q, k, v, b, n, n),
                "fused, relative-position bias + padding mask (the model's call)", None),
      **ours,
      # Fine-tuning batches are mostly padding: every row valid for its first third only.
      "model_short": (model_short, f"the model's call, rows valid for {short} of {length} "
                                   f"positions (TFLOP/s of those)", None),
      "pallas_t5_short": (ours_short, f"pallas_t5, rows valid for {short} of {length} positions "
                                      "(its padding tiles skipped)", "model_short"),
      "no_mask": (lambda q, k, v, b, n: fused_attention(q, k, v, b, None, None),
                  "fused, bias, no padding mask", "model"),
      "no_bias": (lambda q, k, v, b, n: fused_attention(q, k, v, None, n, n),
                  "fused, padding mask, no bias (differs from the model by design)", "model"),
      "no_bias_no_mask": (lambda q, k, v, b, n: fused_attention(q, k, v, None, None, None),
                          "fused, neither", "no_bias"),
      "pad128": (padded, f"fused, bias + mask, length {length} padded to {length + pad}", "model"),
      "einsum": (_einsum_attention, "einsum form, float32 scores and softmax", "model"),
      "pallas_no_bias": (pallas, f"JAX's Pallas flash kernel (Triton), no bias, padded to "
                                 f"{length + pad}", "no_bias"),
      "pad128_plain": (padded_plain, f"fused, no bias, no mask, padded to {length + pad} (the "
                                     "zero keys take part: a kernel bound, not the model)", None),
      "mosaic_fa3_f16": (mosaic, f"JAX's FlashAttention-3 (Mosaic GPU, Hopper), float16, no bias, "
                                 f"no mask, padded to {length + pad}", "pad128_plain"),
  }


CROSS_ROWS = ("cross", "cross_einsum", "cross_pallas")


def row_names() -> list:
  """Every row `run` can time, in its order."""
  return [*_variants(640, pallas_interpret=True), *CROSS_ROWS]


# Rows whose rows are valid for a third of the length only: their FLOPs are counted over that.
SHORT = ("model_short", "pallas_t5_short")
# Rows that run only where `_needs_hopper` finds no reason not to.
HOPPER_ONLY = ("mosaic_fa3_f16",)


def _time(fn, args, repeats: int) -> float:
  """Median seconds of one call, from `repeats` calls back to back, three times over."""
  import jax
  jax.block_until_ready(fn(*args))
  runs = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(repeats):
      out = fn(*args)
    jax.block_until_ready(out)
    runs.append((time.perf_counter() - start) / repeats)
  return statistics.median(runs)


def run(size: str = "large", batch: int = 64, input_length: int = 512, prompt_length: int = 100,
        target_length: int = 32, dtype: str = "bfloat16", repeats: int = 20, seed: int = 0,
        only: tuple = (), on_row=None) -> dict:
  """The table's rows; `on_row(name, row)` is called as each is done (a killed run keeps those)."""
  import jax
  import jax.numpy as jnp
  from spot_jax.config import size_config

  cfg = size_config(size)
  B, L, T, H, Dh = batch, input_length + prompt_length, target_length, cfg.num_heads, cfg.head_dim
  dt = jnp.dtype(dtype)
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  q, k, v = (jax.random.normal(key, (B, L, H, Dh), jnp.float32).astype(dt) for key in keys[:3])
  bias = toeplitz_bias(keys[3], H, L, dt)  # a function of j - i, as T5's relative-position bias
  dec_q = jax.random.normal(keys[4], (B, T, H, Dh), jnp.float32).astype(dt)
  full, dec_full = jnp.full((B,), L, jnp.int32), jnp.full((B,), T, jnp.int32)

  def timed(fn, args, flops_fwd, layers):
    fwd = jax.jit(fn)
    ct = jnp.ones(fwd.eval_shape(*args).shape, dt)

    def forward_backward(*a):
      out, vjp = jax.vjp(lambda *x: fn(*x, *a[3:]), *a[:3])
      return out, vjp(ct)

    train = jax.jit(forward_backward)
    fwd_s, train_s = _time(fwd, args, repeats), _time(train, args, repeats)
    return {"forward_ms": 1e3 * fwd_s, "forward_backward_ms": 1e3 * train_s,
            "forward_tflops": flops_fwd / fwd_s / 1e12,
            "forward_backward_tflops": 3 * flops_fwd / train_s / 1e12,
            "layers": layers, "step_ms": 1e3 * train_s * layers}, fwd(*args)

  from spot_jax.fused_attention import fused_attention
  from spot_jax.pallas_attention import CROSS_LAUNCH, flash_attention
  rows, outputs = {}, {}
  encoder = {name: (fn, what, ref, (q, k, v, bias, full),
                    4 * B * H * (L // 3 if name in SHORT else L) ** 2 * Dh, cfg.num_encoder_layers)
             for name, (fn, what, ref) in _variants(L, jax.default_backend() != "gpu").items()}
  cross_args = (dec_q, k, v, dec_full, full)
  cross = {"cross": (lambda dq, k_, v_, n_dec, n_enc: fused_attention(dq, k_, v_, None, n_dec, n_enc),
                     f"decoder cross-attention, fused, {T} queries over {L} keys", None),
           "cross_einsum": (lambda dq, k_, v_, n_dec, n_enc: _einsum_attention(dq, k_, v_, None, n_enc),
                            "decoder cross-attention, einsum form", "cross"),
           "cross_pallas": (lambda dq, k_, v_, n_dec, n_enc: flash_attention(
                                dq, k_, v_, None, None, n_enc, *CROSS_LAUNCH),
                            "decoder cross-attention, our Pallas kernel (launch "
                            f"{'x'.join(map(str, CROSS_LAUNCH))}, as the model runs it)", "cross")}
  cross = {name: (*entry, cross_args, 4 * B * H * T * L * Dh, cfg.num_decoder_layers)
           for name, entry in cross.items()}
  for name, (fn, what, ref, args, flops, layers) in {**encoder, **cross}.items():
    if only and name not in only:
      continue
    if name in HOPPER_ONLY and (reason := _needs_hopper()):
      rows[name] = {"what": what, "skipped": reason}
    else:
      try:
        row, outputs[name] = timed(fn, args, flops, layers)
        if ref in outputs:
          row["compared_with"] = ref
          row["max_abs_diff"] = float(jnp.max(jnp.abs(outputs[name].astype(jnp.float32) -
                                                      outputs[ref].astype(jnp.float32))))
        rows[name] = {"what": what, **row}
      except Exception as e:  # a variant this GPU rejects must not lose the others
        rows[name] = {"what": what, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    if on_row:
      on_row(name, rows[name])
  return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "jax_version": jax.__version__, "size": size, "batch": B, "length": L,
          "target_length": T, "heads": H, "head_dim": Dh, "dtype": dtype, "repeats": repeats,
          "rows": rows}


def format_table(result: dict) -> str:
  head = (f"attention alone: {result['size']} ({result['heads']} heads × {result['head_dim']}), "
          f"batch {result['batch']}, length {result['length']}, {result['dtype']}, "
          f"{result['device']} ({result['backend']})")
  out = [head, f"{'variant':<22}{'fwd ms':>9}{'fwd+bwd ms':>12}{'TFLOP/s':>9}{'fwd+bwd':>9}"
               f"{'×layers ms':>12}{'max |Δ|':>10} {'vs':<12} what"]
  out.extend(format_row(name, row) for name, row in result["rows"].items())
  return "\n".join(out)


def format_row(name: str, row: dict) -> str:
  if "error" in row or "skipped" in row:
    said = f"failed: {row['error']}" if "error" in row else f"skipped: {row['skipped']}"
    return f"{name:<22}  {said}  ({row['what']})"
  diff = f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else "-"
  return (f"{name:<22}{row['forward_ms']:9.3f}{row['forward_backward_ms']:12.3f}"
          f"{row['forward_tflops']:9.1f}{row['forward_backward_tflops']:9.1f}"
          f"{row['step_ms']:12.2f}{diff:>10} {row.get('compared_with', '-'):<12} {row['what']}")


def main(argv=None) -> int:
  from bench.__main__ import add_shape_arguments
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_shape_arguments(p, size="large")
  p.add_argument("--repeats", type=int, default=20, help="calls back to back per timing")
  p.add_argument("--only", default="", help="comma-separated variants (default: all)")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  unknown = sorted(set(x for x in args.only.split(",") if x) - set(row_names()))
  if unknown:
    p.error(f"--only: no variant named {', '.join(unknown)}; the variants: {', '.join(row_names())}")
  # Each row on stderr as it is done, so a run cut short by a timeout still shows what it timed.
  progress = lambda name, row: print("[row] " + format_row(name, row), file=sys.stderr, flush=True)
  result = run(args.size, args.batch, args.input_length, args.prompt_length, args.target_length,
               args.dtype, args.repeats, only=tuple(x for x in args.only.split(",") if x),
               on_row=progress)
  return finish(result, format_table(result), args.json)


def finish(result: dict, table: str, json_path: str) -> int:
  """Print the table, write the JSON if asked; exit status 1 when a row failed (the kernel
  benchmarks' shared ending)."""
  print(table)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  return 1 if any("error" in row for row in result["rows"].values()) else 0


if __name__ == "__main__":
  sys.exit(main())

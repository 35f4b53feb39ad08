"""The encoder's residual norm alone: XLA's kernels against the one-kernel Pallas form, in tilings.

  python -m bench.norm_kernels --size large --batch 64 [--input-length 512 --prompt-length 100]
      [--tilings default,1x4,2x8,4x8] [--repeats 20] [--json out.json]

`x + dropout(o)` and the RMSNorm after it, shaped as the encoder's attention norm (its output read
by three matmuls, so three gradients come back), forward and forward+backward, as `norm_impl="xla"`
computes it and as `spot_jax.fused_norm` does with each `ROWSxWARPS` tiling. A device call times the
tilings in seconds, where a training run per tiling would take minutes. Each row: ms, GB/s of the
bytes one pass must move (forward reads `x`, `o` and writes the new `x` and the norm: 4 tensors;
backward reads the residual gradient, three norm gradients and the new `x` and writes 2: 11 in all),
the time a step spends on it (× 2 norms × encoder layers; the MLP norms have two gradients, not
three, so a little over) and the largest difference from the XLA row's new `x`, norm and input
gradient, each relative to that output's largest value (bfloat16: about 1e-2, one rounding). On CPU the kernels are interpreted: the values compare, the times do not.
"""
from __future__ import annotations

import argparse
import sys


def _tiling(text: str):
  """`"default"` → None, `"2x8"` → (2, 8)."""
  if text == "default":
    return None
  rows, warps = text.lower().split("x")
  return int(rows), int(warps)


def run(size: str = "large", batch: int = 64, input_length: int = 512, prompt_length: int = 100,
        dtype: str = "bfloat16", rate: float = 0.1, tilings: tuple = ("default",),
        repeats: int = 20, seed: int = 0) -> dict:
  import jax
  import jax.numpy as jnp
  from bench.attention_kernels import _time
  from spot_jax import dropout, fused_norm
  from spot_jax.config import size_config

  cfg = size_config(size)
  n, d, dt, eps = batch * (input_length + prompt_length), cfg.d_model, jnp.dtype(dtype), 1e-6
  keys = jax.random.split(jax.random.PRNGKey(seed), 7)
  x, o, g, *dh = (jax.random.normal(k, (n, d), jnp.float32).astype(dt) for k in keys[:6])
  scale = (1 + 0.1 * jax.random.normal(keys[6], (d,))).astype(dt)
  key = jax.random.key(seed + 1)
  words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)

  def xla(x, o):
    keep, keep_prob = dropout._keep_mask(key, o.shape, rate, True)
    new_x = x + jnp.where(keep, o / jnp.asarray(keep_prob, o.dtype), jnp.zeros_like(o))
    x32 = new_x.astype(jnp.float32)
    h = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
         * scale.astype(jnp.float32)).astype(dt)
    return new_x, h, h, h

  def pallas(tiling):
    def fn(x, o):
      new_x, copies = fused_norm.add_dropout_rmsnorm(x, o, scale, words, rate, eps, dt, copies=3,
                                                     tiling=tiling)
      return (new_x, *copies)
    return fn

  variants, tiling_of = {"xla": xla}, {}
  for text in tilings:
    tiling = _tiling(text) or fused_norm.default_tiling(d)
    variants[f"pallas {tiling[0]}x{tiling[1]}"] = pallas(tiling)
    tiling_of[f"pallas {tiling[0]}x{tiling[1]}"] = list(tiling)

  tensor_bytes = n * d * dt.itemsize
  rows, reference = {}, None
  for name, fn in variants.items():
    forward = jax.jit(fn)
    train = jax.jit(lambda x, o, fn=fn: (lambda out, vjp: (out, vjp((g, *dh))))(*jax.vjp(fn, x, o)))
    try:
      fwd_s, train_s = _time(forward, (x, o), repeats), _time(train, (x, o), repeats)
      (new_x, h, *_), (dx, _) = train(x, o)
    except Exception as e:  # a tiling this GPU rejects must not lose the others
      rows[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
      continue
    row = {"forward_ms": 1e3 * fwd_s, "forward_backward_ms": 1e3 * train_s,
           "forward_gbps": 4 * tensor_bytes / fwd_s / 1e9,
           "forward_backward_gbps": 11 * tensor_bytes / train_s / 1e9,
           "step_ms": 1e3 * train_s * 2 * cfg.num_encoder_layers,
           **({"tiling": tiling_of[name]} if name in tiling_of else {})}
    values = (new_x, h, dx)
    if reference is None:
      reference = values
    else:
      # largest difference over the three outputs, each relative to its reference's largest value
      row["max_rel_diff"] = max(
          float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))
                / float(jnp.max(jnp.abs(b.astype(jnp.float32))))) for a, b in zip(values, reference))
    rows[name] = row
  return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "jax_version": jax.__version__, "size": size, "rows_of_tensor": n, "d_model": d,
          "dtype": dtype, "dropout": rate, "tensor_mib": tensor_bytes / 2 ** 20, "repeats": repeats,
          "rows": rows}


def format_table(result: dict) -> str:
  out = [f"residual norm alone: {result['size']}, {result['rows_of_tensor']} rows × "
         f"{result['d_model']}, {result['dtype']}, dropout {result['dropout']}, "
         f"{result['device']} ({result['backend']})",
         f"{'variant':<16}{'fwd ms':>9}{'GB/s':>8}{'fwd+bwd ms':>12}{'GB/s':>8}{'×2×layers ms':>14}"
         f"{'rel. max |Δ| vs xla':>21}"]
  for name, row in result["rows"].items():
    if "error" in row:
      out.append(f"{name:<16}  failed: {row['error']}")
      continue
    diff = f"{row['max_rel_diff']:.2e}" if "max_rel_diff" in row else "-"
    out.append(f"{name:<16}{row['forward_ms']:9.3f}{row['forward_gbps']:8.0f}"
               f"{row['forward_backward_ms']:12.3f}{row['forward_backward_gbps']:8.0f}"
               f"{row['step_ms']:14.2f}{diff:>21}")
  return "\n".join(out)


def main(argv=None) -> int:
  from bench.__main__ import add_shape_arguments
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_shape_arguments(p, size="large", target_length=False)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--tilings", default="default,1x4,2x4,2x8,4x8",
                 help="comma-separated ROWSxWARPS of the Pallas kernels, or 'default'")
  p.add_argument("--repeats", type=int, default=20, help="calls back to back per timing")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  result = run(args.size, args.batch, args.input_length, args.prompt_length, args.dtype,
               args.dropout, tuple(args.tilings.split(",")), args.repeats)
  from bench.attention_kernels import finish
  return finish(result, format_table(result), args.json)


if __name__ == "__main__":
  sys.exit(main())

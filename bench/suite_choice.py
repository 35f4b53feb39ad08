"""The whole-step flags this GPU's kernel benchmarks favour: `python -m bench.suite_choice OUT_DIR`.

A device call is short, and a whole T5-large step takes a minute or two to compile, so
`bench/gpu_suite.sh` times the attention calls and the residual norm alone first, then asks this
which whole-step variants to spend the rest of the call on. Prints one line of `spot-jax bench`
flags on stdout and the reasons on stderr:

- `--attention pallas --attention-launch BQxBKxWxS [--attention-backward atomic_dq]` when our
  kernel's fastest launch setting (`attention_kernels.json`, forward + backward) beats the model's
  cuDNN call by more than `MARGIN`, else `--attention fused`;
- `--cross-attention pallas` or `einsum` when our kernel or T5X's einsum form runs the decoder's
  cross-attention faster than cuDNN by more than `MARGIN` (`cross_pallas`, `cross_einsum` against
  `cross`);
- `--norm-impl pallas --norm-tiling RxW` when the norm kernel's fastest tiling
  (`norm_kernels.json`) beats XLA's kernels by more than `MARGIN`.

A row that failed, or whose output strays from its reference by more than bfloat16 rounding, is
never chosen; a missing file chooses the default.
"""
from __future__ import annotations

import json
import os
import sys

MARGIN = 0.02  # within 2% is run-to-run noise on a shared GPU: keep the default
ATTENTION_DIFF = 0.1  # max |Δ| of an output of unit-normal inputs in bfloat16
NORM_DIFF = 0.02  # relative max |Δ| of the norm's outputs in bfloat16


def _winner(directory: str, file: str, reference: str, candidates, diff_key: str, limit: float,
            what: str, default: str):
  """The name and row of the fastest candidate of `file` whose output equals the reference row's
  (its max |Δ| under `limit`) and that beats that row's forward+backward by more than MARGIN, or
  None; and the reason, in words."""
  path = os.path.join(directory, file)
  try:
    with open(path) as f:
      rows = json.load(f).get("rows") or {}
  except FileNotFoundError:
    return None, None, f"{what}: {default} ({file}: not there)"
  except (OSError, ValueError) as e:
    return None, None, f"{what}: {default} ({file}: unreadable, {type(e).__name__}: {e})"
  if "forward_backward_ms" not in rows.get(reference, {}):
    return None, None, f"{what}: {default} (its row was not timed)"
  base = rows[reference]["forward_backward_ms"]
  timed = [(rows[n]["forward_backward_ms"], n) for n in candidates(rows)
           if n in rows and "forward_backward_ms" in rows[n] and rows[n].get(diff_key, 0.0) <= limit]
  best = min(timed) if timed else None
  if best and best[0] < (1 - MARGIN) * base:
    return best[1], rows[best[1]], (f"{what}: {best[1]}, {best[0]:.3f} ms forward+backward against {default}'s "
                     f"{base:.3f} ms")
  return None, None, (f"{what}: {default}, {base:.3f} ms forward+backward; the best other "
                + (f"{best[0]:.3f} ms ({best[1]})" if best else "not timed or not equal"))


def choose(directory: str) -> tuple[list, list]:
  """(flags, reasons) from the kernel benchmarks' JSON files in `directory`."""
  from bench.attention_kernels import PALLAS_LAUNCHES
  from spot_jax.config import T5Config
  flags = ["--attention", "fused"]
  ours, _, attention_reason = _winner(directory, "attention_kernels.json", "model",
                                   lambda rows: PALLAS_LAUNCHES, "max_abs_diff", ATTENTION_DIFF,
                                   "attention", "cuDNN")
  if ours:
    flags = ["--attention", "pallas"]
    launch, backward = PALLAS_LAUNCHES[ours][:4], PALLAS_LAUNCHES[ours][4:]
    if launch != T5Config().pallas_attention_launch:  # one spelling per run
      flags += ["--attention-launch", "x".join(map(str, launch))]
    if backward and backward[0] != T5Config().pallas_attention_backward:
      flags += ["--attention-backward", backward[0]]
  cross, _, cross_reason = _winner(directory, "attention_kernels.json", "cross",
                                lambda rows: ["cross_pallas", "cross_einsum"], "max_abs_diff",
                                ATTENTION_DIFF, "cross-attention", "cuDNN")
  if cross:
    flags += ["--cross-attention", cross.split("_")[1]]
  tiled = lambda rows: [n for n in rows if "tiling" in rows[n]]
  norm, row, norm_reason = _winner(directory, "norm_kernels.json", "xla", tiled, "max_rel_diff",
                                   NORM_DIFF, "norms", "XLA")
  if norm:
    flags += ["--norm-impl", "pallas", "--norm-tiling", "x".join(map(str, row["tiling"]))]
  return flags, [attention_reason, cross_reason, norm_reason]


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if list(argv) in (["-h"], ["--help"]):
    print(__doc__)
    return 0
  if len(argv) != 1:
    print("usage: python -m bench.suite_choice OUT_DIR", file=sys.stderr)
    return 2
  flags, reasons = choose(argv[0])
  for reason in reasons:
    print(f"[choice] {reason}", file=sys.stderr)
  print(" ".join(flags))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The whole-step flags this GPU's kernel benchmarks favour: `python -m bench.suite_choice OUT_DIR`.

A device call is short, and a whole T5-large step takes a minute or two to compile, so
`bench/gpu_suite.sh` times the attention calls and the residual norm alone first, then asks this
which whole-step variants to spend the rest of the call on. Prints one line of `spot-jax bench`
flags on stdout and the reasons on stderr:

- `--attention pallas --attention-launch BQxBKxWxS` when our kernel's fastest launch setting
  (`attention_kernels.json`, forward + backward) beats the model's cuDNN call by more than `MARGIN`,
  else `--attention fused`;
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


def _load(directory: str, name: str):
  path = os.path.join(directory, name)
  if not os.path.exists(path):
    return None, f"{name}: not there"
  try:
    with open(path) as f:
      return json.load(f).get("rows") or {}, ""
  except (OSError, ValueError) as e:
    return None, f"{name}: unreadable ({type(e).__name__}: {e})"


def _fastest(rows: dict, names, diff_key: str, limit: float):
  timed = [(rows[n]["forward_backward_ms"], n) for n in names
           if n in rows and "forward_backward_ms" in rows[n] and rows[n].get(diff_key, 0.0) <= limit]
  return min(timed) if timed else None


def choose(directory: str) -> tuple[list, list]:
  """(flags, reasons) from the kernel benchmarks' JSON files in `directory`."""
  from bench.attention_kernels import PALLAS_LAUNCHES
  from spot_jax.config import T5Config
  flags, reasons = ["--attention", "fused"], []
  rows, why = _load(directory, "attention_kernels.json")
  if rows is None:
    reasons.append(f"attention: cuDNN ({why})")
  elif "forward_backward_ms" not in rows.get("model", {}):
    reasons.append("attention: cuDNN (the model's row was not timed)")
  else:
    model = rows["model"]["forward_backward_ms"]
    best = _fastest(rows, PALLAS_LAUNCHES, "max_abs_diff", ATTENTION_DIFF)
    if best and best[0] < (1 - MARGIN) * model:
      launch = "x".join(map(str, PALLAS_LAUNCHES[best[1]]))
      flags = ["--attention", "pallas"]
      if PALLAS_LAUNCHES[best[1]] != T5Config().pallas_attention_launch:
        flags += ["--attention-launch", launch]  # the default is left out: one spelling per run
      reasons.append(f"attention: ours, {best[1]} ({launch}), {best[0]:.3f} ms forward+backward "
                     f"against cuDNN's {model:.3f} ms")
    else:
      reasons.append(f"attention: cuDNN, {model:.3f} ms forward+backward; ours at best "
                     + (f"{best[0]:.3f} ms ({best[1]})" if best else "not timed or not equal"))
  rows, why = _load(directory, "norm_kernels.json")
  if rows is None:
    reasons.append(f"norms: XLA ({why})")
  elif "forward_backward_ms" not in rows.get("xla", {}):
    reasons.append("norms: XLA (its row was not timed)")
  else:
    xla = rows["xla"]["forward_backward_ms"]
    best = _fastest(rows, [n for n in rows if "tiling" in rows[n]], "max_rel_diff", NORM_DIFF)
    if best and best[0] < (1 - MARGIN) * xla:
      tiling = "x".join(map(str, rows[best[1]]["tiling"]))
      flags += ["--norm-impl", "pallas", "--norm-tiling", tiling]
      reasons.append(f"norms: the Pallas kernel, {tiling}, {best[0]:.3f} ms forward+backward "
                     f"against XLA's {xla:.3f} ms")
    else:
      reasons.append(f"norms: XLA, {xla:.3f} ms forward+backward; the kernel at best "
                     + (f"{best[0]:.3f} ms ({best[1]})" if best else "not timed or not equal"))
  return flags, reasons


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
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

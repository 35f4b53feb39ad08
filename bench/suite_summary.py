"""One line per `bench/gpu_suite.sh` run: `python -m bench.suite_summary OUT_DIR`."""
from __future__ import annotations

import glob
import json
import os
import sys


def lines(directory: str) -> list:
  out = [f"{'run':<28}{'step s':>8}{'ex/s':>8}{'TFLOP/s':>9}{'MFU':>7}{'dev GiB':>9}{'compile':>8}"
         "  device ms/step by category"]
  for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
    with open(path) as f:
      result = json.load(f)
    train = result.get("train")
    if not train:
      continue
    peak = (result.get("peak_tflops") or {}).get("tflops")
    mfu = f"{100 * train['gflops_per_s'] / (peak * 1e3):.1f}%" if peak else "-"
    dev = f"{train['device_peak_mib'] / 1024:.1f}" if train.get("device_peak_mib") else "-"
    categories = ((train.get("profile") or {}).get("by_category_ms_per_step") or {})
    top = sorted(categories.items(), key=lambda kv: -kv[1])[:4]  # the JSON's keys are sorted by name
    cats = ", ".join(f"{k.split(' ')[0]} {v:.1f}" for k, v in top)
    step_s = train.get("step_s_pipelined", train["step_s_median"])  # back to back, as reported
    out.append(f"{os.path.basename(path)[:-5]:<28}{step_s:8.4f}"
               f"{train['examples_per_s']:8.1f}{train['gflops_per_s'] / 1e3:9.1f}{mfu:>7}{dev:>9}"
               f"{train['compile_s']:8.1f}  {cats}")
  return out


if __name__ == "__main__":
  print("\n".join(lines(sys.argv[1])))

"""Where a compiled step spends its device time: a `jax.profiler` trace summed per XLA op.

MFU says how far a step is from the peak, not why. This traces a few steps, sums the time of every
device kernel (GPU) or XLA thunk (CPU) by the HLO instruction it ran for, and sorts instructions into
matmuls, attention kernels and the rest, using the compiled HLO text for what each one is. The raw
trace and the HLO stay in the profile directory for a closer look (xprof / TensorBoard).
"""
from __future__ import annotations

import collections
import glob
import os
import re

# Checked in order against an op's kernel name, then against its opcode and attributes (operand
# names left out: they name other ops) and the body of the computation it calls; first match wins.
CATEGORIES = (
    ("attention (cuDNN)", re.compile(r"fmha|sdpa|flash|cudnn", re.I)),
    # Pallas' Triton kernels (`norm_impl="pallas"`: the residual norms), before the patterns below
    # that their attributes might match.
    ("Pallas (Triton) kernel", re.compile(r"xla\.gpu\.triton|rmsnorm", re.I)),
    ("matmul", re.compile(r"gemm|cublas|nvjet|xmma|cutlass|\bdot\(|convolution\(", re.I)),
    ("reduce / softmax", re.compile(r"softmax|kind=kInput|\breduce\(|reduce-window\(", re.I)),
    ("copy / transpose", re.compile(r"^(copy|transpose)\(|transpose|memcpy|memset", re.I)),
    ("elementwise (loop fusion)", re.compile(r"kind=kLoop|^fusion\(|^loop_", re.I)),
)


def trace(run_steps, directory: str) -> str:
  """Run `run_steps()` (which must block until the device is done) under the profiler; returns
  the path of the `.xplane.pb` it wrote."""
  import jax
  os.makedirs(directory, exist_ok=True)
  before = set(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))
  with jax.profiler.trace(directory):
    run_steps()
  written = sorted(set(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))
                   - before, key=os.path.getmtime)
  if not written:
    raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {directory}")
  return written[-1]


def hlo_index(hlo_text: str):
  """`({instruction: its defining line}, {computation: its body})` from compiled HLO text."""
  lines, bodies, current = {}, {}, None
  for raw in hlo_text.splitlines():
    line = raw.strip()
    header = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{$", line)
    if header and not raw.startswith(" "):
      current = header.group(1)
      bodies[current] = []
      continue
    m = re.match(r"(?:ROOT\s+)?%?([\w.\-]+)\s*=", line)
    if m:
      lines.setdefault(m.group(1), line)
      if current:
        bodies[current].append(line)
  return lines, {k: "\n".join(v) for k, v in bodies.items()}


def op_name(hlo_line: str) -> str:
  """The JAX source path in an instruction's metadata, with layer numbers folded together."""
  m = re.search(r'op_name="([^"]*)"', hlo_line)
  return re.sub(r"layers_\d+", "layers_*", m.group(1)) if m else ""


def _opcode_and_attributes(hlo_line: str) -> str:
  """`opcode(), attributes` of an HLO line: no result type, operands or metadata."""
  m = re.search(r"=\s.*?\s([a-z][\w\-]*)\(([^()]*)\)(.*)$", hlo_line)
  if not m:
    return ""
  return m.group(1) + "()" + re.sub(r", metadata=\{.*", "", m.group(3))


def categorize(kernel: str, hlo_line: str, bodies: dict) -> str:
  called = re.search(r"calls=%?([\w.\-]+)", hlo_line)
  body = bodies.get(called.group(1), "") if called else ""
  own = _opcode_and_attributes(hlo_line)
  body_ops = " ".join(_opcode_and_attributes(line) for line in body.splitlines())
  for category, pattern in CATEGORIES:
    if pattern.search(kernel) or (own and pattern.search(own)) or (body_ops and pattern.search(
        body_ops)):
      return category
  return "other"


def _hlo_line_of_kernel(kernel: str, lines: dict) -> str:
  """GPU kernels are named after their fusion with `_N` for `.N` (`loop_add_fusion_64`)."""
  return lines.get(kernel) or lines.get(re.sub(r"_(\d+)$", r".\1", kernel), "")


def summarize(xplane_path: str, steps: int, hlo_text: str = "", top: int = 30) -> dict:
  """Device time per step by HLO op and by category.

  On a GPU the kernels of the `/device:GPU:*` planes are counted (their `hlo_op` stat names the
  instruction); on a CPU, the events of host threads that carry an `hlo_op` stat. Time is summed
  kernel time, not wall time: kernels of one step run one after another on one stream here.
  """
  from jax.profiler import ProfileData
  data = ProfileData.from_file(xplane_path)
  planes = [p for p in data.planes if p.name.startswith("/device:")]
  on_device = bool(planes)
  if not on_device:
    planes = [p for p in data.planes if p.name.startswith("/host:")]
  per_op = collections.defaultdict(lambda: [0.0, 0, ""])
  lines_used = [line for plane in planes for line in plane.lines]
  if on_device:
    # Kernels sit on the stream lines; "XLA Ops"/"XLA Modules" lines would count them twice.
    streams = [line for line in lines_used if line.name.lower().startswith("stream")]
    lines_used = streams or [line for line in lines_used
                             if not line.name.startswith(("XLA Modules", "XLA Ops", "Steps"))]
  for line in lines_used:
    for event in line.events:
      if on_device:
        # By kernel: a step replayed as a CUDA graph names one `hlo_op` for all its kernels.
        op = event.name
      else:
        op = dict(event.stats).get("hlo_op")
        if op is None:
          continue  # host-side Python and runtime events, not program work
      entry = per_op[op]
      entry[0] += event.duration_ns
      entry[1] += 1
      entry[2] = entry[2] or event.name
  lines, bodies = hlo_index(hlo_text) if hlo_text else ({}, {})
  ops, by_category, by_source = [], collections.defaultdict(float), collections.defaultdict(float)
  total = sum(v[0] for v in per_op.values())
  for op, (ns, count, kernel) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
    line = _hlo_line_of_kernel(op, lines)
    category = categorize(kernel, line, bodies)
    source = op_name(line)
    by_category[category] += ns
    by_source[source or "(no metadata)"] += ns
    ops.append({"op": op, "kernel": kernel[:120], "category": category, "source": source,
                "ms_per_step": ns / steps / 1e6, "share": ns / total if total else 0.0,
                "calls_per_step": count / steps,
                "hlo": re.sub(r", metadata=\{.*", "", line)[:300]})
  per_step = lambda d: {k: v / steps / 1e6 for k, v in sorted(d.items(), key=lambda kv: -kv[1])}
  return {"xplane": os.path.abspath(xplane_path), "steps": steps, "on_device": on_device,
          "lines": sorted({line.name for line in lines_used})[:20],
          "device_ms_per_step": total / steps / 1e6,
          "by_category_ms_per_step": per_step(by_category),
          "by_source_ms_per_step": dict(list(per_step(by_source).items())[:top]),
          "top_ops": ops[:top], "ops_counted": len(ops)}


def report(summary: dict) -> str:
  out = [f"profile: {summary['device_ms_per_step']:.2f} ms of "
         f"{'device kernels' if summary['on_device'] else 'XLA thunks'} per step "
         f"({summary['steps']} steps traced, {summary['ops_counted']} ops)"]
  total = summary["device_ms_per_step"] or float("nan")
  for category, ms in summary["by_category_ms_per_step"].items():
    out.append(f"  {category:<28} {ms:9.2f} ms  {100 * ms / total:5.1f}%")
  out.append("  by JAX source (layers folded; library kernels such as cuBLAS have none):")
  for source, ms in list(summary["by_source_ms_per_step"].items())[:15]:
    out.append(f"  {ms:8.2f} ms  {source[-110:]}")
  out.append("  top ops:")
  for op in summary["top_ops"][:15]:
    out.append(f"  {op['ms_per_step']:8.2f} ms {100 * op['share']:5.1f}%  x{op['calls_per_step']:<5g}"
               f" {op['category']:<26} {op['op'][:30]}  {op['source'][-60:]}")
  return "\n".join(out)

"""Compile the prompt-tuning step for a GPU that is not attached, and read what XLA made of it.

  python -m bench.gpu_layout --target-config h200.txtpb --size base --batch 64 \
      --input-length 512 --target-length 32 --attention fused [--out DIR]

Device time is scarce; XLA's decisions (fusions, layouts, which kernels run) are not: the CUDA PJRT
plugin compiles for a target described by a `GpuTargetConfigProto` text file with no GPU present.
This prints the transposes XLA added (each a full read and write of its array), the bytes that the
memory-bound loop/input fusions move, the cuDNN calls and the matmul count, and writes the optimized
HLO to `--out`. It times nothing: a change that saves bytes here still needs a device run to show
its speed. Autotuning needs a device, so every matmul stays a Triton fusion where a GPU picks cuBLAS
for some; transposes, fusion traffic and matmul count otherwise matched the H200's own program of
the one step compared (docs/bench.md).

Needs the CUDA plugin of the installed jax (`pip install jax-cuda13-plugin==$JAX jax-cuda13-pjrt==$JAX`,
no GPU needed) and a target config: XLA's `xla/backends/gpu/target_config/specs/*.txtpb`, or the
`gpu_target_config.pbtxt` that `XLA_FLAGS=--xla_dump_to=DIR` writes on a real GPU.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def _array_bytes(shape: str) -> int:
  """Bytes of an HLO array type such as `bf16[612,768,64]{2,1,0}` (0 for tuples)."""
  m = re.match(r"(\w+)\[([\d,]*)\]", shape)
  if not m or m.group(1) not in _DTYPE_BYTES:
    return 0
  n = 1
  for d in filter(None, m.group(2).split(",")):
    n *= int(d)
  return n * _DTYPE_BYTES[m.group(1)]


def _result_bytes(result_type: str) -> int:
  """Bytes of an instruction's result: an array type, or the arrays of a tuple type."""
  return sum(_array_bytes(t) for t in re.findall(r"\w+\[[\d,]*\]", result_type))


def analyze(hlo_text: str) -> dict:
  """Transposes, memory traffic of the elementwise/reduction kernels, cuDNN calls and matmuls of
  the entry computation of optimized HLO text.

  A transpose is a fusion whose name says it transposes (`input_transpose_fusion`,
  `loop_transpose_fusion`, `input_add_transpose_fusion`, ...) or a bare `transpose`/`copy`; its
  traffic is counted as one read and one write of its output. `fusion_gib` sums operands and
  results of every loop/input fusion and of every Triton fusion that is not a matmul (XLA's
  block-level fusions: normalizations, or loop fusions it emits with Triton) and of every Pallas
  Triton kernel but attention ones (`norm_impl="pallas"`), not matmuls, not cuDNN or Pallas
  attention: those kernels are bound by memory,
  so it divided by the bandwidth is a floor on their time. Sources fold layer numbers together.
  """
  from bench.device_profile import op_name
  start = hlo_text.find("\nENTRY")
  entry = hlo_text[start:] if start >= 0 else hlo_text
  transposes = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
  traffic = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
  custom_calls = collections.Counter()
  result_bytes = {}
  matmuls = 0
  for line in entry.splitlines():
    # The result type may be a tuple with spaces in it: the opcode is the first `word(` after it.
    m = re.match(r"\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$", line)
    if not m:
      continue
    name, shape, opcode, rest = m.groups()
    result_bytes[name] = _result_bytes(shape)
    source = op_name(line).split("/", 1)[-1]
    call = re.search(r'custom_call_target="([^"]+)"', line)
    if call:
      custom_calls[call.group(1)] += 1
      if "gemm" in call.group(1) or "matmul" in call.group(1).lower():
        matmuls += 1
      elif call.group(1).endswith("xla.gpu.triton") and "flash_attention" not in source:
        # a memory-bound Pallas kernel (spot_jax.fused_norm: the `pre_attention_layer_norm` ones
        # too); flash attention kernels are not counted
        operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
        key = ("pallas_triton_kernel", source)
        traffic[key]["count"] += 1
        traffic[key]["bytes"] += result_bytes[name] + sum(result_bytes.get(o, 0) for o in operands)
    elif opcode == "fusion" and re.match(r"(gemm_fusion|triton_gemm|cublas)", name):
      matmuls += 1
    elif opcode == "fusion" and (re.search(r"kind=k(Loop|Input)\b", rest)
                                 or '"kind":"__triton"' in rest):
      operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
      key = (re.sub(r"\.\d+$", "", name), source)
      traffic[key]["count"] += 1
      traffic[key]["bytes"] += result_bytes[name] + sum(result_bytes.get(o, 0) for o in operands)
    if (opcode == "fusion" and "transpose" in name) or opcode in ("transpose", "copy"):
      key = (shape.split("{")[0], source)
      transposes[key]["count"] += 1
      transposes[key]["bytes"] += 2 * _array_bytes(shape)
  rows = [{"shape": shape, "source": source, **v} for (shape, source), v in transposes.items()]
  rows.sort(key=lambda r: -r["bytes"])
  kernels = [{"fusion": kind, "source": source, **v} for (kind, source), v in traffic.items()]
  kernels.sort(key=lambda r: -r["bytes"])
  return {"transposes": rows, "transpose_count": sum(r["count"] for r in rows),
          "transpose_gib": sum(r["bytes"] for r in rows) / 2 ** 30,
          "fusion_gib": sum(r["bytes"] for r in kernels) / 2 ** 30, "fusions": kernels,
          "custom_calls": dict(custom_calls), "matmuls": matmuls}


def memory_bandwidth(target_config: str) -> float | None:
  """Bytes/s of the target's memory (`gpu_device_info.memory_bandwidth`), if the config has it."""
  m = re.search(r"memory_bandwidth:\s*(\d+)", target_config)
  return float(m.group(1)) if m else None


def report(summary: dict, top: int = 12, bandwidth: float | None = None) -> str:
  out = [f"transposes: {summary['transpose_count']} moving {summary['transpose_gib']:.2f} GiB "
         "(read + write) per step"]
  for row in summary["transposes"][:top]:
    out.append(f"  {row['count']:4d} x {row['shape']:<22} {row['bytes'] / 2 ** 30:6.2f} GiB  "
               f"{row['source'][-80:]}")
  floor = (f", at least {summary['fusion_gib'] * 2 ** 30 / bandwidth * 1e3:.1f} ms at "
           f"{bandwidth / 1e12:.1f} TB/s" if bandwidth else "")
  out.append(f"loop/input fusions (elementwise, reductions) read + write {summary['fusion_gib']:.1f} "
             f"GiB per step{floor}; the largest:")
  for row in summary["fusions"][:top]:
    out.append(f"  {row['count']:4d} x {row['fusion'][:34]:<34} {row['bytes'] / 2 ** 30:6.2f} GiB  "
               f"{row['source'][-70:]}")
  cudnn = {k: v for k, v in summary["custom_calls"].items() if "cudnn" in k}
  out.append(f"matmuls: {summary['matmuls']}   cuDNN calls: {cudnn or 'none'}")
  return "\n".join(out)


def compile_step_for_gpu(target_config: str, size: str = "base", batch: int = 64,
                         input_length: int = 512, target_length: int = 32, prompt_length: int = 100,
                         dtype: str = "bfloat16", weight_dtype: str = "bfloat16",
                         dropout: float = 0.1, config_overrides: dict | None = None,
                         compiler_options: dict | None = None):
  """The compiled train step (`bench.train_throughput`'s, on one device) for the GPU that
  `target_config` (GpuTargetConfigProto text) describes."""
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from spot_jax import model, optim, partitioning, target_platform, train_step
  from spot_jax.config import size_config

  try:
    topology = topologies.get_topology_desc("spot_jax", "cuda", topology="1x1x1",
                                            target_config=target_config)
  except Exception as e:  # no plugin, or a config this plugin cannot parse
    raise SystemExit(
        f"cannot make a CUDA compile target ({type(e).__name__}: {str(e)[:300]}). Install the CUDA "
        f"plugin of this jax ({jax.__version__}): pip install jax-cuda13-plugin=={jax.__version__} "
        f"jax-cuda13-pjrt=={jax.__version__}, and pass a GpuTargetConfigProto text file. Run it in "
        "a process of its own (`python -m bench.gpu_layout`), or set JAX_PLATFORMS=cpu before jax "
        "starts: a CUDA backend that failed to start without a GPU makes no compile target") from e
  config = size_config(size, dtype=dtype, dropout_rate=dropout, **(config_overrides or {}))
  mesh = partitioning.make_mesh(1, devices=topology.devices[:1])
  frozen_shardings = partitioning.tree_shardings(model.param_logical_axes(config), mesh)
  frozen = jax.tree.map(lambda shape, sharding: jax.ShapeDtypeStruct(
      shape, jnp.dtype(weight_dtype), sharding=sharding), model.param_shapes(config),
      frozen_shardings, is_leaf=lambda x: isinstance(x, tuple))
  tx = optim.adafactor(learning_rate=0.3)
  rep, rows = partitioning.replicated(mesh), partitioning.batch_sharding(mesh)
  state = jax.eval_shape(lambda: train_step.init_state(
      jnp.zeros((prompt_length, config.d_model)), tx))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
  tokens = lambda length, dt=jnp.int32: jax.ShapeDtypeStruct((batch, length), dt, sharding=rows)
  batch_spec = {"encoder_input_tokens": tokens(input_length),
                "decoder_input_tokens": tokens(target_length),
                "decoder_target_tokens": tokens(target_length),
                "decoder_loss_weights": tokens(target_length, jnp.float32)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  step = train_step.make_train_step(config, tx, enable_dropout=dropout > 0, mesh=mesh)
  jitted = train_step.jit_train_step(step, mesh, frozen_shardings,
                                     compiler_options=compiler_options)
  # Pallas' Triton kernels read the GPU's kind from the mesh in context when no GPU is attached.
  with target_platform.compiling_for("gpu"), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    lowered = jitted.lower(state, frozen, batch_spec, rng)
  return lowered.compile()


TARGET_CONFIG_HELP = (
    "It names the GPU to compile for: an XLA GPU target description (GpuTargetConfigProto in text form), "
    "which this repository does not ship. Take XLA's xla/backends/gpu/target_config/specs/<gpu>.txtpb "
    "(h100/h200 ...) from the openxla/xla sources of the installed jaxlib's version, or the "
    "gpu_target_config.pbtxt that XLA_FLAGS=--xla_dump_to=DIR writes when any jax program runs on a "
    "machine with that GPU. Compiling also needs the CUDA plugin of the installed jax, no GPU: pip install "
    "jax-cuda13-plugin==$JAX jax-cuda13-pjrt==$JAX (docs/bench.md, 'Without a GPU')")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--target-config", required=True,
                 help="XLA GPU target description (GpuTargetConfigProto text file; not shipped: XLA's "
                 "xla/backends/gpu/target_config/specs/*.txtpb, or the gpu_target_config.pbtxt that "
                 "--xla_dump_to writes on that GPU)")
  from bench.__main__ import add_shape_arguments, launch_type, xla_options
  from spot_jax import config as C  # the flags' choices are T5Config's own
  add_shape_arguments(p, size="base")
  p.add_argument("--weight-dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--attention", default="fused", choices=C.ATTENTION_IMPLS)
  p.add_argument("--dropout-bits", default="auto", choices=C.DROPOUT_BITS)
  p.add_argument("--mlp-backward", default="auto", choices=C.MLP_BACKWARDS)
  p.add_argument("--norm-impl", default="xla", choices=C.NORM_IMPLS)
  p.add_argument("--cross-attention", default="auto", choices=C.CROSS_ATTENTION_IMPLS)
  p.add_argument("--attention-launch", type=launch_type(4), default=None,
                 metavar="BQxBKxWARPSxSTAGES")
  p.add_argument("--attention-backward", default="two_kernels",
                 choices=C.PALLAS_ATTENTION_BACKWARDS)
  p.add_argument("--norm-tiling", type=launch_type(2), default=None, metavar="ROWSxWARPS")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--xla-option", action="append", default=[], metavar="NAME=VALUE",
                 help="an XLA compiler option for this compile (repeatable), e.g. "
                      "xla_gpu_dot_merger_threshold_mb=0")
  p.add_argument("--out", default="", help="write step.hlo.txt and layout.json here")
  args = p.parse_args(argv)
  if not os.path.isfile(args.target_config):
    p.error(f"--target-config {args.target_config} is not a file. {TARGET_CONFIG_HELP}")
  with open(args.target_config) as f:
    target = f.read()
  options = xla_options(args.xla_option)
  compiled = compile_step_for_gpu(
      target, args.size, args.batch, args.input_length, args.target_length, args.prompt_length,
      args.dtype, args.weight_dtype, args.dropout,
      {"attention_impl": args.attention, "cross_attention_impl": args.cross_attention,
       "dropout_bits": args.dropout_bits,
       "mlp_backward": args.mlp_backward, "norm_impl": args.norm_impl,
       "pallas_attention_backward": args.attention_backward,
       **({"pallas_attention_launch": args.attention_launch} if args.attention_launch else {}),
       **({"norm_tiling": args.norm_tiling} if args.norm_tiling else {})}, options)
  hlo = compiled.as_text()
  summary = analyze(hlo)
  print(report(summary, bandwidth=memory_bandwidth(target)))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "step.hlo.txt"), "w") as f:
      f.write(hlo)
    with open(os.path.join(args.out, "layout.json"), "w") as f:
      json.dump({"args": vars(args), **summary}, f, indent=1)
  return 0


if __name__ == "__main__":
  # Set before jax starts, and only for this process (not for a caller that imports `main`): the
  # plugin only compiles here, and a CUDA backend started without a GPU would make no target.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(main())

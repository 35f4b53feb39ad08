"""`spot-jax bench` / `python -m bench`: throughput, FLOPs and ceiling, optionally beside HF PEFT.

  python -m bench train --size small --batch 8 --input-length 128 --prompt-length 100 \
      --target-length 8 --peer-python /work/benchenv/bin/python --json results.json
  python -m bench decode --size small --decode-length 32 --peer
  python -m bench ceiling
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_peft.py")
SIZES = ("tiny", "small", "base", "large", "xl", "xxl")


def add_shape_arguments(p, size: str, target_length: bool = True):
  """The GPU tools' shared shape flags (`gpu_layout`, `attention_kernels`, `norm_kernels`): T5 1.1
  size, batch, inputs 512 + prompt 100, targets 32, bfloat16 — the GPU table's shapes."""
  p.add_argument("--size", default=size, choices=SIZES)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--input-length", type=int, default=512)
  p.add_argument("--prompt-length", type=int, default=100)
  if target_length:
    p.add_argument("--target-length", type=int, default=32)
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))


def launch_type(count: int):
  """argparse type: `count` positive integers joined by "x" (`128x64x8x3`), as a tuple."""
  def parse(text: str) -> tuple:
    parts = text.lower().split("x")
    if len(parts) != count or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise argparse.ArgumentTypeError(f"{text!r}: give {count} positive integers joined by 'x'")
    return tuple(int(p) for p in parts)
  return parse


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="spot-jax bench", description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("what", nargs="?", default="train",
                 choices=("train", "decode", "all", "ceiling", "trainer"),
                 help="which benchmark; 'all' runs train and decode; 'trainer' times the whole "
                      "training loop (spot_jax.train on a bundled task) at the same shapes")
  p.add_argument("--size", default="small", choices=SIZES, help="T5 1.1 size (random weights)")
  p.add_argument("--vocab-size", type=int, default=0,
                 help="override the vocabulary (0: 32128; e.g. 250112 for mT5)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--input-length", type=int, default=128)
  p.add_argument("--target-length", type=int, default=8)
  p.add_argument("--prompt-length", type=int, default=100)
  p.add_argument("--decode-length", type=int, default=32, help="tokens generated (decode)")
  from spot_jax import config as C  # the flags' choices are T5Config's own
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="activation dtype")
  p.add_argument("--weight-dtype", default="float32", choices=("float32", "bfloat16"),
                 help="dtype of the frozen weights (bfloat16 halves their memory)")
  p.add_argument("--matmul-dtype", default="activation", choices=C.MATMUL_DTYPES,
                 help="inputs of every projection (T5Config.matmul_dtype): the activation dtype, or "
                      "bfloat16 summed in float32 (fast on CPUs with AVX512-BF16/AMX; the peer "
                      "then runs in bfloat16)")
  p.add_argument("--attention", default="einsum", choices=C.ATTENTION_IMPLS,
                 help="encoder self-attention: T5X's einsum form (dropout on the probabilities), "
                      "jax.nn.dot_product_attention (cuDNN flash attention on GPU) or our Pallas "
                      "flash kernel with T5's bias (see T5Config.attention_impl)")
  p.add_argument("--attention-logits", default="float32", choices=("float32", "bfloat16"),
                 help="einsum attention: dtype of scores, softmax and stored probabilities "
                      "(bfloat16 is T5X's float32_attention_logits=False; see T5Config)")
  p.add_argument("--dropout-bits", default="auto", choices=C.DROPOUT_BITS,
                 help="how dropout masks get their bits (T5Config.dropout_bits)")
  p.add_argument("--mlp-backward", default="auto", choices=C.MLP_BACKWARDS,
                 help="gated-GELU backward: stored or recomputed tanh and mask (T5Config.mlp_backward)")
  p.add_argument("--norm-impl", default="xla", choices=C.NORM_IMPLS,
                 help="encoder residual add + dropout + RMSNorm: XLA's fusions or one Triton kernel "
                      "each way (T5Config.norm_impl; GPU)")
  p.add_argument("--cross-attention", default="auto", choices=C.CROSS_ATTENTION_IMPLS,
                 help="the decoder's cross-attention: as --attention has it (cuDNN for fused and "
                      "pallas), T5X's einsum form, or our Pallas kernel "
                      "(T5Config.cross_attention_impl)")
  p.add_argument("--attention-launch", type=launch_type(4), default=None,
                 metavar="BQxBKxWARPSxSTAGES",
                 help="--attention pallas: the kernels' blocks, warps and pipeline stages, e.g. "
                      "128x64x8x3 (T5Config.pallas_attention_launch; default 64x64x4x2)")
  p.add_argument("--attention-backward", default="two_kernels",
                 choices=C.PALLAS_ATTENTION_BACKWARDS,
                 help="--attention pallas: its backward pass, two kernels or one adding dq with "
                      "atomics (T5Config.pallas_attention_backward)")
  p.add_argument("--norm-tiling", type=launch_type(2), default=None, metavar="ROWSxWARPS",
                 help="--norm-impl pallas: rows per program and warps, e.g. 2x8 "
                      "(T5Config.norm_tiling; default fused_norm.default_tiling)")
  p.add_argument("--xla-option", action="append", default=[], metavar="NAME=VALUE",
                 help="train: an XLA compiler option for the step (repeatable), added to the "
                      "trainer's defaults (train_step.default_compiler_options), e.g. "
                      "xla_gpu_dot_merger_threshold_mb=32 (XLA's own default) on a GPU")
  p.add_argument("--profile", default="",
                 help="train: trace 3 more steps into this directory and print device time by op")
  p.add_argument("--num-partitions", type=int, default=1, help="model-parallel devices per replica")
  p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--dropout", type=float, default=0.1, help="dropout rate (both frameworks)")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  p.add_argument("--log-period", type=int, default=10,
                 help="trainer: steps per timed window (the loop syncs only at log steps); it runs "
                      "(--steps + 1) windows and leaves the first, with compilation, out")
  p.add_argument("--prng-impl", default="default",
                 choices=("default", "threefry2x32", "rbg", "unsafe_rbg"),
                 help="JAX PRNG for dropout; rbg compiles ~3x faster than threefry on CPU")
  p.add_argument("--no-donate", action="store_true", help="do not donate the train state")
  p.add_argument("--ceiling-size", type=int, default=4096, help="n of the n×n×n ceiling matmul")
  p.add_argument("--ceiling-dtype", default="", choices=("", "float32", "bfloat16"),
                 help="dtype of the ceiling matmul (default: --dtype)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="the accelerator's datasheet peak for --dtype, for MFU (0: look up the device "
                      "kind in bench/ceiling.py's table; CPUs have none)")
  p.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling")
  p.add_argument("--peer", action="store_true",
                 help="also run HF PEFT prompt tuning (needs torch, transformers, peft)")
  p.add_argument("--peer-python", default="",
                 help="a Python with requirements-bench.txt installed (implies --peer); default: "
                      "$SPOT_JAX_PEER_PYTHON, else this Python if it has torch/transformers/peft")
  p.add_argument("--peer-threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--peer-device", default="auto", choices=("auto", "cpu", "cuda"),
                 help="torch device of the peer (auto: cuda when torch sees a GPU)")
  p.add_argument("--rounds", type=int, default=1,
                 help="with the peer: run it and ours this many times, alternating, and report each "
                      "round's ratio and their median (a shared machine's speed drifts within minutes; "
                      "on a GPU, later rounds' peer runs beside the memory our process keeps)")
  p.add_argument("--json", default="", help="write all results to this JSON file")
  return p


def parse_args(argv=None) -> argparse.Namespace:
  parser = build_parser()
  args = parser.parse_args(argv)
  for name in ("batch", "input_length", "target_length", "decode_length", "steps", "microbatches",
               "num_partitions", "ceiling_size", "log_period", "rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  for name in ("prompt_length", "warmup", "devices", "peer_threads", "vocab_size"):
    if getattr(args, name) < 0:
      parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
  if not 0.0 <= args.dropout < 1.0:
    parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
  if args.batch % args.microbatches:
    parser.error(f"--batch {args.batch} is not divisible by --microbatches {args.microbatches}")
  if args.peer_python:
    args.peer = True
  if args.rounds > 1 and not args.peer:
    parser.error("--rounds alternates our runs with the peer's: add --peer or --peer-python")
  if args.json:
    try:
      check_json_path(args.json)
    except (ValueError, OSError) as e:
      parser.error(str(e))
  return args


def check_json_path(path: str) -> None:
  """Refuses, before minutes of measuring, a --json that names a directory or a place that cannot be
  written (the benchmark failed only at its end, in a traceback)."""
  from spot_jax import fileio  # pylint: disable=g-import-not-at-top
  if path.endswith(os.sep) or os.path.isdir(path):
    raise IsADirectoryError(f"--json {path} names a directory: name a file, e.g. "
                            f"{os.path.join(path, 'results.json')}")
  directory = os.path.dirname(os.path.abspath(path))
  try:
    fileio.check_writable_dir(directory)
  except OSError as e:
    if fileio.is_unwritable(e):
      raise ValueError(f"--json {path}: {fileio.unwritable_message(e)}") from e
    raise ValueError(f"--json {path}: cannot make or write {directory}: {e.strerror}: choose another "
                  "path") from e


TIME_KEYS = {"train": "step_s_pipelined", "decode": "decode_s_median"}


def interleaved_rounds(kind: str, run_ours, run_peer, rounds: int) -> dict:
  """Our result (round 1's) with the peer's under "peer", after `rounds` alternating runs of the
  peer and ours; with more than one, "rounds" holds each round's times and speed ratio (peer time /
  ours) and "ratio_median" their median: pairs run minutes apart on a shared machine otherwise
  compare its drift as much as the two programs."""
  import statistics
  key, first, table = TIME_KEYS[kind], None, []
  for i in range(rounds):
    peer = run_peer()
    ours = run_ours()
    if first is None:
      first, ours["peer"] = ours, peer
    ok = "error" not in peer and peer.get(key) and ours.get(key)
    table.append({"round": i + 1, "ours_s": ours.get(key), "peer_s": peer.get(key),
                  "ratio": peer[key] / ours[key] if ok else None,
                  **({"peer_error": peer["error"]} if "error" in peer else {})})
  if rounds > 1:
    first["rounds"] = table
    ratios = [r["ratio"] for r in table if r["ratio"] is not None]
    first["ratio_median"] = statistics.median(ratios) if ratios else None
  return first


def xla_options(items) -> dict:
  """`["name=value", ...]` as a `compiler_options` dict for `jax.jit`."""
  options = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise SystemExit(f"--xla-option {item!r} is not NAME=VALUE (e.g. "
                       "xla_gpu_dot_merger_threshold_mb=0)")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
      options[name] = lowered == "true"  # XLA rejects the strings for boolean options
    else:
      try:
        options[name] = int(value)
      except ValueError:
        options[name] = value
  return options


def peer_python(args) -> str:
  """The interpreter for the PEFT peer, or a SystemExit that says how to get one."""
  candidate = args.peer_python or os.environ.get("SPOT_JAX_PEER_PYTHON", "")
  if candidate:
    if not os.path.exists(candidate):
      raise SystemExit(f"--peer-python {candidate} does not exist; create the peer venv with "
                       "`python3.11 -m venv ENV && ENV/bin/pip install -r requirements-bench.txt`")
    return candidate
  if all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft")):
    return sys.executable
  raise SystemExit("--peer needs torch, transformers and peft: install requirements-bench.txt into a "
                   "separate venv and pass its interpreter with --peer-python ENV/bin/python")


def peer_dtype(args) -> str:
  """The peer's torch dtype: bfloat16 when our activations or our products' inputs are. Torch has no
  form with bfloat16 products and float32 activations, so `--matmul-dtype bfloat16` meets a wholly
  bfloat16 model, which rounds more than ours does."""
  return "bfloat16" if "bfloat16" in (args.dtype, args.matmul_dtype) else "float32"


def run_peer(args, mode: str) -> dict:
  cmd = [peer_python(args), PEER_SCRIPT, "--mode", mode, "--size", args.size,
         "--batch", str(args.batch), "--input-length", str(args.input_length),
         "--target-length", str(args.target_length), "--prompt-length", str(args.prompt_length),
         "--decode-length", str(args.decode_length), "--dtype", peer_dtype(args),
         "--dropout", str(args.dropout if mode == "train" else 0.0),
         "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--threads", str(args.peer_threads), "--device", args.peer_device]
  if args.vocab_size:
    cmd += ["--vocab-size", str(args.vocab_size)]
  print(f"[bench] peer: {shlex.join(cmd)}", file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("PEER_RESULT "):
      result = json.loads(line[len("PEER_RESULT "):])
      result["command"] = shlex.join(cmd)
      return result
  # Keep going: our own figures are still worth reporting; the JSON records why there is no ratio.
  print(f"[bench] the PEFT peer failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
        file=sys.stderr, flush=True)
  return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
          "command": shlex.join(cmd)}


def machine_info() -> dict:
  model, isa = platform.processor(), []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and model == platform.processor():
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          # the vector extensions decide the CPU ceiling (AVX2 vs AVX-512 differ by ~1.5x here)
          isa = sorted(x for x in line.split(":", 1)[1].split() if x.startswith(("avx", "amx")))
          break
  except OSError:
    pass
  return {"cpu": model, "cpu_vector_isa": isa, "cores": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version()}


def _fmt(value, spec=".2f"):
  if value is None:
    return "-"
  return format(value, spec) if isinstance(value, (int, float)) else str(value)


def table(rows) -> str:
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def report(results: dict) -> str:
  out = []
  ceiling = results.get("ceiling") or {}
  jax_ceiling = ceiling.get("jax_gflops_per_s")
  if ceiling:
    line = (f"ceiling: {ceiling['n']}^3 {ceiling.get('dtype', 'float32')} matmul: JAX "
            f"{_fmt(jax_ceiling, '.1f')} GFLOP/s")
    if ceiling.get("numpy_gflops_per_s"):
      line += f", numpy {_fmt(ceiling['numpy_gflops_per_s'], '.1f')} GFLOP/s"
    out.append(line)
  peak = (results.get("peak_tflops") or {}).get("tflops")
  if peak:
    out.append(f"MFU against {results['peak_tflops']['device_kind']} datasheet peak: {peak:.1f} "
               f"TFLOP/s {results['peak_tflops']['dtype']} ({results['peak_tflops']['from']})")
  if "trainer" in results:
    t = results["trainer"]
    out.append(f"\ntrainer: spot_jax.train on {t['task']}, {t['size']} batch {t['batch']}, inputs "
               f"{t['input_length']} + prompt {t['prompt_length']}, targets {t['target_length']}, "
               f"{t['dtype']}, dropout {t['dropout']}")
    out.append(table([["", "spot_jax.train"],
                      ["step s (median of windows)", _fmt(t["step_s_median"], ".3f")],
                      ["examples/s", _fmt(t["examples_per_s"])],
                      ["windows of steps, s/step", " ".join(f"{w:.3f}" for w in t["window_step_s"])],
                      ["first window s (compile)", _fmt(t["first_window_s"], ".1f")]]))
  for kind in ("train", "decode"):
    if kind not in results:
      continue
    ours, peer = results[kind], results[kind].get("peer")
    if peer and "error" in peer:
      out.append(f"\n{kind}: the PEFT peer failed ({peer['error']}); no ratio")
      peer = None
    time_key = TIME_KEYS[kind]
    rows = [["", "spot_jax"] + (["hf_peft", "ratio"] if peer else [])]

    def row(name, key, spec=".2f", higher_better=True):
      r = [name, _fmt(ours.get(key), spec)]
      if peer:
        a, b = ours.get(key), peer.get(key)
        ratio = (a / b if higher_better else b / a) if a and b else None
        r += [_fmt(b, spec), _fmt(ratio, ".2f") + "x" if ratio else "-"]
      rows.append(r)

    row("examples/s", "examples_per_s")
    row("tokens/s", "tokens_per_s", ".0f")
    if kind == "train":
      row("step s (back to back)", time_key, ".4f", False)
      row("step s (median, synced)", "step_s_median", ".4f", False)
      row("step CPU s (median)", "step_cpu_s_median", ".3f", False)
    else:
      row("decode s (median)", time_key, ".3f", False)
    row("peak host RSS MiB", "host_peak_rss_mib", ".0f", False)
    if ours.get("device_peak_mib") is not None or (peer or {}).get("device_peak_mib") is not None:
      row("peak device MiB", "device_peak_mib", ".0f", False)
    row("compile s", "compile_s", ".1f")
    row("GFLOP/s (analytic)", "gflops_per_s", ".1f")
    if peer and ours.get("gflops_per_s"):
      flops = ours.get("flops_per_step", ours.get("flops_per_run"))
      peer["gflops_per_s"] = flops / peer[time_key] / 1e9
      rows[-1][2] = _fmt(peer["gflops_per_s"], ".1f")
    if jax_ceiling:
      ours["share_of_jax_ceiling"] = ours["gflops_per_s"] / jax_ceiling
      rows.append(["share of JAX ceiling", _fmt(100 * ours["share_of_jax_ceiling"], ".0f") + "%"]
                  + ([_fmt(100 * peer["gflops_per_s"] / jax_ceiling, ".0f") + "%", ""]
                     if peer else []))
    if peak:
      ours["mfu"] = ours["gflops_per_s"] / (peak * 1e3)
      rows.append(["MFU (datasheet peak)", _fmt(100 * ours["mfu"], ".1f") + "%"]
                  + ([_fmt(100 * peer["gflops_per_s"] / (peak * 1e3), ".1f") + "%", ""]
                     if peer else []))
    if peer:
      ours["peer_examples_per_s_ratio"] = ours["examples_per_s"] / peer["examples_per_s"]
    shape = (f"{ours['size']} batch {ours['batch']}, inputs {ours['input_length']} + prompt "
             f"{ours['prompt_length']}, " + (f"targets {ours['target_length']}" if kind == "train"
                                            else f"decode {ours['decode_length']}")
             + f", {ours['dtype']} (weights {ours['weight_dtype']}"
             + (f", products {ours['matmul_dtype']}" if ours.get("matmul_dtype", "activation")
                != "activation" else "") + "), "
             f"{ours.get('attention_impl', 'einsum')} attention")
    if peer and peer.get("args", {}).get("dtype"):
      shape += f"; peer: torch {peer['args']['dtype']}"
    out.append(f"\n{kind}: {shape}")
    if kind == "train":
      f = ours["flops"]
      xla = ours.get("xla_flops_per_step")
      out.append(f"FLOPs/step: analytic {f['total'] / 1e9:.1f} G (fwd {f['forward'] / 1e9:.1f} + "
                 f"activation bwd {f['backward_activations'] / 1e9:.1f}; with weight grads would be "
                 f"{f['total_if_weight_gradients'] / 1e9:.1f}), XLA cost analysis "
                 f"{_fmt(xla / 1e9 if xla else None, '.1f')} G")
    out.append(table(rows))
    if ours.get("rounds"):
      ratios = " ".join(_fmt(r["ratio"], ".2f") + "x" if r["ratio"] else "-" for r in ours["rounds"])
      out.append(f"{len(ours['rounds'])} alternating rounds ({time_key}, peer / ours): {ratios}; "
                 f"median {_fmt(ours['ratio_median'], '.2f')}x (the table is round 1)")
    if (ours.get("profile") or {}).get("error"):
      out.append(f"profile failed: {ours['profile']['error']}")
    elif ours.get("profile"):
      from bench import device_profile as profile_lib
      out.append(profile_lib.report(ours["profile"]))
  return "\n".join(out)


def write_json(path: str, results: dict):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bench-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:  # a full disk: no `.bench-*.json` left behind
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def decode_in_child(argv) -> dict:
  """`bench all`'s decode part, run first in a fresh process of its own.

  A process's peak RSS cannot be lowered after the training step has grown it (nor can JAX's GPU
  allocator shrink), so a decode measured after training in the same process reports training's
  memory; the peer gets a fresh process too.
  """
  child = list(argv)
  child[child.index("all")] = "decode"
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "decode.json")
    cmd = [sys.executable, "-m", "bench"] + child + ["--no-ceiling", "--json", path]
    print(f"[bench] decode in its own process: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          stdout=subprocess.DEVNULL, check=False)
    if proc.returncode or not os.path.exists(path):
      raise SystemExit(f"the decode benchmark failed (exit {proc.returncode}); its stderr is above")
    with open(path) as f:
      return json.load(f)["decode"]


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.peer:
    peer_python(args)  # fail before the long JAX run, not after it
  results = {"command": "spot-jax bench " + shlex.join(sys.argv[1:] if argv is None else argv),
             "machine": machine_info(), "loadavg_at_start": os.getloadavg()}
  if args.prng_impl != "default":
    import jax
    jax.config.update("jax_default_prng_impl", args.prng_impl)
  results["prng_impl"] = args.prng_impl
  common = dict(size=args.size, batch=args.batch, input_length=args.input_length,
                prompt_length=args.prompt_length, dtype=args.dtype, weight_dtype=args.weight_dtype,
                num_partitions=args.num_partitions, num_devices=args.devices or None,
                steps=args.steps, warmup=args.warmup,
                config_overrides=dict({"vocab_size": args.vocab_size} if args.vocab_size else {},
                                      attention_impl=args.attention,
                                      matmul_dtype=args.matmul_dtype,
                                      cross_attention_impl=args.cross_attention,
                                      float32_attention_logits=args.attention_logits == "float32",
                                      dropout_bits=args.dropout_bits,
                                      mlp_backward=args.mlp_backward,
                                      norm_impl=args.norm_impl,
                                      pallas_attention_backward=args.attention_backward,
                                      **({"pallas_attention_launch": args.attention_launch}
                                         if args.attention_launch else {}),
                                      **({"norm_tiling": args.norm_tiling}
                                         if args.norm_tiling else {})))
  from bench import ceiling  # numpy only at import; JAX starts inside its functions
  if not args.no_ceiling:
    print("[bench] measuring the matmul ceiling", file=sys.stderr, flush=True)
    ceiling_dtype = args.ceiling_dtype or ("bfloat16" if args.matmul_dtype == "bfloat16" else args.dtype)
    results["ceiling"] = {"n": args.ceiling_size, "dtype": ceiling_dtype,
                          "jax_gflops_per_s": ceiling.jax_matmul_gflops(args.ceiling_size,
                                                                        dtype=ceiling_dtype)}
    if ceiling.backend() == "cpu":  # BLAS beside XLA is a CPU question only
      results["ceiling"]["numpy_gflops_per_s"] = ceiling.numpy_matmul_gflops(args.ceiling_size)
  if args.what != "ceiling":
    kind = ceiling.device_kind()
    peak = args.peak_tflops or ceiling.datasheet_peak_tflops(kind, args.dtype)
    if peak:
      results["peak_tflops"] = {"tflops": peak, "dtype": args.dtype, "device_kind": kind,
                                "from": "--peak-tflops" if args.peak_tflops
                                else "bench/ceiling.py datasheet table"}
  if args.what == "all":
    results["decode"] = decode_in_child(argv if argv is not None else sys.argv[1:])
  # The peer runs first: on a GPU, JAX's allocator keeps what it grew to until the process ends.
  if args.what in ("train", "all"):
    from bench import train_throughput

    def train_ours():
      print("[bench] spot_jax training step", file=sys.stderr, flush=True)
      return train_throughput.run(
          target_length=args.target_length, microbatches=args.microbatches, dropout=args.dropout,
          donate=not args.no_donate, profile_dir=args.profile,
          compiler_options=xla_options(args.xla_option), **common)
    results["train"] = (interleaved_rounds("train", train_ours, lambda: run_peer(args, "train"),
                                           args.rounds) if args.peer else train_ours())
  if args.what == "trainer":
    from bench import trainer_throughput
    print("[bench] the whole training loop", file=sys.stderr, flush=True)
    results["trainer"] = trainer_throughput.run(
        size=args.size, batch=args.batch, input_length=args.input_length,
        target_length=args.target_length, prompt_length=args.prompt_length, dropout=args.dropout,
        steps=(args.steps + 1) * args.log_period, log_period=args.log_period, dtype=args.dtype,
        weight_dtype=args.weight_dtype, config_overrides=common["config_overrides"])
  if args.what == "decode":
    from bench import decode_throughput

    def decode_ours():
      print("[bench] spot_jax greedy decode", file=sys.stderr, flush=True)
      return decode_throughput.run(decode_length=args.decode_length, **common)
    results["decode"] = (interleaved_rounds("decode", decode_ours, lambda: run_peer(args, "decode"),
                                            args.rounds) if args.peer else decode_ours())
  print(report(results), flush=True)
  if args.json:
    try:
      write_json(args.json, results)
    except OSError as e:  # checked at the start; a disk that filled since is one line
      from spot_jax import fileio  # pylint: disable=g-import-not-at-top
      if not fileio.is_unwritable(e):
        raise
      raise SystemExit(f"spot-jax bench: error: {fileio.unwritable_message(e, args.json)} (the results are "
                       "printed above)") from None
    print(f"[bench] wrote {args.json}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""bench/: the FLOP formula against XLA's cost analysis, the CLI, and the JSON it writes.

Tiny shapes only, and no timing assertions (timings depend on the machine and its load).
"""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json

import pytest

from bench import __main__ as cli
from bench import ceiling
from bench import flops as flops_lib
from bench import peer_peft
from spot_jax.config import size_config

TINY = ["--size", "tiny", "--vocab-size", "512", "--dropout", "0", "--batch", "2", "--input-length", "12",
        "--target-length", "4", "--prompt-length", "4", "--decode-length", "3", "--steps", "1",
        "--warmup", "0", "--devices", "1", "--ceiling-size", "64"]


@pytest.fixture(scope="module")
def all_results(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "out" / "results.json"
  assert cli.main(["all", *TINY, "--json", str(path)]) == 0
  return json.loads(path.read_text())


def test_analytic_flops_match_xla_cost_analysis(all_results):
  train = all_results["train"]
  xla, analytic = train["xla_flops_per_step"], train["flops"]
  # XLA also counts elementwise work (norms, softmax, GELU, loss): a little above the matmul count.
  assert 0.98 <= xla / analytic["total"] <= 1.3, (xla, analytic)
  # No weight gradients: far below what forward + 2x backward (full fine-tuning) would cost.
  assert xla < 0.8 * analytic["total_if_weight_gradients"], (xla, analytic)


def test_flops_formula_scales_with_shapes():
  config = size_config("small")
  base = flops_lib.train_step_flops(config, 8, 128, 8, 100)
  assert flops_lib.train_step_flops(config, 16, 128, 8, 100).total == 2 * base.total
  assert flops_lib.train_step_flops(config, 8, 128, 8, 0).total < base.total
  # The T5 1.1 small step of the issue is about 175-190 GFLOP, half forward.
  assert 170e9 < base.total < 195e9
  assert 0.45 < base.forward / base.total < 0.55
  assert base.with_weight_gradients == 3 * base.forward
  assert flops_lib.decode_flops(config, 8, 128, 100, 32) > flops_lib.decode_flops(config, 8, 128,
                                                                                 100, 16)


def test_json_has_the_fields(all_results):
  assert set(all_results) >= {"command", "machine", "ceiling", "train", "decode"}
  assert all_results["ceiling"]["jax_gflops_per_s"] > 0
  train = all_results["train"]
  for key in ("examples_per_s", "tokens_per_s", "step_s_median", "step_s_pipelined", "compile_s",
              "host_peak_rss_mib",
              "device_peak_mib", "flops_per_step", "xla_flops_per_step", "gflops_per_s",
              "share_of_jax_ceiling", "mesh", "final_loss"):
    assert key in train, key
  assert train["batch"] == 2 and train["prompt_length"] == 4 and train["mesh"] == {"data": 1, "model": 1}
  # decode ran in a process of its own, so its peak memory is not the training step's
  assert all_results["decode"]["pid"] != train["pid"]
  assert all_results["decode"]["host_peak_rss_mib"] > 0
  assert train["examples_per_s"] > 0 and train["host_peak_rss_mib"] > 0
  decode = all_results["decode"]
  assert decode["generated_length"] == 3 and decode["tokens_per_s"] > 0


def test_cli_arguments():
  args = cli.parse_args([])
  assert (args.what, args.size, args.batch, args.input_length, args.prompt_length,
          args.target_length, args.dtype, args.peer) == ("train", "small", 8, 128, 100, 8,
                                                         "float32", False)
  assert cli.parse_args(["--peer-python", "/x/python"]).peer
  assert cli.parse_args(["--prng-impl", "rbg"]).prng_impl == "rbg"
  args = cli.parse_args(["decode", "--dtype", "bfloat16", "--weight-dtype", "bfloat16",
                         "--num-partitions", "2", "--microbatches", "2"])
  assert (args.what, args.dtype, args.weight_dtype, args.num_partitions, args.microbatches) == (
      "decode", "bfloat16", "bfloat16", 2, 2)
  for bad in (["--batch", "6", "--microbatches", "4"], ["--batch", "0"], ["--dropout", "1.5"],
              ["--size", "huge"], ["--dtype", "float16"], ["nonsense"],
              ["--prng-impl", "philox"]):
    with pytest.raises(SystemExit):
      cli.parse_args(bad)


def test_the_peer_runs_in_bfloat16_when_our_activations_or_products_do():
  """Torch has no bfloat16-products, float32-activations form: `--matmul-dtype bfloat16` meets a
  wholly bfloat16 peer; bfloat16 weights alone (float32 arithmetic) meet a float32 one."""
  dtype = lambda *a: cli.peer_dtype(cli.parse_args(["decode", *a]))
  assert dtype() == "float32" and dtype("--weight-dtype", "bfloat16") == "float32"
  assert dtype("--dtype", "bfloat16") == "bfloat16"
  assert dtype("--matmul-dtype", "bfloat16", "--weight-dtype", "bfloat16") == "bfloat16"
  with pytest.raises(SystemExit):
    cli.parse_args(["--matmul-dtype", "float16"])
  ours = {"size": "tiny", "batch": 2, "input_length": 12, "prompt_length": 4, "decode_length": 3,
          "dtype": "float32", "weight_dtype": "bfloat16", "matmul_dtype": "bfloat16",
          "examples_per_s": 2.0, "tokens_per_s": 6.0, "decode_s_median": 1.0,
          "host_peak_rss_mib": 100.0, "compile_s": 1.0, "gflops_per_s": 1.0, "flops_per_run": 1e9,
          "peer": {"examples_per_s": 1.0, "tokens_per_s": 3.0, "decode_s_median": 2.0,
                   "host_peak_rss_mib": 90.0, "args": {"dtype": "bfloat16"}}}
  assert ("float32 (weights bfloat16, products bfloat16), einsum attention; peer: torch bfloat16"
          in cli.report({"decode": ours}))


def test_xla_options_are_typed_for_the_compiler():
  """XLA rejects "false" for a boolean option: values become bool, int or stay strings."""
  args = cli.parse_args(["--xla-option", "xla_gpu_dot_merger_threshold_mb=0", "--xla-option",
                         "xla_gpu_enable_triton_gemm=False", "--xla-option", "xla_dump_to=/tmp/d",
                         "--mlp-backward", "recompute"])
  assert cli.xla_options(args.xla_option) == {"xla_gpu_dot_merger_threshold_mb": 0,
                                              "xla_gpu_enable_triton_gemm": False,
                                              "xla_dump_to": "/tmp/d"}
  assert args.mlp_backward == "recompute"
  with pytest.raises(SystemExit, match="NAME=VALUE"):
    cli.xla_options(["xla_gpu_dot_merger_threshold_mb"])


def test_peer_python_errors_name_the_fix(monkeypatch):
  monkeypatch.delenv("SPOT_JAX_PEER_PYTHON", raising=False)
  with pytest.raises(SystemExit, match="requirements-bench.txt"):
    cli.peer_python(cli.parse_args(["--peer-python", "/nonexistent/python"]))


def test_report_prints_ratio_beside_the_peer():
  ours = {"size": "tiny", "batch": 2, "input_length": 12, "prompt_length": 4, "target_length": 4,
          "dtype": "float32", "weight_dtype": "float32", "examples_per_s": 3.0, "tokens_per_s": 30.0,
          "step_s_pipelined": 2 / 3, "step_s_median": 0.7, "host_peak_rss_mib": 100.0,
          "device_peak_mib": None,
          "compile_s": 1.0, "gflops_per_s": 6.0, "flops_per_step": 4e9, "xla_flops_per_step": 4.2e9,
          "flops": flops_lib.StepFlops(2_000_000_000, 2_000_000_000).as_dict(),
          "peer": {"examples_per_s": 2.0, "tokens_per_s": 20.0, "step_s_pipelined": 1.0,
                   "step_s_median": 1.1,
                   "host_peak_rss_mib": 200.0}}
  text = cli.report({"ceiling": {"n": 64, "jax_gflops_per_s": 10.0, "numpy_gflops_per_s": 12.0},
                     "train": ours})
  assert "1.50x" in text and "hf_peft" in text and "60%" in text
  assert ours["peer_examples_per_s_ratio"] == pytest.approx(1.5)
  assert ours["share_of_jax_ceiling"] == pytest.approx(0.6)


def test_rounds_alternate_with_the_peer_and_report_each_ratio_and_their_median():
  calls, times = [], iter([2.0, 1.0, 3.0, 1.0, 1.0, 2.0])  # peer, ours, peer, ours, ...

  def fake(who):
    def run():
      calls.append(who)
      return {"decode_s_median": next(times), "who": who}
    return run
  ours = cli.interleaved_rounds("decode", fake("ours"), fake("peer"), 3)
  assert calls == ["peer", "ours"] * 3
  assert ours["who"] == "ours" and ours["peer"]["who"] == "peer"  # round 1's pair
  assert [r["ratio"] for r in ours["rounds"]] == [2.0, 3.0, 0.5]
  assert ours["ratio_median"] == 2.0
  # One round: no table; a failed peer round has no ratio, and the median skips it.
  times = iter([2.0, 1.0])
  assert "rounds" not in cli.interleaved_rounds("decode", fake("ours"), fake("peer"), 1)
  times = iter([1.0, 2.0])
  peers = iter([{"error": "exit 1"}, {"decode_s_median": 3.0}])
  ours = cli.interleaved_rounds("decode", lambda: {"decode_s_median": next(times)},
                                lambda: next(peers), 2)
  assert ours["rounds"][0]["ratio"] is None and ours["rounds"][0]["peer_error"] == "exit 1"
  assert ours["ratio_median"] == 1.5  # round 2 alone: 3.0 / 2.0
  with pytest.raises(SystemExit):
    cli.parse_args(["decode", "--rounds", "3"])  # without a peer there is nothing to alternate with
  assert cli.parse_args(["decode", "--rounds", "3", "--peer"]).rounds == 3


def test_report_prints_the_rounds_under_the_table():
  ours = {"size": "tiny", "batch": 2, "input_length": 12, "prompt_length": 4, "decode_length": 3,
          "dtype": "float32", "weight_dtype": "float32", "examples_per_s": 2.0, "tokens_per_s": 6.0,
          "decode_s_median": 1.0, "host_peak_rss_mib": 100.0, "compile_s": 1.0, "gflops_per_s": 1.0,
          "flops_per_run": 1e9,
          "peer": {"examples_per_s": 1.0, "tokens_per_s": 3.0, "decode_s_median": 2.0,
                   "host_peak_rss_mib": 90.0},
          "rounds": [{"round": 1, "ratio": 2.0}, {"round": 2, "ratio": None}, {"round": 3, "ratio": 1.2}],
          "ratio_median": 1.6}
  text = cli.report({"decode": ours})
  assert "3 alternating rounds (decode_s_median, peer / ours): 2.00x - 1.20x; median 1.60x" in text


def test_peer_script_arguments_need_no_torch():
  args = peer_peft.parse_args(["--size", "tiny", "--mode", "decode", "--decode-length", "5"])
  assert (args.size, args.mode, args.decode_length, args.prompt_length) == ("tiny", "decode", 5, 100)
  assert set(peer_peft.SIZES) == {"tiny", "small", "base", "large", "xl", "xxl"}
  for name, sizes in peer_peft.SIZES.items():
    config = size_config(name)
    assert (sizes["d_model"], sizes["num_heads"], sizes["d_kv"], sizes["d_ff"], sizes["num_layers"]) == (
        config.d_model, config.num_heads, config.head_dim, config.d_ff, config.num_encoder_layers)


def test_report_gives_mfu_against_the_datasheet_peak_and_survives_a_failed_peer():
  ours = {"size": "base", "batch": 64, "input_length": 512, "prompt_length": 100, "target_length": 32,
          "dtype": "bfloat16", "weight_dtype": "bfloat16", "examples_per_s": 500.0,
          "tokens_per_s": 1.0, "step_s_pipelined": 0.128, "step_s_median": 0.13,
          "host_peak_rss_mib": 1.0,
          "device_peak_mib": 10.0, "compile_s": 1.0, "gflops_per_s": 197_880.0,
          "flops_per_step": 2.5e13, "flops": flops_lib.StepFlops(10, 10).as_dict(),
          "peer": {"error": "exit 1: ['torch.OutOfMemoryError']"}}
  text = cli.report({"peak_tflops": {"tflops": 989.4, "dtype": "bfloat16",
                                     "device_kind": "NVIDIA H200", "from": "table"},
                     "train": ours})
  assert ours["mfu"] == pytest.approx(0.2)
  mfu_line = next(line for line in text.splitlines() if line.startswith("MFU (datasheet peak)"))
  assert mfu_line.split()[-1] == "20.0%"
  assert "the PEFT peer failed" in text and "hf_peft" not in text


def test_datasheet_peaks_match_device_kinds_and_skip_cpus():
  assert ceiling.datasheet_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4)
  assert ceiling.datasheet_peak_tflops("NVIDIA H200", "float32") == pytest.approx(66.9)
  assert ceiling.datasheet_peak_tflops("TPU v4", "bfloat16") == pytest.approx(275.0)
  assert ceiling.datasheet_peak_tflops("cpu", "float32") is None


def test_gpu_suite_script_parses_and_lists_its_runs():
  """The GPU script's run list names real bench arguments (a typo would only show on a GPU)."""
  import os
  import re
  import subprocess
  path = os.path.join(os.path.dirname(cli.PEER_SCRIPT), "gpu_suite.sh")
  assert subprocess.run(["bash", "-n", path], check=False).returncode == 0
  text = open(path).read()
  variables = {name: value.replace("\\\n", " ") for name, value in
               re.findall(r'^(\w+)="([^"]+)"', text, re.M) if name != "default_runs"}
  assert "shape" in variables
  # `best` is what bench.suite_choice prints on the GPU: the most it can print
  assert "best=$($py -m bench.suite_choice" in text
  variables["best"] = ("--attention pallas --attention-launch 128x64x8x3 --cross-attention pallas "
                       "--norm-impl pallas --norm-tiling 2x8")
  runs = re.search(r'default_runs="([^"]+)"', text).group(1).strip().splitlines()
  assert len(runs) >= 2
  for line in runs:
    name, args = line.split("|", 1)
    for variable, value in variables.items():
      args = args.replace("$" + variable, value)
    assert "$" not in args.replace("$out", ""), (name, args)  # every variable was substituted
    parsed = cli.parse_args(args.split())
    assert parsed.dtype == "bfloat16" and parsed.size in ("base", "large"), name


def test_trainer_mode_times_the_whole_loop_in_windows(tmp_path):
  path = tmp_path / "trainer.json"
  # The documented command's default vocabulary (32128): the loop trains on random ids over all of it.
  args = ["trainer", "--size", "tiny", "--batch", "8", "--input-length", "12",
          "--prompt-length", "4", "--target-length", "4", "--steps", "2", "--log-period", "3",
          "--no-ceiling", "--json", str(path)]
  assert cli.main(args) == 0
  t = json.loads(path.read_text())["trainer"]
  assert len(t["window_step_s"]) == 2 and all(w > 0 for w in t["window_step_s"])
  assert t["step_s_median"] == pytest.approx(sum(t["window_step_s"]) / 2)  # median of two
  assert t["first_window_s"] > t["window_step_s"][0]  # compilation is in the first window only
  assert t["examples_per_s"] == pytest.approx(8 / t["step_s_median"])
  assert (t["steps"], t["log_period"], t["batch"]) == (9, 3, 8)
  assert t["task"] == "bench_random_tokens_v32128_i12_t4"
  with pytest.raises(SystemExit):
    cli.parse_args(["trainer", "--log-period", "0"])


def test_a_mesh_that_does_not_divide_the_devices_names_the_bench_flag():
  import jax
  from bench import train_throughput
  n = len(jax.devices())
  with pytest.raises(ValueError, match=rf"--num-partitions {n + 1} must divide the {n} device"):
    train_throughput.run(size="tiny", batch=2, input_length=8, target_length=2, prompt_length=2,
                         num_partitions=n + 1)


def test_json_destination_is_checked_before_the_benchmark_and_a_failed_write_leaves_no_temporary(
    tmp_path, monkeypatch, capsys):
  """`--json DIR` or an unwritable place failed after the whole benchmark, in a traceback, and a full
  disk left its `.bench-*.json` temporary behind."""
  import errno
  import os
  from spot_jax import fileio
  with pytest.raises(SystemExit):
    cli.parse_args(["--json", str(tmp_path)])
  assert f"error: --json {tmp_path} names a directory: name a file, e.g. {tmp_path}/results.json" in \
      capsys.readouterr().err
  real_open = fileio.open_file

  def read_only(path, mode):
    if "w" in mode:
      raise OSError(errno.EROFS, "Read-only file system", path)
    return real_open(path, mode)
  monkeypatch.setattr(fileio, "open_file", read_only)
  with pytest.raises(SystemExit):
    cli.parse_args(["--json", str(tmp_path / "out" / "r.json")])
  assert (f"error: --json {tmp_path / 'out' / 'r.json'}: cannot write {tmp_path / 'out'}: Read-only file system: "
          "choose another directory\n") in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
  monkeypatch.undo()
  assert cli.parse_args(["--json", str(tmp_path / "out" / "r.json")]).json  # a writable place passes

  def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(cli.json, "dump", full)
  with pytest.raises(OSError, match="No space left"):
    cli.write_json(str(tmp_path / "out" / "r.json"), {"a": 1})
  assert os.listdir(tmp_path / "out") == []

"""bench/suite_choice.py: the GPU suite's whole-step flags follow what the kernel benchmarks timed."""
import json

from bench import suite_choice


def _write(directory, name, rows):
  (directory / name).write_text(json.dumps({"rows": rows}))


def _attention(model, **ours):
  rows = {"model": {"forward_backward_ms": model}}
  for name, (ms, diff) in ours.items():
    rows[name] = {"forward_backward_ms": ms, "compared_with": "model", "max_abs_diff": diff}
  return rows


def test_without_kernel_timings_the_defaults_are_kept(tmp_path):
  flags, reasons = suite_choice.choose(str(tmp_path))
  assert flags == ["--attention", "fused"]
  assert "attention_kernels.json: not there" in reasons[0] and "norm_kernels.json" in reasons[2]
  (tmp_path / "attention_kernels.json").write_text("{not json")
  assert "unreadable" in suite_choice.choose(str(tmp_path))[1][0]


def test_our_fastest_equal_launch_wins_only_by_more_than_the_margin(tmp_path):
  # the fastest row strays from cuDNN's output: not chosen; the next one is, with its launch
  _write(tmp_path, "attention_kernels.json", _attention(
      10.0, pallas_t5=(9.5, 0.02), pallas_t5_128x64_w8s3=(8.0, 0.02), pallas_t5_64x128=(7.0, 0.5),
      pallas_t5_s3=(99.0, 0.0)))
  flags, reasons = suite_choice.choose(str(tmp_path))
  assert flags == ["--attention", "pallas", "--attention-launch", "128x64x8x3"]
  assert "8.000 ms" in reasons[0] and "10.000 ms" in reasons[0]
  # the default launch is not spelt out
  _write(tmp_path, "attention_kernels.json", _attention(10.0, pallas_t5=(9.0, 0.0)))
  assert suite_choice.choose(str(tmp_path))[0] == ["--attention", "pallas"]
  # 1% faster is noise: cuDNN stays; a failed row is never chosen
  rows = _attention(10.0, pallas_t5=(9.9, 0.0))
  rows["pallas_t5_128x64"] = {"error": "ValueError: too many registers"}
  _write(tmp_path, "attention_kernels.json", rows)
  flags, reasons = suite_choice.choose(str(tmp_path))
  assert flags == ["--attention", "fused"] and "9.900 ms (pallas_t5)" in reasons[0]


def test_the_norm_kernel_is_chosen_with_its_fastest_tiling(tmp_path, capsys):
  _write(tmp_path, "norm_kernels.json", {
      "xla": {"forward_backward_ms": 2.0},
      "pallas 2x4": {"forward_backward_ms": 1.6, "max_rel_diff": 0.008, "tiling": [2, 4]},
      "pallas 4x8": {"forward_backward_ms": 1.5, "max_rel_diff": 0.008, "tiling": [4, 8]},
      "pallas 1x4": {"forward_backward_ms": 1.0, "max_rel_diff": 0.5, "tiling": [1, 4]},
      "pallas 2x8": {"error": "RuntimeError"}})
  assert suite_choice.main([str(tmp_path)]) == 0
  captured = capsys.readouterr()
  assert captured.out.split() == ["--attention", "fused", "--norm-impl", "pallas", "--norm-tiling",
                                  "4x8"]
  assert "[choice] norms: pallas 4x8, 1.500 ms forward+backward against XLA's 2.000" in captured.err
  _write(tmp_path, "norm_kernels.json", {
      "xla": {"forward_backward_ms": 2.0},
      "pallas 2x4": {"forward_backward_ms": 1.99, "max_rel_diff": 0.0, "tiling": [2, 4]}})
  assert suite_choice.choose(str(tmp_path))[0] == ["--attention", "fused"]


def test_the_chosen_flags_parse_as_bench_arguments(tmp_path):
  from bench.__main__ import parse_args
  _write(tmp_path, "attention_kernels.json", _attention(10.0, pallas_t5_128x64=(5.0, 0.0)))
  _write(tmp_path, "norm_kernels.json", {
      "xla": {"forward_backward_ms": 2.0},
      "pallas 2x8": {"forward_backward_ms": 1.0, "max_rel_diff": 0.0, "tiling": [2, 8]}})
  flags, _ = suite_choice.choose(str(tmp_path))
  args = parse_args(["train", "--size", "large", *flags, "--cross-attention", "pallas"])
  assert (args.attention, args.attention_launch, args.norm_impl, args.norm_tiling,
          args.cross_attention) == ("pallas", (128, 64, 4, 2), "pallas", (2, 8), "pallas")


def test_the_cross_attention_is_chosen_on_its_own_rows(tmp_path):
  rows = _attention(10.0, pallas_t5=(11.0, 0.0))
  rows["cross"] = {"forward_backward_ms": 2.0}
  rows["cross_pallas"] = {"forward_backward_ms": 1.0, "compared_with": "cross", "max_abs_diff": 0.01}
  _write(tmp_path, "attention_kernels.json", rows)
  flags, reasons = suite_choice.choose(str(tmp_path))
  assert flags == ["--attention", "fused", "--cross-attention", "pallas"]
  assert reasons[1].startswith("cross-attention: cross_pallas, 1.000 ms")
  rows["cross_pallas"]["max_abs_diff"] = 0.5  # not the same function: not chosen
  _write(tmp_path, "attention_kernels.json", rows)
  assert suite_choice.choose(str(tmp_path))[0] == ["--attention", "fused"]
  rows["cross_einsum"] = {"forward_backward_ms": 1.5, "compared_with": "cross", "max_abs_diff": 0.01}
  _write(tmp_path, "attention_kernels.json", rows)
  assert suite_choice.choose(str(tmp_path))[0] == ["--attention", "fused", "--cross-attention",
                                                   "einsum"]


def test_an_atomic_backward_row_adds_its_backward_flag(tmp_path):
  from bench.__main__ import parse_args
  _write(tmp_path, "attention_kernels.json", _attention(
      10.0, pallas_t5=(9.0, 0.0), pallas_t5_64x128_atomic=(7.0, 0.01)))
  flags, reasons = suite_choice.choose(str(tmp_path))
  assert flags == ["--attention", "pallas", "--attention-launch", "64x128x4x2",
                   "--attention-backward", "atomic_dq"]
  assert "pallas_t5_64x128_atomic, 7.000 ms" in reasons[0]
  args = parse_args(["train", "--size", "large", *flags])
  assert (args.attention_launch, args.attention_backward) == ((64, 128, 4, 2), "atomic_dq")
  _write(tmp_path, "attention_kernels.json", _attention(10.0, pallas_t5_atomic=(7.0, 0.0)))
  assert suite_choice.choose(str(tmp_path))[0] == ["--attention", "pallas", "--attention-backward",
                                                   "atomic_dq"]


def test_help_prints_the_usage_not_a_choice(capsys):
  assert suite_choice.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "python -m bench.suite_choice OUT_DIR" in out and "--attention" in out
  assert suite_choice.main([]) == 2

"""bench/norm_kernels.py: every tiling of the one-kernel norm computes the XLA row's values, and the
figures add up."""
import json

from bench import norm_kernels


def test_tilings_match_the_xla_form_and_the_table_adds_up(tmp_path, capsys):
  result = norm_kernels.run("tiny", batch=2, input_length=10, prompt_length=3, dtype="float32",
                            tilings=("default", "1x4", "4x2"), repeats=1)
  rows = result["rows"]
  assert set(rows) == {"xla", "pallas 2x1", "pallas 1x4", "pallas 4x2"}  # tiny: d_model 64
  assert result["rows_of_tensor"] == 26 and result["d_model"] == 64
  for name, row in rows.items():
    if name != "xla":  # new x, norm and input gradient, 26 rows: not a multiple of 4 either
      assert row["max_rel_diff"] < 1e-6, (name, row)
    tensor = 26 * 64 * 4
    assert abs(row["forward_gbps"] * 1e9 * row["forward_ms"] / 1e3 - 4 * tensor) < 1e-3
    assert abs(row["forward_backward_gbps"] * 1e9 * row["forward_backward_ms"] / 1e3
               - 11 * tensor) < 1e-3
    assert abs(row["step_ms"] - row["forward_backward_ms"] * 2 * 2) < 1e-9  # tiny: 2 layers
  assert norm_kernels.main(["--size", "tiny", "--batch", "2", "--input-length", "10",
                            "--prompt-length", "3", "--tilings", "1x4", "--repeats", "1",
                            "--json", str(tmp_path / "n.json")]) == 0
  printed = capsys.readouterr().out
  assert "pallas 1x4" in printed and "xla" in printed
  assert set(json.loads((tmp_path / "n.json").read_text())["rows"]) == {"xla", "pallas 1x4"}

"""bench/attention_kernels.py: its variants compute what they claim, and its figures add up."""
import json

from bench import attention_kernels


def test_variants_match_the_models_call_and_the_table_adds_up(tmp_path, capsys):
  result = attention_kernels.run("tiny", batch=2, input_length=20, prompt_length=5,
                                 target_length=4, dtype="float32", repeats=1)
  rows = result["rows"]
  assert set(rows) == {"model", "no_mask", "no_bias", "no_bias_no_mask", "pad128", "einsum",
                       "pallas_no_bias", "cross", "cross_einsum"}
  assert result["length"] == 25
  # All rows are full length: dropping the mask, padding to 128, the einsum form or the Pallas
  # kernel (interpreted on CPU) change nothing against the row each is compared with.
  compared = {"no_mask": "model", "pad128": "model", "einsum": "model", "cross_einsum": "cross",
              "no_bias_no_mask": "no_bias", "pallas_no_bias": "no_bias"}
  for name, reference in compared.items():
    assert rows[name]["compared_with"] == reference
    assert rows[name]["max_abs_diff"] < 1e-4, (name, rows[name]["max_abs_diff"])
  # Without the bias the output is another function (a check that could not pass by accident).
  assert rows["no_bias"]["max_abs_diff"] > 1e-2
  for row in rows.values():
    assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
    assert abs(row["step_ms"] - row["forward_backward_ms"] * row["layers"]) < 1e-9
  flops = 4 * 2 * 4 * 25 * 25 * 16  # 4·B·H·L·L·Dh of tiny (4 heads of 16)
  model = rows["model"]
  assert abs(model["forward_tflops"] * 1e12 * model["forward_ms"] / 1e3 - flops) / flops < 1e-6

  assert attention_kernels.main(["--size", "tiny", "--batch", "2", "--input-length", "20",
                                 "--prompt-length", "5", "--target-length", "4", "--repeats", "1",
                                 "--only", "model,pad128", "--json", str(tmp_path / "a.json")]) == 0
  printed = capsys.readouterr().out
  assert "pad128" in printed and "no_bias" not in printed
  assert set(json.loads((tmp_path / "a.json").read_text())["rows"]) == {"model", "pad128"}

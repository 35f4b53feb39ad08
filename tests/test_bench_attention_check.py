"""bench/attention_check.py: each checked form is compared with the form it must equal, and the
check fails loudly when they differ."""
import json

from bench import attention_check


def test_checks_each_form_against_its_reference(tmp_path, capsys):
  # (pallas_cross runs both attentions through our kernel: it covers "pallas"'s self-attention;
  # the one-kernel backward, "pallas_atomic", is checked in the model by test_pallas_attention)
  result = attention_check.relative_errors("tiny", batch=2, input_length=12, prompt_length=4,
                                           target_length=4,
                                           only=("fused", "pallas_cross", "pallas_norm"))
  assert result["fused"]["reference"] == result["pallas_cross"]["reference"] == "einsum_f32_logits"
  assert result["pallas_norm"]["reference"] == "fused_dropout"
  # bfloat16: rounding-sized differences only
  for name in ("fused", "pallas_cross", "pallas_norm"):
    assert result[name]["loss_rel_err"] < 1e-2 and result[name]["grad_rel_err"] < 5e-2, result
  # dropout on for the norm check: its reference's loss is not the dropout-free one
  assert abs(result["pallas_norm"]["reference_loss"] - result["fused"]["loss"]) > 1e-4
  # The command line: a tolerance nothing meets makes it exit 1 and say so; the JSON is written.
  path = tmp_path / "check.json"
  assert attention_check.main(["--size", "tiny", "--batch", "2", "--input-length", "12",
                               "--prompt-length", "4", "--target-length", "4", "--variants",
                               "einsum_bf16_logits", "--tolerance", "-1", "--json", str(path)]) == 1
  printed = capsys.readouterr().out
  assert "einsum_bf16_logits: loss" in printed
  assert "ABOVE TOLERANCE -1.0: ['einsum_bf16_logits']" in printed
  assert set(json.loads(path.read_text())) == {"einsum_bf16_logits", "device", "size"}

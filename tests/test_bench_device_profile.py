"""bench/device_profile.py: device time of a traced step, summed by op and sorted into categories."""
import json
import os

from bench import __main__ as cli
from bench import device_profile as profile

TINY = ["--size", "tiny", "--batch", "2", "--input-length", "12", "--prompt-length", "4",
        "--target-length", "4", "--steps", "2", "--no-ceiling", "--devices", "1", "--vocab-size", "512"]


def test_a_profiled_run_sums_op_time_by_category_and_source(tmp_path):
  out = tmp_path / "r.json"
  assert cli.main(["train", *TINY, "--profile", str(tmp_path / "prof"), "--json", str(out)]) == 0
  summary = json.loads(out.read_text())["train"]["profile"]
  assert "error" not in summary, summary
  assert os.path.exists(summary["xplane"]) and (tmp_path / "prof" / "step.hlo.txt").exists()
  total = summary["device_ms_per_step"]
  assert total > 0 and summary["steps"] == 3
  assert abs(sum(summary["by_category_ms_per_step"].values()) - total) < 1e-6 * total + 1e-9
  # the step's matmuls are found, and named after the JAX code that made them
  assert summary["by_category_ms_per_step"].get("matmul", 0) > 0
  sources = " ".join(summary["by_source_ms_per_step"])
  assert "dot_general" in sources and "layers_*" in sources and "layers_0" not in sources
  assert all(op["ms_per_step"] >= 0 for op in summary["top_ops"])


def test_categories_come_from_the_op_not_its_operands():
  lines, bodies = profile.hlo_index(
      "%fused_softmax (p: f32[4]) -> f32[4] {\n  %p = f32[4] parameter(0)\n"
      "  ROOT %e = f32[4] exponential(%p)\n}\n"
      "ENTRY %main (a: f32[4]) -> f32[4] {\n"
      "  %triton_softmax.7 = f32[4]{0} fusion(%gemm_fusion_dot.3), kind=kCustom, "
      "calls=%fused_softmax, metadata={op_name=\"jit(step)/layers_3/attention/sub\"}\n}\n")
  line = profile._hlo_line_of_kernel("triton_softmax_7", lines)
  assert "fused_softmax" in line  # the GPU kernel name maps back to its HLO fusion
  assert profile.categorize("triton_softmax_7", line, bodies) == "reduce / softmax"
  assert profile.op_name(line) == "jit(step)/layers_*/attention/sub"
  assert profile.categorize("nvjet_sm90_tst_128x128", "", bodies) == "matmul"
  assert profile.categorize("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", "", {}) == \
      "attention (cuDNN)"
  pallas = ('%pallas.4 = (bf16[8,4]{1,0}, bf16[8,4]{1,0}) custom-call(%loop_add_fusion.2, %a), '
            'custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(step)/'
            'layers_2/pre_mlp_layer_norm/add_dropout_rmsnorm/pallas_call"}')
  assert profile.categorize("add_dropout_rmsnorm", pallas, bodies) == "Pallas (Triton) kernel"

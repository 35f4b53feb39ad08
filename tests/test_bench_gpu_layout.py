"""bench/gpu_layout.py: reading transposes, cuDNN calls and matmuls out of optimized GPU HLO."""
import importlib.util

import pytest

from bench import gpu_layout

HLO = """HloModule jit_step

%fused_transpose.3 (p: bf16[8,4,2]) -> bf16[4,2,8] {
  %p = bf16[8,4,2]{2,1,0} parameter(0)
  ROOT %t = bf16[4,2,8]{2,1,0} transpose(%p), dimensions={1,2,0}
}

ENTRY %main.7 (a: bf16[8,4,2]) -> bf16[4,2,8] {
  %a = bf16[8,4,2]{2,1,0} parameter(0)
  %input_transpose_fusion.3 = bf16[4,2,8]{2,1,0} fusion(%a), kind=kInput, calls=%fused_transpose.3, metadata={op_name="jit(step)/jvp(T5)/encoder/layers_3/add"}
  %input_add_transpose_fusion = bf16[4,2,8]{2,1,0} fusion(%a), kind=kInput, calls=%fused_transpose.3, metadata={op_name="jit(step)/jvp(T5)/encoder/layers_11/add"}
  %loop_add_fusion.2 = f32[64]{0} fusion(%a), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp(T5))/encoder/add"}
  %gemm_fusion_dot.5 = bf16[16,16]{1,0} fusion(%a), kind=kCustom, calls=%gemm, metadata={op_name="jit(step)/dot_general"}
  %custom-call.1 = (bf16[16,16]{1,0}, s8[1024]{0}) custom-call(%a, %a), custom_call_target="__cublas$lt$matmul"
  %fmha.2 = (bf16[8,4,2]{2,1,0}, f32[8,4]{1,0}, u8[0]{0}) custom-call(%a, %a, %a), custom_call_target="__cudnn$fmhaScaleBiasSoftmax"
  %fusion.9 = bf16[8,4,2]{2,1,0} fusion(%a), kind=kCustom, calls=%norm, backend_config={"fusion_backend_config":{"kind":"__triton","block_level_fusion_config":{}}}
  %pallas.1 = (bf16[8,4,2]{2,1,0}, bf16[8,4,2]{2,1,0}) custom-call(%a, %a), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(step)/jvp(T5)/encoder/layers_2/pre_mlp_layer_norm/add_dropout_rmsnorm/pallas_call"}
  %pallas.2 = bf16[8,4,2]{2,1,0} custom-call(%a, %a, %a), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(step)/jvp(T5)/encoder/layers_2/attention/t5_flash_attention/pallas_call"}
  %pallas.3 = bf16[8,4,2]{2,1,0} custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(step)/jvp(T5)/encoder/layers_3/pre_attention_layer_norm/add_dropout_rmsnorm/pallas_call"}
  ROOT %copy.1 = f32[3,5]{0,1} copy(%a)
}
"""


def test_counts_transposes_with_their_traffic_and_folded_source():
  summary = gpu_layout.analyze(HLO)
  rows = {(r["shape"], r["source"]): r for r in summary["transposes"]}
  add = rows[("bf16[4,2,8]", "jvp(T5)/encoder/layers_*/add")]
  assert add["count"] == 2 and add["bytes"] == 2 * 2 * (2 * 4 * 2 * 8)  # read + write, bf16
  assert rows[("f32[3,5]", "")]["bytes"] == 2 * 4 * 15  # a layout-changing copy counts too
  assert summary["transpose_count"] == 3
  # the loop fusion (whose op name says "transpose(jvp" as a backward pass) is not a transpose
  assert not any("transpose(jvp" in r["source"] for r in summary["transposes"])
  assert summary["custom_calls"] == {"__cublas$lt$matmul": 1, "__cudnn$fmhaScaleBiasSoftmax": 1,
                                     "__gpu$xla.gpu.triton": 3}
  assert summary["matmuls"] == 2  # the Triton gemm fusion and the cuBLAS call
  # loop/input fusions, XLA's Triton (non-matmul) fusions and Pallas kernels: results plus operands
  # (the parameter is bf16[8,4,2], 128 bytes); matmul, cuDNN and Pallas attention kernels are not
  fusions = {r["fusion"]: r for r in summary["fusions"]}
  assert fusions["loop_add_fusion"]["bytes"] == 4 * 64 + 128
  assert fusions["input_transpose_fusion"]["bytes"] == 128 + 128
  assert fusions["fusion"]["bytes"] == 128 + 128
  # both norm kernels count, the attention norm's too (its name says "attention"); the flash
  # attention kernel does not
  pallas = {r["source"].split("/")[-3]: r for r in summary["fusions"]
            if r["fusion"] == "pallas_triton_kernel"}
  assert set(pallas) == {"pre_mlp_layer_norm", "pre_attention_layer_norm"}
  assert pallas["pre_mlp_layer_norm"]["bytes"] == 2 * 128 + 2 * 128
  assert pallas["pre_attention_layer_norm"]["bytes"] == 128 + 128
  assert all("layers_*" in r["source"] for r in pallas.values())
  assert set(fusions) == {"loop_add_fusion", "input_transpose_fusion", "input_add_transpose_fusion",
                          "fusion", "pallas_triton_kernel"}
  assert summary["fusion_gib"] * 2 ** 30 == 4 * 64 + 128 + 2 * (128 + 128) + 256 + 512 + 256
  text = gpu_layout.report(summary, bandwidth=gpu_layout.memory_bandwidth(
      "gpu_device_info {\n  memory_bandwidth: 4800000000000\n}"))
  assert text.startswith("transposes: 3 moving") and "fmhaScaleBiasSoftmax" in text
  assert "at 4.8 TB/s" in text


def test_array_bytes():
  assert gpu_layout._array_bytes("bf16[612,768,64]{2,1,0}") == 612 * 768 * 64 * 2
  assert gpu_layout._array_bytes("s32[]") == 4
  assert gpu_layout._array_bytes("(f32[2], f32[2])") == 0


def _has_cuda_plugin() -> bool:
  try:
    return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))
  except ModuleNotFoundError:  # no jax_plugins namespace at all
    return False


@pytest.mark.skipif(_has_cuda_plugin(),
                    reason="a CUDA plugin is installed: the missing-plugin message cannot be seen")
def test_without_the_cuda_plugin_it_says_what_to_install(tmp_path):
  config = tmp_path / "h200.txtpb"
  config.write_text('platform_name: "CUDA"\n')
  with pytest.raises(SystemExit, match="pip install jax-cuda13-plugin=="):
    gpu_layout.main(["--target-config", str(config), "--size", "tiny", "--batch", "2",
                     "--input-length", "8", "--target-length", "4", "--prompt-length", "2"])


def test_a_missing_target_config_is_named(tmp_path, capsys):
  """The error said only "is not a file", though the repository ships no target config: it now says
  what the file is, where to get one, and that the CUDA plugin is needed too."""
  with pytest.raises(SystemExit):
    gpu_layout.main(["--target-config", str(tmp_path / "nope.txtpb")])
  err = " ".join(capsys.readouterr().err.split())
  assert f"--target-config {tmp_path / 'nope.txtpb'} is not a file. It names the GPU to compile for" in err
  assert "GpuTargetConfigProto" in err and "this repository does not ship" in err
  assert "xla/backends/gpu/target_config/specs/<gpu>.txtpb" in err and "XLA_FLAGS=--xla_dump_to=DIR" in err
  assert "pip install jax-cuda13-plugin==" in err

"""Reading PEFT prompt-tuning adapters (spot_jax.prompt_peft, through prompt_io.load_prompt): round trips,
PEFT's 2P seq2seq rows, bfloat16, the .safetensors file with its config, named adapters, other adapter
types and the metadata checks."""
import json
import os

import numpy as np
import pytest

from spot_jax import prompt_export as pexp
from spot_jax import prompt_io as pio
from spot_jax import prompt_peft
from test_prompt_io import _prompt


def test_peft_round_trip_and_config(tmp_path):
  from safetensors.numpy import load_file
  p = _prompt(5, 8)
  d = pexp.export_peft(p, str(tmp_path / "adapter"), base_model_name_or_path="google/t5-base-lm-adapt",
                      num_attention_heads=12, num_layers=12)
  cfg = json.load(open(os.path.join(d, "adapter_config.json")))
  assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["task_type"] == "SEQ_2_SEQ_LM"
  assert cfg["num_virtual_tokens"] == 5 and cfg["token_dim"] == 8
  assert cfg["num_transformer_submodules"] == 1 and cfg["inference_mode"] is True
  assert cfg["prompt_tuning_init"] == "RANDOM" and cfg["num_layers"] == 12
  tensors = load_file(os.path.join(d, "adapter_model.safetensors"))
  assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (5, 8)
  np.testing.assert_array_equal(pio.load_prompt(d), p)
  np.testing.assert_array_equal(pio.load_prompt(os.path.join(d, "adapter_model.safetensors")), p)
  assert pio.resolve_prompt(d).format == "peft"


def test_peft_two_submodules_takes_encoder_rows(tmp_path):
  from safetensors.numpy import save_file
  d = tmp_path / "peft2"
  d.mkdir()
  rows = _prompt(6, 4)  # 2 * P with P = 3
  cfg = pexp.peft_adapter_config(3, 4)
  cfg["num_transformer_submodules"] = 2
  (d / "adapter_config.json").write_text(json.dumps(cfg))
  save_file({"prompt_embeddings": rows}, str(d / "adapter_model.safetensors"))
  with pytest.warns(UserWarning, match="first 3"):
    out = pio.load_prompt(str(d))
  np.testing.assert_array_equal(out, rows[:3])
  cfg["num_transformer_submodules"] = 1  # rows disagree with the config now
  (d / "adapter_config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="num_virtual_tokens=3"):
    pio.load_prompt(str(d))


PEFT_BF16 = os.path.join(os.path.dirname(__file__), "fixtures", "hf_formats", "peft_bf16")  # make_hf_formats.py


def test_peft_adapter_of_a_bfloat16_prompt():
  """PEFT's own save_pretrained of a bfloat16 prompt (BF16 safetensors, PEFT's default 2 submodules)."""
  ref = np.load(os.path.join(PEFT_BF16, "outputs.npz"))
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):
    out = pio.load_prompt(PEFT_BF16)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, ref["prompt"])
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):  # the config beside it
    rows = pio.load_prompt(os.path.join(PEFT_BF16, "adapter_model.safetensors"))
  np.testing.assert_array_equal(rows, ref["prompt"])


def test_truncated_peft_adapter_names_the_fix(tmp_path):
  d = pexp.export_peft(_prompt(), str(tmp_path / "adapter"))
  weights = os.path.join(d, "adapter_model.safetensors")
  data = open(weights, "rb").read()
  with open(weights, "wb") as f:
    f.write(data[:-7])
  with pytest.raises(ValueError, match=r"adapter_model\.safetensors is not a readable safetensors file .*"
                                       r"truncated or damaged"):
    pio.load_prompt(d)


# ----------------------------------------------------------------------------------------------------
# PEFT adapters as PEFT writes them (found by an HF/PEFT audit).

def _peft_adapter(directory, rows, **config):
  """An adapter directory as PEFT's save_pretrained writes it: `config` overrides PEFT's seq2seq default
  (PROMPT_TUNING, SEQ_2_SEQ_LM, num_transformer_submodules=2); a value of None drops the key."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  shape = next(iter(rows.values())).shape if isinstance(rows, dict) else rows.shape
  cfg = pexp.peft_adapter_config(shape[0] // 2, shape[1])
  cfg["num_transformer_submodules"] = 2
  cfg.update(config)
  cfg = {k: v for k, v in cfg.items() if v is not None}
  with open(os.path.join(directory, prompt_peft.PEFT_CONFIG), "w") as f:
    json.dump(cfg, f)
  tensors = rows if isinstance(rows, dict) else {"prompt_embeddings": rows}
  save_file(tensors, os.path.join(directory, prompt_peft.PEFT_WEIGHTS), metadata={"format": "pt"})
  return str(directory)


def test_peft_safetensors_file_reads_the_config_beside_it(tmp_path):
  """The adapter_model.safetensors FILE of PEFT's default seq2seq adapter (2P rows) gives the P encoder
  rows, with the warning, exactly as its directory does (it gave all 2P rows as a 2P-token prompt)."""
  rows = _prompt(8, 6)
  d = _peft_adapter(tmp_path / "s2", rows, num_virtual_tokens=4)
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):
    from_dir = pio.load_prompt(d)
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):
    from_file, src = pio.load_prompt_with_source(os.path.join(d, prompt_peft.PEFT_WEIGHTS))
  np.testing.assert_array_equal(from_file, rows[:4])
  np.testing.assert_array_equal(from_file, from_dir)
  assert src.export_dir == d
  # Copied away from its config: an even row count is ambiguous (P + P rows, or one 2P prompt): refused.
  lone = tmp_path / "lone" / "adapter_model.safetensors"
  lone.parent.mkdir()
  lone.write_bytes(open(os.path.join(d, prompt_peft.PEFT_WEIGHTS), "rb").read())
  with pytest.raises(ValueError, match=r"no adapter_config\.json beside it, so its 8 rows may be one 8-token "
                                       r"prompt or 4 encoder \+ 4 decoder rows .*pass the adapter directory"):
    pio.load_prompt(str(lone))
  # An odd row count cannot be P + P rows: one prompt.
  from safetensors.numpy import save_file
  save_file({"prompt_embeddings": _prompt(5, 6)}, str(tmp_path / "lone" / "odd.safetensors"))
  np.testing.assert_array_equal(pio.load_prompt(str(tmp_path / "lone" / "odd.safetensors")), _prompt(5, 6))


def test_named_peft_adapter_points_at_its_subfolder(tmp_path):
  """save_pretrained of an adapter named 'rte' writes OUT/rte/adapter_*: OUT names the subfolder."""
  out = tmp_path / "out"
  _peft_adapter(out / "rte", _prompt(8, 6))
  (out / "README.md").write_text("model card")
  with pytest.raises(ValueError, match=r"out holds no adapter_config\.json itself but PEFT adapters saved under "
                                       r"a name in rte/ .*: pass .*out/rte$"):
    pio.load_prompt(str(out))
  _peft_adapter(out / "mnli", _prompt(8, 6))
  with pytest.raises(ValueError, match=r"in mnli/, rte/ .*pass one of them, e.g. .*out/mnli$"):
    pio.load_prompt(str(out))


def test_other_peft_adapter_types_are_named_and_p_tuning_is_read(tmp_path):
  lora = {f"base_model.model.encoder.block.{i}.layer.0.SelfAttention.{m}.lora_{ab}.weight": _prompt(4, 6)
          for i in range(4) for m in "qv" for ab in "AB"}
  d = _peft_adapter(tmp_path / "lora", lora, peft_type="LORA", num_virtual_tokens=None, token_dim=None,
                    num_transformer_submodules=None)
  for path in (d, os.path.join(d, prompt_peft.PEFT_WEIGHTS)):
    with pytest.raises(ValueError, match=r"lora: this is a LORA adapter, not a soft prompt") as e:
      pio.load_prompt(path)
    assert "lora_A" not in str(e.value)  # not 16 tensor names before the point
  os.remove(os.path.join(d, prompt_peft.PEFT_CONFIG))  # a LoRA file alone: a few names, and what it is
  with pytest.raises(ValueError, match=r"found base_model.*, \.\.\. \(16 tensors\); its lora_A/lora_B tensors "
                                       r"make it a LoRA adapter, not a soft prompt"):
    pio.load_prompt(os.path.join(d, prompt_peft.PEFT_WEIGHTS))
  prefix = _peft_adapter(tmp_path / "prefix", _prompt(4, 24), peft_type="PREFIX_TUNING", num_virtual_tokens=4,
                         token_dim=6)
  with pytest.raises(ValueError, match=r"PREFIX_TUNING adapter, not a soft prompt \(per-layer key/value prefixes"):
    pio.load_prompt(prefix)
  # P-tuning: PEFT saves the reparameterized prompt (its MLP/LSTM output), which is what PEFT feeds the
  # encoder at inference (checked with peft 0.21: equal, and identical logits).
  rows = _prompt(8, 6, seed=3)
  pt = _peft_adapter(tmp_path / "ptuning", rows, peft_type="P_TUNING", num_virtual_tokens=4,
                     encoder_hidden_size=16, encoder_reparameterization_type="MLP")
  with pytest.warns(UserWarning, match="using the first 4"):
    np.testing.assert_array_equal(pio.load_prompt(pt), rows[:4])


def test_peft_metadata_is_checked(tmp_path):
  """task_type, token_dim and num_virtual_tokens x num_transformer_submodules are checked as PEFT does."""
  gpt2 = _peft_adapter(tmp_path / "gpt2", _prompt(4, 6), task_type="CAUSAL_LM", num_virtual_tokens=4,
                       num_transformer_submodules=1)
  with pytest.raises(ValueError, match=r"gpt2: task_type is 'CAUSAL_LM' \(a decoder-only model's prompt.*not "
                                       r"SEQ_2_SEQ_LM.*save prompt_embeddings as a \.npy"):
    pio.load_prompt(gpt2)
  bad_td = _peft_adapter(tmp_path / "bad_td", _prompt(4, 6), num_virtual_tokens=4, num_transformer_submodules=1,
                         token_dim=3)
  with pytest.raises(ValueError, match=r"prompt_embeddings is 6 wide but adapter_config\.json says token_dim=3 "
                                       r"\(PEFT refuses to load it\)"):
    pio.load_prompt(bad_td)
  # P rows under num_transformer_submodules=2 (PEFT wants 2P): refused, not taken as is.
  half = _peft_adapter(tmp_path / "half", _prompt(4, 6), num_virtual_tokens=4)
  with pytest.raises(ValueError, match=r"4 rows but adapter_config\.json says num_virtual_tokens=4, "
                                       r"num_transformer_submodules=2, i\.e\. 8 rows"):
    pio.load_prompt(half)
  # No num_transformer_submodules: PEFT's default for SEQ_2_SEQ_LM is 2, so 2P rows are P + P.
  rows = _prompt(6, 6)
  nosubs = _peft_adapter(tmp_path / "nosubs", rows, num_virtual_tokens=3, num_transformer_submodules=None)
  with pytest.warns(UserWarning, match="using the first 3"):
    np.testing.assert_array_equal(pio.load_prompt(nosubs), rows[:3])
  # A PEFT adapter directory gives its base model for an export (absolute when local and relative).
  assert pio.read_export_info(gpt2) == {}
  cfg = json.load(open(os.path.join(nosubs, prompt_peft.PEFT_CONFIG)))
  cfg["base_model_name_or_path"] = "google/t5-v1_1-base"
  json.dump(cfg, open(os.path.join(nosubs, prompt_peft.PEFT_CONFIG), "w"))
  assert pio.read_export_info(nosubs) == {"frozen_model": "google/t5-v1_1-base"}


def test_a_count_written_as_a_string_is_named_as_such(tmp_path):
  """Before: `"num_virtual_tokens": "4"` gave "4 rows but ... num_virtual_tokens=4 ... i.e. 4 rows"."""
  adapter = _peft_adapter(tmp_path / "s", _prompt(4, 6), num_virtual_tokens="4", num_transformer_submodules=1)
  with pytest.raises(ValueError, match=r'adapter_config\.json says num_virtual_tokens="4", not a positive integer '
                                       r"as PEFT writes it"):
    pio.load_prompt(adapter)

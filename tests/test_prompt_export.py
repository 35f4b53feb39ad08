"""Prompt exports: the trainer's numpy_checkpoints layout, every `spot-jax export` format read back,
atomic writes (a failed write keeps the old export), gs:// through tf.io.gfile."""
import json
import os

import numpy as np
import pytest

from spot_jax import fileio
from spot_jax import prompt_export as pexp
from spot_jax import prompt_io as pio

from gfile_stub import LocalGfile


def _prompt(p=4, d=6, seed=0):
  return np.random.default_rng(seed).normal(size=(p, d)).astype(np.float32)


def test_export_numpy_checkpoint_layout(tmp_path):
  model_dir = str(tmp_path / "m")
  p = _prompt()
  out = pexp.export_numpy_checkpoint(p, model_dir, 7)
  assert out == pio.checkpoint_export_dir(model_dir, 7)
  assert out.endswith("numpy_checkpoints/checkpoint_7")
  assert sorted(os.listdir(out)) == ["encoder.prompt.prompt.prompt", "export.json", "prompt.npy"]
  np.testing.assert_array_equal(np.load(os.path.join(out, "encoder.prompt.prompt.prompt")), p)
  np.testing.assert_array_equal(np.load(os.path.join(out, "prompt.npy")), p)
  assert json.load(open(os.path.join(out, "export.json")))["step"] == 7
  # overwriting the same step replaces it
  pexp.export_numpy_checkpoint(2 * p, model_dir, 7)
  np.testing.assert_array_equal(pio.load_prompt(out), 2 * p)
  assert os.listdir(os.path.join(model_dir, "numpy_checkpoints")) == ["checkpoint_7"]


def test_export_prompt_formats(tmp_path):
  p = _prompt()
  for fmt in pexp.EXPORT_FORMATS:
    out = pexp.export_prompt(p, str(tmp_path / f"out_{fmt}"), fmt)
    np.testing.assert_array_equal(pio.load_prompt(out), p)
  assert os.path.exists(tmp_path / "out_t5x" / "encoder.prompt.prompt.prompt")
  with pytest.raises(ValueError, match="unknown export format"):
    pexp.export_prompt(p, str(tmp_path / "x"), "pt")


def test_failed_export_leaves_no_partial_directory(tmp_path, disk_full):
  model_dir = str(tmp_path / "m")
  old = _prompt(seed=1)
  pexp.export_numpy_checkpoint(old, model_dir, 3)
  disk_full.arm()
  with pytest.raises(OSError, match="disk full"):
    pexp.export_numpy_checkpoint(_prompt(seed=2), model_dir, 3)
  disk_full.arm()
  with pytest.raises(OSError, match="disk full"):
    pexp.export_numpy_checkpoint(_prompt(seed=2), model_dir, 4)
  disk_full.disarm()
  assert sorted(os.listdir(os.path.join(model_dir, "numpy_checkpoints"))) == ["checkpoint_3"]
  np.testing.assert_array_equal(pio.load_prompt(model_dir), old)  # the old export is intact


def test_gcs_paths_go_through_gfile(tmp_path, monkeypatch):
  fake = LocalGfile(tmp_path)
  monkeypatch.setattr(fileio, "gfile", lambda: fake)
  p = _prompt()
  pexp.export_numpy_checkpoint(p, "gs://bucket/run", 5)
  pexp.export_numpy_checkpoint(2 * p, "gs://bucket/run", 5)  # replace an existing export
  assert {"GFile", "rename", "makedirs", "rmtree"} <= fake.used
  local = tmp_path / "run" / "numpy_checkpoints" / "checkpoint_5"
  np.testing.assert_array_equal(np.load(local / "encoder.prompt.prompt.prompt"), 2 * p)
  np.testing.assert_array_equal(pio.load_prompt("gs://bucket/run"), 2 * p)
  pexp.save_npy(p, "gs://bucket/x/p.npy")
  np.testing.assert_array_equal(np.load(tmp_path / "x" / "p.npy"), p)


# ----------------------------------------------------------------------------------------------------
# PEFT exports and the base model they name (found by an HF/PEFT audit).

def _fake_hf_dir(path):
  """What detect_format takes for a Hugging Face folder (the export only names it; nothing is loaded)."""
  os.makedirs(path)
  for name in ("config.json", "model.safetensors"):
    open(os.path.join(path, name), "w").write("{}")
  return str(path)


def test_frozen_model_is_recorded_absolute(tmp_path, monkeypatch):
  """INITIAL_CHECKPOINT_PATH typed relative: export.json records it absolute, so a PEFT export made from
  any directory names it for AutoPeftModelForSeq2SeqLM; Hub ids and gs:// are kept as given."""
  monkeypatch.chdir(tmp_path)
  _fake_hf_dir(tmp_path / "models" / "t5")
  exp = pexp.export_numpy_checkpoint(_prompt(), "run", 3, frozen_model="models/t5")
  assert json.load(open(os.path.join(exp, "export.json")))["frozen_model"] == str(tmp_path / "models" / "t5")
  for frozen in ("google/t5-v1_1-base", "gs://bucket/t5"):
    exp = pexp.export_numpy_checkpoint(_prompt(), "run", 3, frozen_model=frozen)
    assert json.load(open(os.path.join(exp, "export.json")))["frozen_model"] == frozen


def test_cli_export_from_another_directory_keeps_the_base_model(tmp_path, monkeypatch, capsys):
  from spot_jax import __main__ as cli
  monkeypatch.chdir(tmp_path)
  hf = _fake_hf_dir(tmp_path / "models" / "t5")
  pexp.export_numpy_checkpoint(_prompt(), "run", 3, frozen_model="models/t5")  # as the trainer passes it
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  assert cli.main(["export", "../run", "a1", "--format", "peft"]) == 0
  assert json.load(open("a1/adapter_config.json"))["base_model_name_or_path"] == hf
  assert "note:" not in capsys.readouterr().err


def test_cli_peft_to_peft_export_carries_the_base_model_over(tmp_path, capsys):
  from spot_jax import __main__ as cli
  hf = _fake_hf_dir(tmp_path / "t5")
  src = pexp.export_peft(_prompt(), str(tmp_path / "a1"), base_model_name_or_path=hf)
  assert cli.main(["export", src, str(tmp_path / "a2"), "--format", "peft"]) == 0
  assert json.load(open(tmp_path / "a2" / "adapter_config.json"))["base_model_name_or_path"] == hf
  assert "note:" not in capsys.readouterr().err


def test_cli_export_of_a_peft_safetensors_file_takes_the_encoder_rows(tmp_path, capsys):
  """The adapter_model.safetensors file of PEFT's default seq2seq adapter (2P rows): the export holds the
  P encoder rows (it passed all 2P on) and names the adapter's base model."""
  from safetensors.numpy import save_file
  from spot_jax import __main__ as cli
  hf = _fake_hf_dir(tmp_path / "t5")
  src = tmp_path / "peft_s2"
  src.mkdir()
  cfg = pexp.peft_adapter_config(4, 6, base_model_name_or_path=hf)
  cfg["num_transformer_submodules"] = 2
  (src / "adapter_config.json").write_text(json.dumps(cfg))
  rows = _prompt(8, 6)
  save_file({"prompt_embeddings": rows}, str(src / "adapter_model.safetensors"))
  with pytest.warns(UserWarning, match="using the first 4"):
    assert cli.main(["export", str(src / "adapter_model.safetensors"), str(tmp_path / "out"), "--format", "peft"]) == 0
  out_cfg = json.load(open(tmp_path / "out" / "adapter_config.json"))
  assert out_cfg["num_virtual_tokens"] == 4 and out_cfg["base_model_name_or_path"] == hf
  np.testing.assert_array_equal(pio.load_prompt(str(tmp_path / "out")), rows[:4])

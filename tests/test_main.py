"""The `spot-jax` entry point: dispatch, help, and `export` into each prompt format."""
import errno
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from spot_jax import __main__ as cli
from spot_jax import prompt_export


@pytest.fixture
def model_dir(tmp_path):
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
  prompt_export.export_numpy_checkpoint(prompt, str(tmp_path / "run"), 10)
  prompt_export.export_numpy_checkpoint(prompt + 1, str(tmp_path / "run"), 20)
  return tmp_path / "run", prompt + 1


def test_export_to_each_format(model_dir, tmp_path, capsys):
  run, latest = model_dir
  assert cli.main(["export", str(run), str(tmp_path / "p.npy"), "--format", "npy"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), latest)
  assert cli.main(["export", str(run), str(tmp_path / "t5x"), "--format", "t5x"]) == 0
  with open(tmp_path / "t5x" / "encoder.prompt.prompt.prompt", "rb") as f:
    np.testing.assert_array_equal(np.load(f), latest)
  assert cli.main(["export", str(run), str(tmp_path / "peft"), "--format", "peft", "--base_model", "t5-base"]) == 0
  tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
  assert list(tensors) == ["prompt_embeddings"]
  np.testing.assert_array_equal(tensors["prompt_embeddings"], latest)
  config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
  assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "SEQ_2_SEQ_LM"
  assert config["num_virtual_tokens"] == 3 and config["token_dim"] == 4
  assert config["num_transformer_submodules"] == 1 and config["base_model_name_or_path"] == "t5-base"
  assert "wrote peft prompt (3, 4)" in capsys.readouterr().out


def test_help_and_unknown_command(capsys):
  assert cli.main([]) == 0
  assert "spot-jax demo" in capsys.readouterr().out
  assert cli.main(["frobnicate"]) == 2
  assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_export_never_replaces_other_files(model_dir, tmp_path, capsys):
  run, latest = model_dir
  user_dir = tmp_path / "mine"
  user_dir.mkdir()
  (user_dir / "important.txt").write_text("keep me")
  for fmt in ("peft", "t5x"):
    for extra in ([], ["--overwrite"]):
      assert cli.main(["export", str(run), str(user_dir), "--format", fmt, *extra]) == 1
      assert "holds files that are not a" in capsys.readouterr().err
  assert sorted(p.name for p in user_dir.iterdir()) == ["important.txt"]
  assert cli.main(["export", str(run), str(user_dir), "--format", "npy"]) == 1
  assert "is a directory, but an npy export is one file" in capsys.readouterr().err


def test_export_replaces_its_own_kind_only_with_overwrite(model_dir, tmp_path, capsys):
  run, latest = model_dir
  for fmt, out in (("npy", tmp_path / "p.npy"), ("peft", tmp_path / "peft"), ("t5x", tmp_path / "t5x")):
    assert cli.main(["export", str(run / "numpy_checkpoints" / "checkpoint_10"), str(out), "--format", fmt]) == 0
    assert cli.main(["export", str(run), str(out), "--format", fmt]) == 1
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(run), str(out), "--format", fmt, "--overwrite"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), latest)
  tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
  np.testing.assert_array_equal(tensors["prompt_embeddings"], latest)


def test_export_to_an_unwritable_place_names_it(model_dir, tmp_path, capsys, monkeypatch):
  run, _ = model_dir
  from spot_jax import fileio

  real_open = fileio.open_file

  def denied(path, mode):  # what a read-only folder does (the suite runs as root, which may write anywhere)
    if "w" in mode:
      raise PermissionError(errno.EACCES, "Permission denied", path)
    return real_open(path, mode)
  monkeypatch.setattr(fileio, "open_file", denied)
  assert cli.main(["export", str(run), str(tmp_path / "p.npy"), "--format", "npy"]) == 1
  err = capsys.readouterr().err
  assert f"cannot write {tmp_path / 'p.npy'}: Permission denied" in err and ".tmp-" not in err
  assert not list(tmp_path.glob("p.npy*"))

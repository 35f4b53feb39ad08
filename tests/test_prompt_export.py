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

"""Orbax checkpoints of the prompt's train state: round trip, retention, clear restore errors."""
import gc
import logging
import sys

import jax
import numpy as np
import pytest

from spot_jax import checkpointing, optim
from spot_jax import train_step as ts


def _state(step, value):
  tx = optim.adafactor()
  s = ts.init_state(np.full((3, 4), value, np.float32), tx)
  return s._replace(step=jax.numpy.asarray(step, jax.numpy.int32))


def test_round_trip_and_retention(tmp_path):
  ckpts = checkpointing.PromptCheckpoints(str(tmp_path), keep=2)
  for step in (5, 10, 15):
    ckpts.save(_state(step, step / 10), {"step": step, "data_batches_consumed": step})
  ckpts.wait()
  assert ckpts.latest_step() == 15
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [10, 15]
  hooks = sys.unraisablehook, sys.excepthook
  restored, meta = ckpts.restore(_state(0, 0.0))
  assert (sys.unraisablehook, sys.excepthook) == hooks  # a good restore leaves no filter behind
  assert int(restored.step) == 15 and meta["data_batches_consumed"] == 15
  np.testing.assert_array_equal(np.asarray(restored.prompt), np.full((3, 4), 1.5, np.float32))
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(_state(0, 0.0).opt_state)
  ckpts.close()


def test_saving_a_step_twice_is_a_no_op(tmp_path):
  ckpts = checkpointing.PromptCheckpoints(str(tmp_path), keep=3, async_save=False)
  ckpts.save(_state(3, 1.0), {"step": 3})
  assert ckpts.save(_state(3, 2.0), {"step": 3}) is False
  restored, _ = ckpts.restore(_state(0, 0.0))
  assert float(restored.prompt[0, 0]) == 1.0


def test_restoring_into_another_prompt_shape_explains_the_fix(tmp_path):
  ckpts = checkpointing.PromptCheckpoints(str(tmp_path), keep=3, async_save=False)
  ckpts.save(_state(3, 1.0), {"step": 3})
  ckpts.close()
  # A resumed run opens a new manager on the directory: the check must work from disk alone.
  reopened = checkpointing.PromptCheckpoints(str(tmp_path), keep=3, async_save=False)
  assert reopened._saved_prompt_shape(3) == (3, 4)
  wrong = ts.init_state(np.zeros((7, 4), np.float32), optim.adafactor())
  with pytest.raises(ValueError, match=r"holds a prompt of shape \(3, 4\), but this run's prompt "
                                         r"is \(7, 4\).*start a new MODEL_DIR") as err:
    reopened.restore(wrong)
  assert "corrupt" not in str(err.value)  # a good checkpoint must not be called corrupt
  reopened.close()


def test_a_relative_model_dir_works(tmp_path, monkeypatch):
  """`--model_dir runs/x` (what `spot-jax demo` passes by default): orbax itself wants absolute."""
  monkeypatch.chdir(tmp_path)
  ckpts = checkpointing.PromptCheckpoints("runs/x", keep=3)
  ckpts.save(_state(4, 0.5), {"step": 4})
  ckpts.wait()
  assert (tmp_path / "runs" / "x" / "checkpoints" / "4").is_dir()
  restored, _ = ckpts.restore(_state(0, 0.0))
  assert int(restored.step) == 4 and float(restored.prompt[0, 0]) == 0.5
  ckpts.close()


def test_a_corrupt_checkpoint_is_a_short_user_error_naming_the_step_to_delete(tmp_path, monkeypatch, caplog):
  ckpts = checkpointing.PromptCheckpoints(str(tmp_path), keep=3, async_save=False)
  ckpts.save(_state(3, 1.0), {"step": 3})
  ckpts.close()
  for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":  # the array data files
      f.write_bytes(f.read_bytes()[:7])
  reopened = checkpointing.PromptCheckpoints(str(tmp_path), keep=3, async_save=False)
  reported = []  # what would be printed as tracebacks (pytest's own hook turns them into warnings)
  monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
  monkeypatch.setattr(sys, "excepthook", lambda t, v, tb: reported.append(v))
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"cannot restore the training checkpoint at step 3 .* delete .*checkpoints/3 to "
                           r"resume from the one before") as err:
    reopened.restore(_state(0, 0.0))
  assert isinstance(err.value, ValueError)  # the CLIs print ValueErrors as one line
  assert "tensorstore_spec" not in str(err.value) and len(str(err.value)) < 800
  gc.collect()  # orbax's abandoned read tasks are logged when collected
  # Nothing but that one line: the reads still in flight when orbax gave up used to print 0 to 16
  # "Event loop is closed" tracebacks and "exception was never retrieved" records around it.
  assert not [e for e in reported if "Event loop is closed" in str(e)]
  assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
  logging.getLogger("asyncio").removeFilter(checkpointing._drop_unretrieved_futures)


def test_a_file_where_the_checkpoints_go_is_refused_before_any_save(tmp_path):
  (tmp_path / "checkpoints").write_text("x")
  with pytest.raises(NotADirectoryError, match=r"checkpoints is a file, but it must be a directory \(the "
                                               r"training checkpoints go there\): move the file away"):
    checkpointing.PromptCheckpoints(str(tmp_path))

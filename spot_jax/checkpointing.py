"""Where training state is saved and resumed: orbax checkpoints of prompt + optimizer + step.

The frozen model is never saved here (it is the INITIAL_CHECKPOINT_PATH). Saves are asynchronous and
atomic (orbax writes a temporary directory and renames it), so a run killed at any moment resumes
from its last complete checkpoint. `meta` holds the data position and the run's identity.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional, Tuple

import jax
import orbax.checkpoint as ocp

from spot_jax import fileio
from spot_jax.train_step import TrainState

CHECKPOINTS_SUBDIR = "checkpoints"


def _closed_loop(exc) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _drop_closed_loop_callbacks(previous_unraisable, previous_except):
  """sys.unraisablehook and sys.excepthook that drop `RuntimeError: Event loop is closed` and pass on
  the rest. When one read of a restore fails, orbax closes its asyncio loop while TensorStore reads
  are still in flight; each of those then fails to call back into the closed loop and printed its
  traceback around the one-line error (0 to 16 of them, at random)."""
  def unraisable_hook(unraisable):
    if not _closed_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  def except_hook(exc_type, exc, tb):
    if not _closed_loop(exc):
      previous_except(exc_type, exc, tb)
  return unraisable_hook, except_hook


def _drop_unretrieved_futures(record: logging.LogRecord) -> bool:
  """A logging filter for the `asyncio` logger after a failed restore: the failed reads' futures that
  nobody awaited any more are logged at garbage collection with the same error, spec and all."""
  return not record.getMessage().startswith(("Task exception was never retrieved",
                                             "Future exception was never retrieved"))


class CheckpointRestoreError(ValueError):
  """A training checkpoint that cannot be read back (corrupt, or written by another run's settings)."""


class PromptCheckpoints:
  """Save every `save_period` steps, keep `keep` of them, restore the latest."""

  def __init__(self, model_dir: str, keep: Optional[int] = 3, async_save: bool = True):
    # orbax refuses relative paths (`--model_dir runs/x`), so local ones are made absolute here.
    directory = os.path.abspath(os.path.join(model_dir, CHECKPOINTS_SUBDIR)) \
        if "://" not in model_dir else model_dir.rstrip("/") + "/" + CHECKPOINTS_SUBDIR
    self.directory = directory
    fileio.check_not_a_file(directory, "the training checkpoints go there")  # else async saves fail unseen
    # Handlers named up front: without them a manager opened on an existing directory (a resumed
    # run) knows no item's metadata until its first save, and cannot check the prompt's shape.
    # create=False: the first save makes the directory, so a run refused before it (a prompt file of
    # the wrong shape) leaves no empty checkpoints/ behind to be mistaken for a started run.
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state: TrainState, meta: dict, force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    if step in (self._manager.all_steps() or []):
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state._asdict()), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: TrainState, step: Optional[int] = None) -> Tuple[TrainState, dict]:
    """Restore onto the shardings of `abstract_state` (a TrainState of arrays or ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state._asdict())
    # From the first read on (the metadata's too): reads that fail leave others in flight.
    previous_hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook, sys.excepthook = _drop_closed_loop_callbacks(*previous_hooks)
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_futures)
    saved = self._saved_prompt_shape(step)
    if saved is not None and saved != tuple(target["prompt"].shape):
      # Checked before orbax starts reading: its failed reads would otherwise linger.
      raise ValueError(
          f"the training checkpoint at step {step} in {self.directory} holds a prompt of shape "
          f"{saved}, but this run's prompt is {tuple(target['prompt'].shape)} (PROMPT_LENGTH or "
          f"the model's d_model changed): start a new MODEL_DIR, or set them back to resume")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (the filters stay: late reads still call back)
      time.sleep(0.5)  # let the reads in flight finish now, under the filter, not at interpreter exit
      raise CheckpointRestoreError(
          f"cannot restore the training checkpoint at step {step} in {self.directory}: "
          f"{fileio.short_error(e)}. If the prompt length or optimizer changed, start a new MODEL_DIR; if the "
          f"checkpoint is corrupt, delete {self.directory}/{step} to resume from the one before.") from e
    sys.unraisablehook, sys.excepthook = previous_hooks
    logging.getLogger("asyncio").removeFilter(_drop_unretrieved_futures)
    return TrainState(**restored.state), dict(restored.meta)

  def saved_meta(self, step: int) -> dict:
    """The run identity saved with `step` (task, data position, frozen model), read alone: the run can
    be checked before the prompt and its optimizer state are. {} when it cannot be read (a damaged
    checkpoint is reported by `restore`)."""
    try:
      return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    except Exception:  # pylint: disable=broad-except
      return {}

  def _saved_prompt_shape(self, step: int) -> Optional[tuple]:
    """The prompt's shape from the checkpoint's metadata (no array is read), or None when the
    metadata cannot say."""
    try:
      shape = self._manager.item_metadata(step)["state"].tree["prompt"].shape
    except Exception:  # pylint: disable=broad-except  (older or partial metadata: orbax decides)
      return None
    return tuple(shape) if shape is not None else None

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def close_after_error(self):
    """On the way out of a failed run: let an in-flight save finish (its checkpoint is the one a rerun
    resumes from) and stop orbax's threads, which would otherwise hold the exiting process for
    minutes. A failure here is logged, never raised over the run's own error."""
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.getLogger("spot_jax.train").warning("closing the checkpoints after an error: %s",
                                                  fileio.short_error(e))

"""What a resumed training run completes that its predecessor left undone at the step it resumes from,
and what a fresh start (no checkpoint to resume) must not overwrite.

A step is exported, checkpointed, then evaluated (`train.train`); a run stopped between these (a failed
export or evaluation, a preemption) resumes at the checkpoint, and the trainer calls these first: the
step's missing export, a task-embedding export of a step it will not train again, the evaluation.

A fresh start rewrites MODEL_DIR's exports and drops its metrics records: it is refused when they are
another run's (`check_fresh_start`), and goes on over what a start of the same run left before its
first checkpoint (`FRESH_START` records that start until the checkpoint is written).
"""
from __future__ import annotations

import logging
import os
import time

from spot_jax import fileio, prompt_export, prompt_io

log = logging.getLogger("spot_jax.train")

# In MODEL_DIR from a fresh start until its first checkpoint is written: {"task": ..., "started": ...}.
FRESH_START = ".fresh_start.json"


def export_missing(export_dir: str) -> bool:
  return prompt_io.export_file(export_dir) is None


def evaluated_at(model_dir: str, step: int) -> bool:
  """Whether metrics.jsonl holds the evaluation of `step` (every process reads the same file)."""
  from spot_jax import metrics_log
  path = fileio.join(model_dir, metrics_log.JSONL_NAME)
  if not fileio.exists(path):
    return False
  return any(r.get("step") == step and any(k.startswith("eval/") for k in r)
             for r in metrics_log.read_jsonl(path))


def recover_task_embedding(model_dir: str, task_embedding_step: int, start_step: int, is_main: bool) -> None:
  """The task-embedding export of a run resumed at or past TASK_EMBEDDING_STEP without it (a run first
  trained without one, or stopped before writing it): the step's checkpoint export when there is one,
  else a refusal, since this run never trains that step again."""
  saved = prompt_io.checkpoint_export_dir(model_dir, task_embedding_step)
  if export_missing(saved):
    raise ValueError(
        f"TASK_EMBEDDING_STEP={task_embedding_step}, but {model_dir} resumes at step {start_step}, past it, and "
        f"holds no task-embedding export nor a numpy export of step {task_embedding_step} to take it from: "
        f"this run would never write one. Use a new MODEL_DIR, or set TASK_EMBEDDING_STEP to a step after "
        f"{start_step} (or to a saved step: {saved_steps(model_dir)})")
  if is_main:
    prompt, info = prompt_io.load_prompt(saved), prompt_io.read_export_info(saved)
    prompt_export.export_numpy_checkpoint(prompt, model_dir, task_embedding_step, name=prompt_io.TASK_EMBEDDING_EXPORT,
                                          frozen_model=info.get("frozen_model"), task=info.get("task"))
  log.info("task-embedding export of step %d taken from %s (the run resumed past that step)", task_embedding_step,
           saved)


def saved_steps(model_dir: str) -> list:
  return [s for s, _ in prompt_io.find_exports(model_dir).checkpoints]


def check_fresh_start(model_dir: str, task: str) -> None:
  """Refuses a fresh start in a MODEL_DIR that holds numpy exports, metrics.jsonl records or seqio's
  inference_eval logs but no checkpoint: a finished run whose checkpoints/ were deleted to save space,
  or an EVAL_OUTPUT_DIR. The start would overwrite the exports and drop the records (even for another
  task). What a start of this run (same task) left before its first checkpoint is its own: it goes on.
  While a run holds MODEL_DIR, its lock refuses this one, naming it (its files are not to be deleted)."""
  exports = prompt_io.find_exports(model_dir)
  held, paths = _held_results(model_dir, exports)
  if not held or _fresh_start_task(model_dir) == task or fileio.lock_holder(model_dir):
    return
  of = _export_task(exports)
  whose = f" (they are of {of!r}; this run trains {task!r})" if of and of != task else ""
  raise ValueError(f"{model_dir} holds {', '.join(held)} but no training checkpoint to resume (checkpoints/ "
                   f"is missing or empty): a fresh start would overwrite them{whose}. Use a new MODEL_DIR, or "
                   f"delete {' and '.join(paths)} in it to start over there")


def begin_fresh_start(model_dir: str, task: str) -> None:
  """Marks MODEL_DIR as this run's from a fresh start on (process 0, under the run's lock)."""
  fileio.write_json_atomic(fileio.join(model_dir, FRESH_START), {"task": task, "started": round(time.time(), 3)})


def end_fresh_start(model_dir: str) -> None:
  """The run's first checkpoint is written: a rerun resumes it, and its outputs are a run's results."""
  path = fileio.join(model_dir, FRESH_START)
  if fileio.exists(path):
    fileio.gfile().remove(path) if fileio.is_remote(path) else os.remove(path)


def _fresh_start_task(model_dir: str):
  try:
    return fileio.read_json_object(fileio.join(model_dir, FRESH_START)).get("task")
  except (OSError, ValueError):  # none, or damaged: not known to be this run's
    return None


def _held_results(model_dir: str, exports):
  """(what, paths) of the results in MODEL_DIR that a fresh start would overwrite or drop."""
  from spot_jax import metrics_log  # pylint: disable=g-import-not-at-top
  held, paths = [], []
  names = [f"checkpoint_{s}" for s, _ in exports.checkpoints]
  if len(names) > 4:
    names = [names[0], "...", f"{names[-1]} ({len(names)})"]
  names += [n for n, d in ((prompt_io.BEST_EXPORT, exports.best),
                           (prompt_io.TASK_EMBEDDING_EXPORT, exports.task_embedding)) if d]
  if names:
    held.append(f"numpy exports ({prompt_io.NUMPY_CHECKPOINTS_DIR}/: {', '.join(names)})")
    paths.append(f"{prompt_io.NUMPY_CHECKPOINTS_DIR}/")
  steps = _logged_steps(fileio.join(model_dir, metrics_log.JSONL_NAME))
  if steps is not None:
    held.append(f"{metrics_log.JSONL_NAME} ({_describe_steps(steps)})")
    paths.append(metrics_log.JSONL_NAME)
  eval_dir = fileio.join(model_dir, "inference_eval")
  if fileio.isdir(eval_dir) and any(_logged_steps(fileio.join(eval_dir, n.rstrip("/"))) is not None
                                    for n in fileio.listdir(eval_dir) if n.rstrip("/").endswith("-metrics.jsonl")):
    held.append("seqio's evaluation logs (inference_eval/*-metrics.jsonl)")
    paths.append("inference_eval/")
  return held, paths


def _logged_steps(path: str):
  """The steps of the records in a JSONL log ([] when it cannot be read); None when it holds none."""
  from spot_jax import metrics_log  # pylint: disable=g-import-not-at-top
  if not fileio.exists(path) or fileio.isdir(path):
    return None
  with fileio.open_file(path, "r") as f:
    if not f.read().strip():
      return None
  try:
    return sorted({r["step"] for r in metrics_log.read_jsonl(path) if isinstance(r.get("step"), int)})
  except ValueError:
    return []


def _describe_steps(steps) -> str:
  if not steps:
    return "records"
  return f"records of step {steps[0]}" if len(steps) == 1 else f"records of steps {steps[0]}-{steps[-1]}"


def _export_task(exports):
  """The task the run's exports record (export.json's "task"; exports written before it: None)."""
  for directory in [d for _, d in exports.checkpoints] + [exports.best, exports.task_embedding]:
    task = prompt_io.read_export_info(directory).get("task") if directory else None
    if task:
      return task
  return None

"""What a resumed training run completes that its predecessor left undone at the step it resumes from.

A step is exported, checkpointed, then evaluated (`train.train`); a run stopped between these (a failed
export or evaluation, a preemption) resumes at the checkpoint, and the trainer calls these first: the
step's missing export, a task-embedding export of a step it will not train again, the evaluation.
"""
from __future__ import annotations

import logging

from spot_jax import fileio, prompt_export, prompt_io

log = logging.getLogger("spot_jax.train")


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
    prompt = prompt_io.load_prompt(saved)
    prompt_export.export_numpy_checkpoint(prompt, model_dir, task_embedding_step, name=prompt_io.TASK_EMBEDDING_EXPORT,
                                          frozen_model=prompt_io.read_export_info(saved).get("frozen_model"))
  log.info("task-embedding export of step %d taken from %s (the run resumed past that step)", task_embedding_step,
           saved)


def saved_steps(model_dir: str) -> list:
  return [s for s, _ in prompt_io.find_exports(model_dir).checkpoints]

"""What every run of a SPoT pipeline shares, and how a prompt's validation metrics are scored.

Its own module so that the pipeline and zero-shot ranking both build on it without importing each
other.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What every training/evaluation run of the pipeline shares (the budget is passed per call).

  `prompt_init` is the initializer of source runs, task-embedding runs and the baseline (None: the
  trainer's default, random uniform 0.5). `metric` picks the validation metric that decides
  (best-of-top-k, zero-shot ranking); None averages all metrics of the task.
  """
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {"inputs": 512, "targets": 16})
  batch_size: int = 32
  prompt_length: int = 100
  prompt_init: Any = None
  seed: int = 0
  num_partitions: int = 1
  enable_dropout: bool = True
  log_period: int = 100
  save_period: int = 1000  # checkpoints every N steps (SAVE_PERIOD), so a killed run resumes
  eval_split: str = "validation"
  eval_batch_size: Optional[int] = None
  eval_num_examples: Optional[int] = None
  metric: Optional[str] = None
  optimizer: Any = None
  # The global step Adafactor's decay counts from (train's INITIAL_CHECKPOINT_STEP); None: train's own
  # default, which is 0 for the in-memory frozen model the pipeline passes.
  initial_step: Optional[int] = None
  # The gin configuration of the `spot` / `spot source` command (gin.config_str()), written to each
  # run's MODEL_DIR/config.gin as `spot_jax.train` writes its own; None (the Python API): none written.
  config_gin: Optional[str] = dataclasses.field(default=None, repr=False, compare=False)


def evaluate_prompt(frozen, task: str, prompt, run: RunConfig) -> Dict[str, float]:
  """Validation metrics `{metric: value}` of `prompt` on `task` (`{task/metric: value}` for a mixture)."""
  from spot_jax import evaluation  # pylint: disable=g-import-not-at-top
  config, params = frozen
  results = evaluation.evaluate(task, config, params, None if prompt is None else np.asarray(prompt),
                                dict(run.task_feature_lengths), split=run.eval_split,
                                batch_size=run.eval_batch_size or run.batch_size,
                                num_examples=run.eval_num_examples)
  if set(results) == {task}:
    return {k: float(v) for k, v in results[task].items() if _is_number(v)}
  return {f"{t}/{k}": float(v) for t, m in results.items() for k, v in m.items() if _is_number(v)}


def _is_number(v) -> bool:
  return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def score_of(metrics: Mapping[str, float], metric: Optional[str] = None) -> float:
  """The number that decides: `metric` (a name, or a `task/name` suffix), else the mean of all."""
  if not metrics:
    raise ValueError("no validation metrics to compare: the task has no metric functions or no "
                     "validation split")
  if metric:
    hits = [v for k, v in metrics.items() if k == metric or k.endswith("/" + metric)]
    if not hits:
      raise ValueError(f"metric {metric!r} is not among the validation metrics {sorted(metrics)}; set "
                       "BEST_METRIC (--gin.BEST_METRIC) to one of them")
    return float(np.mean(hits))
  return float(np.mean(list(metrics.values())))

"""The whole trainer (`spot_jax.train.train`) timed at the bench's shapes, beside the bare step.

`bench train` times the jitted step on batches already on the device; this runs the real loop on a
bundled task (seqio/tf.data input, host-to-device placement, logging, checkpoint at the end), so the
difference between the two is what the loop and the input pipeline cost. Timing uses the loop's own
syncs: the trainer reads metrics back only every `log_period` steps, so the time between two such
steps, divided by `log_period`, is the loop's throughput; the first window (compilation) is left out.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

TASK = "spot_bundled_movie"


def run(size: str = "small", batch: int = 8, input_length: int = 128, target_length: int = 8,
        prompt_length: int = 100, dropout: float = 0.1, steps: int = 40, log_period: int = 10,
        dtype: str = "float32", weight_dtype: str = "float32",
        config_overrides: dict | None = None, seed: int = 0) -> dict:
  """Train `steps` steps from a random init; returns per-window step times and their median."""
  import tasks.bundled  # noqa: F401  pylint: disable=unused-import  (registers spot_bundled_*)
  from spot_jax import train
  from spot_jax.config import size_config

  if steps < 2 * log_period:
    raise ValueError(f"steps={steps} must be at least 2 * log_period={2 * log_period}: the first "
                     "window holds the compilation and is not counted")
  config = size_config(size, dtype=dtype, dropout_rate=dropout, **(config_overrides or {}))
  marks = {}

  def mark(step, state):  # runs right after the loop's own sync at log steps
    if step % log_period == 0:
      marks[step] = time.perf_counter()

  with tempfile.TemporaryDirectory() as model_dir:
    start = time.perf_counter()
    train.train(model_dir=model_dir, mixture_or_task_name=TASK,
                task_feature_lengths={"inputs": input_length, "targets": target_length},
                train_steps=steps, batch_size=batch, model_config=config,
                prompt_length=prompt_length, seed=seed, save_period=10 ** 9,
                log_period=log_period, enable_dropout=dropout > 0, frozen_dtype=weight_dtype,
                hooks=[mark])
    total_s = time.perf_counter() - start
  logged = sorted(marks)
  windows = [(marks[b] - marks[a]) / (b - a) for a, b in zip(logged, logged[1:])]
  step_s = statistics.median(windows)
  return {"framework": "spot_jax.train", "pid": os.getpid(), "task": TASK, "size": size,
          "batch": batch, "input_length": input_length, "target_length": target_length,
          "prompt_length": prompt_length, "dropout": dropout, "dtype": dtype,
          "weight_dtype": weight_dtype, "steps": steps, "log_period": log_period,
          "window_step_s": windows, "step_s_median": step_s, "examples_per_s": batch / step_s,
          "first_window_s": marks[logged[0]] - start, "total_s": total_s}

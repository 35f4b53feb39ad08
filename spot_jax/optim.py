"""The prompt's optimizer: Adafactor with the prompt-tuning defaults (DESIGN.md §5).

Only the prompt is handed to the optimizer, so frozen parameters never get optimizer state.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import gin
import jax.numpy as jnp
import optax

# id(transformation) -> (transformation, schedule, adafactor's arguments) for every optimizer
# `adafactor` built, so the trainer logs the learning rate from the very schedule the optimizer
# applies, and can rebuild it with the initial checkpoint's step (`with_initial_step`).
_SCHEDULES: Dict[int, Tuple[Any, Callable, Dict[str, Any]]] = {}


def learning_rate_schedule(tx) -> Optional[Callable]:
  """The schedule `count -> learning rate` that `tx` applies (optax counts updates from 0: the
  update that makes step s uses `schedule(s - 1)`); None for an optimizer not built by `adafactor`."""
  entry = _SCHEDULES.get(id(tx))
  return entry[1] if entry is not None and entry[0] is tx else None


def adafactor_arguments(tx) -> Optional[Dict[str, Any]]:
  """The arguments `adafactor` built `tx` with; None for an optimizer built elsewhere."""
  entry = _SCHEDULES.get(id(tx))
  return dict(entry[2]) if entry is not None and entry[0] is tx else None


def with_initial_step(tx, initial_step: int):
  """`tx` rebuilt so that its second-moment decay counts from global step `initial_step` (T5X's step
  restored from the initial checkpoint); the identical object when it already does. None for an
  optimizer not built by `adafactor` (it has no such setting)."""
  arguments = adafactor_arguments(tx)
  if arguments is None:
    return None
  if arguments["initial_step"] == int(initial_step):
    return tx
  arguments["initial_step"] = int(initial_step)
  return adafactor(**arguments)


def second_moment_decay(count, decay_rate: float = 0.8, initial_step: int = 0, step_offset: int = 0):
  """β2 of the update that optax's `count` (0 for a run's first update) makes, as T5X's Adafactor
  computes it at global step `initial_step + count`: 1 − (step − step_offset + 1)^−decay_rate, in
  float32."""
  t = jnp.asarray(initial_step + count - step_offset, jnp.float32) + 1.0
  return 1.0 - t ** (-decay_rate)


# Cached: equal settings give the identical transformation object, so the trainer's compiled step
# (keyed by it) is reused across the many short runs of the SPoT pipeline.
@gin.configurable
@functools.lru_cache(maxsize=None)
def constant_schedule(learning_rate: float = 0.3):
  return optax.constant_schedule(learning_rate)


@gin.configurable
def linear_warmup_rsqrt_decay(learning_rate: float = 0.3, warmup_steps: int = 1000):
  """T5's `rsqrt` schedule: linear warm-up then `lr * sqrt(warmup / step)`."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32) + 1.0
    return learning_rate * jnp.minimum(step / warmup_steps, jnp.sqrt(warmup_steps / step))
  return schedule


@gin.configurable
@functools.lru_cache(maxsize=None)
def adafactor(learning_rate=None, decay_rate: float = 0.8, clipping_threshold: float = 1.0,
              weight_decay: float = 1e-5, factored: bool = False, epsilon: float = 1e-30,
              multiply_by_parameter_scale: bool = False,
              min_dim_size_to_factor: int = 128, step_offset: int = 0,
              initial_step: int = 0) -> optax.GradientTransformation:
  """Adafactor as T5X's prompt tuning runs it.

  β2 = 1 − (step − step_offset + 1)^−decay_rate, update clipping by block RMS, no parameter scaling,
  an unfactored second moment (the prompt is small), and weight decay applied to the parameter
  directly (not scaled by the learning rate, as T5X's Adafactor does).

  `step` is T5X's global step: `initial_step` (the step T5X restores from the initial checkpoint,
  1,100,000 for T5 1.1 LM-adapted's checkpoint_1100000) plus the updates made so far, so prompt
  tuning from such a checkpoint starts at β2 ≈ 0.9999853, not at 0. The trainer sets `initial_step`
  (`spot_jax.train.train.initial_checkpoint_step`); `step_offset` is T5X's hyperparameter of that
  name (0 in prompt-tuning's configs). Only the decay sees the global step: the learning-rate
  schedule counts the run's own updates from 0.

  `factored=True` is T5X's own rule for a 2-D parameter (current `t5x/adafactor.py` ignores the
  logical factor rules at rank ≤ 2 and falls back to its size heuristic): a factored second moment
  when both of the prompt's dimensions are at least `min_dim_size_to_factor`, so prompts of 128 rows
  or more; shorter prompts, such as the papers' 100 rows, are unfactored either way.
  """
  schedule = learning_rate if learning_rate is not None else constant_schedule()
  if isinstance(schedule, (int, float)):
    schedule = optax.constant_schedule(float(schedule))
  for name, value in (("initial_step", initial_step), ("step_offset", step_offset)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"adafactor's {name} must be an integer >= 0, got {value!r}")
  parts = [
      # optax computes β2 from `count - step_offset`: its offset is T5X's less the initial step.
      optax.scale_by_factored_rms(factored=factored, decay_rate=decay_rate, epsilon=epsilon,
                                  step_offset=step_offset - initial_step,
                                  min_dim_size_to_factor=min_dim_size_to_factor),
      optax.clip_by_block_rms(clipping_threshold),
  ]
  if multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms())
  parts.append(optax.scale_by_learning_rate(schedule))
  if weight_decay:
    parts.append(optax.add_decayed_weights(-weight_decay))
  tx = optax.chain(*parts)
  _SCHEDULES[id(tx)] = (tx, schedule, dict(
      learning_rate=learning_rate, decay_rate=decay_rate, clipping_threshold=clipping_threshold,
      weight_decay=weight_decay, factored=factored, epsilon=epsilon,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      min_dim_size_to_factor=min_dim_size_to_factor, step_offset=step_offset, initial_step=initial_step))
  return tx

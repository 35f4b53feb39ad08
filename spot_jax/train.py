"""`python -m spot_jax.train`: gin-configured prompt tuning of a frozen T5 (the T5X `train` analogue).

The data path is straight: task → host batches (input_pipeline) → jitted sharded step (train_step)
over the frozen T5 (frozen_model: loaded, placed, checked on resume) → orbax checkpoint
(checkpointing) and numpy exports (prompt_export). This module only orchestrates.

  python -m spot_jax.train --gin_file=models/t5_1_1.gin --gin_file=prompts/random_uniform.gin \
    --gin_file=models/sizes/tiny.gin --gin_file=runs/prompt_train.gin \
    --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'spot_bundled_movie_sentiment'"
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import contextlib
import hashlib
import logging
import signal
import sys
import time
from typing import Mapping, Optional

import gin
import jax
import numpy as np

from spot_jax import checkpointing, fileio, input_pipeline, optim, partitioning, prompt_export, prompt_io, prompts
from spot_jax import process_startup, resume
from spot_jax import frozen_model as frozen_lib
from spot_jax import train_step as ts
from spot_jax.config import T5Config
from spot_jax.model import param_logical_axes, param_shapes

log = logging.getLogger("spot_jax.train")


_STEP_CACHE = {}


def _compiled_step(config, tx, mesh, enable_dropout, num_microbatches, frozen_shardings):
  """One jitted step per (config, optimizer, mesh, options, frozen weights' shardings): repeated short
  runs compile once. The shardings are part of the key: a run under other logical rules (e.g. 'embed'
  over 'data') places the weights otherwise, and a step jitted for the old placement refuses them."""
  leaves, treedef = jax.tree_util.tree_flatten(frozen_shardings)
  key = (config, tx, mesh, enable_dropout, num_microbatches, treedef, tuple(leaves))
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = ts.jit_train_step(
        ts.make_train_step(config, tx, enable_dropout=enable_dropout, num_microbatches=num_microbatches,
                           mesh=mesh),
        mesh, frozen_shardings)
  return _STEP_CACHE[key]


class Preempted(BaseException):
  """train() was stopped by SIGTERM (a preemptible VM, a scheduler) after saving the step it reached:
  the run is not finished, and rerunning the same command resumes it. A BaseException, as
  KeyboardInterrupt is, so that no caller's `except Exception` takes the partial prompt for a result
  (the SPoT pipelines stop: nothing is added to a library, no result.json is written). The command
  lines print it as one line and exit with `EXIT_CODE` (128 + SIGTERM, the shell's code for it)."""
  EXIT_CODE = 128 + int(signal.SIGTERM)

  def __init__(self, step: int, directory: str):
    super().__init__(step, directory)
    self.step, self.directory = step, directory

  def __str__(self):
    return (f"stopped by SIGTERM at step {self.step}; the checkpoint is in {self.directory}: rerun the "
            f"same command to resume")


_sync_steps = 0  # steps of this process's training runs, all runs together (`_Stop.check`)


class _Stop:
  """SIGTERM → checkpoint at the next step, then `Preempted` (preemptible VMs).

  In a multi-process run the processes must stop at one step (the save is collective: one process
  saving while another steps hangs both). There JAX's preemption service, started by
  jax.distributed, catches SIGTERM on any process, and `check()` is its sync point (T5X's way): every
  process calls it after every step and it turns true on all of them at the same step.

  The service's step ids must rise for the whole process (its sync point is the highest id reported
  + 1), so they count every step of every run of the process (`_sync_steps`), not a run's own step:
  the SPoT pipeline trains several runs in one process, each from step 1, and a notice that came at
  a run's last step or between runs set a sync point past the next run's steps (that run, and the
  pipeline, finished as if nothing had come). Every process runs the same steps, so the counts agree."""

  def __init__(self):
    self.requested = False
    self._old = None
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    self._sync = (distributed.global_state.client is not None
                  and distributed.global_state.preemption_sync_manager is not None)

  def __enter__(self):
    if self._sync:  # our handler would replace the preemption service's
      return self
    try:
      self._old = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def check(self) -> bool:
    global _sync_steps
    if self._sync and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      _sync_steps += 1
      self.requested = bool(multihost_utils.reached_preemption_sync_point(_sync_steps))
    return self.requested

  def _handler(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


@gin.configurable(denylist=["hooks", "refuse_past_steps", "config_gin"])
def train(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, initial_checkpoint_path: Optional[str] = None,
          model_config: Optional[T5Config] = None, prompt_length: int = 100, prompt_init=None,
          optimizer=None, seed: int = 0, num_partitions: int = 1, save_period: int = 1000,
          keep_checkpoints: Optional[int] = 3, log_period: int = 100, eval_period: Optional[int] = None,
          eval_split: str = "validation", eval_batch_size: Optional[int] = None,
          eval_num_examples: Optional[int] = None, best_metric: Optional[str] = None,
          task_embedding_step: Optional[int] = None, num_microbatches: int = 1,
          enable_dropout: bool = True, frozen_dtype: str = "float32", async_checkpoints: bool = True,
          initial_checkpoint_step: Optional[int] = None,
          eval_task_feature_lengths: Optional[Mapping[str, int]] = None, frozen=None,
          hooks=None, refuse_past_steps: bool = False, config_gin: Optional[str] = None) -> np.ndarray:
  """Train a prompt; returns the final prompt `[P, d]`. Resumes from MODEL_DIR when it has checkpoints.

  `initial_checkpoint_step` (INITIAL_CHECKPOINT_STEP): the global step Adafactor's second-moment decay
  counts from, as T5X counts from the step it restores from the initial checkpoint. None: the step of
  the `checkpoint_N` INITIAL_CHECKPOINT_PATH names, 0 without one (a Hugging Face folder, a fresh
  initialization, `frozen`). Recorded with the checkpoints; a resume keeps it.

  Evaluation during training (EVAL_PERIOD) reads EVAL_SPLIT whole, as T5X's infer_eval does
  (`task_feature_lengths=None`): the split's longest input and target set the lengths, so no validation
  input is cut to TASK_FEATURE_LENGTHS and the best export is picked on the real inputs.
  `eval_task_feature_lengths` caps them instead (inputs longer are cut, with a warning that names them).

  `frozen=(config, params)` bypasses checkpoint loading (used by the SPoT pipeline and the demo, which
  keep one frozen model in memory across many short runs).

  `config_gin`: the run's gin configuration, written to MODEL_DIR/config.gin once the run's checks pass
  (its data's too) and before its first step, when it has steps to train (`write_config_gin`; `main`
  passes `gin.config_str()`).
  """
  t_start = time.time()
  is_main = jax.process_index() == 0
  # --- everything that can be wrong is checked before any compute ---
  _check_ints(TRAIN_STEPS=train_steps, BATCH_SIZE=batch_size, PROMPT_LENGTH=prompt_length,
              SAVE_PERIOD=save_period, LOG_PERIOD=log_period, EVAL_PERIOD=eval_period,
              NUM_PARTITIONS=num_partitions, num_microbatches=num_microbatches,
              TASK_EMBEDDING_STEP=task_embedding_step, SEED=seed, keep_checkpoints=keep_checkpoints,
              eval_batch_size=eval_batch_size, eval_num_examples=eval_num_examples,
              INITIAL_CHECKPOINT_STEP=initial_checkpoint_step)
  fileio.check_not_a_file(model_dir, "MODEL_DIR")
  for sub in (checkpointing.CHECKPOINTS_SUBDIR, prompt_io.NUMPY_CHECKPOINTS_DIR, INFERENCE_EVAL_DIR):
    fileio.check_not_a_file(fileio.join(model_dir, sub), f"the run writes {sub}/ there")
  task = input_pipeline.get_task(mixture_or_task_name)
  input_pipeline.check_split(task, "train")
  if eval_period:
    try:
      input_pipeline.check_split(task, eval_split)
    except ValueError as e:
      raise ValueError(f"{e}: EVAL_PERIOD={eval_period} evaluates on it. Set EVAL_SPLIT to one of its "
                       f"splits, or EVAL_PERIOD=None to train without evaluation") from None
  missing = {"inputs", "targets"} - set(task_feature_lengths)
  if missing:
    raise ValueError(f"TASK_FEATURE_LENGTHS lacks {sorted(missing)}; e.g. {{'inputs': 128, 'targets': 8}}")
  if eval_task_feature_lengths is not None and {"inputs", "targets"} - set(eval_task_feature_lengths):
    raise ValueError(f"eval_task_feature_lengths lacks {sorted({'inputs', 'targets'} - set(eval_task_feature_lengths))}: "
                     "give both, or None (the evaluation split's longest example, as T5X's infer_eval)")
  if batch_size % num_microbatches:
    raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by num_microbatches={num_microbatches}")
  if task_embedding_step is not None and not 0 < task_embedding_step <= train_steps:
    raise ValueError(f"TASK_EMBEDDING_STEP={task_embedding_step} is outside the run's steps 1..{train_steps} "
                     f"(TRAIN_STEPS): no task-embedding export would be written. Set it within them, or None")
  fresh = not _has_checkpoints(model_dir)
  if fresh:  # before the frozen model loads: a refused start costs nothing and leaves MODEL_DIR as it was
    resume.check_fresh_start(model_dir, mixture_or_task_name)
  mesh = partitioning.make_mesh(num_partitions)
  data_size = mesh.shape["data"]
  if (batch_size // num_microbatches) % data_size:
    raise ValueError(
        f"BATCH_SIZE={batch_size} (over {num_microbatches} microbatch(es)) does not split evenly over the "
        f"mesh's {data_size} data-parallel replicas ({len(mesh.devices.flat)} devices / NUM_PARTITIONS="
        f"{num_partitions}): use a batch size whose microbatches are a multiple of {data_size}")
  config, params = frozen if frozen is not None else frozen_lib.load_frozen(initial_checkpoint_path,
                                                                             model_config, seed)
  input_pipeline.check_vocabulary_fits(task, config.vocab_size,
                                       fresh_init=frozen is None and not initial_checkpoint_path,
                                       checkpoint_path=initial_checkpoint_path)
  axes = param_logical_axes(config)
  partitioning.check_divisible(param_shapes(config), axes, mesh)
  frozen_model = {"path": None if frozen is not None else initial_checkpoint_path,
                  "seed": seed if frozen is None and not initial_checkpoint_path else None,
                  "fingerprint": frozen_lib.frozen_fingerprint(params),
                  "architecture": frozen_lib.frozen_architecture(config)}
  derived_step = frozen_lib.checkpoint_step(initial_checkpoint_path) if frozen is None else 0
  prompt_init = prompt_init or prompts.random_uniform()

  def initial_prompt():  # the embedding is read only if the initializer uses it
    return prompts.make_prompt(prompt_init, seed, prompt_length, config.d_model,
                               params["token_embedder"]["embedding"])
  # A fresh run's initial prompt is made (and its shape checked) before the lock, which creates
  # MODEL_DIR: a run refused up to here leaves nothing behind.
  fresh_prompt = initial_prompt() if fresh else None

  # MODEL_DIR is one run's: a second run started on it is refused while this one holds it.
  with contextlib.ExitStack() as held:
    # Process 0 takes the lock (the other processes of a multi-process run share MODEL_DIR with it); the
    # others learn whether it got it before their first collective, so that a refused run stops every
    # process naming the holder (before, the others failed 30 s later in a Gloo key-value timeout).
    with process_startup.Outcomes("spot_jax.train"):
      if is_main:
        held.enter_context(fileio.exclusive_lock(model_dir, "spot_jax.train run"))
    ckpts = checkpointing.PromptCheckpoints(model_dir, keep_checkpoints, async_checkpoints)
    resume_step = ckpts.latest_step()
    if resume_step is not None:  # before the weights are placed and the step compiled
      saved_meta = ckpts.saved_meta(resume_step)
      frozen_lib.check_same_run(model_dir, saved_meta, mixture_or_task_name, frozen_model, resume_step)
    elif fresh_prompt is None:  # the step directories seen above were none of orbax's
      resume.check_fresh_start(model_dir, mixture_or_task_name)
      fresh_prompt = initial_prompt()
    if resume_step is None and is_main:  # before any output: a rerun before the first checkpoint goes on
      resume.begin_fresh_start(model_dir, mixture_or_task_name)
    fresh_start_open = resume_step is None
    initial_step = frozen_lib.optimizer_initial_step(model_dir, saved_meta if resume_step is not None else None,
                                                     initial_checkpoint_step, derived_step,
                                                     initial_checkpoint_path)
    tx = optimizer or optim.adafactor()
    rebuilt = optim.with_initial_step(tx, initial_step)
    if rebuilt is None and initial_step:
      log.warning("the optimizer was not built by spot_jax.optim.adafactor: INITIAL_CHECKPOINT_STEP=%d "
                  "(the global step its decay would count from) is not applied", initial_step)
    tx = rebuilt or tx

    frozen_params, frozen_shardings = frozen_lib.place_frozen(params, config, mesh, frozen_dtype, axes=axes)
    lr_schedule = optim.learning_rate_schedule(tx)  # None for an optimizer built elsewhere
    rep = partitioning.replicated(mesh)
    shard_index, num_shards = partitioning.data_layout(mesh)
    if resume_step is None:
      state = jax.device_put(ts.init_state(fresh_prompt, tx), rep)
      start_step = 0
    else:
      abstract = jax.device_put(ts.init_state(np.zeros((prompt_length, config.d_model), np.float32), tx), rep)
      state, meta = ckpts.restore(abstract)
      start_step = int(jax.device_get(state.step))
      log.info("resuming from step %d (%s)", start_step, meta)
      if meta.get("data_shards", num_shards) != num_shards:
        log.warning("%s was trained reading the data in %d shard(s); this run reads %d (another number of "
                    "processes or model partitions): it resumes at the same step, but the examples of the "
                    "remaining steps differ from those of an uninterrupted run", model_dir,
                    meta["data_shards"], num_shards)
      if meta.get("batch_size", batch_size) != batch_size:  # checkpoints before it was recorded: no warning
        log.warning("%s was trained with BATCH_SIZE=%d; this run uses %d: it resumes at step %d, but the data "
                    "position is counted in batches (%d consumed), so the remaining steps read from another "
                    "place in the data than an uninterrupted run (examples skipped or seen twice). Set "
                    "BATCH_SIZE=%d back to continue the run as it was", model_dir, meta["batch_size"],
                    batch_size, start_step, meta.get("data_batches_consumed", start_step), meta["batch_size"])
      if start_step > train_steps and refuse_past_steps:  # a caller that reports the run as train_steps'
        raise ValueError(f"{model_dir}'s latest checkpoint is step {start_step}, past this run's "
                         f"{train_steps} steps: its step-{start_step} prompt would be reported as a "
                         f"{train_steps}-step one. Use a new MODEL_DIR for fewer steps, or rerun with at "
                         f"least {start_step}")
      if start_step > train_steps:
        log.warning("%s's latest checkpoint is step %d, past TRAIN_STEPS=%d: nothing is trained and the "
                    "step-%d prompt is returned (raise TRAIN_STEPS to continue, or use a new MODEL_DIR)",
                    model_dir, start_step, train_steps, start_step)
    if state.prompt.shape != (prompt_length, config.d_model):
      raise ValueError(f"checkpoint prompt shape {state.prompt.shape} != [PROMPT_LENGTH={prompt_length}, "
                       f"d_model={config.d_model}]")

    step_fn = _compiled_step(config, tx, mesh, enable_dropout, num_microbatches, frozen_shardings)
    batches = input_pipeline.get_batches(mixture_or_task_name, task_feature_lengths, "train", batch_size,
                                         seed=seed, skip_batches=start_step, shard_index=shard_index,
                                         num_shards=num_shards)
    # The run is accepted (its data too) and will train: its settings become MODEL_DIR's record.
    if config_gin is not None and is_main and start_step < train_steps:
      write_config_gin(model_dir, config_gin)
    # A threefry key: flax derives one per dropout call from it, and the model stretches each into
    # mask bits with a cheap counter hash (dropout._hashed_bits; docs/bench.md has the timings).
    rng = jax.random.key(seed)
    from spot_jax import metrics_log
    # Records past the step this run starts from (0: a fresh start) were logged by a killed predecessor
    # and are logged again: metrics.jsonl (the logger) and seqio's inference_eval logs drop them.
    logger = metrics_log.MetricsLogger(model_dir, total_steps=train_steps, start_step=start_step,
                                       enabled=is_main, resume_from=start_step, mark_sessions=True)
    if is_main:
      eval_dir = inference_eval_dir(model_dir)
      if fileio.isdir(eval_dir):
        for name in sorted(fileio.listdir(eval_dir)):
          if name.rstrip("/").endswith("-metrics.jsonl"):
            metrics_log.drop_records_after(fileio.join(eval_dir, name.rstrip("/")), start_step)
    best_value, last_saved = None, resume_step
    if resume_step is not None and eval_period:
      # The best export survives the restart: a resumed run must beat it, not the first eval after.
      best_dir = prompt_io.best_export_dir(model_dir)
      if fileio.exists(best_dir):
        best_value = _pick_metric(prompt_io.read_export_info(best_dir).get("metrics") or {}, best_metric)
        best_value = best_value if best_value is not None and np.isfinite(best_value) else None

    def export(state, step, **kwargs):
      if is_main:
        prompt_export.export_numpy_checkpoint(np.asarray(jax.device_get(state.prompt)), model_dir, step,
                                              frozen_model=frozen_model["path"], task=mixture_or_task_name,
                                              **kwargs)

    def save(state, step):
      nonlocal last_saved, fresh_start_open
      check_finite(state)  # never label a skipped update's unchanged prompt as a later step
      # The export first: a failed one leaves no checkpoint of this step, so a rerun trains the step
      # again and writes both (the other way round, a rerun resumed from the checkpoint and never wrote
      # the export: load_prompt(MODEL_DIR) served the previous step's prompt).
      export(state, step)
      ckpts.save(state, {"step": step, "data_batches_consumed": step, "batch_size": batch_size,
                         "task": mixture_or_task_name, "data_shards": num_shards, "frozen_model": frozen_model,
                         "initial_checkpoint_step": initial_step})
      last_saved = step
      if fresh_start_open:  # once the first checkpoint is written, MODEL_DIR's outputs are a run's results
        ckpts.wait()
        if is_main:
          resume.end_fresh_start(model_dir)
        fresh_start_open = False

    def evaluate(state, step):
      nonlocal best_value
      results = _evaluate(mixture_or_task_name, config, frozen_params, state.prompt, eval_task_feature_lengths,
                          eval_split, eval_batch_size or batch_size, eval_num_examples, step,
                          inference_eval_dir(model_dir) if is_main else None)
      value = _pick_metric(results, best_metric)  # before the log: a refused BEST_METRIC leaves it unevaluated
      logger.write(step, results, prefix="eval")
      # NaN (e.g. STS-B's correlations of a prompt that writes one number) is never the best.
      if value is not None and np.isfinite(value) and (best_value is None or value > best_value):
        best_value = value
        export(state, step, name=prompt_io.BEST_EXPORT, metrics=results)

    if resume_step is not None and start_step <= train_steps:
      # A run stopped between its checkpoint and what follows it at that step: the export of an older
      # run (written after its checkpoint), the task-embedding export, the evaluation (after the save).
      if resume.export_missing(prompt_io.checkpoint_export_dir(model_dir, start_step)):
        export(state, start_step)
      if task_embedding_step and task_embedding_step <= start_step and resume.export_missing(
          prompt_io.task_embedding_export_dir(model_dir)):
        resume.recover_task_embedding(model_dir, task_embedding_step, start_step, is_main)
      if eval_period and (start_step % eval_period == 0 or start_step == train_steps) and \
          not partitioning.process_0s(resume.evaluated_at(model_dir, start_step)):
        log.info("evaluating step %d, which the stopped run saved but did not evaluate", start_step)
        evaluate(state, start_step)

    def check_finite(state):
      bad = int(jax.device_get(state.nonfinite_step))
      if bad >= 0:
        ckpts.wait()
        where = (f"the last good checkpoint is step {last_saved} in {ckpts.directory}"
                 if last_saved is not None else "no checkpoint was written yet")
        raise FloatingPointError(
            f"the loss, gradient or prompt became NaN or inf at step {bad} (that update and later ones "
            f"were skipped); {where}. Lower the learning rate or check the data of {mixture_or_task_name}.")

    step = start_step
    window_start, window_steps = time.time(), 0
    try:
      with _Stop() as stop:
        # No batch is read past the last step: the batches count the examples they hand out.
        while step < train_steps:
          batch = next(batches, None)
          if batch is None:
            break
          state, metrics = step_fn(state, frozen_params, partitioning.global_batch(batch, mesh), rng)
          step += 1
          window_steps += 1
          logger.progress(step)  # moves the bar (terminals only); no device sync
          if task_embedding_step and step == task_embedding_step:
            export(state, step, name=prompt_io.TASK_EMBEDDING_EXPORT)
          if step % log_period == 0 or step == train_steps:
            check_finite(state)
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            elapsed = time.time() - window_start
            values["steps_per_sec"] = window_steps / max(elapsed, 1e-9)
            values["eta_sec"] = (train_steps - step) / max(values["steps_per_sec"], 1e-9)
            if lr_schedule is not None:  # the rate of the update that made this step (optax counts from 0)
              values["learning_rate"] = float(jax.device_get(lr_schedule(step - 1)))
            logger.write(step, values, prefix="train")
            window_start, window_steps = time.time(), 0
          # Saved before it is evaluated, as T5X does: an evaluation that fails (a metric's error, memory)
          # or outlasts a preemption's grace period loses no training; a resumed run evaluates it then.
          if step % save_period == 0 or step == train_steps:
            save(state, step)
          if eval_period and (step % eval_period == 0 or step == train_steps):
            evaluate(state, step)
          if hooks:
            for hook in hooks:
              hook(step, state)
          if stop.check():
            if last_saved != step:
              save(state, step)
            break
      check_finite(state)
      batches.close()  # examples TASK_FEATURE_LENGTHS cut among those the steps trained on, if any
      if step < train_steps and not stop.requested:
        raise ValueError(f"the training data of {mixture_or_task_name} ended after {step} of "
                         f"{train_steps} steps: lower TRAIN_STEPS, or use a task whose train split repeats")
    except BaseException:
      ckpts.close_after_error()  # an in-flight save completes, so a rerun resumes from it
      raise
    ckpts.close()
    logger.close()
    if stop.requested and step < train_steps:
      # The run is not finished: its callers must not take this step's prompt for the result.
      log.warning("SIGTERM: saved step %d to %s; stopping (rerun the same command to resume)", step,
                  ckpts.directory)
      raise Preempted(step, ckpts.directory)
    final = np.asarray(jax.device_get(state.prompt))
    log.info("process %d: trained %d steps in %.1fs; final prompt sha256 %s", jax.process_index(),
             step - start_step, time.time() - t_start, hashlib.sha256(final.tobytes()).hexdigest()[:16])
    return final


INFERENCE_EVAL_DIR = "inference_eval"


# The least value of each integer setting (None is allowed where the parameter's default is None).
_INT_MINIMUM = {"SEED": 0, "INITIAL_CHECKPOINT_STEP": 0}


def _check_ints(**values) -> None:
  """A gin value of the wrong type (`--gin.TRAIN_STEPS="'100'"`) or out of range (`BATCH_SIZE=0`,
  `SAVE_PERIOD=-1`) would fail deep in the loop, or train nothing and say nothing."""
  for name, value in values.items():
    flag = f"--gin.{name}" if name.isupper() else f"--gin.spot_jax.train.train.{name}"
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
      raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}): e.g. "
                       f"{flag}={_integer_example(value)} (no quotes)")
    least = _INT_MINIMUM.get(name, 1)
    if value is not None and value < least:
      unset = {"EVAL_PERIOD": " (or None: no periodic evaluation)",
               "TASK_EMBEDDING_STEP": " (or None: no task-embedding export)",
               "keep_checkpoints": " (or None: keep every checkpoint)",
               "eval_batch_size": " (or None: BATCH_SIZE)",
               "eval_num_examples": " (or None: the whole split)",
               "INITIAL_CHECKPOINT_STEP": " (or None: the step of INITIAL_CHECKPOINT_PATH's checkpoint_<step>)",
               }.get(name, "")
      raise ValueError(f"{name} must be {least} or more{unset}, got {value}: set {flag}")


def _integer_example(value) -> str:
  """The integer a mistyped value meant ('16' or 16.0: 16), else 100."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    return "100"
  return str(int(number)) if number.is_integer() else "100"


def write_config_gin(model_dir: str, config_gin: str) -> None:
  """Writes a run's gin configuration to MODEL_DIR/config.gin, the file T5X's train writes there, as T5X
  writes it: the whole `gin.config_str()` (every binding of the files and flags, with macros as given),
  at the start of each run (a resumed one too), before the first step.

  That, and not gin's operative config after the first step, is what a T5X user finds in config.gin
  and reads back: it holds the settings whether or not the run got to a step (a run that failed or was
  stopped early leaves the record of what it was asked), and the macros (`TRAIN_STEPS`,
  `MIXTURE_OR_TASK_NAME`, `INITIAL_CHECKPOINT_PATH`) stay macros, as prompt-tuning's tools and
  `prompt_tuning_compat.initial_checkpoint_step_of_gin` read them.

  Atomic, local or gs:// alike (`fileio.replace_keeping_earlier`): a rerun with the same settings leaves
  the file as it is; one with other settings (more TRAIN_STEPS on a resume, another flag) keeps the
  earlier file as `config.gin.old-<id>`, so that every configuration the run's steps were trained with
  stays in MODEL_DIR. Call on process 0 only. A config.gin is no result of a run: a fresh start is not
  refused for one (`resume.check_fresh_start`), and `library add` reads a config.gin only beside a
  prompt-tuning run's exports (spot_jax's own exports record their steps themselves)."""
  from spot_jax import prompt_tuning_compat  # pylint: disable=g-import-not-at-top
  path = fileio.join(model_dir, prompt_tuning_compat.T5X_CONFIG_GIN)
  written, backup = fileio.replace_keeping_earlier(path, config_gin.encode("utf-8"))
  if backup:
    log.info("%s: this run's gin configuration differs from the earlier run's, kept as %s", path, backup)
  elif written:
    log.info("gin configuration written to %s", path)


def _has_checkpoints(model_dir: str) -> bool:
  """Whether MODEL_DIR/checkpoints has a step directory (a look, without starting orbax's manager)."""
  directory = fileio.join(model_dir, checkpointing.CHECKPOINTS_SUBDIR)
  return fileio.isdir(directory) and any(n.rstrip("/").isdigit() for n in fileio.listdir(directory))


def inference_eval_dir(model_dir: str) -> str:
  """Where periodic evaluation writes seqio's JSON logs (T5X's `MODEL_DIR/inference_eval`)."""
  return model_dir.rstrip("/") + "/" + INFERENCE_EVAL_DIR


def _evaluate(name, config, params, prompt, feature_lengths, split, batch_size, num_examples, step=None,
              log_dir=None):
  """Periodic evaluation on the training mesh (the one `params` are placed on): each batch is split
  over its `data` axis, as eval's."""
  from spot_jax import evaluation
  results = evaluation.evaluate(name, config, params, np.asarray(jax.device_get(prompt)), feature_lengths,
                                split=split, batch_size=batch_size, num_examples=num_examples, step=step,
                                log_dir=log_dir, mesh=evaluation.mesh_of(params),
                                lengths_setting="spot_jax.train.train.eval_task_feature_lengths")
  flat = {}
  for task_name, metrics in results.items():
    for k, v in metrics.items():
      flat[f"{task_name}/{k}"] = float(v)
  return flat


def _pick_metric(flat: Mapping[str, float], name: Optional[str]):
  if not flat:
    return None
  if name:
    hits = [v for k, v in flat.items() if k == name or k.endswith("/" + name)]
    if not hits:
      raise ValueError(f"best_metric {name!r} is not among the evaluation metrics {sorted(flat)}")
    return float(np.mean(hits))
  return float(np.mean(list(flat.values())))


def main(argv=None):
  from spot_jax import gin_utils
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("spot_jax").setLevel(logging.INFO)
  try:
    # config_str() once gin is parsed, before the job: MODEL_DIR/config.gin, as T5X writes it.
    gin_utils.run(lambda: gin.get_configurable(train)(config_gin=gin.config_str()), argv, prog="spot_jax.train")
  except Preempted as e:
    print(f"spot_jax.train: {e}", file=sys.stderr)
    raise SystemExit(Preempted.EXIT_CODE) from None
  except KeyboardInterrupt:  # a traceback through the step loop would say nothing a user can act on
    print("spot_jax.train: interrupted (Ctrl-C): the steps since the last saved checkpoint are lost; rerun the "
          "same command to resume from it (SIGTERM, `kill PID`, saves the current step first)",
          file=sys.stderr, flush=True)
    raise SystemExit(128 + int(signal.SIGINT)) from None


if __name__ == "__main__":
  # Run through the importable module so gin sees `spot_jax.train.train`, not `__main__.train`.
  from spot_jax import train as _train_module
  _train_module.main()

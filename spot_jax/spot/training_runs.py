"""How the SPoT pipeline trains one prompt: the trainer called with a `RunConfig` (`_train`), a run
from a fixed init that records the init's sha256 so that a resume from another init is refused
(`_train_from`), its evaluation, recorded so that a rerun reuses it (`evaluate_run`), the base init,
and the compilation cache that the pipeline's many short runs share.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from spot_jax import fileio, prompt_io
from spot_jax.spot import run_record
from spot_jax.spot.run import RunConfig

log = logging.getLogger("spot_jax.spot")


def enable_compilation_cache(path: Optional[str] = None, min_compile_time_secs: float = 0.5) -> str:
  """Turns on JAX's persistent compilation cache for this process; returns its directory.

  A pipeline runs many short trainings of one program shape; the trainer builds a fresh jitted step
  per run, so without a cache each run recompiles (seconds on a CPU, more for big models). Keeps a
  cache directory already configured (JAX_COMPILATION_CACHE_DIR); `path` defaults to
  <tmp>/spot_jax_jax_cache_<uid> (mode 0700). Only use a directory that nobody else can write (JAX trusts its cache).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current and path is None:
    return current
  path = path or os.path.join(tempfile.gettempdir(), f"spot_jax_jax_cache_{os.getuid()}")
  os.makedirs(path, mode=0o700, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
  cc.reset_cache()  # a cache checked (and found unset) before this call is looked at again
  return path


def _train(frozen, run: RunConfig, model_dir: str, task: str, steps: int, prompt_init=None,
           prompt_length: Optional[int] = None, task_embedding_step: Optional[int] = None) -> np.ndarray:
  from spot_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  kwargs = dict(model_dir=model_dir, mixture_or_task_name=task,
                task_feature_lengths=dict(run.task_feature_lengths), train_steps=int(steps),
                batch_size=run.batch_size, frozen=frozen,
                prompt_length=prompt_length or run.prompt_length,
                prompt_init=prompt_init or run.prompt_init, seed=run.seed,
                num_partitions=run.num_partitions,
                save_period=max(1, int(run.save_period)),
                log_period=max(1, min(run.log_period, int(steps))), eval_period=None,
                task_embedding_step=task_embedding_step, enable_dropout=run.enable_dropout,
                # A run of the pipeline trained further before (a rerun with fewer steps) would be
                # recorded in result.json with this budget but hold the later prompt.
                refuse_past_steps=True)
  if run.optimizer is not None:
    kwargs["optimizer"] = run.optimizer
  if run.initial_step is not None:
    kwargs["initial_checkpoint_step"] = run.initial_step
  if run.config_gin is not None:
    kwargs["config_gin"] = run.config_gin
  log.info("training %s for %d steps -> %s", task, steps, model_dir)
  return train_lib.train(**kwargs)


def writes_files() -> bool:
  """Whether this process writes the pipeline's own files (init.npy, result.json, each run's init
  sha256, the library entries it adds): process 0 of a multi-process run, as it alone writes
  checkpoints and exports (the others wrote the same bytes again: on gs:// twice the writes)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def _train_from(frozen, run: RunConfig, model_dir: str, task: str, steps: int, prompt, what: str,
                identity: Optional[Mapping[str, Any]] = None, legacy_init_only: bool = False,
                checked: bool = False, **kwargs) -> np.ndarray:
  """`_train` from a fixed init array, recording its sha256 (with `identity`) so a later resume can be
  checked (`checked`: the caller already ran check_run_init with these arguments)."""
  if not checked:
    run_record.check_run_init(model_dir, prompt, what, identity, legacy_init_only)
  if not run_record.has_checkpoints(model_dir) and writes_files():
    fileio.atomic_write_bytes(fileio.join(model_dir, run_record.INIT_SHA256_FILE),
                              run_record.init_sha256(prompt, identity).encode())
  return _train(frozen, run, model_dir, task, steps, prompt_init=from_array(prompt, what),
                prompt_length=prompt.shape[0], **kwargs)


def evaluate_run(evaluate: Callable[..., Dict[str, float]], frozen, run_dir: str, task: str, prompt,
                 step: int, run: RunConfig, trained: bool = True) -> Dict[str, float]:
  """`evaluate(frozen, task, prompt, run)` of the run in `run_dir` (its `step` prompt), or the metrics
  its record holds for the same prompt and evaluation settings (`run_record.eval_settings`).

  A finished pipeline's rerun returns every run without training it, and evaluated each again
  (minutes each on a real T5). Process 0 writes the record, after evaluating; its reading of the
  record decides for every process (read before anyone could rewrite it; by file alone, a slower
  process read the record process 0 had just written, and skipped an evaluation the others ran).
  `evaluate` is the caller's evaluate_prompt (looked up there, where tests replace it). A directory
  without checkpoints holds no run to record; `trained=False`: `run_dir` only holds the record of a
  prompt evaluated as it is (a zero-shot score).
  """
  settings = stored = None
  if not trained or run_record.has_checkpoints(run_dir):
    settings = run_record.eval_settings(frozen, task, prompt, step, run)
    stored = run_record.stored_metrics(run_dir, settings)
  from spot_jax.partitioning import process_0s  # pylint: disable=g-import-not-at-top
  if process_0s(stored is not None) and stored is not None:  # else: evaluated here, with the same result
    log.info("%s: reusing its stored validation metrics (step %d on %s, same prompt and evaluation "
             "settings; delete %s to evaluate again)", run_dir, step, task, run_record.EVAL_FILE)
    return stored
  metrics = evaluate(frozen, task, prompt, run)
  if settings is not None and writes_files():
    run_record.store_metrics(run_dir, settings, metrics)
  return metrics


def base_init(frozen, run: RunConfig, prompt_length: int) -> np.ndarray:
  """The prompt a run from the base init (`run.prompt_init`, `run.seed`) starts from."""
  from spot_jax import prompts  # pylint: disable=g-import-not-at-top
  config, params = frozen
  return prompts.make_prompt(run.prompt_init or prompts.random_uniform(), run.seed, prompt_length,
                             config.d_model, params["token_embedder"]["embedding"])


def from_array(prompt, source: str = "array"):
  """A prompt initializer that returns a fixed array (an in-memory transfer init)."""
  arr = prompt_io.validate_prompt(prompt, source)

  def init(rng, prompt_length, d_model, embedding=None):
    if arr.shape != (prompt_length, d_model):
      raise ValueError(f"transfer init from {source} has shape {tuple(arr.shape)} but the run expects "
                       f"[PROMPT_LENGTH={prompt_length}, d_model={d_model}]; set PROMPT_LENGTH to "
                       f"{arr.shape[0]} or use prompts trained for this frozen model")
    return arr.copy()
  return init


def default_model_id(initial_checkpoint_path: Optional[str], config, seed: int = 0) -> str:
  """A frozen model's identity for the library: the checkpoint's last two path parts, or a
  description of a fresh initialization (tests, offline demos)."""
  if initial_checkpoint_path:  # the rule `library add` applies to a prompt's recorded frozen model too
    from spot_jax.spot.library_entry import model_id_of_path  # pylint: disable=g-import-not-at-top
    return model_id_of_path(initial_checkpoint_path)
  return (f"fresh-init:{config.feed_forward}-d{config.d_model}-e{config.num_encoder_layers}"
          f"-dec{config.num_decoder_layers}-v{config.vocab_size}-seed{seed}")


def _safe(name: str) -> str:
  """`name` as a directory (and seqio) name; one with other characters gets a digest of the original,
  so that two names that differ there (`glue:rte`, `glue_rte`) get two run directories."""
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
  if safe == name:
    return name
  import hashlib  # pylint: disable=g-import-not-at-top
  return f"{safe}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"

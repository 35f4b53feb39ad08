"""What a pipeline run records beside its checkpoints, so that a rerun can tell it is the same run.

The trainer resumes any checkpoint it finds in a MODEL_DIR. Rerunning `spot-jax spot` into the same
out_dir with another strategy, library, top-k, mixture or target would then "continue" (or just
return) an old run under the new name. Each run therefore records the sha256 of its init, and of what
else defines it, in INIT_SHA256_FILE, and `check_run_init` refuses a mismatch.

A finished run also records its validation metrics and what they were computed from (EVAL_FILE), so a
rerun of a finished pipeline reuses them (`stored_metrics`) instead of evaluating every run again
(minutes each on a real T5).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Mapping, Optional

import numpy as np

from spot_jax import fileio, prompt_io

log = logging.getLogger("spot_jax.spot")

# Beside a run's checkpoints: the sha256 of the init it was started from and of the task (or mixture)
# it trains on. Transfer, baseline and selection runs written before their target was recorded hold
# the sha256 of the init alone: accepted with a warning (`check_run_init(legacy_init_only=True)`).
INIT_SHA256_FILE = "init_prompt.sha256"
# Beside a run's checkpoints: {"settings": eval_settings(...), "metrics": {...}} of its last evaluation.
EVAL_FILE = "validation_metrics.json"


def has_checkpoints(model_dir: str) -> bool:
  """Whether a training MODEL_DIR holds a checkpoint (the trainer would resume it)."""
  ckpt_dir = fileio.join(model_dir, "checkpoints")
  return fileio.isdir(ckpt_dir) and any(n.rstrip("/").isdigit() for n in fileio.listdir(ckpt_dir))


def init_sha256(prompt, identity: Optional[Mapping[str, Any]] = None) -> str:
  """sha256 of an init array, and of `identity` (what else defines the run, e.g. a mixture's tasks and
  rate) when given; without it the hash is that of the array alone, as runs recorded it before."""
  return prompt_io.prompt_sha256(prompt, json.dumps(identity, sort_keys=True, default=str).encode()
                                if identity else b"")


def check_run_init(model_dir: str, prompt, what: str, identity: Optional[Mapping[str, Any]] = None,
                   legacy_init_only: bool = False) -> None:
  """Refuses to resume a run in `model_dir` that was started from another init than `prompt` (or
  with another `identity`: the task or mixture it trains on).

  A run records the sha256 of its init in INIT_SHA256_FILE; the trainer resumes any checkpoint it
  finds, so rerunning a pipeline with another strategy/library/top-k/mixture/target into the same
  out_dir would otherwise "continue" (or just return) the old run under the new name.
  `legacy_init_only`: a recorded sha256 of `prompt` alone (as transfer, baseline and selection runs
  recorded it before their target was) is accepted with a warning that the target cannot be checked.
  """
  path = fileio.join(model_dir, INIT_SHA256_FILE)
  if not has_checkpoints(model_dir):
    return
  if not fileio.exists(path):
    log.warning("%s has checkpoints but no %s: cannot check that it was started from %s; resuming it",
                model_dir, INIT_SHA256_FILE, what)
    return
  with fileio.open_file(path, "r") as f:
    recorded = f.read().strip()
  if recorded == init_sha256(prompt, identity):
    return
  if legacy_init_only and identity and recorded == init_sha256(prompt):
    log.warning("%s predates target checking (its %s records the init only): it was started from %s, "
                "but that it trained on %s cannot be verified; resuming it. If it may be a run of "
                "another target, delete %s to retrain it", model_dir, INIT_SHA256_FILE, what,
                identity.get("task", "this task"), model_dir)
    return
  raise ValueError(
      f"{model_dir} holds a run started from another init than {what} (a previous pipeline run with "
      f"other settings: strategy, library, top-k, mixture, target or prompt settings). It would be "
      f"resumed, not retrained: use a new MODEL_DIR, or delete {model_dir} to retrain it")


def target_identity(run_name: str, target: str) -> dict:
  """`pipeline._train_from` / `check_run_init` arguments of a run from a fixed init on `target` (transfer,
  baseline, best-of-top-k selection): the target enters its identity, so a rerun with another target
  and the same init is refused; a hash of the init alone (recorded before that) is accepted with a
  warning."""
  return {"identity": {"run": run_name, "task": target}, "legacy_init_only": True}


def rate_id(rate: Any) -> Any:
  """A mixture rate as it enters a run's identity: a number, or a rate function's qualified name."""
  if isinstance(rate, (int, float, np.integer, np.floating)) and not isinstance(rate, bool):
    return float(rate)
  if callable(rate):
    return f"{getattr(rate, '__module__', '?')}.{getattr(rate, '__qualname__', repr(rate))}"
  return repr(rate)


def eval_settings(frozen, task: str, prompt, step: int, run) -> dict:
  """Everything a run's validation metrics depend on: the evaluated prompt (sha256) and its step, the
  task, split, number of examples, feature lengths, batch size (padding and batch shapes can move a
  near-tie of greedy decoding), the model config (e.g. its dtypes) and the frozen weights'
  fingerprint. As it reads back from EVAL_FILE (JSON), so that the two compare equal."""
  from spot_jax import frozen_model  # pylint: disable=g-import-not-at-top
  config, params = frozen
  settings = {"task": task, "step": int(step), "prompt_sha256": init_sha256(prompt),
              "split": run.eval_split, "num_examples": run.eval_num_examples,
              "task_feature_lengths": dict(sorted(dict(run.task_feature_lengths).items())),
              "batch_size": run.eval_batch_size or run.batch_size,
              "model": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config),
              "frozen_fingerprint": frozen_model.frozen_fingerprint(params)}
  return json.loads(json.dumps(settings, default=str))


def stored_metrics(run_dir: str, settings: Mapping[str, Any]) -> Optional[dict]:
  """The metrics EVAL_FILE in `run_dir` holds when they were computed with `settings`; None (evaluate
  again) when there are none, when they are of other settings (logged, naming what changed), or when
  the file is damaged (a warning: a torn or edited record costs an evaluation, never the run)."""
  path = fileio.join(run_dir, EVAL_FILE)
  if not fileio.exists(path):
    return None
  try:
    stored = fileio.read_json_object(path)
    recorded, metrics = stored["settings"], stored["metrics"]
    if not isinstance(recorded, dict) or not isinstance(metrics, dict):
      raise TypeError("its settings and metrics must be JSON objects")
    metrics = {str(k): float(v) for k, v in metrics.items()}
  except (ValueError, KeyError, TypeError) as e:
    log.warning("%s is not a readable evaluation record (%s): evaluating %s again", path, e, run_dir)
    return None
  if recorded != dict(settings):
    changed = ", ".join(k if isinstance(settings.get(k), dict) else
                        f"{k} {recorded.get(k)!r} -> {settings.get(k)!r}"
                        for k in sorted(set(recorded) | set(settings)) if recorded.get(k) != settings.get(k))
    log.info("%s: its stored validation metrics are of other settings (%s): evaluating it again", run_dir,
             changed)
    return None
  return metrics


def store_metrics(run_dir: str, settings: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
  """Writes EVAL_FILE atomically (a kill while writing leaves the old record or none, never a torn one)."""
  fileio.write_json_atomic(fileio.join(run_dir, EVAL_FILE), {"settings": dict(settings),
                                                             "metrics": dict(metrics)})


# A finished `spot` target run's result.json records the settings that define it under this key.
SETTINGS_KEY = "settings"
# What result.json held of them before it had SETTINGS_KEY.
_IN_RESULT = ("target", "strategy", "top_k", "rank_by", "measure")


def read_result(path: str, out_dir: str) -> dict:
  """A `spot` run's result.json; a torn or hand-edited one is a ValueError naming the file and the fix
  (delete it: rerunning the command resumes the runs under out_dir and writes it again)."""
  try:
    with fileio.open_file(path, "r") as f:
      result = json.loads(f.read())
    if not isinstance(result, dict):
      raise ValueError(f"it holds a JSON {type(result).__name__}, not an object")
  except ValueError as e:  # also UnicodeDecodeError: binary junk
    raise ValueError(
        f"{path} is not a readable spot result (truncated or edited by hand?): {e}. Delete it and rerun "
        f"the same command: the runs under {out_dir} resume from their checkpoints (finished ones are "
        "not trained again) and the result is written anew") from e
  return result


def check_target_settings(out_dir: str, settings: Mapping[str, Any]) -> None:
  """Refuses a `spot` run into an out_dir whose finished run (result.json) had other settings: target,
  strategy, top-k, ranking, library, exclusions.

  The per-run init checks do not see it all: best-of-top-k at the full budget reuses its selection
  run as the transfer and writes no transfer/, and weighted_average's transfer/ is not looked at by a
  best-of-top-k rerun, so switching strategy in one out_dir rewrote result.json over the other
  strategy's runs. A rerun with the same settings (to resume, or to add --baseline) goes on.
  """
  path = fileio.join(out_dir, "result.json")
  if not fileio.exists(path):
    return
  result = read_result(path, out_dir)
  recorded = result.get(SETTINGS_KEY) or {k: result.get(k) for k in _IN_RESULT}
  settings = json.loads(json.dumps(dict(settings), default=str))  # as it reads back from the file
  differ = {k: (recorded[k], settings.get(k)) for k in recorded if recorded[k] != settings.get(k)}
  if differ:
    listed = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in sorted(differ.items()))
    raise ValueError(f"{out_dir} holds a finished spot run with other settings ({listed}); its runs would "
                     "be mixed into this one. Use a new MODEL_DIR for these settings, or rerun with the "
                     "recorded ones to reuse it")

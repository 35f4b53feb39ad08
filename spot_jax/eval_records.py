"""What an EVAL_OUTPUT_DIR's metrics are of: `evaluated_prompts.json` (`RECORDS`) records, per task and
step, the prompt (its sha256) and the settings each step was evaluated with, so that `eval`'s
`PROMPT_STEPS` skips only the steps already evaluated for the same prompt and settings, and refuses a
directory holding another run's (`check_logged_steps`); and that one prompt evaluated at a step
holding another prompt's results keeps a copy of them (`keep_results_of_other_prompts`).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio

log = logging.getLogger("spot_jax.eval")


def logged_steps(output_dir: Optional[str], task_names: Sequence[str],
                 every_task: bool = True) -> Dict[int, Dict[str, Dict[str, float]]]:
  """`{step: {task: {metric: value}}}` of the steps whose `eval/<task>/...` metrics `output_dir`'s
  metrics.jsonl holds for every task of `task_names` (`every_task=False`: for any of them; for one
  step, a later line wins)."""
  from spot_jax import metrics_log  # pylint: disable=g-import-not-at-top
  if not output_dir or not task_names:
    return {}
  path = fileio.join(output_dir, metrics_log.JSONL_NAME)
  if not fileio.exists(path):
    return {}
  by_step: Dict[int, Dict[str, Dict[str, float]]] = {}
  for record in metrics_log.read_jsonl(path):
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
      continue
    for key, value in record.items():
      for task in task_names:
        prefix = f"eval/{task}/"
        if key.startswith(prefix):
          try:
            by_step.setdefault(step, {}).setdefault(task, {})[key[len(prefix):]] = float(value)
          except (TypeError, ValueError):
            pass
  return {s: v for s, v in by_step.items() if not every_task or all(t in v for t in task_names)}


# EVAL_OUTPUT_DIR/RECORDS: {task: {step: step_record(...)}}, what each logged step's metrics are of.
RECORDS = "evaluated_prompts.json"


def eval_settings(split, task_feature_lengths, num_examples, batch_size, checkpoint_path, model_config,
                  frozen_dtype, seed) -> dict:
  """What an evaluation's metrics depend on besides the prompt: split, lengths, number of examples,
  batch size (padding can move a near-tie of greedy decoding), the frozen model (its path, gin config,
  dtype; the seed of a fresh initialization). As it reads back from RECORDS (JSON), to compare equal."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from spot_jax import prompt_io  # pylint: disable=g-import-not-at-top
  settings = {"split": split, "num_examples": num_examples, "batch_size": batch_size,
              "task_feature_lengths": dict(sorted(task_feature_lengths.items())) if task_feature_lengths else None,
              "checkpoint_path": prompt_io.absolute_local_path(checkpoint_path),
              "model_config": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else None,
              "frozen_dtype": frozen_dtype, "seed": None if checkpoint_path else seed}
  return json.loads(json.dumps(settings, default=str))


def step_record(prompt_path: Optional[str], prompt: Optional[np.ndarray], settings: Mapping[str, Any]) -> dict:
  """A step's RECORDS entry: the prompt's source (for messages) and sha256 (the array's shape and
  float32 bytes: the same prompt in any format or folder), and the settings."""
  from spot_jax import prompt_io  # pylint: disable=g-import-not-at-top
  return {"prompt": prompt_io.absolute_local_path(str(prompt_path)) if prompt_path else None,
          "prompt_sha256": None if prompt is None else prompt_io.prompt_sha256(prompt), "settings": dict(settings)}


def read_records(output_dir: Optional[str]) -> Dict[str, Dict[str, dict]]:
  """RECORDS of `output_dir`; {} when there is none or it is damaged (its steps then have no record)."""
  path = fileio.join(output_dir, RECORDS) if output_dir else None
  if not path or not fileio.exists(path):
    return {}
  try:
    records = fileio.read_json_object(path)
  except ValueError as e:
    log.warning("%s; its steps are taken as unrecorded", e)
    return {}
  return {t: r for t, r in records.items() if isinstance(r, dict)}


def write_records(output_dir: str, task_names: Sequence[str], by_step: Mapping[int, dict]) -> None:
  """Records `by_step` ({step: step_record}) for each task, atomically (process 0)."""
  records = read_records(output_dir)
  for task in task_names:
    records.setdefault(task, {}).update({str(int(s)): r for s, r in by_step.items()})
  fileio.write_json_atomic(fileio.join(output_dir, RECORDS), records)


def check_logged_steps(output_dir: str, model_dir: str, task_names: Sequence[str],
                       current: Mapping[int, dict]) -> None:
  """Refuses to evaluate `current` ({step: step_record}) into `output_dir` when it holds metrics of one
  of those steps that RECORDS does not show to be of the same prompt (sha256) and settings: another
  run's exports evaluated there, other settings, or metrics logged before RECORDS existed.

  Skipping such a step reported the other run's numbers under this one's name; evaluating it again
  would replace them (metrics.jsonl, seqio's logs, TensorBoard). As `t5x.eval`, one EVAL_OUTPUT_DIR
  holds one run's evaluation: a refusal, naming whose metrics they are, loses nothing. The prompt's
  folder is not compared: the same exports copied or moved elsewhere give the same numbers."""
  logged = logged_steps(output_dir, task_names, every_task=False)
  records = read_records(output_dir)
  unknown, others, changed, steps = set(), set(), {}, set()
  for step, now in sorted(current.items()):
    for task in sorted(logged.get(step, {})):
      was = records.get(task, {}).get(str(step))
      if not isinstance(was, dict):
        unknown.add(step)
      elif was.get("prompt_sha256") != now["prompt_sha256"]:
        others.add(_source_name(was.get("prompt")))
      elif was.get("settings") != now["settings"]:
        was_settings = was.get("settings") if isinstance(was.get("settings"), dict) else {}
        for k in sorted(set(was_settings) | set(now["settings"])):
          if was_settings.get(k) != now["settings"].get(k):
            changed.setdefault(k, (was_settings.get(k), now["settings"].get(k)))
      else:
        continue
      steps.add(step)
  if not steps:
    return
  steps = sorted(steps)
  why = []
  if others:
    why.append(f"of other prompts ({', '.join(sorted(others))})")
  if changed:
    why.append("with other settings (" + ", ".join(
        k if isinstance(old, dict) or isinstance(new, dict) else f"{k} {old!r} -> {new!r}"
        for k, (old, new) in changed.items()) + ")")
  if unknown:
    why.append(f"with no record of their prompt at step{'s' if len(unknown) > 1 else ''} {sorted(unknown)} "
               f"(logged before spot_jax wrote {RECORDS})")
  raise ValueError(
      f"{output_dir} already holds metrics of step{'s' if len(steps) > 1 else ''} {steps} that are not known "
      f"to be of {model_dir}'s exports: {'; '.join(why)}. Skipping them would report those numbers as this "
      f"run's, evaluating them would replace them: use a new EVAL_OUTPUT_DIR, or delete {output_dir} to "
      f"evaluate into it again")


def _source_name(path: Optional[str]) -> str:
  """A recorded prompt's source as a user names it: the MODEL_DIR of a `checkpoint_<step>` export."""
  from spot_jax import prompt_io  # pylint: disable=g-import-not-at-top
  if not path:
    return "no prompt"
  parts = path.rstrip("/").rsplit("/", 2)
  if len(parts) == 3 and parts[1] == prompt_io.NUMPY_CHECKPOINTS_DIR and prompt_io.step_of(parts[2]) is not None:
    return parts[0]
  return path


def seqio_files(output_dir: str, task: str, step: int) -> Tuple[str, str]:
  """seqio's JSONLogger files of `task` in `output_dir`: (`<task>-metrics.jsonl`, a record per step;
  `<task>-<step, 6 digits>.jsonl`, every example of one step)."""
  return fileio.join(output_dir, f"{task}-metrics.jsonl"), fileio.join(output_dir, f"{task}-{int(step):06d}.jsonl")


def _seqio_logs_step(path: str, step: int) -> bool:
  """Whether seqio's `<task>-metrics.jsonl` at `path` holds a record of `step`."""
  if not fileio.exists(path):
    return False
  with fileio.open_file(path, "r") as f:
    for line in f.read().split("\n"):
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and record.get("step") == step:
        return True
  return False


def keep_results_of_other_prompts(output_dir: str, task_names: Sequence[str], step: int,
                                  record: Mapping[str, Any]) -> List[str]:
  """Before one prompt (`record`: its `step_record`) is evaluated at `step` into `output_dir`, keeps a
  copy of the files whose results of that step it is about to replace when RECORDS does not show them
  to be of the same prompt (its sha256): another prompt's (a .npy, then a PEFT adapter, both step 0),
  or results with no record. Kept as `fileio.replace_keeping_earlier` keeps `infer`'s predictions,
  `<file>.old-<first 8 hex digits of its sha256>` beside each file, whole as it was: seqio's
  `<task>-<step>.jsonl` and `<task>-metrics.jsonl`, metrics.jsonl, and RECORDS (which says whose
  they are). One warning names them. The same prompt evaluated again (other settings included)
  replaces its results without a copy, as before. Returns the copies' paths (process 0 calls this:
  only it writes)."""
  from spot_jax import metrics_log  # pylint: disable=g-import-not-at-top
  step = int(step)
  logged = logged_steps(output_dir, task_names, every_task=False).get(step, {})
  records = read_records(output_dir)
  others: Dict[str, Optional[dict]] = {}  # task: its recorded step_record (None: none)
  for task in task_names:
    seqio_metrics, seqio_examples = seqio_files(output_dir, task, step)
    if not (task in logged or fileio.exists(seqio_examples) or _seqio_logs_step(seqio_metrics, step)):
      continue  # nothing of this step to replace
    was = records.get(task, {}).get(str(step))
    if isinstance(was, dict) and was.get("prompt_sha256") == record.get("prompt_sha256"):
      continue  # the same prompt: its results are replaced
    others[task] = was if isinstance(was, dict) else None
  if not others:
    return []
  paths = []
  for task in others:
    seqio_metrics, seqio_examples = seqio_files(output_dir, task, step)
    paths.append(seqio_examples)
    if _seqio_logs_step(seqio_metrics, step):
      paths.append(seqio_metrics)
  if any(task in logged for task in others):
    paths.append(fileio.join(output_dir, metrics_log.JSONL_NAME))
  if any(was is not None for was in others.values()):
    paths.append(fileio.join(output_dir, RECORDS))
  kept = [k for k in (fileio.keep_earlier(p) for p in paths) if k]
  whose = sorted({_source_name(was.get("prompt")) for was in others.values() if was is not None})
  why = [f"of {'another prompt' if len(whose) == 1 else 'other prompts'} ({', '.join(whose)}, as {RECORDS} "
         f"records)"] if whose else []
  if any(was is None for was in others.values()):
    why.append(f"with no record of their prompt in {RECORDS}")
  log.warning("%s held the step %d results of %s %s: kept them as %s; the results of %s replace them "
              "there (TensorBoard shows only the new values). To keep both in the logs, evaluate into another "
              "EVAL_OUTPUT_DIR or bind spot_jax.eval.evaluate_prompt.step", output_dir, step, ", ".join(others),
              " and ".join(why), ", ".join(kept), record.get("prompt") or "no prompt")
  return kept

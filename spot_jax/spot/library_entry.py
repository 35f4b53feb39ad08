"""One entry of the SPoT prompt library on disk: its files, its record, and how the record is filled
from the prompt's source. The directory of entries, and its locking and crash recovery, is
`library.py` (`PromptLibrary`).

Layout (DESIGN.md §7):
  <lib>/library.json              {"format_version", "d_model", "model_id", "created"}
  <lib>/<task>/prompt.npy         the trained prompt [P, d]
  <lib>/<task>/task_embedding.npy an early-checkpoint prompt (optional), SPoT's task embedding
  <lib>/<task>/record.json        task, model_id, d_model, prompt_length, steps, metrics, source, created,
                                  task_embedding_step; from a prompt-tuning (T5X) run also
                                  t5x_global_step, t5x_initial_step (task_embedding_t5x_global_step)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings
from typing import Any, Optional

import numpy as np

from spot_jax import fileio, prompt_export, prompt_io, prompt_tuning_compat

LIBRARY_JSON = "library.json"
RECORD_JSON = prompt_io.LIBRARY_RECORD
PROMPT_FILE = "prompt.npy"
TASK_EMBEDDING_FILE = prompt_io.LIBRARY_TASK_EMBEDDING
FORMAT_VERSION = 1
KINDS = ("prompt", "task_embedding")
ENTRY_FILES = (PROMPT_FILE, TASK_EMBEDDING_FILE)
# What a readable record.json holds at least.
RECORD_KEYS = ("task", "model_id", "d_model", "prompt_length")

# `fileio.atomic_write_dir` writes `<task>.tmp-<id>`, and for an overwrite first moves the old entry to
# `<task>.old-<id>`. A crash can leave either behind; they are never entries of their own.
PARTIAL_RE = re.compile(r"^(?P<task>.+)\.(?P<kind>tmp|old)-(?P<id>[0-9A-Za-z]+)$")


@dataclasses.dataclass
class LibraryEntry:
  task: str
  prompt: np.ndarray
  task_embedding: Optional[np.ndarray]
  record: dict


def check_task_name(task: str) -> None:
  if not task or not isinstance(task, str) or "/" in task or "\\" in task or task.startswith(".") \
      or task == LIBRARY_JSON or PARTIAL_RE.match(task):
    raise ValueError(f"invalid task name {task!r}: use a seqio task name without '/' that does not "
                     "start with '.' nor end with '.tmp-<id>' or '.old-<id>' (names of partial writes)")


def model_id_of_path(checkpoint_path: str) -> str:
  """A frozen model's id from its checkpoint path: the last two path parts
  (`t5_1_1_lm100k_base/checkpoint_1100000` of gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/
  checkpoint_1100000, `google/t5-v1_1-base` of a Hub id). The rule of `spot`/`spot source`
  (`training_runs.default_model_id`) and of `library add` without --model-id."""
  parts = [p for p in str(checkpoint_path).rstrip("/").split("/") if p]
  return "/".join(parts[-2:])


@dataclasses.dataclass
class RecordedModel:
  """The frozen model a prompt's source records: `model_id` (by `model_id_of_path`, or a library entry's
  own), the `path` it was derived from (None for a library entry) and the file that records it."""
  model_id: str
  path: Optional[str]
  where: str

  def describe(self) -> str:
    return (f"{self.path}, which {self.where} records" if self.path is not None else
            f"which {self.where} records")


def recorded_model(source: Optional[str], src: Optional[Any], info: dict,
                   entry: Optional[dict]) -> Optional[RecordedModel]:
  """The frozen model a prompt source records, else None: another library entry's `model_id`, an
  export's `export.json` `frozen_model` (the checkpoint path its run was trained from), or a PEFT
  adapter's `base_model_name_or_path`. `src` is `prompt_io.PromptSource`."""
  if entry is not None:
    mid = entry.get("model_id")
    return RecordedModel(str(mid), None, fileio.join(source, RECORD_JSON)) if mid else None
  if src is None or src.export_dir is None:
    return None
  if src.format == "peft":
    frozen = prompt_io.read_export_info(src.export_dir).get("frozen_model")
    where = fileio.join(src.export_dir, prompt_io.PEFT_CONFIG) + " (base_model_name_or_path)"
  else:
    frozen = info.get("frozen_model")
    where = fileio.join(src.export_dir, prompt_io.EXPORT_INFO) + " (frozen_model)"
  if not isinstance(frozen, str) or not model_id_of_path(frozen):
    return None
  return RecordedModel(model_id_of_path(frozen), frozen, where)


def read_source(task: str, prompt_or_path: Any, task_embedding: Any, which: str,
                task_embedding_step: Optional[int]) -> tuple:
  """(prompt, task embedding or None, what the record takes from the source) for `add`.

  A path is read with `prompt_io`; a training MODEL_DIR also brings its task-embedding export, and its
  export info (step, metrics); a prompt-tuning run its T5X steps (`prompt_tuning_compat`). The
  returned dict is what `make_record` reads besides the arrays, and `recorded_model`: the frozen model
  the source records (`recorded_model`), `add`'s model id when none is given.
  """
  source = None
  info: dict = {}
  model = None
  t5x_steps = emb_t5x_steps = None  # prompt_tuning_compat.T5XRunSteps of a prompt-tuning source
  if isinstance(prompt_or_path, (str, os.PathLike)):
    source = str(prompt_or_path)
    prompt, src = prompt_io.load_prompt_with_source(source, which)
    if src.export_dir is not None and src.format != "peft":
      info = prompt_io.read_export_info(src.export_dir)
    t5x_steps = prompt_tuning_compat.t5x_run_steps(src)
    entry = prompt_io.library_entry_record(source) if fileio.isdir(source) else None
    if entry is not None:  # another library's entry: its record's steps, metrics and task embedding
      info = {"step": entry.get("steps"), "metrics": entry.get("metrics") or {}}
      if task_embedding is None and entry.get("has_task_embedding"):
        task_embedding = os.path.join(source, TASK_EMBEDDING_FILE)
        if task_embedding_step is None:
          task_embedding_step = entry.get("task_embedding_step")
    elif task_embedding is None and fileio.isdir(source):  # a MODEL_DIR, also on gs://
      ex = prompt_io.find_exports(source)
      if ex.task_embedding is not None:
        task_embedding = ex.task_embedding
    model = recorded_model(source, src, info, entry)
    trained_on = entry.get("task") if entry is not None else info.get("task")
    if trained_on and trained_on != task:  # a typo'd --task would surface only in `spot`, much later
      warnings.warn(f"{source} holds a prompt of task {trained_on!r} (its "
                    f"{'record.json' if entry is not None else 'export.json'} says so), added as {task!r}: if "
                    f"that is a mistake, remove the entry and add it with --task {trained_on}", stacklevel=3)
  else:
    prompt = prompt_io.validate_prompt(prompt_or_path, f"prompt for task {task!r}")
  emb_source = None
  if task_embedding is not None:
    if isinstance(task_embedding, (str, os.PathLike)):
      emb_source = str(task_embedding)
      task_embedding, emb_src = prompt_io.load_prompt_with_source(emb_source, "task_embedding")
      emb_t5x_steps = prompt_tuning_compat.t5x_run_steps(emb_src)
      if task_embedding_step is None:
        task_embedding_step = emb_t5x_steps.prompt_steps if emb_t5x_steps else emb_src.step
    else:
      task_embedding = prompt_io.validate_prompt(task_embedding, f"task embedding for {task!r}")
    if task_embedding.shape[1] != prompt.shape[1]:
      raise ValueError(f"task {task!r}: task embedding shape {task_embedding.shape} and prompt shape "
                       f"{prompt.shape} have different d_model")
  elif task_embedding_step is not None:  # it would be dropped, and the entry left without an embedding
    raise ValueError(f"task {task!r}: a task-embedding step ({task_embedding_step}) is given but there is "
                     "no task embedding: pass the early export it was taken from too (--task-embedding "
                     "PATH, task_embedding= in Python), or leave the step out")
  return prompt, task_embedding, dict(source=source, info=info, t5x_steps=t5x_steps,
                                      emb_t5x_steps=emb_t5x_steps, emb_source=emb_source,
                                      task_embedding_step=task_embedding_step, recorded_model=model)


def make_record(task: str, model_id: str, prompt: np.ndarray, task_embedding: Optional[np.ndarray],
                src: dict) -> dict:
  """The record.json of an entry. `src`: `read_source`'s dict plus `add`'s `steps`, `metrics` (None:
  from the source) and whether `steps` / `task_embedding_step` were given (`steps_given`,
  `emb_step_given`: a T5X global step then needs no warning)."""
  steps, metrics, source, info = src["steps"], src["metrics"], src["source"], src["info"]
  t5x_steps, emb_t5x_steps, emb_source = src["t5x_steps"], src["emb_t5x_steps"], src["emb_source"]
  task_embedding_step = src["task_embedding_step"]
  if steps is None:
    steps = t5x_steps.prompt_steps if t5x_steps else info.get("step")
  _warn_t5x_global_steps(source, t5x_steps, emb_source, emb_t5x_steps, src["steps_given"],
                         src["emb_step_given"])
  if metrics is None:
    metrics = _own_metrics(task, info.get("metrics") or {}, source)
  record = {
      "task": task,
      "model_id": model_id,
      "d_model": int(prompt.shape[1]),
      "prompt_length": int(prompt.shape[0]),
      "steps": None if steps is None else int(steps),
      "metrics": metrics or {},
      "source": source,
      "task_embedding_source": emb_source,
      "has_task_embedding": task_embedding is not None,
      "task_embedding_length": None if task_embedding is None else int(task_embedding.shape[0]),
      "task_embedding_step": (None if task_embedding is None or task_embedding_step is None
                              else int(task_embedding_step)),
      "created": time.time(),
      "format_version": FORMAT_VERSION,
  }
  if t5x_steps is not None:
    record.update(t5x_global_step=t5x_steps.global_step, t5x_initial_step=t5x_steps.initial_step)
  if emb_t5x_steps is not None and task_embedding is not None:
    record["task_embedding_t5x_global_step"] = emb_t5x_steps.global_step
  return record


def entry_files(record: dict, prompt: np.ndarray, task_embedding: Optional[np.ndarray]) -> dict:
  """{file name: bytes} of an entry's directory."""
  files = {PROMPT_FILE: prompt_export.npy_bytes(prompt),
           RECORD_JSON: json.dumps(record, indent=2, sort_keys=True,
                                   default=fileio.json_default).encode()}
  if task_embedding is not None:
    files[TASK_EMBEDDING_FILE] = prompt_export.npy_bytes(task_embedding)
  return files


def check_npy(task: str, path: str, shape: Optional[tuple], fix: str) -> None:
  """A ValueError naming the entry and `fix` unless `path` is a complete .npy of `shape` (None: any)."""
  if not os.path.exists(path):
    raise ValueError(f"library entry {task!r}: {path} is missing (its record.json lists it). "
                     f"Fix: {fix}")
  try:  # reads the header only; a file shorter than the header says fails
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    got = tuple(arr.shape)
    del arr
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"library entry {task!r}: {path} is not a complete .npy file (truncated?): {e}. "
                     f"Fix: {fix}") from e
  if shape is not None and got != tuple(int(x) for x in shape):
    raise ValueError(f"library entry {task!r}: {path} holds shape {list(got)}, but its record.json "
                     f"says {list(shape)}. Fix: {fix}")


def _own_metrics(task: str, metrics: dict, source: Optional[str]) -> dict:
  """A MODEL_DIR export's validation metrics under the names `spot source` records (`accuracy`).

  The trainer keys them `<task>/<metric>`, one prefix per evaluated task; keys of `task` lose their
  prefix. Metrics of other tasks only stay (as they are) when none are of `task`, with a warning: the
  run may have trained another task than the one it is being filed under.
  """
  own = {k[len(task) + 1:]: v for k, v in metrics.items() if k.startswith(task + "/")}
  if own:
    return own
  tasks = sorted({k.split("/", 1)[0] for k in metrics if "/" in k})
  if tasks:
    warnings.warn(f"library: the metrics of {source} are of {', '.join(tasks)}, not of {task!r}: check "
                  f"that this run trained {task!r} (the entry is filed under that name)")
  return dict(metrics)


def _warn_t5x_global_steps(source, t5x_steps, emb_source, emb_t5x_steps, steps_given: bool,
                           emb_step_given: bool) -> None:
  """One warning when a step recorded from a prompt-tuning run is T5X's global step (its config.gin
  did not give the initial checkpoint's step), naming the flags that record the prompt's own steps."""
  unknown = []  # (flag, python argument, source, T5XRunSteps)
  if t5x_steps is not None and t5x_steps.initial_step is None and not steps_given:
    unknown.append(("--steps", "steps", source, t5x_steps))
  if emb_t5x_steps is not None and emb_t5x_steps.initial_step is None and not emb_step_given:
    unknown.append(("--task-embedding-step", "task_embedding_step", emb_source, emb_t5x_steps))
  if not unknown:
    return
  said = "; ".join(f"{src}: step {r.global_step} ({r.why_unknown})" for _, _, src, r in unknown)
  flags = " and ".join(f for f, _, _, _ in unknown)
  args = ", ".join(f"{a}=" for _, a, _, _ in unknown)
  warnings.warn(
      f"library: the step recorded from a google-research/prompt-tuning run is T5X's global step, which "
      f"counts the initial checkpoint's steps too (a run of 3000 steps from checkpoint_1100000 writes "
      f"checkpoint_1103000), and the initial checkpoint's step is unknown: {said}. Pass the "
      f"prompt's own training steps with {flags} ({args} in Python) so that retrieval compares "
      f"task-embedding steps correctly")

"""The SPoT prompt library: a directory of trained source prompts, one entry per task (an entry's
files and record are `library_entry.py`; retrieval is `retrieval.py`).

All prompts of a library belong to one frozen model: an entry whose d_model or model id differs is
refused. Entries are written into a temporary directory and renamed into place, so a failed `add`
leaves no partial entry; `*.tmp-*` / `*.old-*` directories left by a killed process are not entries
(an orphaned `<task>.old-*` stands for its missing `<task>`). The library is a local directory (a
gs:// path is refused); the prompts added to it may come from gs://.

Damaged files: an unreadable library.json only repeats what the entries' records say, so it is ignored
with a warning. An entry whose record.json or prompt file is missing, unreadable or truncated is an
error naming it and the fix in every command, `list` included (never skipped: a silently missing
source would change rankings and similarity tables without a word). A directory without record.json
is such an entry when it holds prompt.npy or task_embedding.npy; other directories (`similarity/`)
are not entries.

Writes (`add`, `remove`) hold an OS lock on `<lib>/.lock` (the file `fileio.exclusive_lock` uses) for
their check-and-write: a second write waits for the first (up to LOCK_TIMEOUT_S), then checks the
library as the first left it, so two concurrent adds cannot mix two models nor both add one task.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from typing import Any, Optional

import numpy as np

from spot_jax import fileio, prompt_io
from spot_jax.spot import library_entry
# The entry format's names, re-exported: callers import them from here.
from spot_jax.spot.library_entry import (ENTRY_FILES, FORMAT_VERSION, KINDS, LIBRARY_JSON, PARTIAL_RE,
                                         PROMPT_FILE, RECORD_JSON, RECORD_KEYS, TASK_EMBEDDING_FILE,
                                         LibraryEntry, check_task_name)

__all__ = ["PromptLibrary", "LibraryEntry", "LOCK_TIMEOUT_S", "LIBRARY_JSON", "RECORD_JSON", "PROMPT_FILE",
           "TASK_EMBEDDING_FILE", "FORMAT_VERSION", "KINDS", "ENTRY_FILES"]

# How long a write (`add`, `remove`) waits for another process's write to the same library to end.
LOCK_TIMEOUT_S = 60.0


def _check_record_values(steps: Any, task_embedding_step: Any, metrics: Any) -> Optional[dict]:
  """Refuses values the record would keep but nothing could use (a step count below 1, metrics that
  are not a JSON object); returns the metrics with NaN/inf as null, with a warning: NaN would be
  written as non-standard JSON that other readers refuse (a correlation of constant predictions is
  NaN, so an evaluation can give one)."""
  import math  # pylint: disable=g-import-not-at-top
  import numbers  # pylint: disable=g-import-not-at-top
  for name, value in (("steps", steps), ("task_embedding_step", task_embedding_step)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
      raise ValueError(f"{name} must be a positive integer (training steps), got {value!r}")
  if metrics is None:
    return None
  if not isinstance(metrics, dict):
    raise ValueError(f"metrics must be a JSON object (e.g. {{\"accuracy\": 81.2}}), got {type(metrics).__name__}")
  bad = sorted(k for k, v in metrics.items()
               if isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isfinite(v))
  if bad:
    warnings.warn(f"metric(s) {bad} are NaN or infinite: recorded as null (no value)", stacklevel=3)
  return {k: (None if k in bad else v) for k, v in metrics.items()}


def _check_local(path: str) -> None:
  """The library is read and written with local renames and listings (its atomicity rests on them);
  its sources and the pipeline's MODEL_DIRs may be on gs://, the library itself may not."""
  fileio.check_local(path, "the prompt library", f"use a local directory, e.g. copy this one with `gsutil -m "
                     f"cp -r {path} /data/spot_library`; the prompts added to it may come from gs://")


def _names_a_folder_of(model_id: str, path: str) -> bool:
  """Whether `model_id`'s path parts are a run of whole consecutive parts of `path`."""
  ids = [p for p in model_id.strip("/").split("/") if p]
  parts = [p for p in path.rstrip("/").split("/") if p]
  return bool(ids) and any(parts[i:i + len(ids)] == ids for i in range(len(parts) - len(ids) + 1))


class PromptLibrary:
  """A directory of source-task prompts for one frozen model."""

  def __init__(self, path: str):
    self.path = str(path)
    _check_local(self.path)
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise NotADirectoryError(f"prompt library {self.path} is a file, not a directory")

  @classmethod
  def existing(cls, path: str) -> "PromptLibrary":
    """The library at `path` for reading; a FileNotFoundError when it does not exist, so that a
    mistyped path is not read as an empty library (`add` creates a new one instead)."""
    _check_local(str(path))
    if not os.path.exists(str(path)):
      raise FileNotFoundError(f"library {path} does not exist: check the --library path, or create it "
                              f"with `spot-jax library add --library {path} --task TASK --model-id ID "
                              "SOURCE`")
    return cls(path)

  def _fix(self, task: str) -> str:
    return (f"re-add the task with `spot-jax library add --library {self.path} --task {task} --overwrite "
            f"SOURCE`, or drop the entry with `spot-jax library remove --library {self.path} --task "
            f"{task}` (or delete {os.path.join(self.path, task)})")

  def _write_lock(self):
    """`<lib>/.lock` while a write checks the library and changes it: another process's write is
    waited for (up to LOCK_TIMEOUT_S), then refused naming its holder."""
    return fileio.exclusive_lock(self.path, "library write", wait_s=LOCK_TIMEOUT_S)

  # -- metadata ------------------------------------------------------------------------------------
  @property
  def meta(self) -> dict:
    """library.json, or {} for a library with no entry yet.

    A lost (e.g. a crash after the first entry) or unreadable library.json loses nothing: every
    entry's record holds the same model id and d_model, so the first entry decides (with a warning
    when the file is damaged, since deleting it is the fix).
    """
    p = os.path.join(self.path, LIBRARY_JSON)
    if os.path.exists(p) and not self.tasks():  # every entry removed: the next add claims it anew
      return {}
    if os.path.exists(p):
      try:
        return prompt_io.read_json_object(p)
      except ValueError as e:
        warnings.warn(f"library {self.path}: {e}; ignoring it, the entries' records give the model id "
                      f"and d_model. Delete {p} to silence this (a library without entries rewrites it on "
                      "its next add)")
    for task in self.tasks():  # the first readable record (a damaged entry errs where it is read)
      try:
        rec = self.record(task)
      except ValueError:
        continue
      return {"format_version": FORMAT_VERSION, "d_model": rec["d_model"], "model_id": rec["model_id"]}
    return {}

  @property
  def d_model(self) -> Optional[int]:
    return self.meta.get("d_model")

  @property
  def model_id(self) -> Optional[str]:
    return self.meta.get("model_id")

  def _orphaned_backups(self) -> dict:
    """{task: `<task>.old-<id>` dir} for tasks whose entry directory is missing.

    A process killed between the two renames of an overwrite (entry -> `.old-<id>`, `.tmp-<id>` ->
    entry) leaves only the complete old entry, under its backup name: that is the entry. With several
    backups of one task (crashes of older versions), the newest record wins.
    """
    if not os.path.isdir(self.path):
      return {}
    found: dict = {}
    for n in os.listdir(self.path):
      m = PARTIAL_RE.match(n)
      if not m or m.group("kind") != "old" or n.startswith("."):
        continue
      task = m.group("task")
      rec_path = os.path.join(self.path, n, RECORD_JSON)
      if os.path.exists(os.path.join(self.path, task, RECORD_JSON)) or not os.path.exists(rec_path):
        continue
      try:
        with open(rec_path) as f:
          created = float(json.load(f).get("created") or 0.0)
      except (OSError, ValueError, AttributeError):
        continue
      if task not in found or created > found[task][0]:
        found[task] = (created, os.path.join(self.path, n))
    return {t: d for t, (_, d) in found.items()}

  def _entry_dir(self, task: str) -> Optional[str]:
    """The directory holding `task`'s entry: `<task>`, else its orphaned `.old-<id>` backup; or None.

    Readers only resolve the backup and never rename it: a concurrent `add(overwrite=True)` of the
    same task may be between its two renames right now, and moving its backup back under it would
    make its final rename fail. Writers (`add`, `remove`) restore it first (`_restore_backup`).
    """
    d = os.path.join(self.path, task)
    if os.path.exists(os.path.join(d, RECORD_JSON)):
      return d
    backup = self._orphaned_backups().get(task)
    if backup is None and self._is_damaged_entry(task):
      return d  # reading it is an error naming the fix; `remove` and `add --overwrite` replace it
    return backup

  def _is_damaged_entry(self, name: str) -> bool:
    """A directory without record.json that holds an entry's files: an entry whose record was lost.
    (Other directories, e.g. `similarity/`, are not entries.)"""
    d = os.path.join(self.path, name)
    return (not name.startswith(".") and not PARTIAL_RE.match(name) and os.path.isdir(d)
            and not os.path.exists(os.path.join(d, RECORD_JSON))
            and any(os.path.exists(os.path.join(d, f)) for f in ENTRY_FILES))

  def _restore_backup(self, task: str) -> None:
    """Renames an orphaned `<task>.old-<id>` back to `<task>` (before a write to that task)."""
    backup = self._orphaned_backups().get(task)
    if backup is None:
      return
    d = os.path.join(self.path, task)
    if os.path.isdir(d):  # an incomplete `<task>` (no record.json): not an entry, move it aside
      trash = os.path.join(self.path, f".removed-{task}-{uuid.uuid4().hex[:8]}")
      os.replace(d, trash)
      shutil.rmtree(trash, ignore_errors=True)
    os.replace(backup, d)
    warnings.warn(f"library {self.path}: restored entry {task!r} from {os.path.basename(backup)} "
                  "(left by an interrupted overwrite)")

  def tasks(self) -> list:
    """Task names of the entries, damaged ones included (reading those is an error naming the fix).
    `<task>.tmp-<id>` / `<task>.old-<id>` directories left by an interrupted write, hidden names
    (`.lock`) and directories holding no entry files are skipped; an orphaned `.old-<id>` backup
    stands for its missing entry."""
    if not os.path.isdir(self.path):
      return []
    names = {n for n in os.listdir(self.path)
             if not n.startswith(".") and not PARTIAL_RE.match(n)
             and (os.path.exists(os.path.join(self.path, n, RECORD_JSON)) or self._is_damaged_entry(n))}
    names.update(self._orphaned_backups())
    return sorted(names)

  def __contains__(self, task: str) -> bool:
    return task in self.tasks()

  def __len__(self) -> int:
    return len(self.tasks())

  # -- writing -------------------------------------------------------------------------------------
  def add(self, task: str, prompt_or_path: Any, model_id: Optional[str], task_embedding: Any = None,
          steps: Optional[int] = None, metrics: Optional[dict] = None, overwrite: bool = False,
          which: str = "auto", task_embedding_step: Optional[int] = None) -> dict:
    """Adds (or with `overwrite`, replaces) the entry of `task`; returns its record.

    `prompt_or_path` is an array or any path `prompt_io.load_prompt` reads. A training MODEL_DIR also
    brings its task-embedding export, its step and its validation metrics (from the best export) unless
    given here. The task embedding's training step (read from its export, or `task_embedding_step`)
    is recorded, so that retrieval can tell when the target's was taken at another step. `model_id`
    names the frozen model (e.g. "t5_1_1_lm100k_base"). None means the one the source records, by the
    rule `spot` names its frozen model with (`library_entry.model_id_of_path`: the last two parts of the
    checkpoint path of its export.json's `frozen_model` or PEFT's `base_model_name_or_path`; another
    library's entry: its model id), else the library's; a recorded path that ends with the library's id
    (the same folder, typed shorter) takes the library's id. An id other than the library's is refused.
    `which` picks a MODEL_DIR export ("auto" = best, else newest).

    A prompt (or task embedding) out of a google-research/prompt-tuning run carries T5X's global step,
    which continues the initial checkpoint's count. Its steps are recorded as prompt steps (global
    step minus the initial checkpoint's, from the run's MODEL_DIR/config.gin), the global step beside
    them (`t5x_global_step`, `task_embedding_t5x_global_step`); without a config.gin that says, the
    global step is recorded with one warning naming `steps` / `task_embedding_step`, which always win.
    """
    check_task_name(task)
    metrics = _check_record_values(steps, task_embedding_step, metrics)
    steps_given, emb_step_given = steps is not None, task_embedding_step is not None
    # Fail fast, before reading the source; checked again under the lock, just before the write.
    if os.path.isdir(self.path):
      with self._write_lock():
        self._restore_backup(task)
        self._check_addable(task, model_id, overwrite, source_may_say=True)
    else:
      self._check_addable(task, model_id, overwrite, source_may_say=True)

    prompt, task_embedding, src = library_entry.read_source(task, prompt_or_path, task_embedding, which,
                                                            task_embedding_step)
    recorded = src.pop("recorded_model")
    with self._write_lock():  # the check and the write, so a concurrent add sees this one's entry
      return self._write_entry(task, prompt, task_embedding, model_id, overwrite, dict(
          src, steps=steps, metrics=metrics, steps_given=steps_given, emb_step_given=emb_step_given),
          recorded if model_id is None else None)

  def _model_id_of(self, recorded: Optional[library_entry.RecordedModel]) -> Optional[str]:
    """The model id an add without one takes from its source's record (None: the library's)."""
    if recorded is None:
      return None
    ours = self.meta.get("model_id")
    if ours is not None and recorded.path is not None and _names_a_folder_of(str(ours), recorded.path):
      # The library named the same model by fewer parts of its path: INITIAL_CHECKPOINT_PATH as typed,
      # or the model's folder without its checkpoint step (t5_1_1_lm100k_base, as the docs name it).
      return str(ours)
    return recorded.model_id

  def _check_addable(self, task: str, model_id: Optional[str], overwrite: bool,
                     source_may_say: bool = False) -> tuple:
    """(library meta, model id) for an add of `task`; refuses an add without a model id to an empty
    library (unless `source_may_say`: the source's records, not read yet, may give it) and, without
    `overwrite`, an add of a task already in it. Call holding the write lock."""
    meta = self.meta
    if model_id is None:
      model_id = meta.get("model_id")
      if model_id is None and not source_may_say:
        raise ValueError(f"library {self.path} is empty and the prompt's source records no frozen model (no "
                         "export.json frozen_model, no PEFT base_model_name_or_path: a .npy, or a run trained "
                         "from a fresh initialization): pass the frozen model's id (--model-id; model_id= in "
                         "Python) with the first prompt, as `spot` names it: the last two parts of its "
                         "INITIAL_CHECKPOINT_PATH (e.g. t5_1_1_lm100k_base/checkpoint_1100000)")
    d = os.path.join(self.path, task)
    if os.path.exists(d) and self._entry_dir(task) is None:  # --overwrite deleted it, without a word
      raise FileExistsError(f"{d} is in the way: it is not an entry of library {self.path} (e.g. the default "
                            f"output of `library similarity`, <library>/similarity): move it out of the library "
                            f"(and give `library similarity` another --out-dir), then add {task!r}")
    if not overwrite and (os.path.exists(d) or self._entry_dir(task)):
      raise FileExistsError(f"task {task!r} is already in library {self.path}; pass overwrite=True "
                            "(--overwrite) to replace it")
    return meta, None if model_id is None else str(model_id)

  def _write_entry(self, task, prompt, task_embedding, model_id, overwrite, src: dict,
                   recorded: Optional[library_entry.RecordedModel] = None) -> dict:
    """The check-and-write of `add`, under the write lock (`src`: `library_entry.make_record`'s;
    `recorded`: the frozen model the source records, for an add without a model id)."""
    self._restore_backup(task)
    model_id = model_id if model_id is not None else self._model_id_of(recorded)
    meta, model_id = self._check_addable(task, model_id, overwrite)
    d_model = int(prompt.shape[1])
    if meta:
      if meta.get("d_model") != d_model:
        raise ValueError(
            f"cannot add {task!r} to library {self.path}: its prompt has d_model {d_model} "
            f"(shape {tuple(prompt.shape)}) but the library holds d_model {meta.get('d_model')} prompts "
            f"of model {meta.get('model_id')!r}. Use a library per frozen model.")
      if meta.get("model_id") != model_id:
        origin = f" (from {recorded.describe()})" if recorded is not None else ""
        raise ValueError(
            f"cannot add {task!r} to library {self.path}: its frozen model is {model_id!r}{origin} but the "
            f"library holds prompts of {meta.get('model_id')!r}. Prompts only transfer within one "
            "frozen model: use a library per model (or the same model id"
            + (f": --model-id {meta.get('model_id')} if both name one model)." if recorded is not None else ")."))
    if overwrite and task_embedding is None and self._entry_dir(task):
      try:
        old = self.record(task)
      except (KeyError, ValueError):  # a damaged entry is replaced whole
        old = {}
      if old.get("has_task_embedding"):
        warnings.warn(f"task {task!r}: the entry it replaces had a task embedding (step "
                      f"{old.get('task_embedding_step')}) and this add has none, so retrieval will fall "
                      "back to its prompt; pass --task-embedding PATH (task_embedding=) to keep one")
    record = library_entry.make_record(task, model_id, prompt, task_embedding, src)
    files = library_entry.entry_files(record, prompt, task_embedding)
    os.makedirs(self.path, exist_ok=True)
    fileio.atomic_write_dir(os.path.join(self.path, task), files)
    if not meta:  # after the entry, so a failed first add leaves the library unclaimed
      fileio.write_json_atomic(os.path.join(self.path, LIBRARY_JSON),
                               {"format_version": FORMAT_VERSION, "d_model": d_model, "model_id": model_id,
                                "created": time.time()}, sort_keys=True)
    return record

  def remove(self, task: str) -> None:
    """Deletes the entry of `task` (renamed aside first, so it vanishes at once)."""
    check_task_name(task)
    if self._entry_dir(task) is None:  # before the lock, which would create a missing library
      raise KeyError(f"task {task!r} is not in library {self.path}; tasks: {self.tasks()}")
    with self._write_lock():
      entry_dir = self._entry_dir(task)
      if entry_dir is None:
        raise KeyError(f"task {task!r} is not in library {self.path}; tasks: {self.tasks()}")
      trash = os.path.join(self.path, f".removed-{task}-{uuid.uuid4().hex[:8]}")
      os.replace(entry_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)

  # -- reading -------------------------------------------------------------------------------------
  def record(self, task: str) -> dict:
    d = self._entry_dir(task) if task and not PARTIAL_RE.match(task) else None
    if d is None:
      raise KeyError(f"task {task!r} is not in library {self.path}; tasks: {self.tasks()}")
    path = os.path.join(d, RECORD_JSON)
    if not os.path.exists(path):
      held = ", ".join(f for f in ENTRY_FILES if os.path.exists(os.path.join(d, f)))
      raise ValueError(f"library entry {task!r}: {path} is missing (the directory holds {held} but no "
                       f"record). Fix: {self._fix(task)}")
    try:
      rec = prompt_io.read_json_object(path)
      missing = [k for k in RECORD_KEYS if k not in rec]
      if missing:
        raise ValueError(f"{path} lacks {missing}")
    except ValueError as e:
      raise ValueError(f"library entry {task!r}: {e}. Fix: {self._fix(task)}") from e
    return rec

  def _entry_files(self, task: str) -> tuple:
    """(record, prompt path, task embedding path or None) of `task`, checked without reading the
    arrays: the record, and each file it lists present, a complete .npy (not truncated) and of the
    shape the record gives. A ValueError naming the entry and the fix otherwise."""
    rec = self.record(task)
    d = self._entry_dir(task)
    prompt_path, emb_path = os.path.join(d, PROMPT_FILE), os.path.join(d, TASK_EMBEDDING_FILE)
    self._check_npy(task, prompt_path, (rec["prompt_length"], rec["d_model"]))
    if rec.get("has_task_embedding") or os.path.exists(emb_path):
      length = rec.get("task_embedding_length")
      self._check_npy(task, emb_path, None if length is None else (length, rec["d_model"]))
    else:
      emb_path = None
    return rec, prompt_path, emb_path

  def _check_npy(self, task: str, path: str, shape: Optional[tuple]) -> None:
    library_entry.check_npy(task, path, shape, self._fix(task))

  def _load(self, task: str, path: str) -> np.ndarray:
    """`prompt_io.load_prompt` of an entry's file, its error saying how to repair the entry."""
    try:
      return prompt_io.load_prompt(path)
    except ValueError as e:
      raise ValueError(f"library entry {task!r}: {e}; or {self._fix(task)}") from e

  def list(self) -> list:  # pylint: disable=redefined-builtin
    """Records of all entries, sorted by task name. Each entry's files are checked (not read): a
    damaged entry is an error, which names every damaged entry of the library."""
    out, damaged = [], []
    for t in self.tasks():
      try:
        out.append(self._entry_files(t)[0])
      except ValueError as e:
        damaged.append(str(e))
    if len(damaged) == 1:
      raise ValueError(damaged[0])
    if damaged:
      raise ValueError(f"library {self.path} has {len(damaged)} damaged entries:\n  " + "\n  ".join(damaged))
    return out

  def get(self, task: str) -> LibraryEntry:
    rec, prompt_path, emb_path = self._entry_files(task)
    emb = self._load(task, emb_path) if emb_path is not None else None
    return LibraryEntry(task, self._load(task, prompt_path), emb, rec)

  def prompts(self, kind: str = "prompt", missing: str = "prompt") -> dict:
    """{task: array} of the final prompts (kind="prompt") or the task embeddings.

    For kind="task_embedding", tasks without one use their final prompt (missing="prompt", with a
    warning), are left out (missing="skip"), or raise (missing="error"). Each entry's record and files
    are checked too, so that a damaged entry fails here as it does in `list` (see the module docstring).
    """
    if kind not in KINDS:
      raise ValueError(f"kind={kind!r}: use one of {KINDS}")
    if missing not in ("prompt", "skip", "error"):
      raise ValueError(f"missing={missing!r}: use 'prompt', 'skip' or 'error'")
    out, lacking = {}, []
    for t in self.tasks():
      _, prompt_path, emb_path = self._entry_files(t)
      if kind == "task_embedding":
        if emb_path is not None:
          out[t] = self._load(t, emb_path)
          continue
        lacking.append(t)
        if missing == "skip":
          continue
        if missing == "error":
          raise ValueError(f"library {self.path}: task(s) {lacking} have no task embedding; add them "
                           "from a MODEL_DIR with a task_embedding export or pass --task-embedding")
      out[t] = self._load(t, prompt_path)
    if lacking:
      what = "their final prompt is used instead" if missing == "prompt" else "they are left out"
      warnings.warn(f"library {self.path}: {lacking} have no task embedding; {what}")
    return out

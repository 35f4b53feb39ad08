"""The SPoT prompt library: trained source prompts on disk, plus retrieval for a target task.

Layout (DESIGN.md §7):
  <lib>/library.json              {"format_version", "d_model", "model_id", "created"}
  <lib>/<task>/prompt.npy         the trained prompt [P, d]
  <lib>/<task>/task_embedding.npy an early-checkpoint prompt (optional), SPoT's task embedding
  <lib>/<task>/record.json        task, model_id, d_model, prompt_length, steps, metrics, source, created

All prompts of a library belong to one frozen model: an entry whose d_model or model id differs is
refused. Entries are written into a temporary directory and renamed into place, so a failed `add`
leaves no partial entry; `*.tmp-*` / `*.old-*` directories left by a killed process are not entries
(an orphaned `<task>.old-*` stands for its missing `<task>`). The library is a local directory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio, prompt_io
from spot_jax.spot import similarity as sim

LIBRARY_JSON = "library.json"
RECORD_JSON = "record.json"
PROMPT_FILE = "prompt.npy"
TASK_EMBEDDING_FILE = "task_embedding.npy"
FORMAT_VERSION = 1
KINDS = ("prompt", "task_embedding")
# Two ranking scores within this tolerance are a tie (math.isclose): float noise of a cosine, or a
# metric that every source reaches alike (a random frozen model scores every zero-shot prompt 0).
TIE_REL_TOL = 1e-6
TIE_ABS_TOL = 1e-9

log = logging.getLogger("spot_jax.spot")
# `fileio.atomic_write_dir` writes `<task>.tmp-<id>`, and for an overwrite first moves the old entry to
# `<task>.old-<id>`. A crash can leave either behind; they are never entries of their own.
_PARTIAL_RE = re.compile(r"^(?P<task>.+)\.(?P<kind>tmp|old)-(?P<id>[0-9A-Za-z]+)$")


@dataclasses.dataclass
class LibraryEntry:
  task: str
  prompt: np.ndarray
  task_embedding: Optional[np.ndarray]
  record: dict


def _check_task_name(task: str) -> None:
  if not task or not isinstance(task, str) or "/" in task or "\\" in task or task.startswith(".") \
      or task == LIBRARY_JSON or _PARTIAL_RE.match(task):
    raise ValueError(f"invalid task name {task!r}: use a seqio task name without '/' that does not "
                     "start with '.' nor end with '.tmp-<id>' or '.old-<id>' (names of partial writes)")


class PromptLibrary:
  """A directory of source-task prompts for one frozen model."""

  def __init__(self, path: str):
    self.path = str(path)
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise NotADirectoryError(f"prompt library {self.path} is a file, not a directory")

  # -- metadata ------------------------------------------------------------------------------------
  @property
  def meta(self) -> dict:
    """library.json, or {} for a library with no entry yet."""
    p = os.path.join(self.path, LIBRARY_JSON)
    if not os.path.exists(p):
      tasks = self.tasks()
      if tasks:  # library.json lost (e.g. a crash after the first entry): the entries still decide
        rec = self.record(tasks[0])
        return {"format_version": FORMAT_VERSION, "d_model": rec["d_model"], "model_id": rec["model_id"]}
      return {}
    with open(p) as f:
      return json.load(f)

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
      m = _PARTIAL_RE.match(n)
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
    return self._orphaned_backups().get(task)

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
    """Task names of the complete entries. `<task>.tmp-<id>` / `<task>.old-<id>` directories left by
    an interrupted write are skipped; an orphaned `.old-<id>` backup stands for its missing entry."""
    if not os.path.isdir(self.path):
      return []
    names = {n for n in os.listdir(self.path)
             if not n.startswith(".") and not _PARTIAL_RE.match(n)
             and os.path.exists(os.path.join(self.path, n, RECORD_JSON))}
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
    names the frozen model (e.g. "t5_1_1_lm100k_base"); None means the library's. `which` picks a
    MODEL_DIR export ("auto" = best, else newest).
    """
    _check_task_name(task)
    meta = self.meta
    if model_id is None:
      model_id = meta.get("model_id")
      if model_id is None:
        raise ValueError(f"library {self.path} is empty: pass the frozen model's id (model_id) with the "
                         "first prompt")
    model_id = str(model_id)
    entry_dir = os.path.join(self.path, task)
    self._restore_backup(task)
    if os.path.exists(entry_dir) and not overwrite:
      raise FileExistsError(f"task {task!r} is already in library {self.path}; pass overwrite=True "
                            "(--overwrite) to replace it")

    source = None
    info: dict = {}
    if isinstance(prompt_or_path, (str, os.PathLike)):
      source = str(prompt_or_path)
      prompt, src = prompt_io.load_prompt_with_source(source, which)
      if src.export_dir is not None and src.format != "peft":
        info = prompt_io.read_export_info(src.export_dir)
      if task_embedding is None and os.path.isdir(source):
        ex = prompt_io.find_exports(source)
        if ex.task_embedding is not None:
          task_embedding = ex.task_embedding
    else:
      prompt = prompt_io.validate_prompt(prompt_or_path, f"prompt for task {task!r}")
    emb_source = None
    if task_embedding is not None:
      if isinstance(task_embedding, (str, os.PathLike)):
        emb_source = str(task_embedding)
        task_embedding, emb_src = prompt_io.load_prompt_with_source(emb_source, "task_embedding")
        if task_embedding_step is None:
          task_embedding_step = emb_src.step
      else:
        task_embedding = prompt_io.validate_prompt(task_embedding, f"task embedding for {task!r}")
      if task_embedding.shape[1] != prompt.shape[1]:
        raise ValueError(f"task {task!r}: task embedding shape {task_embedding.shape} and prompt shape "
                         f"{prompt.shape} have different d_model")

    d_model = int(prompt.shape[1])
    if meta:
      if meta.get("d_model") != d_model:
        raise ValueError(
            f"cannot add {task!r} to library {self.path}: its prompt has d_model {d_model} "
            f"(shape {tuple(prompt.shape)}) but the library holds d_model {meta.get('d_model')} prompts "
            f"of model {meta.get('model_id')!r}. Use a library per frozen model.")
      if meta.get("model_id") != model_id:
        raise ValueError(
            f"cannot add {task!r} to library {self.path}: its frozen model is {model_id!r} but the "
            f"library holds prompts of {meta.get('model_id')!r}. Prompts only transfer within one "
            "frozen model: use a library per model (or the same model id).")

    if steps is None:
      steps = info.get("step")
    if metrics is None:
      metrics = info.get("metrics")
    record = {
        "task": task,
        "model_id": model_id,
        "d_model": d_model,
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
    files = {PROMPT_FILE: prompt_io.npy_bytes(prompt),
             RECORD_JSON: json.dumps(record, indent=2, sort_keys=True,
                                     default=fileio.json_default).encode()}
    if task_embedding is not None:
      files[TASK_EMBEDDING_FILE] = prompt_io.npy_bytes(task_embedding)
    os.makedirs(self.path, exist_ok=True)
    fileio.atomic_write_dir(entry_dir, files)
    if not meta:  # after the entry, so a failed first add leaves the library unclaimed
      fileio.write_json_atomic(os.path.join(self.path, LIBRARY_JSON),
                               {"format_version": FORMAT_VERSION, "d_model": d_model, "model_id": model_id,
                                "created": time.time()}, sort_keys=True)
    return record

  def remove(self, task: str) -> None:
    """Deletes the entry of `task` (renamed aside first, so it vanishes at once)."""
    _check_task_name(task)
    entry_dir = self._entry_dir(task)
    if entry_dir is None:
      raise KeyError(f"task {task!r} is not in library {self.path}; tasks: {self.tasks()}")
    trash = os.path.join(self.path, f".removed-{task}-{uuid.uuid4().hex[:8]}")
    os.replace(entry_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)

  # -- reading -------------------------------------------------------------------------------------
  def record(self, task: str) -> dict:
    d = self._entry_dir(task) if task and not _PARTIAL_RE.match(task) else None
    if d is None:
      raise KeyError(f"task {task!r} is not in library {self.path}; tasks: {self.tasks()}")
    with open(os.path.join(d, RECORD_JSON)) as f:
      return json.load(f)

  def list(self) -> list:  # pylint: disable=redefined-builtin
    """Records of all entries, sorted by task name."""
    return [self.record(t) for t in self.tasks()]

  def get(self, task: str) -> LibraryEntry:
    rec = self.record(task)
    d = self._entry_dir(task)
    emb_path = os.path.join(d, TASK_EMBEDDING_FILE)
    emb = prompt_io.load_prompt(emb_path) if os.path.exists(emb_path) else None
    return LibraryEntry(task, prompt_io.load_prompt(os.path.join(d, PROMPT_FILE)), emb, rec)

  def prompts(self, kind: str = "prompt", missing: str = "prompt") -> dict:
    """{task: array} of the final prompts (kind="prompt") or the task embeddings.

    For kind="task_embedding", tasks without one use their final prompt (missing="prompt", with a
    warning), are left out (missing="skip"), or raise (missing="error").
    """
    if kind not in KINDS:
      raise ValueError(f"kind={kind!r}: use one of {KINDS}")
    if missing not in ("prompt", "skip", "error"):
      raise ValueError(f"missing={missing!r}: use 'prompt', 'skip' or 'error'")
    out, lacking = {}, []
    for t in self.tasks():
      d = self._entry_dir(t)
      if kind == "task_embedding":
        p = os.path.join(d, TASK_EMBEDDING_FILE)
        if os.path.exists(p):
          out[t] = prompt_io.load_prompt(p)
          continue
        lacking.append(t)
        if missing == "skip":
          continue
        if missing == "error":
          raise ValueError(f"library {self.path}: task(s) {lacking} have no task embedding; add them "
                           "from a MODEL_DIR with a task_embedding export or pass --task-embedding")
      out[t] = prompt_io.load_prompt(os.path.join(d, PROMPT_FILE))
    if lacking:
      what = "their final prompt is used instead" if missing == "prompt" else "they are left out"
      warnings.warn(f"library {self.path}: {lacking} have no task embedding; {what}")
    return out


# ---------------------------------------------------------------------------------------------------
# Retrieval.

def rank_sources(target_embedding, library, measure: str = sim.DEFAULT_MEASURE,
                 exclude: Sequence[str] = (), kind: str = "task_embedding",
                 activations_fn=None, window: Optional[int] = 3,
                 target_step: Optional[int] = None) -> list:
  """[(task, score)] of the library's sources, most similar to the target first.

  `library` is a PromptLibrary (its `kind` arrays are compared) or a {task: prompt} mapping.
  `target_embedding` is an array or a path load_prompt reads; a target MODEL_DIR gives its
  task_embedding export (see `load_target_embedding`). "on" needs `activations_fn`.
  `target_step` (read from the export when `target_embedding` is a path) is the target's
  task-embedding step; sources recorded at another step are named in a warning.
  """
  if isinstance(target_embedding, (str, os.PathLike)):
    if target_step is None:
      target_step = target_embedding_step(str(target_embedding))
    target_embedding = load_target_embedding(str(target_embedding))
  target = prompt_io.validate_prompt(target_embedding, "target embedding")
  if isinstance(library, PromptLibrary):
    d = library.d_model
    if d is not None and d != target.shape[1]:
      raise ValueError(f"target embedding has d_model {target.shape[1]} (shape {target.shape}) but "
                       f"library {library.path} holds d_model {d} prompts of {library.model_id!r}")
    candidates = library.prompts(kind)
  else:  # a plain mapping is not checked on the way in: a NaN prompt would score NaN and sort anywhere
    candidates = {k: prompt_io.validate_prompt(v, f"source prompt {k!r}") for k, v in library.items()}
  candidates = {k: v for k, v in candidates.items() if k not in set(exclude)}
  if not candidates:
    raise ValueError("no source prompts to rank (empty library, or all excluded)")
  if isinstance(library, PromptLibrary) and kind == "task_embedding":
    warn_embedding_steps(library, target_step, candidates)
  scores = sim.similarities_to(target, candidates, measure, activations_fn, window)
  return sort_ranking(scores)


def load_target_embedding(path: str) -> np.ndarray:
  """The target's task embedding from a path: a MODEL_DIR's `task_embedding` export (SPoT's early
  checkpoint, the same kind of prompt as the sources' task embeddings), else, with a warning, its
  best/newest export; a prompt file or export directory is read as it is."""
  try:
    return prompt_io.load_prompt(path, "task_embedding")
  except FileNotFoundError:
    if not os.path.isdir(path):
      raise
    warnings.warn(f"{path} has no task_embedding export: its best/newest prompt stands for the target's "
                  "task embedding, and prompts trained for different numbers of steps compare less well")
    return prompt_io.load_prompt(path)


def target_embedding_step(path: str) -> Optional[int]:
  """The training step of the prompt `load_target_embedding(path)` reads, when its export says."""
  for which in ("task_embedding", "auto"):
    try:
      return prompt_io.resolve_prompt(path, which).step
    except (FileNotFoundError, ValueError):
      continue
  return None


def warn_embedding_steps(library: PromptLibrary, target_step: Optional[int],
                         tasks: Sequence[str]) -> Dict[str, int]:
  """Warns about `tasks` whose recorded task-embedding step differs from `target_step`, and returns
  them {task: step}. SPoT takes every task embedding at one early step: prompts at different
  stages of training compare less well."""
  if target_step is None:
    return {}
  other = {}
  for task in tasks:
    step = library.record(task).get("task_embedding_step")
    if step is not None and int(step) != int(target_step):
      other[task] = int(step)
  if other:
    listed = ", ".join(f"{t} (step {s})" for t, s in sorted(other.items()))
    warnings.warn(f"the target's task embedding is from step {target_step}, but library {library.path} "
                  f"has task embeddings from other steps: {listed}. Scores of prompts at different "
                  "stages of training compare less well: use one TASK_EMBEDDING_STEP for the sources "
                  "and the target (docs/spot_pipeline.md).")
  return other


def sort_ranking(scores: Mapping[str, float]) -> List[Tuple[str, float]]:
  """[(source, score)] best first; equal scores in name order; NaN scores (a zero-shot metric such as a
  correlation of constant predictions) last, in name order. Every source ranking (similarity
  measures, zero-shot metrics) is ordered here, and `ranking_ties` says where that name order, not
  the score, decided."""
  items = [(k, float(v)) for k, v in scores.items()]
  return sorted(items, key=lambda kv: (math.isnan(kv[1]), 0.0 if math.isnan(kv[1]) else -kv[1], kv[0]))


def scores_tie(a: float, b: float) -> bool:
  """Whether two ranking scores are equal within TIE_REL_TOL / TIE_ABS_TOL."""
  return math.isclose(float(a), float(b), rel_tol=TIE_REL_TOL, abs_tol=TIE_ABS_TOL)


@dataclasses.dataclass
class RankingTies:
  """Where a ranking (best first) holds equal scores, which `sort_ranking` orders by name.

  `tied`: the top-k selection is decided by a tie (the k-th and the (k+1)-th source score alike), so
  which of `sources` (all tied at `score`) are chosen follows their names. `all_tied`: every source
  (at least two) has the same score, so the ranking carries no information. `groups`: each run of at
  least two tied sources, best first.
  """
  top_k: Optional[int]
  tied: bool
  all_tied: bool
  score: Optional[float]
  sources: List[str]
  chosen: List[str]
  groups: List[List[str]]
  rel_tol: float = TIE_REL_TOL
  abs_tol: float = TIE_ABS_TOL

  def is_tied(self, task: str) -> bool:
    """Whether `task` scores the same as another ranked source."""
    return any(task in g for g in self.groups)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  def message(self) -> Optional[str]:
    """One line for the log, or None when no tie matters."""
    tol = f"within rel {self.rel_tol:g} / abs {self.abs_tol:g}"
    if self.all_tied:
      return (f"all {len(self.sources)} sources score {self.score:.6g} ({tol}): the ranking carries no "
              f"information, its order ({', '.join(self.sources)}) is by name"
              + (f", and so is the top-{self.top_k}" if self.top_k is not None and self.tied else ""))
    if self.tied:
      return (f"the top-{self.top_k} selection is decided by a tie: {', '.join(self.sources)} all score "
              f"{self.score:.6g} ({tol}); {', '.join(self.chosen)} chosen by name order, not by score")
    return None


def ranking_ties(ranked: Sequence[Tuple[str, float]], top_k: Optional[int] = None) -> RankingTies:
  """The ties of a ranking, best first (`rank_sources`, `rank_zero_shot`, `pipeline.rank`), for a
  selection of its `top_k` best (None: no selection, only `all_tied` and `groups` matter)."""
  ranked = [(t, float(s)) for t, s in ranked]
  groups, i = [], 0
  while i < len(ranked):
    j = i + 1
    while j < len(ranked) and scores_tie(ranked[j][1], ranked[i][1]):
      j += 1
    if j - i > 1:
      groups.append((i, j))
    i = j
  all_tied = len(ranked) > 1 and groups == [(0, len(ranked))]
  k = None if top_k is None else int(top_k)
  boundary = None
  if k is not None and 0 < k < len(ranked):
    boundary = next(((a, b) for a, b in groups if a < k < b), None)
  if boundary is None and all_tied:
    boundary = groups[0]
  a, b = boundary if boundary is not None else (0, 0)
  return RankingTies(
      top_k=k, tied=boundary is not None and k is not None and a < k < b, all_tied=all_tied,
      score=ranked[a][1] if boundary is not None else None,
      sources=[t for t, _ in ranked[a:b]],
      chosen=[t for t, _ in ranked[a:min(b, k)]] if k is not None else [],
      groups=[[t for t, _ in ranked[a:b]] for a, b in groups])


def warn_ties(ranked: Sequence[Tuple[str, float]], top_k: Optional[int] = None) -> RankingTies:
  """`ranking_ties`, with a log warning naming the tied sources and their score when the top-k
  selection is decided by a tie or the whole ranking is one tie."""
  ties = ranking_ties(ranked, top_k)
  msg = ties.message()
  if msg:
    log.warning(msg)
  return ties


def weighted_average_init(prompts, scores, top_k: Optional[int] = None):
  """SPoT's top-k weighted average: init = Σ_k w_k p_k with w ∝ similarity over the top k.

  `prompts` and `scores` are aligned sequences, or mappings with the same keys. Returns
  (init [P, d], weights): weights is an array aligned with `prompts` (zeros outside the top k) for
  sequences, or {name: weight} of the chosen sources for mappings. Negative similarities get weight 0.
  """
  if isinstance(prompts, Mapping):
    names = list(prompts)
    if not isinstance(scores, Mapping) or set(scores) != set(names):
      raise ValueError("prompts and scores must be mappings with the same keys")
    arrs = [prompts[n] for n in names]
    vals = np.array([float(scores[n]) for n in names])
  else:
    names = None
    arrs = list(prompts)
    vals = np.asarray(list(scores), dtype=np.float64)
    if len(arrs) != len(vals):
      raise ValueError(f"{len(arrs)} prompts but {len(vals)} scores")
  if not arrs:
    raise ValueError("weighted_average_init needs at least one prompt")
  arrs = [prompt_io.validate_prompt(a, f"source prompt {names[i] if names else i}")
          for i, a in enumerate(arrs)]
  shapes = {a.shape for a in arrs}
  if len(shapes) != 1:
    labels = names or list(range(len(arrs)))
    raise ValueError("weighted average needs prompts of one shape, got "
                     + ", ".join(f"{l}: {a.shape}" for l, a in zip(labels, arrs)))
  k = len(arrs) if top_k is None else int(top_k)
  if k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  order = np.argsort(-vals, kind="stable")[:k]
  w_sel = np.clip(vals[order], 0.0, None)
  if w_sel.sum() <= 0:
    raise ValueError(f"the top-{k} similarities {vals[order].tolist()} are all <= 0: no source is "
                     "similar to the target; use a random or vocabulary init instead")
  if np.any(vals[order] < 0):
    warnings.warn(f"negative similarities among the top {k} get weight 0: {vals[order].tolist()}")
  w_sel = w_sel / w_sel.sum()
  weights = np.zeros(len(arrs))
  weights[order] = w_sel
  init = np.zeros_like(arrs[0], dtype=np.float64)
  for i in order:
    init += weights[i] * arrs[i]
  init = init.astype(np.float32)
  if names is not None:
    return init, {names[i]: float(weights[i]) for i in order}
  return init, weights

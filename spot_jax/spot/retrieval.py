"""Retrieval from a prompt library for a target task: ranking the sources (SPoT's similarity of task
embeddings), the ties a ranking holds, and the weighted-average init of the best sources.

`library.py` holds the prompts on disk; this module only reads them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio, prompt_io, prompt_tuning_compat
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import PromptLibrary

# Two ranking scores within this tolerance are a tie (math.isclose): float noise of a cosine, or a
# metric that every source reaches alike (a random frozen model scores every zero-shot prompt 0).
TIE_REL_TOL = 1e-6
TIE_ABS_TOL = 1e-9

log = logging.getLogger("spot_jax.spot")

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
  exclude = checked_exclude(exclude, library.tasks() if isinstance(library, PromptLibrary) else candidates,
                            strict=False)
  candidates = {k: v for k, v in candidates.items() if k not in set(exclude)}
  if not candidates:
    raise ValueError("no source prompts to rank (empty library, or all excluded)")
  if isinstance(library, PromptLibrary):
    warn_embedding_steps(library, target_step, candidates, kind)
  scores = sim.similarities_to(target, candidates, measure, activations_fn, window)
  return sort_ranking(scores)


def checked_exclude(exclude, known, strict: bool = True) -> list:
  """`exclude` as a list, a bare string being one name (it was excluded letter by letter). A name the
  library does not hold is refused (`strict`: names a user typed, where a typo left that task ranked,
  the target first against itself), else warned of (the API, where a caller may leave out a target
  that is not a source)."""
  exclude = [exclude] if isinstance(exclude, str) else list(exclude)
  unknown = sorted(set(exclude) - set(known))
  if unknown:
    msg = f"exclude names {unknown}, which the library does not hold (its tasks: {sorted(known)})"
    if strict:
      raise ValueError(f"{msg}: correct the name")
    warnings.warn(f"{msg}: nothing is left out for them")
  return exclude


def load_target_embedding(path: str) -> np.ndarray:
  """The target's task embedding from a path: a MODEL_DIR's `task_embedding` export (SPoT's early
  checkpoint, the same kind of prompt as the sources' task embeddings), else, with a warning, its
  best/newest export; a prompt file or export directory is read as it is."""
  try:
    return prompt_io.load_prompt(path, "task_embedding")
  except FileNotFoundError:
    if not fileio.isdir(path):  # a target MODEL_DIR may be on gs://
      raise
    warnings.warn(f"{path} has no task_embedding export: its best/newest prompt stands for the target's "
                  "task embedding, and prompts trained for different numbers of steps compare less well")
    return prompt_io.load_prompt(path)


def target_embedding_step(path: str) -> Optional[int]:
  """The training step of the prompt `load_target_embedding(path)` reads, when its export says.

  A prompt-tuning (T5X) target counts T5X's global step; its prompt steps (global minus the initial
  checkpoint's step, from the run's config.gin) are what library entries record, so those are returned.
  """
  for which in ("task_embedding", "auto"):
    try:
      src = prompt_io.resolve_prompt(path, which)
    except (FileNotFoundError, ValueError):
      continue
    t5x_steps = prompt_tuning_compat.t5x_run_steps(src)
    return t5x_steps.prompt_steps if t5x_steps is not None else src.step
  return None


def warn_embedding_steps(library: PromptLibrary, target_step: Optional[int],
                         tasks: Sequence[str], kind: str = "task_embedding") -> Dict[str, int]:
  """Warns about `tasks` whose compared prompt (`kind`: the task embedding, or the final prompt) is
  from another step than the target's `target_step`, and returns them {task: step}. SPoT takes every
  task embedding at one early step: prompts at different stages of training compare less well."""
  if target_step is None:
    return {}
  other = {}
  for task in tasks:
    step = library.record(task).get("task_embedding_step" if kind == "task_embedding" else "steps")
    if step is not None and int(step) != int(target_step):
      other[task] = int(step)
  if other and kind != "task_embedding":
    listed = ", ".join(f"{t} (step {s})" for t, s in sorted(other.items()))
    warnings.warn(f"--kind {kind} compares the sources' final prompts with the target's prompt of step "
                  f"{target_step}, but library {library.path} has final prompts from other steps: {listed}. "
                  "Prompts at different stages of training compare less well: --kind task_embedding "
                  "compares prompts of one early step (docs/spot_pipeline.md).")
  elif other:
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
  ranked = sorted(items, key=lambda kv: (math.isnan(kv[1]), 0.0 if math.isnan(kv[1]) else -kv[1], kv[0]))
  # Scores equal within the tie tolerance (float noise of a cosine) go in name order too, as
  # `ranking_ties` groups them (from each group's best): the order must not follow the noise.
  out, i = [], 0
  while i < len(ranked):
    j = i + 1
    while (j < len(ranked) and not math.isnan(ranked[i][1]) and not math.isnan(ranked[j][1])
           and scores_tie(ranked[j][1], ranked[i][1])):
      j += 1
    out += sorted(ranked[i:j], key=lambda kv: kv[0])
    i = j
  return out


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
  if names is not None:  # best first, ties in name order: the order every ranking here has
    position = {n: i for i, n in enumerate(names)}
    order = np.array([position[n] for n, _ in sort_ranking(dict(zip(names, vals)))][:k], dtype=int)
  else:
    order = np.argsort(-vals, kind="stable")[:k]
  if not np.all(np.isfinite(vals[order])):
    bad = [names[i] if names else int(i) for i in order if not np.isfinite(vals[i])]
    raise ValueError(f"the top-{len(order)} scores {vals[order].tolist()} include no-number scores (sources "
                     f"{bad}; a zero-shot metric such as a correlation of constant predictions is NaN): a "
                     "weighted average needs a number for each. Lower the top-k to the sources with scores, "
                     "or use --strategy best_of_top_k (spot) or top1 (library init)")
  w_sel = np.clip(vals[order], 0.0, None)
  if w_sel.sum() <= 0:
    raise ValueError(f"the top-{len(order)} scores {vals[order].tolist()} (similarities, or zero-shot metrics "
                     "with --rank-by zero_shot) are all <= 0, so a weighted average has no weights: no source "
                     "is close to the target. Use --strategy best_of_top_k (spot) or top1 (library init), or "
                     "a random or vocabulary init")
  if np.any(vals[order] < 0):
    warnings.warn(f"negative similarities among the top {len(order)} get weight 0: {vals[order].tolist()}")
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

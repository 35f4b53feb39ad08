"""Zero-shot transfer: each library prompt evaluated on a target task as is, without training.

A source prompt that already does well on the target is a good init — a ranking signal that needs no
target training run at all (Vu et al. 2022 and Su et al. 2022 report it beside embedding similarity).
`zero_shot_matrix` fills sources × targets; `rank_zero_shot` orders the sources for one target
(`spot-jax spot --rank-by zero_shot`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio
from spot_jax.spot import run as run_lib
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.retrieval import checked_exclude, sort_ranking


@dataclasses.dataclass
class ZeroShotMatrix:
  """scores[i, j]: source `sources[i]`'s prompt on target `targets[j]` (the deciding metric)."""
  sources: List[str]
  targets: List[str]
  scores: np.ndarray
  metrics: Dict[str, Dict[str, Dict[str, float]]]  # {target: {source: {metric: value}}}
  metric: Optional[str] = None

  def to_dict(self) -> dict:
    return {"sources": self.sources, "targets": self.targets, "scores": self.scores.tolist(),
            "metrics": self.metrics, "metric": self.metric}

  def save(self, path: str) -> str:
    fileio.write_json_atomic(path, self.to_dict())
    return path

  def ranking(self, target: str) -> List[Tuple[str, float]]:
    j = self.targets.index(target)
    return sort_ranking({s: float(self.scores[i, j]) for i, s in enumerate(self.sources)})


def _prompts(library_or_prompts, exclude: Sequence[str] = ()) -> Dict[str, np.ndarray]:
  if isinstance(library_or_prompts, (str, PromptLibrary)):
    lib = library_or_prompts if isinstance(library_or_prompts, PromptLibrary) else PromptLibrary(
        library_or_prompts)
    prompts = lib.prompts("prompt")
  else:
    prompts = dict(library_or_prompts)
  exclude = checked_exclude(exclude, prompts, strict=False)
  prompts = {k: v for k, v in prompts.items() if k not in set(exclude)}
  if not prompts:
    raise ValueError("no source prompts to evaluate zero-shot (empty library, or all excluded)")
  return prompts


def zero_shot_matrix(frozen, library_or_prompts, targets: Sequence[str], run=None,
                     exclude: Sequence[str] = (), record_dir: Optional[str] = None) -> ZeroShotMatrix:
  """Evaluates every source prompt on every target's validation split (`run`: a RunConfig, which
  sets lengths, batch size, number of examples and the deciding metric). With `record_dir`, each
  score is recorded in `record_dir/<target>/from_<source>/` and reused while the prompt and the
  evaluation settings are the same (`training_runs.evaluate_run`): a rerun of `spot --rank-by
  zero_shot` evaluated every source again."""
  from spot_jax.spot.training_runs import _safe, evaluate_run  # pylint: disable=g-import-not-at-top
  run = run or run_lib.RunConfig()
  prompts = _prompts(library_or_prompts, exclude)
  sources = sorted(prompts)
  targets = list(targets)
  scores = np.zeros((len(sources), len(targets)))
  metrics: Dict[str, Dict[str, Dict[str, float]]] = {}
  for j, target in enumerate(targets):
    metrics[target] = {}
    for i, source in enumerate(sources):
      if record_dir is None:
        m = run_lib.evaluate_prompt(frozen, target, prompts[source], run)
      else:
        m = evaluate_run(run_lib.evaluate_prompt, frozen,
                         fileio.join(record_dir, _safe(target), f"from_{_safe(source)}"), target, prompts[source],
                         0, run, trained=False)
      metrics[target][source] = m
      scores[i, j] = run_lib.score_of(m, run.metric)
  return ZeroShotMatrix(sources, targets, scores, metrics, run.metric)


def rank_zero_shot(frozen, library_or_prompts, target: str, run=None,
                   exclude: Sequence[str] = (), record_dir: Optional[str] = None) -> List[Tuple[str, float]]:
  """[(source, zero-shot score on `target`)] best first; ties in name order (`retrieval.ranking_ties`
  finds them: a random frozen model scores every prompt alike)."""
  return zero_shot_matrix(frozen, library_or_prompts, [target], run, exclude, record_dir).ranking(target)

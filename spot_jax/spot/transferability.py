"""How well a ranking of sources predicts measured transfer: SPoT's task-transferability analysis.

A target's *transfer row* is the validation score of one target run from each source prompt, all at
the same number of steps; `spot --strategy best_of_top_k --top-k all` measures it and keeps it in its
`result.json`. A ranking of the same sources (by a similarity of task embeddings,
or zero-shot) is then judged as intermediate-task selection work judges it (SPoT §3.3, Fig. 5 and Table 3; regret@k from
Poth et al. 2021, "What to Pre-Train on?"):

- Kendall's τ-b between the ranking's scores and the transfer scores (1: the same order);
- regret@k: how far the best of the top-k retrieved sources falls below the best source, in percent
  of the best (0: the best source is among the top k);
- the mean transfer score of the top-k retrieved, beside the mean over all sources, which is what a
  random pick of one source gets on average;
- the rank at which the measured-best source was retrieved.

Re-ranking a target with other measures (`rerank`) reads its task embedding from the run's
`task_embedding/` MODEL_DIR, so several measures are compared on the same transfer rows.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio, prompt_io

RESULT_JSON = "result.json"
DEFAULT_KS = (1, 3)


@dataclasses.dataclass
class TargetTransferability:
  """One target's ranking judged against its transfer row."""
  target: str
  ranked_by: str
  sources: List[Tuple[str, float, float]]  # (task, ranking score, transfer score), ranking order
  kendall_tau: float
  best_sources: List[str]  # the measured best (several when tied; every source when the row is flat)
  best_transfer: float
  # 1-based rank of the first measured-best source in the ranking; None when every source scored the
  # same (a flat row: no source is better, so no ranking can miss or find it).
  best_rank: Optional[int]
  regret: Dict[int, float]  # k -> percent; NaN when the row is flat or its best is not positive
  top_k_mean: Dict[int, float]
  mean_all: float
  baseline: Optional[float] = None  # the target from the base init, when the run had --baseline
  steps: Optional[int] = None

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["sources"] = [{"task": t, "ranking_score": r, "transfer": s} for t, r, s in self.sources]
    d["regret"] = {f"@{k}": v for k, v in self.regret.items()}
    d["top_k_mean"] = {f"@{k}": v for k, v in self.top_k_mean.items()}
    return d


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's τ-b (ties counted as scipy does) over the sources both sides give a number (a zero-shot
  ranking can hold NaN scores: one would make the whole τ NaN); NaN for fewer than two such sources
  or a constant side."""
  pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
  x, y = [a for a, _ in pairs], [b for _, b in pairs]
  if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
    return float("nan")
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.kendalltau(x, y).statistic)


def evaluate_target(target: str, ranking: Sequence[Tuple[str, float]], transfer: Mapping[str, float],
                    ks: Sequence[int] = DEFAULT_KS, baseline: Optional[float] = None, ranked_by: str = "",
                    steps: Optional[int] = None) -> TargetTransferability:
  """Judges `ranking` [(task, score)], best first, against `transfer` {task: validation score}.

  Both must name the same sources: a regret over the sources that happen to have a score would
  flatter the ranking, so a missing one is an error naming it.
  """
  ranked = [(str(t), float(s)) for t, s in ranking]
  names = [t for t, _ in ranked]
  if len(set(names)) != len(names):
    raise ValueError(f"target {target}: the ranking names a source twice ({names})")
  missing = [t for t in names if t not in transfer]
  extra = sorted(set(transfer) - set(names))
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"no transfer score for ranked source(s) {missing}")
    if extra:
      parts.append(f"transfer scores for source(s) {extra} that the ranking does not hold")
    raise ValueError(f"target {target}: {'; '.join(parts)}. Measure every source: spot-jax spot "
                     "--strategy best_of_top_k --top-k all, and rank the same library")
  if not ranked:
    raise ValueError(f"target {target}: no sources to judge")
  scores = [float(transfer[t]) for t in names]
  if not all(math.isfinite(s) for s in scores):
    bad = [t for t, s in zip(names, scores) if not math.isfinite(s)]
    raise ValueError(f"target {target}: transfer score of {bad} is not a finite number")
  best = max(scores)
  best_sources = [t for t, s in zip(names, scores) if s == best]
  flat = len(set(scores)) == 1
  best_rank = None if flat else 1 + min(names.index(t) for t in best_sources)
  regret, top_mean = {}, {}
  for k in ks:
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    top = scores[:k]
    regret[k] = 100.0 * (best - max(top)) / best if best > 0 and not flat else float("nan")
    top_mean[k] = float(np.mean(top))
  return TargetTransferability(
      target=target, ranked_by=ranked_by, sources=[(t, s, x) for (t, s), x in zip(ranked, scores)],
      kendall_tau=kendall_tau([s for _, s in ranked], scores), best_sources=best_sources,
      best_transfer=best, best_rank=best_rank, regret=regret, top_k_mean=top_mean,
      mean_all=float(np.mean(scores)), baseline=baseline, steps=steps)


def summarize(results: Sequence[TargetTransferability]) -> dict:
  """Means over targets (NaN values, e.g. τ of a constant row, are left out and counted); a flat
  row (every source alike) counts in no `best_in_top_k` and is counted as `flat_rows`."""
  def mean(values):
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(finite)) if finite else float("nan")), len(values) - len(finite)
  ks = sorted({k for r in results for k in r.regret})
  out = {"targets": len(results), "flat_rows": sum(r.best_rank is None for r in results)}
  out["kendall_tau"], out["kendall_tau_undefined"] = mean([r.kendall_tau for r in results])
  for k in ks:
    out[f"regret@{k}"], _ = mean([r.regret.get(k) for r in results])
    out[f"best_in_top_{k}"] = sum(r.best_rank is not None and r.best_rank <= k for r in results)
    out[f"top_{k}_mean"], _ = mean([r.top_k_mean.get(k) for r in results])
  out["mean_all"], _ = mean([r.mean_all for r in results])
  return out


def result_path(path: str) -> str:
  """A `spot` run's result.json, from the file or the run's MODEL_DIR."""
  p = str(path)
  if fileio.isdir(p):
    p = fileio.join(p, RESULT_JSON)
  if not fileio.exists(p):
    raise FileNotFoundError(f"no {RESULT_JSON} at {path}: pass the MODEL_DIR of a finished `spot-jax spot` "
                            "run (it writes MODEL_DIR/result.json at the end) or that file")
  return p


def load_transfer_row(path: str) -> dict:
  """{target, ranking, ranked_by, transfer, baseline, steps, run_dir} of a best_of_top_k run's result."""
  p = result_path(path)
  r = prompt_io.read_json_object(p)
  for key in ("target", "strategy", "ranked", "chosen"):
    if key not in r:
      raise ValueError(f"{p} is not a `spot-jax spot` result (no {key!r} field)")
  if r["strategy"] != "best_of_top_k":
    raise ValueError(f"{p}: a {r['strategy']} run trains one init, so it has no per-source transfer scores; "
                     "measure them with spot-jax spot --strategy best_of_top_k --top-k all")
  transfer = {c["task"]: c["selection_score"] for c in r["chosen"]}
  if any(v is None for v in transfer.values()):
    raise ValueError(f"{p}: a source's selection score is missing (no validation metric {r.get('metric')!r}?)")
  extra = r.get("extra") or {}
  return {"target": r["target"], "ranking": [(d["task"], d["score"]) for d in r["ranked"]],
          "ranked_by": r["measure"] if r.get("rank_by") == "similarity" else r.get("rank_by", ""),
          "transfer": transfer, "baseline": r.get("baseline_score"),
          "steps": extra.get("selection_steps", r.get("steps")), "run_dir": os.path.dirname(p)}


def rerank(row: dict, library, measure: str, kind: str = "task_embedding", activations_fn=None,
           window: Optional[int] = 3) -> List[Tuple[str, float]]:
  """The row's sources ranked by `measure`, from the target's task embedding the run trained (its
  `task_embedding/` MODEL_DIR) and the library's prompts of the same sources."""
  from spot_jax.spot.retrieval import rank_sources  # pylint: disable=g-import-not-at-top
  emb_dir = fileio.join(row["run_dir"], "task_embedding")
  if not fileio.isdir(emb_dir):
    raise FileNotFoundError(f"{emb_dir} does not exist: re-ranking by another measure needs the target's task "
                            "embedding, which a similarity-ranked `spot` run trains there (a zero-shot "
                            "ranked run has none); judge that run by its own ranking (no --measure)")
  sources = [t for t, _ in row["ranking"]]
  absent = [t for t in sources if t not in library]
  if absent:
    raise ValueError(f"library {library.path} has no entry for source(s) {absent} of target {row['target']}: "
                     "use the library the run ranked")
  others = [t for t in library.tasks() if t not in sources]
  return rank_sources(emb_dir, library, measure, exclude=others, kind=kind, activations_fn=activations_fn,
                      window=window)


def evaluate_runs(paths: Sequence[str], ks: Sequence[int] = DEFAULT_KS, library=None,
                  measures: Optional[Sequence[str]] = None, kind: str = "task_embedding",
                  activations_fn=None, window: Optional[int] = 3) -> Dict[str, List[TargetTransferability]]:
  """{ranking name: [one TargetTransferability per run]}: each run's own ranking ("as run"), or, with
  `measures` and `library`, the same transfer rows re-ranked by each measure."""
  rows = [load_transfer_row(p) for p in paths]
  targets = [r["target"] for r in rows]
  if len(set(targets)) != len(targets):
    dup = sorted({t for t in targets if targets.count(t) > 1})
    raise ValueError(f"several runs of target(s) {dup}: pass one run per target")
  if not measures:
    return {"as run": [evaluate_target(r["target"], r["ranking"], r["transfer"], ks, r["baseline"],
                                       r["ranked_by"], r["steps"]) for r in rows]}
  if library is None:
    raise ValueError("re-ranking by a measure needs the library the runs ranked (--library)")
  return {m: [evaluate_target(r["target"], rerank(r, library, m, kind, activations_fn, window), r["transfer"],
                              ks, r["baseline"], m, r["steps"]) for r in rows] for m in measures}


def format_report(evaluated: Mapping[str, Sequence[TargetTransferability]], ks: Sequence[int] = DEFAULT_KS,
                  per_target: bool = True) -> str:
  """A per-target table for each ranking and a summary line per ranking."""
  lines = []
  ks = list(ks)
  for name, results in evaluated.items():
    if per_target:
      lines.append(f"ranking: {name}")
      w = max([6] + [len(r.target) for r in results])
      best = [f"{r.best_sources[0]} ({r.best_rank})" if r.best_rank else "(all equal)" for r in results]
      bw = max([18] + [len(b) for b in best])
      head = f"  {'target':<{w}}  sources  tau     {'best source (rank)':<{bw}}" + "".join(
          f"  regret@{k}" for k in ks) + "  " + "  ".join(f"top-{k} mean" for k in ks) + "  all mean"
      lines.append(head)
      for r, b in zip(results, best):
        lines.append(f"  {r.target:<{w}}  {len(r.sources):>7}  {_f(r.kendall_tau, '+.3f'):<6}  {b:<{bw}}"
                     + "".join(f"  {_f(r.regret[k], '.2f'):>9}" for k in ks) + "  "
                     + "  ".join(f"{_f(r.top_k_mean[k], '.4g'):>10}" for k in ks) + f"  {r.mean_all:>8.4g}")
  lines.append("summary (mean over targets):")
  w = max([7] + [len(n) for n in evaluated])
  lines.append(f"  {'ranking':<{w}}  targets  tau     " + "".join(f"  regret@{k}  best in top-{k}" for k in ks))
  for name, results in evaluated.items():
    s = summarize(results)
    notes = ([f"tau undefined for {s['kendall_tau_undefined']}"] if s["kendall_tau_undefined"] else []) + \
        ([f"{s['flat_rows']} flat row(s): no best source"] if s["flat_rows"] else [])
    undefined = f"  ({'; '.join(notes)})" if notes else ""
    lines.append(f"  {name:<{w}}  {s['targets']:>7}  {_f(s['kendall_tau'], '+.3f'):<6}"
                 + "".join(f"  {_f(s[f'regret@{k}'], '.2f'):>9}  {s[f'best_in_top_{k}']:>6} of {s['targets']:<4}"
                           for k in ks) + undefined)
  return "\n".join(lines)


def jsonable(obj):
  """`obj` with NaN (an undefined τ or regret) as None, so the JSON is standard (no bare NaN)."""
  if isinstance(obj, dict):
    return {k: jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def _f(x: Optional[float], spec: str) -> str:
  return "n/a" if x is None or not math.isfinite(x) else format(x, spec)

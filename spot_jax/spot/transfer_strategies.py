"""SPoT's three transfer strategies: each turns the top-k of a ranking of library sources into the
target's initial prompt (a `TransferInit`).

  weighted_average   Σ_k w_k p_k with w ∝ score, normalized over the top k (no training)
  best_of_top_k      a short target run from each of the k sources; the best on validation wins
  multitask_mixture  one prompt trained on the k source tasks mixed with the target's examples
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from spot_jax.spot import run_record
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.retrieval import warn_ties, weighted_average_init
from spot_jax.spot.run import RunConfig, evaluate_prompt, score_of
from spot_jax.spot.training_runs import _safe, _train_from, base_init, evaluate_run

log = logging.getLogger("spot_jax.spot")

STRATEGIES = ("best_of_top_k", "weighted_average", "multitask_mixture")


@dataclasses.dataclass
class TransferInit:
  """A target's initial prompt, with where it came from."""
  strategy: str
  prompt: np.ndarray
  description: str
  sources: List[dict]  # [{"task", "score", and "weight" or "metrics"/"selection_score"}]
  extra: dict = dataclasses.field(default_factory=dict)
  trained: Optional[Tuple[np.ndarray, dict]] = None  # best_of_top_k: the winner's trained prompt, metrics


def _top(ranked: Sequence[Tuple[str, float]], top_k: int) -> List[Tuple[str, float]]:
  if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  if not ranked:
    raise ValueError("no ranked sources: the library is empty or every source was excluded")
  if len(ranked) < top_k:
    warnings.warn(f"top_k={top_k} but only {len(ranked)} source(s) are ranked; using all")
  warn_ties(ranked, top_k)  # equal scores: the selection (or the whole order) is by name
  return list(ranked[:top_k])


def weighted_average(library, ranked: Sequence[Tuple[str, float]], top_k: int) -> TransferInit:
  """SPoT's top-k weighted average: init = Σ_k w_k p_k, w ∝ score, normalized over the top k."""
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  chosen = _top(ranked, top_k)
  finals = {t: lib.get(t).prompt for t, _ in chosen}
  init, weights = weighted_average_init(finals, dict(chosen), top_k=len(chosen))
  desc = "weighted average of " + ", ".join(f"{weights.get(t, 0.0):.3f}·{t}" for t, _ in chosen)
  return TransferInit("weighted_average", init, desc,
                      [{"task": t, "score": float(s), "weight": float(weights.get(t, 0.0))}
                       for t, s in chosen])


def best_of_top_k(frozen, library, ranked: Sequence[Tuple[str, float]], target: str, out_dir: str,
                  steps: int, top_k: int, run: RunConfig = RunConfig()) -> TransferInit:
  """SPoT's best of top-k: a target run of `steps` from each of the k source prompts; the source whose
  run scores best on validation (`run.metric`) is the init. Runs go to `out_dir/from_<source>`; the
  winner's is `extra["run_dir"]` (run_target keeps it as the transfer run when `steps` is its budget)."""
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  chosen = _top(ranked, top_k)
  sources, best = [], None
  for task, score in chosen:
    src = lib.get(task).prompt
    run_dir = os.path.join(out_dir, f"from_{_safe(task)}")
    prompt = _train_from(frozen, run, run_dir, target, steps, src, f"library source {task} on {target}",
                         **run_record.target_identity("selection", target))
    metrics = evaluate_run(evaluate_prompt, frozen, run_dir, target, prompt, steps, run)
    value = score_of(metrics, run.metric)
    sources.append({"task": task, "score": float(score), "metrics": metrics, "selection_score": value})
    log.info("best-of-top-k: %s -> %s after %d steps on %s", task, value, steps, target)
    # NaN never wins (it would, placed first: nothing compares above it); ties keep the better-ranked.
    if best is None or (not np.isnan(value) and (np.isnan(best[1]) or value > best[1])):
      best = (task, value, src, run_dir, prompt, metrics)
  tied = [s["task"] for s in sources if s["task"] != best[0] and s["selection_score"] == best[1]]
  note = ""
  if np.isnan(best[1]):
    log.warning("best-of-top-k: no source's run on %s scored a number (%s is NaN for all): the "
                "best-ranked source %s is kept", target, run.metric or "the mean metric", best[0])
    note = "; no source scored a number, the best-ranked is kept"
  elif tied:
    log.warning("best-of-top-k: %s ties with %s on %s's validation (%.4g): the better-ranked %s is kept; "
                "a longer SELECTION_STEPS or another BEST_METRIC can separate them", best[0], ", ".join(tied),
                target, best[1], best[0])
    note = f"; tied with {', '.join(tied)}, the better-ranked is kept"
  desc = (f"best of top-{len(chosen)}: {best[0]} (validation {best[1]:.4g} after {steps} target steps; "
          + ", ".join(f"{s['task']}={s['selection_score']:.4g}" for s in sources) + note + ")")
  return TransferInit("best_of_top_k", best[2], desc, sources,
                      {"chosen": best[0], "selection_steps": steps, "run_dir": best[3]},
                      trained=(best[4], best[5]))


MIXING_CAP = 2 ** 19  # T5's examples-proportional limit K


def examples_proportional(task) -> float:
  """T5's examples-proportional mixing rate, min(#train examples, 2^19): how SPoT mixes the top-k
  sources with the target (a named function, so a run's recorded identity is stable)."""
  from tasks import mixtures  # pylint: disable=g-import-not-at-top
  return mixtures.examples_rate(task, cap=MIXING_CAP)  # ReCoRD, RACE: examples, not TFDS rows


def _trained_tasks(mixture) -> list:
  """The tasks of `mixture` that training samples: all but those it holds at a fixed rate 0."""
  from tasks import registry_list  # pylint: disable=g-import-not-at-top
  return [task for task in mixture.tasks if not registry_list.at_rate_zero(mixture, task.name)]


def register_mixture(name: str, tasks: Sequence[str], rate: Any = 1.0) -> str:
  """(Re)registers a seqio mixture of `tasks` (equal rates by default); returns its name.

  A member may itself be a mixture (a library source trained on one): seqio takes only a number as a
  sub-mixture's rate, so a rate function gives it the sum of what it gives the sub-mixture's trained
  tasks, the share they would have if they were listed one by one. Its tasks at a fixed rate 0
  (evaluated only, e.g. MNLI-mismatched and AX in spot_glue_mix; often without a train split to
  weigh) add nothing, and stay unsampled inside it.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  members = []
  for t in tasks:
    found = input_pipeline.get_task(t)  # a clear error for a library task that is not a registered one
    if callable(rate) and isinstance(found, seqio.Mixture):
      members.append((t, float(sum(rate(leaf) for leaf in _trained_tasks(found)))))
    else:
      members.append((t, rate))
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, members)
  return name


def multitask_mixture(frozen, library, ranked: Sequence[Tuple[str, float]], target: str, out_dir: str,
                      steps: int, top_k: int, run: RunConfig = RunConfig(), mixture_name: Optional[str] = None,
                      rate: Any = examples_proportional, include_target: bool = True) -> TransferInit:
  """SPoT's top-k multi-task mixture: one prompt, trained from the base init on the k source tasks
  mixed with the target task examples-proportionally (T5's mixing, as the SPoT paper does), is the
  target's init. The mixture is `spot_transfer_<target>_top<k>`; `include_target=False` leaves the
  target's data out, `rate=1.0` mixes at equal rates."""
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  chosen = _top(ranked, top_k)
  sources = [t for t, _ in chosen]
  lengths = {lib.record(t)["prompt_length"] for t in sources}
  prompt_length = lengths.pop() if len(lengths) == 1 else run.prompt_length
  names = sources + ([target] if include_target and target not in sources else [])
  name = register_mixture(mixture_name or f"spot_transfer_{_safe(target)}_top{len(sources)}", names, rate)
  # The run is defined by its init and its mixture (a set of tasks, each at `rate`): another top-k set
  # or rate in the same out_dir is refused (the name spot_transfer_<target>_top<k> says neither).
  identity = {"run": "multitask_mixture", "mixture": name, "tasks": sorted(names),
              "rate": run_record.rate_id(rate)}
  prompt = _train_from(frozen, run, os.path.join(out_dir, _safe(name)), name, steps,
                       base_init(frozen, run, prompt_length),
                       f"the base init on mixture {name} of {', '.join(names)}", identity=identity)
  desc = f"prompt trained {steps} steps on mixture {name} of " + ", ".join(names)
  return TransferInit("multitask_mixture", prompt, desc,
                      [{"task": t, "score": float(s)} for t, s in chosen],
                      {"mixture": name, "mixture_steps": steps, "mixture_tasks": names})

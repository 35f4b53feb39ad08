"""SPoT's targeted pipeline: source prompts → target task embedding → retrieval → transfer (DESIGN.md §7).

  spot-jax spot --target TASK --library DIR --strategy S --top-k K [--baseline] --gin_file=... --gin.X=Y
  spot-jax spot source --gin_file=... --gin.MIXTURE_OR_TASK_NAME=... --gin.LIBRARY_DIR=...

Library functions (the demo calls them; the CLI, `pipeline_cli.py`, is a thin gin layer over them):
  train_source_prompts  train each source task, add prompt + task embedding + metrics to the library
  task_embedding        a short target run; its early prompt is the target's task embedding
  rank                  order library sources by prompt similarity or by zero-shot metric
  best_of_top_k, weighted_average, multitask_mixture   the three SPoT transfer strategies
                        (`transfer_strategies.py`)
  run_target            all of the above for one target, plus an optional random-init baseline

How each run trains (the trainer call, its recorded init, the base init) is `training_runs.py`; its
names and the strategies' are re-exported here. The frozen model is passed as
`frozen=(config, params)` and stays in memory across the many short runs. Every run writes an
ordinary training MODEL_DIR under `out_dir` (exports, metrics.jsonl), so a pipeline can be inspected,
and an interrupted one resumes run by run (each run checkpoints every `RunConfig.save_period` steps;
a run started from another init than the current one is refused; a finished run's evaluation is
reused while its prompt and evaluation settings are the same: `training_runs.evaluate_run`).
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import dataclasses
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio, prompt_export, prompt_io
from spot_jax.spot import run_record
from spot_jax.spot import similarity as sim
from spot_jax.spot import zero_shot
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.retrieval import RankingTies, checked_exclude, rank_sources, ranking_ties
# Re-exported: the pipeline's public scoring lives in `run` (zero_shot uses it too).
from spot_jax.spot.run import RunConfig, evaluate_prompt, score_of
from spot_jax.spot.training_runs import (_safe, _train, _train_from, base_init, default_model_id,
                                         enable_compilation_cache, evaluate_run, from_array, writes_files)
from spot_jax.spot.transfer_strategies import (MIXING_CAP, STRATEGIES, TransferInit, best_of_top_k,
                                               examples_proportional, multitask_mixture,
                                               register_mixture, weighted_average)

__all__ = [
    "RANK_BY", "train_source_prompts", "task_embedding", "rank", "TargetResult", "run_target",
    # from run.py
    "RunConfig", "evaluate_prompt", "score_of",
    # from training_runs.py
    "enable_compilation_cache", "base_init", "from_array", "default_model_id",
    # from transfer_strategies.py
    "STRATEGIES", "TransferInit", "weighted_average", "best_of_top_k", "MIXING_CAP",
    "examples_proportional", "register_mixture", "multitask_mixture",
]

log = logging.getLogger("spot_jax.spot")

RANK_BY = ("similarity", "zero_shot")


# ---------------------------------------------------------------------------------------------------
# Sources.

def train_source_prompts(frozen, tasks: Sequence[str], library_dir: str, out_dir: str, steps: int,
                         run: RunConfig = RunConfig(), model_id: Optional[str] = None,
                         task_embedding_step: Optional[int] = None,
                         overwrite: bool = False) -> Dict[str, dict]:
  """Trains a prompt on each source task and adds it to the library; returns {task: record}.

  Each entry gets the final prompt, the task-embedding export (step `task_embedding_step`, default
  steps // 10, SPoT's early-checkpoint prompt) and its validation metrics. A task already in the
  library is skipped unless `overwrite`. Runs go to `out_dir/<task>` and resume if interrupted.
  """
  lib = PromptLibrary(library_dir)
  if model_id is None and lib.model_id is None:
    model_id = default_model_id(None, frozen[0], run.seed)
  te_step = task_embedding_step or max(1, int(steps) // 10)
  if te_step > steps:
    raise ValueError(f"task_embedding_step {te_step} is beyond the {steps} training steps")
  records = {}
  for task in tasks:
    if task in lib and not overwrite:
      log.info("%s is already in library %s; skipped (pass overwrite=True to retrain)", task, library_dir)
      records[task] = lib.record(task)
      continue
    model_dir = os.path.join(out_dir, _safe(task))
    prompt = _train(frozen, run, model_dir, task, steps, task_embedding_step=te_step)
    metrics = evaluate_run(evaluate_prompt, frozen, model_dir, task, prompt, steps, run)
    emb_dir = prompt_io.task_embedding_export_dir(model_dir)
    if not writes_files():  # every process trained; one adds (a second add would be refused)
      records[task] = {"task": task, "metrics": metrics}
      continue
    records[task] = lib.add(task, model_dir, model_id, task_embedding=emb_dir, steps=steps,
                            metrics=metrics, overwrite=overwrite, which="latest")
    log.info("library %s: added %s (%s)", library_dir, task, metrics)
  return records


def task_embedding(frozen, target: str, out_dir: str, steps: int, run: RunConfig = RunConfig()) -> np.ndarray:
  """A short run on the target from the base init; its prompt after `steps` is the task embedding.

  Like every pipeline run it records its init and target (`run_record`): rerunning into the
  same `out_dir` with another base init or target is an error, not a silent reuse."""
  prompt = _train_from(frozen, run, out_dir, target, steps, base_init(frozen, run, run.prompt_length),
                       "the base init", identity={"run": "task_embedding", "task": target},
                       task_embedding_step=steps)
  exports = prompt_io.find_exports(out_dir)
  if exports.task_embedding is not None:
    return prompt_io.load_prompt(exports.task_embedding)
  return prompt


# ---------------------------------------------------------------------------------------------------
# Retrieval.

def rank(library, target_embedding=None, measure: str = sim.DEFAULT_MEASURE, rank_by: str = "similarity",
         *, frozen=None, target: Optional[str] = None, run: RunConfig = RunConfig(),
         kind: str = "task_embedding", exclude: Sequence[str] = (), activations_fn=None,
         window: Optional[int] = 3, target_step: Optional[int] = None,
         record_dir: Optional[str] = None) -> List[Tuple[str, float]]:
  """[(source task, score)] best first.

  rank_by="similarity": `measure` between the target's task embedding and each source's `kind`
  array ("on" drives the frozen model: pass `frozen`, or `activations_fn`). rank_by="zero_shot": each
  source's final prompt evaluated on `target` without training (needs `frozen` and `target`; with
  `record_dir`, each score is recorded there and reused by a rerun).
  """
  if rank_by not in RANK_BY:
    raise ValueError(f"rank_by={rank_by!r}: use one of {RANK_BY}")
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  if rank_by == "zero_shot":
    if frozen is None or target is None:
      raise ValueError("rank_by='zero_shot' evaluates each source prompt on the target: pass frozen= "
                       "and target=")
    return zero_shot.rank_zero_shot(frozen, lib, target, run, exclude=exclude, record_dir=record_dir)
  if target_embedding is None:
    raise ValueError("rank_by='similarity' needs the target's task embedding (task_embedding())")
  if measure == "on" and activations_fn is None:
    if frozen is None:
      raise ValueError("measure 'on' drives the frozen model with each prompt: pass frozen=")
    activations_fn = _activations_fn(frozen, target)
  return rank_sources(target_embedding, lib, measure, exclude=exclude, kind=kind,
                      activations_fn=activations_fn, window=window, target_step=target_step)


def _activations_fn(frozen, target: Optional[str]):
  """ON's probe: `<extra_id_0>` + EOS of the target task's vocabulary (one piece there, whether the
  sentinels were appended or are in the model file), else the model's default (`cli.default_input_ids`)."""
  from spot_jax.spot import cli  # pylint: disable=g-import-not-at-top
  ids = None
  if target:
    from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    vocab = input_pipeline.get_task(target).output_features["inputs"].vocabulary
    encoded = list(vocab.encode("<extra_id_0>"))
    if len(encoded) == 1:
      ids = (int(encoded[0]), cli.EOS_ID)
  return cli.activations_fn_from_params(frozen[0], frozen[1], ids)


# ---------------------------------------------------------------------------------------------------
# The whole targeted pipeline.

@dataclasses.dataclass
class TargetResult:
  """What `run_target` found: ranking, chosen sources, init, and final validation metrics."""
  target: str
  strategy: str
  rank_by: str
  measure: Optional[str]
  top_k: int
  steps: int
  ranked: List[Tuple[str, float]]
  chosen: List[dict]
  init_description: str
  transfer_metrics: Dict[str, float]
  baseline_metrics: Optional[Dict[str, float]] = None
  transfer_score: Optional[float] = None
  baseline_score: Optional[float] = None
  out_dir: Optional[str] = None
  extra: dict = dataclasses.field(default_factory=dict)
  transfer_prompt: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
  baseline_prompt: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
  ties: Optional[RankingTies] = None  # equal scores in `ranked` (retrieval.ranking_ties for top_k)

  def _ties(self) -> RankingTies:
    return self.ties if self.ties is not None else ranking_ties(self.ranked, self.top_k)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("transfer_prompt")
    d.pop("baseline_prompt")
    ties = self._ties()
    d["ranked"] = [{"task": t, "score": float(s), "tied": ties.is_tied(t)} for t, s in self.ranked]
    d["ties"] = ties.to_dict()
    return d

  def format(self) -> str:
    lines = [f"target {self.target}: strategy {self.strategy}, top-{self.top_k}, ranked by "
             f"{self.rank_by if self.rank_by == 'zero_shot' else self.measure}"]
    lines.append("sources (best first):")
    chosen = {c["task"] for c in self.chosen}
    ties = self._ties()
    w = max([4] + [len(t) for t, _ in self.ranked])
    for i, (t, s) in enumerate(self.ranked, 1):
      lines.append(f"  {i:>2}. {t:<{w}}  {s:.4f}{'  (chosen)' if t in chosen else ''}"
                   f"{'  (tied)' if ties.is_tied(t) else ''}")
    if ties.message():
      lines.append(f"tie: {ties.message()}")
    lines.append(f"init: {self.init_description}")
    lines.append(f"transfer ({self.steps} steps): {_fmt(self.transfer_metrics)}")
    if self.baseline_metrics is not None:
      lines.append(f"baseline ({self.steps} steps, base init): {_fmt(self.baseline_metrics)}")
      lines.append(f"transfer - baseline: {self.transfer_score - self.baseline_score:+.4g}")
    return "\n".join(lines)


def _fmt(metrics: Mapping[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "-"


def run_target(frozen, library, target: str, out_dir: str, strategy: str = "weighted_average",
               top_k: int = 3, steps: int = 1000, *, run: RunConfig = RunConfig(),
               rank_by: str = "similarity", measure: str = sim.DEFAULT_MEASURE,
               kind: str = "task_embedding", task_embedding_steps: Optional[int] = None,
               selection_steps: Optional[int] = None, mixture_steps: Optional[int] = None,
               baseline: bool = False, exclude: Optional[Sequence[str]] = None,
               target_embedding=None) -> TargetResult:
  """Retrieval + transfer for one target, trained `steps` steps from the chosen init.

  The target itself is left out of the sources unless `exclude` says otherwise. Budgets of the
  auxiliary runs default to: task embedding steps // 10, best-of-top-k runs `steps` (SELECTION_STEPS),
  mixture training `steps`. With `baseline`, a run from the base init gets the same `steps`.
  Layout of out_dir: task_embedding/, zero_shot/<target>/from_<src>/ (rank_by="zero_shot": each
  source's recorded score), selection/from_<src>/, mixture/<name>/, transfer/, baseline/, result.json.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy={strategy!r}: use one of {STRATEGIES}")
  from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.get_task(target)  # a mistyped target fails here, not after out_dir's runs are created
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  if not len(lib):
    raise ValueError(f"library {lib.path} has no prompts; train sources first (spot-jax spot source, "
                     "or train_source_prompts)")
  if exclude is None:  # the target is left out, when the library holds it (recorded as before either way)
    exclude, rank_exclude = [target], [target] if target in lib.tasks() else []
  else:  # names given are checked: a typo left that task ranked
    exclude = rank_exclude = checked_exclude(exclude, lib.tasks())
  d = lib.d_model
  if d is not None and d != frozen[0].d_model:
    raise ValueError(f"library {lib.path} holds d_model {d} prompts of {lib.model_id!r}, but the frozen "
                     f"model has d_model {frozen[0].d_model}; use the library of this frozen model")
  fileio.makedirs(out_dir)  # out_dir is MODEL_DIR: gs:// on TPU VMs (os.makedirs made a local "gs:")
  settings = {"target": target, "strategy": strategy, "top_k": top_k, "rank_by": rank_by,
              "measure": measure if rank_by == "similarity" else None, "kind": kind,
              "library": os.path.abspath(lib.path), "exclude": sorted(exclude)}
  run_record.check_target_settings(out_dir, settings)
  target_step = None
  if rank_by == "similarity" and target_embedding is None:
    target_step = task_embedding_steps or max(1, steps // 10)
    target_embedding = task_embedding(frozen, target, os.path.join(out_dir, "task_embedding"),
                                      target_step, run)
  ranked = rank(lib, target_embedding, measure, rank_by, frozen=frozen, target=target, run=run, kind=kind,
                exclude=rank_exclude, target_step=target_step, record_dir=os.path.join(out_dir, "zero_shot"))
  if isinstance(top_k, int) and top_k > len(ranked):  # the result still says the top-k asked for
    log.warning("top-%d asked for, but library %s has %d source(s) for %s: all %d are used", top_k,
                lib.path, len(ranked), target, len(ranked))

  if strategy == "weighted_average":
    init = weighted_average(lib, ranked, top_k)
  elif strategy == "best_of_top_k":
    init = best_of_top_k(frozen, lib, ranked, target, os.path.join(out_dir, "selection"),
                         selection_steps or steps, top_k, run)
  else:
    init = multitask_mixture(frozen, lib, ranked, target, os.path.join(out_dir, "mixture"),
                             mixture_steps or steps, top_k, run)
  plen = init.prompt.shape[0]
  # Best of top-k at the full budget (SPoT's form: k target runs, the best kept): the winner's run is
  # the transfer run, not trained a second time.
  reuse = strategy == "best_of_top_k" and init.extra.get("selection_steps") == steps
  # Checked before anything is written: a finished run of other settings would be "resumed" (0 steps).
  transfer_what, transfer_id = f"the {strategy} init on {target}", run_record.target_identity("transfer", target)
  if not reuse:
    run_record.check_run_init(os.path.join(out_dir, "transfer"), init.prompt, transfer_what, **transfer_id)
  base = base_init(frozen, run, plen) if baseline else None
  baseline_what, baseline_id = f"the base init on {target}", run_record.target_identity("baseline", target)
  if baseline:
    run_record.check_run_init(os.path.join(out_dir, "baseline"), base, baseline_what, **baseline_id)
  if writes_files():
    prompt_export.save_npy(init.prompt, os.path.join(out_dir, "init.npy"))

  if reuse:
    transfer, transfer_metrics = init.trained
    init.extra["transfer_run_dir"] = init.extra["run_dir"]
  else:
    transfer_dir = os.path.join(out_dir, "transfer")
    transfer = _train_from(frozen, run, transfer_dir, target, steps, init.prompt, transfer_what, checked=True,
                           **transfer_id)
    transfer_metrics = evaluate_run(evaluate_prompt, frozen, transfer_dir, target, transfer, steps, run)
  result = TargetResult(target=target, strategy=strategy, rank_by=rank_by,
                        measure=measure if rank_by == "similarity" else None, top_k=top_k, steps=steps,
                        ranked=ranked, chosen=init.sources, init_description=init.description,
                        transfer_metrics=transfer_metrics,
                        transfer_score=score_of(transfer_metrics, run.metric), out_dir=out_dir,
                        extra=init.extra, transfer_prompt=transfer, ties=ranking_ties(ranked, top_k))
  if baseline:
    baseline_dir = os.path.join(out_dir, "baseline")
    base = _train_from(frozen, run, baseline_dir, target, steps, base, baseline_what, checked=True,
                       **baseline_id)
    result.baseline_metrics = evaluate_run(evaluate_prompt, frozen, baseline_dir, target, base, steps, run)
    result.baseline_score = score_of(result.baseline_metrics, run.metric)
    result.baseline_prompt = base
  if writes_files():
    fileio.write_json_atomic(os.path.join(out_dir, "result.json"),
                             {**result.to_dict(), run_record.SETTINGS_KEY: settings}, default=float)
  return result


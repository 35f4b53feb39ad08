"""SPoT's targeted pipeline: source prompts → target task embedding → retrieval → transfer (DESIGN.md §7).

  spot-jax spot --target TASK --library DIR --strategy S --top-k K [--baseline] --gin_file=... --gin.X=Y
  spot-jax spot source --gin_file=... --gin.MIXTURE_OR_TASK_NAME=... --gin.LIBRARY_DIR=...

Library functions (the demo calls them; the CLI is a thin gin layer over them):
  train_source_prompts  train each source task, add prompt + task embedding + metrics to the library
  task_embedding        a short target run; its early prompt is the target's task embedding
  rank                  order library sources by prompt similarity or by zero-shot metric
  best_of_top_k, weighted_average, multitask_mixture   the three SPoT transfer strategies
  run_target            all of the above for one target, plus an optional random-init baseline

The frozen model is passed as `frozen=(config, params)` and stays in memory across the many short
runs. Every run writes an ordinary training MODEL_DIR under `out_dir` (exports, metrics.jsonl), so a
pipeline can be inspected, and an interrupted one resumes run by run (each run checkpoints every
`RunConfig.save_period` steps; a run started from another init than the current one is refused).
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import dataclasses
import logging
import os
import tempfile
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio, prompt_export, prompt_io
from spot_jax.spot import run_record
from spot_jax.spot import similarity as sim
from spot_jax.spot import zero_shot
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.retrieval import (RankingTies, rank_sources, ranking_ties, warn_ties,
                                    weighted_average_init)
# Re-exported: the pipeline's public scoring lives in `run` (zero_shot uses it too).
from spot_jax.spot.run import RunConfig, evaluate_prompt, score_of  # noqa: F401

log = logging.getLogger("spot_jax.spot")

STRATEGIES = ("best_of_top_k", "weighted_average", "multitask_mixture")
RANK_BY = ("similarity", "zero_shot")



def enable_compilation_cache(path: Optional[str] = None, min_compile_time_secs: float = 0.5) -> str:
  """Turns on JAX's persistent compilation cache for this process; returns its directory.

  A pipeline runs many short trainings of one program shape; the trainer builds a fresh jitted step
  per run, so without a cache each run recompiles (seconds on a CPU, more for big models). Keeps a
  cache directory already configured (JAX_COMPILATION_CACHE_DIR); `path` defaults to
  <tmp>/spot_jax_jax_cache_<uid> (mode 0700). Only use a directory that nobody else can write (JAX trusts its cache).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current and path is None:
    return current
  path = path or os.path.join(tempfile.gettempdir(), f"spot_jax_jax_cache_{os.getuid()}")
  os.makedirs(path, mode=0o700, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
  cc.reset_cache()  # a cache checked (and found unset) before this call is looked at again
  return path


def _train(frozen, run: RunConfig, model_dir: str, task: str, steps: int, prompt_init=None,
           prompt_length: Optional[int] = None, task_embedding_step: Optional[int] = None) -> np.ndarray:
  from spot_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  kwargs = dict(model_dir=model_dir, mixture_or_task_name=task,
                task_feature_lengths=dict(run.task_feature_lengths), train_steps=int(steps),
                batch_size=run.batch_size, frozen=frozen,
                prompt_length=prompt_length or run.prompt_length,
                prompt_init=prompt_init or run.prompt_init, seed=run.seed,
                num_partitions=run.num_partitions,
                save_period=max(1, int(run.save_period)),
                log_period=max(1, min(run.log_period, int(steps))), eval_period=None,
                task_embedding_step=task_embedding_step, enable_dropout=run.enable_dropout)
  if run.optimizer is not None:
    kwargs["optimizer"] = run.optimizer
  log.info("training %s for %d steps -> %s", task, steps, model_dir)
  return train_lib.train(**kwargs)


def _train_from(frozen, run: RunConfig, model_dir: str, task: str, steps: int, prompt, what: str,
                identity: Optional[Mapping[str, Any]] = None, legacy_init_only: bool = False,
                checked: bool = False, **kwargs) -> np.ndarray:
  """`_train` from a fixed init array, recording its sha256 (with `identity`) so a later resume can be
  checked (`checked`: the caller already ran check_run_init with these arguments)."""
  if not checked:
    run_record.check_run_init(model_dir, prompt, what, identity, legacy_init_only)
  if not run_record.has_checkpoints(model_dir):
    fileio.atomic_write_bytes(fileio.join(model_dir, run_record.INIT_SHA256_FILE),
                              run_record.init_sha256(prompt, identity).encode())
  return _train(frozen, run, model_dir, task, steps, prompt_init=from_array(prompt, what),
                prompt_length=prompt.shape[0], **kwargs)


def base_init(frozen, run: RunConfig, prompt_length: int) -> np.ndarray:
  """The prompt a run from the base init (`run.prompt_init`, `run.seed`) starts from."""
  from spot_jax import prompts  # pylint: disable=g-import-not-at-top
  config, params = frozen
  embedding = np.asarray(params["token_embedder"]["embedding"], np.float32)
  return prompts.make_prompt(run.prompt_init or prompts.random_uniform(), run.seed, prompt_length,
                             config.d_model, embedding)


def from_array(prompt, source: str = "array"):
  """A prompt initializer that returns a fixed array (an in-memory transfer init)."""
  arr = prompt_io.validate_prompt(prompt, source)

  def init(rng, prompt_length, d_model, embedding=None):
    if arr.shape != (prompt_length, d_model):
      raise ValueError(f"transfer init from {source} has shape {tuple(arr.shape)} but the run expects "
                       f"[PROMPT_LENGTH={prompt_length}, d_model={d_model}]; set PROMPT_LENGTH to "
                       f"{arr.shape[0]} or use prompts trained for this frozen model")
    return arr.copy()
  return init


def default_model_id(initial_checkpoint_path: Optional[str], config, seed: int = 0) -> str:
  """A frozen model's identity for the library: the checkpoint's last two path parts, or a
  description of a fresh initialization (tests, offline demos)."""
  if initial_checkpoint_path:
    parts = [p for p in str(initial_checkpoint_path).rstrip("/").split("/") if p]
    return "/".join(parts[-2:])
  return (f"fresh-init:{config.feed_forward}-d{config.d_model}-e{config.num_encoder_layers}"
          f"-dec{config.num_decoder_layers}-v{config.vocab_size}-seed{seed}")


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


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
    metrics = evaluate_prompt(frozen, task, prompt, run)
    emb_dir = prompt_io.task_embedding_export_dir(model_dir)
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:  # every process trained; one adds (a second add would be refused)
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
         window: Optional[int] = 3, target_step: Optional[int] = None) -> List[Tuple[str, float]]:
  """[(source task, score)] best first.

  rank_by="similarity": `measure` between the target's task embedding and each source's `kind`
  array ("on" drives the frozen model: pass `frozen`, or `activations_fn`). rank_by="zero_shot": each
  source's final prompt evaluated on `target` without training (needs `frozen` and `target`).
  """
  if rank_by not in RANK_BY:
    raise ValueError(f"rank_by={rank_by!r}: use one of {RANK_BY}")
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  if rank_by == "zero_shot":
    if frozen is None or target is None:
      raise ValueError("rank_by='zero_shot' evaluates each source prompt on the target: pass frozen= "
                       "and target=")
    return zero_shot.rank_zero_shot(frozen, lib, target, run, exclude=exclude)
  if target_embedding is None:
    raise ValueError("rank_by='similarity' needs the target's task embedding (task_embedding())")
  if measure == "on" and activations_fn is None:
    if frozen is None:
      raise ValueError("measure 'on' drives the frozen model with each prompt: pass frozen=")
    activations_fn = _activations_fn(frozen, target)
  return rank_sources(target_embedding, lib, measure, exclude=exclude, kind=kind,
                      activations_fn=activations_fn, window=window, target_step=target_step)


def _activations_fn(frozen, target: Optional[str]):
  """ON's probe: `<extra_id_0>` + EOS of the target task's vocabulary (the last id with extra ids)."""
  from spot_jax.spot import cli  # pylint: disable=g-import-not-at-top
  extra_id_0 = cli.EXTRA_ID_0
  if target:
    from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    vocab = input_pipeline.get_task(target).output_features["inputs"].vocabulary
    if getattr(vocab, "extra_ids", 0):
      extra_id_0 = vocab.vocab_size - 1
  return cli.activations_fn_from_params(frozen[0], frozen[1], (extra_id_0, cli.EOS_ID))


# ---------------------------------------------------------------------------------------------------
# Transfer strategies: each returns a TransferInit.

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
    metrics = evaluate_prompt(frozen, target, prompt, run)
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


def register_mixture(name: str, tasks: Sequence[str], rate: Any = 1.0) -> str:
  """(Re)registers a seqio mixture of `tasks` (equal rates by default); returns its name.

  A member may itself be a mixture (a library source trained on one): seqio takes only a number as a
  sub-mixture's rate, so a rate function gives it the sum of what it gives the sub-mixture's tasks,
  the share they would have if they were listed one by one.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  members = []
  for t in tasks:
    found = input_pipeline.get_task(t)  # a clear error for a library task that is not a registered one
    if callable(rate) and isinstance(found, seqio.Mixture):
      members.append((t, float(sum(rate(leaf) for leaf in found.tasks))))
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
  Layout of out_dir: task_embedding/, selection/from_<src>/, mixture/<name>/, transfer/, baseline/,
  result.json.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy={strategy!r}: use one of {STRATEGIES}")
  from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.get_task(target)  # a mistyped target fails here, not after out_dir's runs are created
  lib = library if isinstance(library, PromptLibrary) else PromptLibrary(library)
  if not len(lib):
    raise ValueError(f"library {lib.path} has no prompts; train sources first (spot-jax spot source, "
                     "or train_source_prompts)")
  exclude = [target] if exclude is None else list(exclude)
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
                exclude=exclude, target_step=target_step)
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
  prompt_export.save_npy(init.prompt, os.path.join(out_dir, "init.npy"))

  if reuse:
    transfer, transfer_metrics = init.trained
    init.extra["transfer_run_dir"] = init.extra["run_dir"]
  else:
    transfer = _train_from(frozen, run, os.path.join(out_dir, "transfer"), target, steps, init.prompt,
                           transfer_what, checked=True, **transfer_id)
    transfer_metrics = evaluate_prompt(frozen, target, transfer, run)
  result = TargetResult(target=target, strategy=strategy, rank_by=rank_by,
                        measure=measure if rank_by == "similarity" else None, top_k=top_k, steps=steps,
                        ranked=ranked, chosen=init.sources, init_description=init.description,
                        transfer_metrics=transfer_metrics,
                        transfer_score=score_of(transfer_metrics, run.metric), out_dir=out_dir,
                        extra=init.extra, transfer_prompt=transfer, ties=ranking_ties(ranked, top_k))
  if baseline:
    base = _train_from(frozen, run, os.path.join(out_dir, "baseline"), target, steps, base, baseline_what,
                       checked=True, **baseline_id)
    result.baseline_metrics = evaluate_prompt(frozen, target, base, run)
    result.baseline_score = score_of(result.baseline_metrics, run.metric)
    result.baseline_prompt = base
  fileio.write_json_atomic(os.path.join(out_dir, "result.json"),
                           {**result.to_dict(), run_record.SETTINGS_KEY: settings}, default=float)
  return result


# ---------------------------------------------------------------------------------------------------
# Gin entry points (gin/runs/spot_target.gin, gin/runs/spot_source.gin).

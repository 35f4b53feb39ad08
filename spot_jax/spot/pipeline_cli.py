"""`spot-jax spot` and `spot-jax spot source`: the SPoT pipeline of `spot_jax.spot.pipeline` run from
gin (runs/spot_target.gin, runs/spot_source.gin) with T5X-style flags.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import argparse
import hashlib
import json
import logging
import sys
import warnings
from typing import Callable, Mapping, Optional, Sequence

import gin

from spot_jax import fileio, gin_utils, prompt_io
from spot_jax.spot import similarity as sim
from spot_jax.spot.cli import positive_int
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.pipeline import (RANK_BY, STRATEGIES, RunConfig, _fmt, _train, default_model_id,
                                    enable_compilation_cache, evaluate_prompt, run_target)
from spot_jax.spot.training_runs import evaluate_run, writes_files
from spot_jax.train import Preempted

log = logging.getLogger("spot_jax.spot")


@gin.configurable
def spot_settings(model_dir: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                  batch_size: int = gin.REQUIRED, train_steps: int = gin.REQUIRED,
                  initial_checkpoint_path: Optional[str] = None, model_config=None,
                  model_id: Optional[str] = None, prompt_length: int = 100, prompt_init=None, seed: int = 0,
                  num_partitions: int = 1, task_embedding_steps: Optional[int] = None,
                  selection_steps: Optional[int] = None, mixture_steps: Optional[int] = None,
                  eval_batch_size: Optional[int] = None, eval_num_examples: Optional[int] = None,
                  best_metric: Optional[str] = None, library_dir: Optional[str] = None,
                  mixture_or_task_name: Optional[str] = None, save_period: int = 1000,
                  initial_checkpoint_step: Optional[int] = None) -> dict:
  """Collects the gin macros of a SPoT run (see gin/runs/spot_target.gin)."""
  return dict(locals())


def _run_config(s: dict) -> RunConfig:
  """Every run's settings; Adafactor's decay counts from the initial checkpoint's step as `train` does
  from INITIAL_CHECKPOINT_PATH (the pipeline hands `train` the frozen model in memory, not the path)."""
  from spot_jax import frozen_model as frozen_lib  # pylint: disable=g-import-not-at-top
  step = s.get("initial_checkpoint_step")
  return RunConfig(task_feature_lengths=dict(s["task_feature_lengths"]), batch_size=s["batch_size"],
                   prompt_length=s["prompt_length"], prompt_init=s["prompt_init"], seed=s["seed"],
                   num_partitions=s["num_partitions"], eval_batch_size=s["eval_batch_size"],
                   eval_num_examples=s["eval_num_examples"], metric=s["best_metric"],
                   save_period=s["save_period"], config_gin=gin.config_str(),
                   initial_step=step if step is not None else frozen_lib.checkpoint_step(
                       s["initial_checkpoint_path"]))


# Read by runs/prompt_train.gin (which the spot run files include) for `spot_jax.train` alone: the
# pipeline evaluates each run once, after training, on validation (EVAL_NUM_EXAMPLES examples).
_TRAIN_ONLY_MACROS = {
    "EVAL_PERIOD": "the pipeline trains each run without periodic evaluation and keeps its last prompt",
    "EVAL_SPLIT": "the pipeline scores every run (sources, selection, transfer, baseline) on validation",
}


def _load_gin(gin_argv: Sequence[str], prog: str, own_options: Callable[[dict], Mapping[str, str]]) -> dict:
  """Gin, then `own_options(settings)`: the command's own options parsed and checked inside the start-up
  exchange of a multi-process run (`gin_utils.configure`), returning what every process must agree on."""
  for binding in gin_utils.split_gin_flags(list(gin_argv))[0]:
    name = binding.split("=", 1)[0].strip()
    if name in _TRAIN_ONLY_MACROS:
      raise SystemExit(f"{prog}: error: --gin.{name} has no effect here: {_TRAIN_ONLY_MACROS[name]}. Drop it "
                       "(for periodic evaluation or another split, train with `spot-jax train` and add the run "
                       "with `spot-jax library add`)")
  settings = {}

  def then():
    settings.update(gin.get_configurable(spot_settings)())
    return own_options(settings)
  gin_utils.configure(gin_argv, prog, then=then)
  return settings


def _parse_own(parser: argparse.ArgumentParser, own: Sequence[str]) -> None:
  """`--help` is answered before gin (which wants a --gin_file); other options are parsed in
  `_load_gin`'s start-up exchange."""
  if any(a in ("-h", "--help") for a in own):
    parser.parse_args(["--help"])


def _agreed(args: argparse.Namespace, lib: Optional[PromptLibrary]) -> dict:
  """What the processes of a multi-process `spot` run compare at start-up beside the gin settings: the
  command's options, and what the library holds (each process reads it: one that sees another library,
  e.g. a per-host local directory, would rank other sources and train another init, or decide to train
  where the others do not; the library must be one directory every host sees)."""
  out = {f"--{name.replace('_', '-')}": repr(value) for name, value in sorted(vars(args).items())}
  if lib is not None:
    records = [(task, lib.record(task)) for task in lib.tasks()]
    out["library contents (sha256 of its records; every host must see one library directory)"] = hashlib.sha256(
        json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return out


def _frozen_from_settings(s: dict):
  from spot_jax import frozen_model as frozen_lib  # pylint: disable=g-import-not-at-top
  # Read whole, once: the pipeline's many runs use these host arrays (evaluation, ON activations) directly.
  config, params = frozen_lib.load_frozen(s["initial_checkpoint_path"], s["model_config"], s["seed"], lazy=False)
  model_id = s["model_id"] or default_model_id(s["initial_checkpoint_path"], config, s["seed"])
  return (config, params), model_id


def check_library_model(lib: PromptLibrary, model_id: str, allow_other_model: bool = False) -> None:
  """Refuses to transfer a library's prompts to another frozen model (as `library add` refuses to mix
  models in one library); with `allow_other_model` it only warns."""
  if lib.model_id is None or lib.model_id == model_id:
    return
  msg = (f"library {lib.path} holds prompts of frozen model {lib.model_id!r}, but this run's frozen model "
         f"is {model_id!r}: prompts transfer only within one frozen model")
  if allow_other_model:
    msg += "; transferring anyway (--allow-other-model)"
    log.warning(msg)
    warnings.warn(msg)
    return
  raise ValueError(
      f"{msg}. Use a library built for {model_id!r} (spot-jax spot source); if both ids name the same "
      f"checkpoint, set --gin.MODEL_ID=\"'{lib.model_id}'\"; or pass --allow-other-model to transfer "
      "anyway")


def _top_k(value: str):
  return positive_int(value, {"all": "all"})


def resolve_top_k(top_k, lib: PromptLibrary, target: str, exclude: Optional[Sequence[str]] = None) -> int:
  """`--top-k all`: every source the ranking will hold, the library less the excluded tasks (by
  default the target itself, as run_target excludes it)."""
  if top_k != "all":
    return int(top_k)
  excluded = set(exclude if exclude is not None else [target])
  return len([t for t in lib.tasks() if t not in excluded])


def _target_parser() -> argparse.ArgumentParser:
  p = gin_utils.ArgumentParser(
      prog="spot-jax spot", description="SPoT targeted transfer: rank the library's sources for a "
      "target task, build the init with a strategy, train the target (and a baseline). Gin flags "
      "(--gin_file, --gin.X=Y, --gin_search_paths) configure the model and the budget "
      "(runs/spot_target.gin). `spot-jax spot source ...` trains one source prompt instead.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=gin_utils.gin_flags_help())
  p.add_argument("--target", required=True, help="target seqio task")
  p.add_argument("--library", default=None, help="prompt library directory (default: LIBRARY_DIR)")
  p.add_argument("--strategy", choices=STRATEGIES, default="weighted_average")
  p.add_argument("--top-k", type=_top_k, default=3,
                 help="sources the strategy uses (default 3); 'all' = every source the ranking holds, "
                 "e.g. best_of_top_k measuring the target's whole transfer row (library transferability)")
  p.add_argument("--measure", default=sim.DEFAULT_MEASURE,
                 help=f"similarity measure for --rank-by similarity: one of {sorted(sim.SIMILARITIES)}")
  p.add_argument("--rank-by", choices=RANK_BY, default="similarity")
  p.add_argument("--kind", choices=("task_embedding", "prompt"), default="task_embedding",
                 help="what of each source the target embedding is compared with")
  p.add_argument("--exclude", action="append", default=None,
                 help="source to leave out (repeatable; default: the target itself)")
  p.add_argument("--baseline", action="store_true", help="also train from the base init, same budget")
  p.add_argument("--json", action="store_true", help="print the result as JSON")
  p.add_argument("--allow-other-model", action="store_true",
                 help="transfer even if the library's prompts were trained on another frozen model "
                 "(its model id differs from this run's); by default that is an error")
  return p


def target_main(argv: Sequence[str]) -> int:
  own, gin_flags = gin_utils.split_run_flags(argv)
  parser = _target_parser()
  _parse_own(parser, own)
  found = {}

  def own_options(s):
    args = parser.parse_args(own)
    if args.measure not in sim.SIMILARITIES:
      raise SystemExit(f"--measure {args.measure!r}: use one of {sorted(sim.SIMILARITIES)}")
    library = args.library or s["library_dir"]
    if not library:
      raise SystemExit("spot-jax spot: pass --library DIR (or --gin.LIBRARY_DIR)")
    found.update(args=args, lib=PromptLibrary.existing(library))  # a mistyped path fails before the model loads
    return _agreed(args, found["lib"])
  s = _load_gin(gin_flags, "spot-jax spot", own_options)
  args, lib = found["args"], found["lib"]
  enable_compilation_cache()
  frozen, model_id = _frozen_from_settings(s)
  check_library_model(lib, model_id, args.allow_other_model)
  top_k = resolve_top_k(args.top_k, lib, args.target, args.exclude)
  result = run_target(frozen, lib, args.target, s["model_dir"], args.strategy, top_k, s["train_steps"],
                      run=_run_config(s), rank_by=args.rank_by, measure=args.measure, kind=args.kind,
                      task_embedding_steps=s["task_embedding_steps"], selection_steps=s["selection_steps"],
                      mixture_steps=s["mixture_steps"], baseline=args.baseline, exclude=args.exclude)
  print(json.dumps(result.to_dict(), indent=2, default=float) if args.json else result.format())
  return 0


def source_main(argv: Sequence[str]) -> int:
  """`spot-jax spot source`: train MIXTURE_OR_TASK_NAME's prompt; add it to LIBRARY_DIR when set."""
  own, gin_flags = gin_utils.split_run_flags(argv)
  p = gin_utils.ArgumentParser(prog="spot-jax spot source",
                              description="Train one source prompt (runs/spot_source.gin) and add it "
                              "to the library LIBRARY_DIR (set MODEL_DIR and MIXTURE_OR_TASK_NAME).",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=gin_utils.gin_flags_help())
  p.add_argument("--overwrite", action="store_true", help="retrain a task already in the library")
  _parse_own(p, own)
  found = {}

  def own_options(s):
    found["args"] = args = p.parse_args(own)
    if not s["mixture_or_task_name"]:
      raise SystemExit("spot-jax spot source: set --gin.MIXTURE_OR_TASK_NAME='task'")
    # A gs:// library fails here, not after the frozen model loads.
    return _agreed(args, PromptLibrary(s["library_dir"]) if s["library_dir"] else None)
  s = _load_gin(gin_flags, "spot-jax spot source", own_options)
  args, task = found["args"], s["mixture_or_task_name"]
  enable_compilation_cache()
  frozen, model_id = _frozen_from_settings(s)
  run = _run_config(s)
  steps = s["train_steps"]
  te_step = s["task_embedding_steps"] or max(1, steps // 10)
  if s["library_dir"]:
    # The run goes to MODEL_DIR itself (not a per-task subfolder), as with `spot_jax.train`.
    lib = PromptLibrary(s["library_dir"])
    if task in lib and not args.overwrite:
      rec = lib.record(task)
      if rec.get("source") == str(s["model_dir"]) and rec.get("steps") == steps:
        print(f"{task} is already in {s['library_dir']} from {s['model_dir']} ({steps} steps): nothing to "
              "do (pass --overwrite with a new MODEL_DIR to retrain it)")
        return 0
      raise SystemExit(f"{task} is already in library {s['library_dir']} (from {rec.get('source')}, "
                       f"{rec.get('steps')} steps); pass --overwrite with a new MODEL_DIR to retrain it")
    done = [st for st, _ in prompt_io.find_exports(s["model_dir"]).checkpoints if st >= steps]
    if task in lib and done:
      raise ValueError(f"--overwrite: MODEL_DIR {s['model_dir']} already holds a finished run (step "
                       f"{done[-1]}) that would be re-added, not retrained; use a new MODEL_DIR (or "
                       f"delete {s['model_dir']}) to retrain {task}")
    prompt = _train(frozen, run, s["model_dir"], task, steps, task_embedding_step=te_step)
    metrics = evaluate_run(evaluate_prompt, frozen, s["model_dir"], task, prompt, steps, run)
    if not writes_files():  # every process trained; process 0 adds (a second add would be refused)
      import jax  # pylint: disable=g-import-not-at-top
      print(f"process {jax.process_index()}: trained {task} in {s['model_dir']}: validation {_fmt(metrics)}; "
            f"process 0 adds it to {s['library_dir']}")
      return 0
    rec = lib.add(task, s["model_dir"], model_id, task_embedding=prompt_io.task_embedding_export_dir(
        s["model_dir"]), steps=steps, metrics=metrics, overwrite=args.overwrite, which="latest")
    print(f"added {task} to {s['library_dir']}: prompt [{rec['prompt_length']}, {rec['d_model']}], "
          f"steps {steps}, model {model_id}, validation {_fmt(metrics)}")
  else:
    prompt = _train(frozen, run, s["model_dir"], task, steps, task_embedding_step=te_step)
    metrics = evaluate_run(evaluate_prompt, frozen, s["model_dir"], task, prompt, steps, run)
    print(f"trained {task} in {s['model_dir']}: validation {_fmt(metrics)} (set LIBRARY_DIR to add it "
          "to a library)")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`spot-jax spot ...` (target pipeline) and `spot-jax spot source ...` (one source prompt)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  gin_utils.plain_warnings()
  if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("spot_jax").setLevel(logging.INFO)
  try:
    if argv and argv[0] == "source":
      return source_main(argv[1:])
    return target_main(argv)
  except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {gin_utils.user_message(e)}", file=sys.stderr)
    return 1
  except OSError as e:  # a full disk or read-only place: the path and the fix; other OSErrors are bugs
    unwritable = gin_utils.unwritable_error(e)
    if unwritable is None:
      raise
    print(f"error: {fileio.unwritable_message(unwritable)}", file=sys.stderr)
    return 1
  except Preempted as e:  # SIGTERM: the run's checkpoint is saved; nothing after it was done
    print(f"spot-jax spot{' source' if argv and argv[0] == 'source' else ''}: {e}", file=sys.stderr)
    return Preempted.EXIT_CODE
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless it wraps the user's error)
    staged = gin_utils.staged_user_error(e)  # e.g. a missing SPOT_JAX_VOCAB, read while tf.data traced
    if staged is None:
      raise
    print(f"error: {gin_utils.user_message(staged)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  from spot_jax.spot import pipeline_cli as _pipeline  # gin sees spot_jax.spot.pipeline_cli, not __main__
  sys.exit(_pipeline.main())

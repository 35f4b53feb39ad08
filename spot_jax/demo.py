"""`spot-jax demo`: SPoT end to end, offline, on a tiny T5 and the bundled tasks (a few minutes, 2 CPUs).

  spot-jax demo [--out DIR] [--quick] [--rebuild-backbone] [--steps 10,25,50]

1. A small frozen backbone: pretrained by spot_jax.backbone (span corruption + prefixed bundled tasks,
   the target task held out) and cached as a T5X checkpoint; reused on later runs.
2. Source prompts on movie, product (sentiment, related to the target) and topic, nli, number
   (unrelated), each added to a prompt library with its early task-embedding prompt.
3. The similarity table of the library and its heatmap PNG.
4. The target (restaurant sentiment): a short run gives its task embedding; sources are ranked.
5. The target trained from the transferred init (SPoT's top-k weighted average) and from a random
   init for the same steps, once per seed (data order and random init); test-split accuracy of both
   (and of the two inits untrained), their means over seeds, and a conclusion computed from them.
Everything after the backbone is the project's own pipeline (spot_jax.spot.pipeline, train, evaluation).
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import argparse
import dataclasses
import logging
import os
import shutil
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from spot_jax import fileio

PREFIX = "spot_bundled_"
TARGET = "restaurant"
SOURCES = ("movie", "product", "topic", "nli", "number")
FEATURE_LENGTHS = {"inputs": 32, "targets": 4}  # the longest bundled input is 27 tokens
RESULTS_JSON = "results.json"
HEATMAP_PNG = "similarity_heatmap.png"
# The demo replaces its own outputs on a rerun, and only those: library/ and runs/ are also the docs'
# names for a user's own prompt library and training runs. Each folder it makes, and --out, carries
# this marker; a folder without it is never deleted, and the files below only with --out's marker.
MARKER = ".spot_jax_demo"
MARKER_TEXT = "made by `spot-jax demo`: a rerun with the same --out replaces this folder's demo outputs\n"
OWN_DIRS = ("library", "runs")
OWN_FILES = (RESULTS_JSON, HEATMAP_PNG)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Budgets of one demo run (the backbone has its own BackboneConfig)."""
  sources: Sequence[str] = SOURCES
  target: str = TARGET
  source_steps: int = 100
  task_embedding_steps: int = 20
  target_steps: Sequence[int] = (10, 25, 50)
  prompt_length: int = 10
  batch_size: int = 32
  # Prompt learning rate. T5X's 0.3 suits T5's large embeddings; the demo backbone's token embeddings
  # have RMS ≈ 1, where 0.3 makes every step jump far: 0.1 is the same relative step.
  learning_rate: float = 0.1
  strategy: str = "weighted_average"
  top_k: int = 2
  measure: str = "cos_avg_tokens"
  seed: int = 0
  # Target runs per budget and init: seeds seed, seed+1, ... (data order, random init). One 200-example
  # test set and one seed leave a gap of a few points to chance; the mean over seeds is what is judged.
  num_seeds: int = 3


def quick_configs():
  """A smoke configuration for tests (under a minute with the backbone cached, about two without):
  tiny backbone, three sources, few steps. Its accuracies mean nothing."""
  from spot_jax import backbone as bb
  backbone = bb.BackboneConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
                               num_decoder_layers=1, steps=30, batch_size=16, warmup_steps=5)
  demo = DemoConfig(sources=("movie", "topic", "number"), source_steps=8, task_embedding_steps=4,
                    target_steps=(4,), prompt_length=4, batch_size=16, num_seeds=2)
  return backbone, demo


class _Console:
  """Progress lines with the elapsed time, flushed at once (the demo's only output channel)."""

  def __init__(self, stream=None):
    self.t0 = time.time()
    self.stream = stream or sys.stdout

  def __call__(self, msg: str = "") -> None:
    print(f"[{time.time() - self.t0:6.1f}s] {msg}" if msg else "", file=self.stream, flush=True)

  def block(self, text: str) -> None:
    print(text, file=self.stream, flush=True)


def _short(task: str) -> str:
  return task[len(PREFIX):] if task.startswith(PREFIX) else task


def similarity_table(names: Sequence[str], matrix) -> str:
  short = [_short(n) for n in names]
  w = max(8, *(len(s) for s in short))
  lines = [" " * w + " " + " ".join(f"{s[:8]:>8}" for s in short)]
  for s, row in zip(short, np.asarray(matrix)):
    lines.append(f"{s:<{w}} " + " ".join(f"{v:8.3f}" for v in row))
  return "\n".join(lines)


def summarize(rows: Sequence[dict]) -> List[dict]:
  """One row per (steps, init): the mean test accuracy over the seeds' runs and each seed's value."""
  groups = {}
  for r in rows:
    groups.setdefault((r["steps"], r["kind"]), []).append(r)
  out = []
  for (steps, kind), rs in groups.items():
    out.append({"target": rs[0]["target"], "kind": kind, "init": rs[0]["init"], "steps": steps,
                "test_accuracy": float(np.mean([r["test_accuracy"] for r in rs])),
                "per_seed": [r["test_accuracy"] for r in rs], "seeds": [r["seed"] for r in rs]})
  return out


def results_table(summary: Sequence[dict]) -> str:
  n = max((len(r["per_seed"]) for r in summary), default=1)
  head = (f"{'target task':<14} {'init':<36} {'steps':>5} {'test accuracy':>14}  "
          f"{'per seed' if n > 1 else ''}").rstrip()
  lines = [head, "-" * len(head)]
  for r in summary:
    seeds = " / ".join(f"{v:.1f}" for v in r["per_seed"]) if n > 1 else ""
    lines.append(f"{r['target']:<14} {r['init']:<36} {r['steps']:>5} {r['test_accuracy']:>13.1f}%  "
                 f"{seeds}".rstrip())
  return "\n".join(lines)


def conclusion(summary: Sequence[dict]) -> str:
  """One honest line computed from the final table: mean transfer - random per trained budget (an
  untrained init's row, steps 0, is shown but not judged), and how many seeds' pairs agree."""
  by_steps = {}
  for r in summary:
    if r["steps"] > 0:
      by_steps.setdefault(r["steps"], {})[r["kind"]] = r
  pairs = [(s, v["transfer"], v["random"]) for s, v in sorted(by_steps.items())
           if "transfer" in v and "random" in v]
  if not pairs:
    return "conclusion: no transfer/random pair to compare"
  diffs = [(s, t["test_accuracy"] - r["test_accuracy"]) for s, t, r in pairs]
  wins = sum(d > 0 for _, d in diffs)
  mean = float(np.mean([d for _, d in diffs]))
  detail = ", ".join(f"{d:+.1f} at {s}" for s, d in diffs)
  seeds = len(pairs[0][1].get("per_seed", [None]))
  if wins == len(diffs):
    verdict = "the transferred init beat random init at every budget"
  elif wins == 0:
    verdict = "the transferred init did NOT beat random init at any budget"
  else:
    verdict = f"the transferred init beat random init at {wins} of {len(diffs)} budgets"
  judged = "mean of {} seeds".format(seeds) if seeds > 1 else "one seed"
  line = (f"conclusion: {verdict} on held-out test data ({judged}; transfer - random, points: {detail}; "
          f"mean {mean:+.1f})")
  if seeds > 1:
    runs = [(a, b) for _, t, r in pairs for a, b in zip(t["per_seed"], r["per_seed"])]
    ahead = sum(a > b for a, b in runs)
    line += f"; transfer ahead in {ahead} of {len(runs)} single runs"
  return line


def _check_local_dirs(out_dir: str, cache_dir: Optional[str]) -> None:
  """The demo writes a prompt library and a T5X checkpoint with local renames: gs:// is refused (os
  calls would make a local directory named `gs:`)."""
  for path, what in ((out_dir, "the demo's output (--out)"), (cache_dir, "the backbone cache (--cache-dir)")):
    if path:
      fileio.check_local(path, what, "use a local directory, and copy the results with gsutil")


def _fresh_out_suggestion(out_dir: str) -> str:
  candidates = [os.path.join(out_dir, "demo_out")] + [os.path.join(out_dir, f"demo_out_{i}") for i in range(2, 100)]
  return next((c for c in candidates if not os.path.exists(c)), candidates[0])


def check_out_dir(out_dir: str) -> None:
  """Refuses, before any work, an --out that is a file, or that holds a library/, runs/, results.json or
  heatmap the demo did not make (no MARKER): it would replace them. Its own previous outputs pass."""
  fileio.check_not_a_file(out_dir, "the demo's output (--out)")
  if not os.path.isdir(out_dir):
    return
  foreign = [f"{n}/" for n in OWN_DIRS if os.path.lexists(os.path.join(out_dir, n))
             and not os.path.isfile(os.path.join(out_dir, n, MARKER))]
  if not os.path.isfile(os.path.join(out_dir, MARKER)):
    foreign += [n for n in OWN_FILES if os.path.lexists(os.path.join(out_dir, n))]
  if foreign:
    raise FileExistsError(
        f"{out_dir} already holds {', '.join(foreign)}, which the demo did not make and would replace: pass a "
        f"fresh --out (e.g. --out {_fresh_out_suggestion(out_dir)}), or move them away")


def _mark(directory: str) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, MARKER), "w") as f:
    f.write(MARKER_TEXT)


def _replace_own_dir(path: str) -> None:
  """Deletes `path` only if the demo made it (its MARKER: checked again here, as the backbone's minutes
  of pretraining passed since `check_out_dir`), then makes it afresh, marked."""
  if os.path.lexists(path):
    if not os.path.isfile(os.path.join(path, MARKER)):
      raise FileExistsError(f"{path} was not made by the demo, which would replace it: pass a fresh --out, "
                            "or move it away")
    shutil.rmtree(path)
  _mark(path)


def run_demo(out_dir: str, backbone_config=None, demo: DemoConfig = DemoConfig(),
             cache_dir: Optional[str] = None, rebuild_backbone: bool = False,
             console: Optional[_Console] = None) -> dict:
  """Runs the whole demo; returns (and writes to out_dir/results.json) everything it measured."""
  console = console or _Console()
  _check_local_dirs(out_dir, cache_dir)
  check_out_dir(out_dir)
  _mark(out_dir)
  console("loading JAX, seqio and the bundled tasks ...")
  from spot_jax import backbone as bb
  from spot_jax import evaluation, optim
  from spot_jax.spot import heatmap, pipeline
  from spot_jax.spot import similarity as sim
  from spot_jax.spot.library import PromptLibrary
  import tasks.bundled  # noqa: F401  (registers spot_bundled_*)
  logging.getLogger("absl").setLevel(logging.ERROR)
  pipeline.enable_compilation_cache()  # many short runs of one program shape: compile once
  backbone_config = backbone_config or bb.BackboneConfig(holdout_tasks=(demo.target,))
  if demo.target not in backbone_config.holdout_tasks:
    raise ValueError(f"the target {demo.target!r} must be held out of backbone pretraining "
                     f"(BackboneConfig.holdout_tasks={backbone_config.holdout_tasks}); otherwise there "
                     "is nothing to transfer")

  # 1. the frozen backbone
  console("step 1/5: the frozen backbone")
  backbone = bb.load_or_pretrain(backbone_config, cache_dir=cache_dir, rebuild=rebuild_backbone,
                                 log=console)
  frozen = (backbone.config, backbone.params)
  run = pipeline.RunConfig(task_feature_lengths=dict(FEATURE_LENGTHS), batch_size=demo.batch_size,
                           prompt_length=demo.prompt_length, seed=demo.seed, enable_dropout=False,
                           log_period=10**6, eval_batch_size=100, metric="accuracy",
                           optimizer=optim.adafactor(learning_rate=demo.learning_rate))
  model_id = f"spot_jax-demo-backbone-{backbone.info.get('key', 'unknown')}"

  # 2. source prompts → library
  lib_dir = os.path.join(out_dir, "library")
  runs_dir = os.path.join(out_dir, "runs")
  for d in (lib_dir, runs_dir):  # the demo's own outputs: a rerun starts fresh (runs would resume)
    _replace_own_dir(d)
  sources = [PREFIX + s for s in demo.sources]
  target = PREFIX + demo.target
  console(f"step 2/5: training {len(sources)} source prompts ({demo.source_steps} steps each, prompt "
          f"length {demo.prompt_length}) into the library {lib_dir}")
  records = {}
  for task in sources:
    t = time.time()
    records.update(pipeline.train_source_prompts(
        frozen, [task], lib_dir, os.path.join(runs_dir, "sources"), demo.source_steps, run,
        model_id=model_id, task_embedding_step=demo.task_embedding_steps, overwrite=True))
    console(f"  source {_short(task):<10} validation accuracy {records[task]['metrics']['accuracy']:5.1f}%"
            f"  ({time.time() - t:.0f}s)")
  lib = PromptLibrary(lib_dir)

  # 3. similarity table + heatmap (final prompts of the library)
  console("step 3/5: prompt similarities (SPoT's cosine of average tokens, final prompts)")
  names, matrix = sim.similarity_matrix(lib.prompts("prompt"), demo.measure)
  console.block(similarity_table(names, matrix))
  heatmap_path = heatmap.save_heatmap([_short(n) for n in names], matrix,
                                      os.path.join(out_dir, HEATMAP_PNG),
                                      title=f"source prompt similarity ({demo.measure})")
  console(f"  heatmap: {heatmap_path}")

  # 4. retrieval for the target
  console(f"step 4/5: retrieval for target {_short(target)} (task embedding after "
          f"{demo.task_embedding_steps} steps)")
  target_dir = os.path.join(runs_dir, "target")
  embedding = pipeline.task_embedding(frozen, target, os.path.join(target_dir, "task_embedding"),
                                      demo.task_embedding_steps, run)
  ranked = pipeline.rank(lib, embedding, demo.measure, exclude=[target] if target in lib else [],
                         target_step=demo.task_embedding_steps)
  for i, (task, score) in enumerate(ranked, 1):
    console.block(f"  {i}. {_short(task):<10} {score:+.3f}")

  # 5. transfer vs random at equal steps, test split
  seeds = [demo.seed + i for i in range(max(1, demo.num_seeds))]
  console(f"step 5/5: target {_short(target)} from the transferred init ({demo.strategy}, top-{demo.top_k}) "
          f"and from a random init, {', '.join(map(str, demo.target_steps))} steps each, seed"
          f"{'s ' + ', '.join(map(str, seeds)) if len(seeds) > 1 else ' ' + str(seeds[0])}")

  def test_accuracy(prompt):
    return float(evaluation.evaluate(target, backbone.config, backbone.params, prompt, FEATURE_LENGTHS,
                                     split="test", batch_size=100)[target]["accuracy"])

  rows, pipeline_results = [], []
  for seed in seeds:
    seed_run = dataclasses.replace(run, seed=seed)
    seed_dir = target_dir if len(seeds) == 1 else os.path.join(target_dir, f"seed_{seed}")
    for i, steps in enumerate(demo.target_steps):
      t = time.time()
      res = pipeline.run_target(frozen, lib, target, os.path.join(seed_dir, f"steps_{steps}"),
                                strategy=demo.strategy, top_k=demo.top_k, steps=steps, run=seed_run,
                                measure=demo.measure, baseline=True, target_embedding=embedding)
      pipeline_results.append({**res.to_dict(), "seed": seed})
      mix = " + ".join(f"{c.get('weight', 1.0 / len(res.chosen)):.2f} {_short(c['task'])}" for c in res.chosen)
      labels = {"transfer": f"transfer: {mix}", "random": "random uniform"}
      if i == 0:  # the inits themselves, untrained: where each run starts
        inits = {"transfer": np.load(os.path.join(res.out_dir, "init.npy")),
                 "random": pipeline.base_init(frozen, seed_run, demo.prompt_length)}
        for kind, prompt in inits.items():
          rows.append({"target": _short(target), "kind": kind, "init": labels[kind], "steps": 0,
                       "seed": seed, "test_accuracy": test_accuracy(prompt)})
      for kind, prompt, metrics in (("transfer", res.transfer_prompt, res.transfer_metrics),
                                    ("random", res.baseline_prompt, res.baseline_metrics)):
        rows.append({"target": _short(target), "kind": kind, "init": labels[kind], "steps": steps,
                     "seed": seed, "test_accuracy": test_accuracy(prompt),
                     "validation_accuracy": float(metrics["accuracy"])})
      console(f"  seed {seed}, {steps} steps: transfer {rows[-2]['test_accuracy']:.1f}% vs random "
              f"{rows[-1]['test_accuracy']:.1f}% test accuracy ({time.time() - t:.0f}s)")

  summary = summarize(rows)
  console.block("")
  console.block(results_table(summary))
  line = conclusion(summary)
  console.block(line)
  results = {
      "target": target, "sources": sources, "strategy": demo.strategy, "top_k": demo.top_k,
      "measure": demo.measure, "demo_config": dataclasses.asdict(demo),
      "backbone": {"checkpoint": backbone.checkpoint, "reused": backbone.reused,
                   "pretrain_seconds": backbone.info.get("pretrain_seconds"),
                   "initial_loss": backbone.info.get("initial_loss"),
                   "final_loss": backbone.info.get("final_loss"), "key": backbone.info.get("key")},
      "library": lib_dir, "heatmap": heatmap_path,
      "similarity": {"names": names, "matrix": np.asarray(matrix).tolist()},
      "source_validation_accuracy": {t: records[t]["metrics"].get("accuracy") for t in sources},
      "ranking": [{"task": t, "score": float(s)} for t, s in ranked],
      "seeds": seeds, "results": rows, "summary": summary, "pipeline": pipeline_results,
      "conclusion": line,
      "wall_seconds": time.time() - console.t0,
  }
  fileio.write_json_atomic(os.path.join(out_dir, RESULTS_JSON), results)
  console(f"done in {results['wall_seconds']:.0f}s; results: {os.path.join(out_dir, RESULTS_JSON)}")
  return results


def _steps_list(text: str) -> List[int]:
  try:
    steps = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"--steps takes comma-separated integers, got {text!r}") from None
  if not steps or min(steps) < 1:
    raise argparse.ArgumentTypeError(f"--steps needs positive step counts, got {text!r}")
  return steps


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="spot-jax demo", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="demo_out", help="output directory (library, heatmap, results.json)")
  p.add_argument("--quick", action="store_true",
                 help="a smoke configuration for tests: tiny backbone and budgets, numbers mean nothing")
  p.add_argument("--rebuild-backbone", action="store_true", help="pretrain the backbone again")
  p.add_argument("--cache-dir", default=None,
                 help="backbone cache (default $SPOT_JAX_CACHE/demo_backbone or ~/.cache/spot_jax/demo_backbone)")
  p.add_argument("--steps", type=_steps_list, default=None,
                 help="target step budgets, comma-separated (default 10,25,50)")
  p.add_argument("--seed", type=int, default=None, help="first seed of the target runs (default 0)")
  p.add_argument("--seeds", type=int, default=None,
                 help="target runs per budget and init, seeds --seed, --seed+1, ... (default 3)")
  args = p.parse_args(argv)
  try:
    _check_local_dirs(args.out, args.cache_dir)
  except ValueError as e:
    p.error(str(e))
  try:
    check_out_dir(args.out)
  except OSError as e:  # a file, or someone else's library/ or runs/: one line before any work
    print(f"spot-jax demo: error: {e}", file=sys.stderr)
    return 2
  # TensorFlow (seqio's data pipeline only) logs a failed CUDA probe as an error on machines
  # without a GPU; level 3 keeps the demo's output to its own lines. Set it to see TF's logs.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if args.quick:
    backbone_config, demo = quick_configs()
  else:
    backbone_config, demo = None, DemoConfig()
  if args.steps:
    demo = dataclasses.replace(demo, target_steps=tuple(args.steps))
  if args.seed is not None:
    demo = dataclasses.replace(demo, seed=args.seed)
  if args.seeds is not None:
    if args.seeds < 1:
      p.error(f"--seeds needs at least 1, got {args.seeds}")
    demo = dataclasses.replace(demo, num_seeds=args.seeds)
  quick_note = ("--quick: a smoke configuration (a 1-layer backbone, a few steps each): its accuracies "
                "and conclusion mean nothing; run without --quick for the demo")
  if args.quick:
    print(quick_note, flush=True)
  from spot_jax.train import Preempted  # pylint: disable=g-import-not-at-top
  try:
    run_demo(args.out, backbone_config, demo, cache_dir=args.cache_dir,
             rebuild_backbone=args.rebuild_backbone)
  except Preempted as e:
    print(f"spot-jax demo: stopped by SIGTERM at step {e.step} of a run; run the demo again (it trains "
          "its prompts afresh; a pretrained backbone stays cached)", file=sys.stderr, flush=True)
    return Preempted.EXIT_CODE
  except OSError as e:  # a full disk or read-only place: the path and the fix; other OSErrors are bugs
    from spot_jax import gin_utils  # pylint: disable=g-import-not-at-top  (the errors of train, seen through gin)
    unwritable = gin_utils.unwritable_error(e)
    if unwritable is None:
      raise
    print(f"spot-jax demo: error: {fileio.unwritable_message(unwritable)}", file=sys.stderr, flush=True)
    return 1
  if args.quick:
    print(quick_note, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

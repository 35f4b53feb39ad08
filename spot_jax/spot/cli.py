"""`spot-jax library add|remove|list|similarity|retrieve|init|transferability` (also `python -m
spot_jax.spot.cli ...`).

  add         put a trained prompt (MODEL_DIR, .npy, T5X numpy export, PEFT adapter) in the library
  remove      delete a task's entry
  list        tasks, shapes, steps and metrics
  similarity  pairwise similarities: ranked table, matrix JSON and heatmap PNG
  retrieve    rank the library's sources for a target task embedding
  init        write a transfer init .npy for a target (top-k weighted average or top-1)
  transferability
              judge rankings against measured transfer (Kendall's tau, regret@k) from `spot` runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio, import_guard, prompt_export
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import KINDS, PromptLibrary
from spot_jax.spot.retrieval import checked_exclude, rank_sources, warn_ties, weighted_average_init

EXTRA_ID_0 = 32099  # `<extra_id_0>` in the T5 SentencePiece vocabulary with 100 extra ids
EOS_ID = 1
# `<extra_id_0>` by the model's (padded) vocab_size: T5's 32100 ids (32128 rows), mT5's 250100 (250112).
EXTRA_ID_0_BY_VOCAB_SIZE = {32100: 32099, 32128: 32099, 250100: 250099, 250112: 250099}


def default_input_ids(vocab_size: int) -> Tuple[int, int]:
  """ON's default probe, `<extra_id_0>` + EOS, for a model of `vocab_size` (T5 or mT5)."""
  if int(vocab_size) not in EXTRA_ID_0_BY_VOCAB_SIZE:
    raise ValueError(f"ON has no default input ids for a model with vocab_size {vocab_size} (it knows T5's "
                     f"32128 and mT5's 250112): pass --input-ids (input_ids= in Python) with the "
                     "'<extra_id_0>' id of the model's own vocabulary and 1 for EOS")
  return EXTRA_ID_0_BY_VOCAB_SIZE[int(vocab_size)], EOS_ID


def add_library_parser(subparsers) -> argparse.ArgumentParser:
  """Adds the `library` subcommand (with its verbs) to an argparse subparsers object.

  Each verb sets `func`; run it with `args.func(args)`, which returns an exit code.
  """
  lib = subparsers.add_parser("library", help="SPoT prompt library: add, remove, list, similarity, "
                              "retrieve, init, transferability", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  verbs = lib.add_subparsers(dest="library_verb", metavar="VERB")
  verbs.required = True
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--library", required=True, help="library directory")

  measure_help = f"similarity measure: one of {sorted(sim.SIMILARITIES)}"
  on = argparse.ArgumentParser(add_help=False)
  on.add_argument("--window", type=_window, default=3,
                  help="ON: layers per window (default 3); 'all' for one window over all layers")
  on.add_argument("--model", default=None,
                  help="ON: frozen model checkpoint (T5X or Hugging Face dir) to drive with each prompt")
  on.add_argument("--input-ids", default=None,
                  help="ON: encoder input ids (default '<extra_id_0>' + EOS: 32099,1 for T5, 250099,1 for mT5)")

  p = verbs.add_parser("add", parents=[common], help="add a trained prompt to the library")
  p.add_argument("source", help="MODEL_DIR, .npy, T5X numpy export (file, checkpoint_<step>, "
                 "numpy_checkpoints) or PEFT adapter directory")
  p.add_argument("--task", required=True, help="source task name (seqio task)")
  p.add_argument("--model-id", default=None,
                 help="frozen model identity (default: the one the prompt's records give, named as `spot` "
                 "names it: the last two parts of the checkpoint path in its export.json frozen_model or "
                 "PEFT base_model_name_or_path, e.g. t5_1_1_lm100k_base/checkpoint_1100000; else the library's). An id "
                 "other than the library's is refused")
  p.add_argument("--task-embedding", default=None,
                 help="early-checkpoint prompt used as the task embedding (default: the MODEL_DIR's "
                 "task_embedding export, if any)")
  p.add_argument("--task-embedding-step", type=int, default=None,
                 help="training step of the task embedding (default: from its export, counted as --steps "
                 "is; retrieval warns when the target's differs)")
  p.add_argument("--which", default="auto", choices=["auto", "best", "latest"],
                 help="which MODEL_DIR export to add (auto: best if present, else newest)")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps (default: from the export; for a prompt-tuning run, its T5X step "
                 "less the initial checkpoint's, read from MODEL_DIR/config.gin)")
  p.add_argument("--metrics", default=None,
                 help="validation metrics as a JSON object or a path to a JSON file")
  p.add_argument("--overwrite", action="store_true", help="replace an existing entry of this task")
  p.set_defaults(func=_cmd_add)

  p = verbs.add_parser("remove", parents=[common], help="delete a task's entry (a mistaken add)")
  p.add_argument("--task", required=True, help="the entry to delete")
  p.set_defaults(func=_cmd_remove)

  p = verbs.add_parser("list", parents=[common], help="show tasks, shapes, steps and metrics")
  p.add_argument("--json", action="store_true", help="print the records as JSON")
  p.set_defaults(func=_cmd_list)

  p = verbs.add_parser("similarity", parents=[common, on],
                       help="pairwise similarities: table, matrix JSON, heatmap PNG")
  p.add_argument("--measure", action="append", default=None,
                 help=measure_help + "; repeatable; 'all' for every prompt-only measure "
                 "(default cos_avg_tokens)")
  p.add_argument("--kind", choices=KINDS, default=None,
                 help="compare task embeddings (default, as retrieve and spot rank sources, and as SPoT "
                 "measures task similarity; entries without one use their final prompt, with a warning; a "
                 "library without any compares final prompts, with a note) or the final prompts")
  p.add_argument("--out-dir", default=None, help="where to write similarity_<measure>_task_embedding.{json,png} "
                 "(with --kind prompt: similarity_<measure>.{json,png}; default <library>/similarity)")
  p.add_argument("--top", type=int, default=20, help="pairs to print per measure (default 20)")
  p.set_defaults(func=_cmd_similarity)

  for verb, helptext in (("retrieve", "rank library sources for a target task embedding"),
                         ("init", "write a transfer init .npy for a target task")):
    p = verbs.add_parser(verb, parents=[common, on], help=helptext)
    p.add_argument("--target", required=True,
                   help="the target's task embedding: a short target run's MODEL_DIR (its "
                   "task_embedding export, else its newest) or a prompt file in any format")
    p.add_argument("--measure", default=sim.DEFAULT_MEASURE, help=measure_help)
    p.add_argument("--kind", choices=KINDS, default="task_embedding",
                   help="what the target is compared with (default task_embedding; entries without "
                   "one use their final prompt)")
    p.add_argument("--exclude", action="append", default=[],
                   help="source task to leave out (repeatable), e.g. the target task itself")
    p.add_argument("--json", action="store_true", help="print JSON")
    if verb == "retrieve":
      p.add_argument("--top-k", type=positive_int, default=None, help="print only the k best sources")
      p.set_defaults(func=_cmd_retrieve)
    else:
      p.add_argument("--out", required=True, help="the init .npy to write (PROMPT_FILE for training); an "
                     "existing file is replaced only with --overwrite")
      p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
      p.add_argument("--strategy", choices=["weighted_average", "top1"], default="weighted_average",
                     help="top-k weighted average of source prompts (w ∝ similarity) or the best one")
      p.add_argument("--top-k", type=positive_int, default=3, help="sources averaged (default 3)")
      p.set_defaults(func=_cmd_init)

  p = verbs.add_parser("transferability", parents=[on],
                       help="judge source rankings against measured transfer (SPoT's analysis)",
                       description="Reads the result.json of `spot-jax spot --strategy best_of_top_k` runs that "
                       "trained the target from every source (--top-k all), one run per target, "
                       "and judges how well the ranking predicts those transfer scores: Kendall's tau, "
                       "regret@k, the mean score of the top k against the mean of all sources, and the rank "
                       "of the best source. With --measure (and --library), the same rows are re-ranked "
                       "by each measure from the task embedding each run trained.")
  p.add_argument("runs", nargs="+", help="the MODEL_DIR (or result.json) of each target's spot run")
  p.add_argument("--library", default=None, help="the library the runs ranked (needed with --measure)")
  p.add_argument("--measure", action="append", default=None,
                 help=measure_help + "; repeatable; 'all' for every prompt-only measure (default: each "
                 "run's own ranking)")
  p.add_argument("--kind", choices=KINDS, default="task_embedding",
                 help="source prompts the re-ranking compares with (default task_embedding)")
  p.add_argument("--k", type=int, action="append", default=None, help="k of regret@k (repeatable; "
                 "default 1 and 3)")
  p.add_argument("--json", action="store_true", help="print JSON (per target and summary)")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  p.set_defaults(func=_cmd_transferability)
  return lib


def positive_int(value: str, words: Optional[dict] = None):
  """An argparse type: an integer >= 1, or one of `words` (the value it stands for). A --top-k of 0
  crashed `retrieve`'s table, and a negative one dropped the last sources without a word."""
  words = words or {}
  if value in words:
    return words[value]
  try:
    v = int(value)
  except ValueError as e:
    alternatives = "".join(f" or {w!r}" for w in words)
    raise argparse.ArgumentTypeError(f"must be a positive integer{alternatives}, got {value!r}") from e
  if v < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
  return v


def _window(value: str) -> Optional[int]:
  return positive_int(value, {"all": None, "none": None, "None": None})



def _load_metrics(value: Optional[str]) -> Optional[dict]:
  if value is None:
    return None
  text = value
  if fileio.exists(value):  # a JSON file, local or gs://
    with fileio.open_file(value, "r") as f:
      text = f.read()
  elif not value.lstrip().startswith("{"):  # not inline JSON: a path that is not there
    raise ValueError(f"--metrics {value!r} is neither a JSON object nor an existing JSON file: check the path, "
                     "or give the object inline, e.g. --metrics '{\"accuracy\": 81.2}'")
  try:
    out = json.loads(text)
  except ValueError as e:
    raise ValueError(f"--metrics must be a JSON object or a JSON file, got {value!r}: {e}") from e
  if not isinstance(out, dict):
    raise ValueError(f"--metrics must be a JSON object, got {type(out).__name__}")
  return out


def check_input_ids(input_ids: Sequence[int], vocab_size: int) -> None:
  """Refuses ON probe ids outside [0, vocab_size): an embedding lookup out of range is not an error in
  JAX (it yields a zero/filled row), so ON would silently compare garbage (e.g. all-zero scores)."""
  ids = [int(i) for i in input_ids]
  if not ids:
    raise ValueError("ON needs at least one encoder input id: pass --input-ids (input_ids= in Python)")
  bad = [i for i in ids if not 0 <= i < int(vocab_size)]
  if bad:
    raise ValueError(
        f"ON input ids {bad} (of {ids}) are outside the frozen model's vocabulary (vocab_size "
        f"{vocab_size}). Pass --input-ids with ids below {vocab_size} (input_ids= in Python), e.g. the "
        "'<extra_id_0>' id of the model's own vocabulary and 1 for EOS")


def activations_fn_from_params(config, params, input_ids: Optional[Sequence[int]] = None):
  """activations_fn(prompt) for ON: the frozen model's encoder FFN first-layer pre-activations
  [layers, 1, P+L, d_ff] when driven by `prompt` with encoder input `input_ids` (default
  `default_input_ids(config.vocab_size)`)."""
  from spot_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  if input_ids is None:
    input_ids = default_input_ids(config.vocab_size)
  check_input_ids(input_ids, config.vocab_size)
  ids = np.asarray([list(input_ids)], dtype=np.int32)

  def fn(prompt):
    return np.asarray(model_lib.ffn_preactivations(config, params, ids, np.asarray(prompt, np.float32)))
  return fn


def model_activations_fn(model_path: str, input_ids: Optional[Sequence[int]] = None):
  """`activations_fn_from_params` for the checkpoint at `model_path` (loaded with spot_jax.load_t5)."""
  import spot_jax  # pylint: disable=g-import-not-at-top
  model = spot_jax.load_t5(model_path)
  return activations_fn_from_params(model.config, model.params, input_ids)


def _activations(args, measures) -> Optional[object]:
  if "on" not in measures:
    return None
  if not args.model:
    raise ValueError("measure 'on' drives the frozen model with each prompt: pass --model CHECKPOINT")
  ids = None if args.input_ids is None else [int(x) for x in args.input_ids.split(",") if x.strip()]
  return model_activations_fn(args.model, ids)


def _fmt_metrics(m: dict) -> str:
  if not m:
    return "-"
  return " ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in m.items())


def _cmd_add(args) -> int:
  lib = PromptLibrary(args.library)
  rec = lib.add(args.task, args.source, args.model_id, task_embedding=args.task_embedding,
                steps=args.steps, metrics=_load_metrics(args.metrics), overwrite=args.overwrite,
                which=args.which, task_embedding_step=args.task_embedding_step)
  at = f" from step {rec['task_embedding_step']}" if rec.get("task_embedding_step") is not None else ""
  emb = f", task embedding [{rec['task_embedding_length']}, {rec['d_model']}]{at}" \
      if rec["has_task_embedding"] else ", no task embedding"
  t5x = f" (T5X global step {rec['t5x_global_step']})" \
      if rec.get("t5x_global_step") not in (None, rec["steps"]) else ""
  print(f"added {rec['task']}: prompt [{rec['prompt_length']}, {rec['d_model']}]{emb}, "
        f"steps {rec['steps']}{t5x}, model {rec['model_id']} -> {os.path.join(args.library, args.task)}")
  return 0


def _cmd_remove(args) -> int:
  lib = PromptLibrary.existing(args.library)
  lib.remove(args.task)
  print(f"removed {args.task} from {args.library} ({len(lib)} task(s) left)")
  return 0


def _cmd_list(args) -> int:
  lib = PromptLibrary.existing(args.library)
  recs = lib.list()
  if args.json:
    print(json.dumps({"library": lib.meta, "entries": recs}, indent=2, sort_keys=True))
    return 0
  meta = lib.meta
  print(f"library {args.library}: {len(recs)} task(s), model {meta.get('model_id')}, "
        f"d_model {meta.get('d_model')}")
  if not recs:
    return 0
  w = max(4, *(len(r["task"]) for r in recs))
  print(f"{'task':<{w}}  {'prompt':>11}  {'task_emb':>11}  {'steps':>7}  metrics")
  for r in recs:
    shape = f"[{r['prompt_length']},{r['d_model']}]"
    emb = f"[{r['task_embedding_length']},{r['d_model']}]" if r.get("has_task_embedding") else "-"
    steps = "-" if r.get("steps") is None else str(r["steps"])
    print(f"{r['task']:<{w}}  {shape:>11}  {emb:>11}  {steps:>7}  {_fmt_metrics(r.get('metrics'))}")
  return 0


def _cmd_similarity(args) -> int:
  from spot_jax.spot.heatmap import save_heatmap  # pylint: disable=g-import-not-at-top
  lib = PromptLibrary.existing(args.library)
  measures = args.measure or [sim.DEFAULT_MEASURE]
  if "all" in measures:
    measures = [m for m in measures if m != "all"] + [m for m in sim.PROMPT_SIMILARITIES
                                                       if m not in measures]
  for m in measures:
    if m not in sim.SIMILARITIES:
      raise ValueError(f"unknown measure {m!r}; choose from {sorted(sim.SIMILARITIES)} or 'all'")
  kind, lacking = _similarity_kind(lib, args)
  prompts = lib.prompts(kind)  # task embeddings: warns naming the entries that use their final prompt
  if len(prompts) < 2:
    raise ValueError(f"library {args.library} has {len(prompts)} task(s); similarity needs at least 2")
  act = _activations(args, measures)
  out_dir = args.out_dir or os.path.join(args.library, "similarity")
  fileio.makedirs(out_dir)  # --out-dir may be gs://
  for m in measures:
    names, matrix = sim.similarity_matrix(prompts, m, activations_fn=act, window=args.window)
    base = os.path.join(out_dir, f"similarity_{m}{'' if kind == 'prompt' else '_' + kind}")
    record = {"measure": m, "kind": kind, "window": args.window if m == "on" else None,
              "names": names, "matrix": matrix.tolist()}
    if kind == "task_embedding":
      record["final_prompt_for"] = lacking  # entries without a task embedding
    fileio.atomic_write_bytes(base + ".json", json.dumps(record, indent=2).encode())
    save_heatmap(names, matrix, base + ".png", title=f"{m} ({kind})")
    pairs = sim.ranked_pairs(names, matrix)
    fallback = f"; final prompt of {', '.join(lacking)}" if lacking else ""
    print(f"== {m} ({kind}{fallback}): {len(pairs)} pairs, most similar first")
    w = max(6, *(len(n) for n in names))
    print(f"{'rank':>4}  {'task_a':<{w}}  {'task_b':<{w}}  score")
    for i, (a, b, s) in enumerate(pairs[:args.top], 1):
      print(f"{i:>4}  {a:<{w}}  {b:<{w}}  {s:.4f}")
    print(f"wrote {base}.json and {base}.png")
  return 0


def _similarity_kind(lib: PromptLibrary, args) -> Tuple[str, list]:
  """(kind compared, entries without a task embedding) for `library similarity`: task embeddings
  unless --kind prompt; a library where no entry has one compares final prompts, with a note (an
  explicit --kind task_embedding is refused there)."""
  if args.kind == "prompt":
    return "prompt", []
  lacking = sorted(r["task"] for r in lib.list() if not r.get("has_task_embedding"))
  if lacking and len(lacking) == len(lib):
    if args.kind == "task_embedding":
      raise ValueError(f"library {args.library}: no entry has a task embedding (the early export SPoT compares "
                       "tasks by; `library add` takes a MODEL_DIR's task_embedding export, or --task-embedding "
                       "PATH): add them, or pass --kind prompt to compare the final prompts")
    print(f"note: no entry of library {args.library} has a task embedding (the early export SPoT compares tasks "
          "by): comparing the final prompts (--kind prompt). `library add` takes a MODEL_DIR's task_embedding "
          "export, or --task-embedding PATH", file=sys.stderr)
    return "prompt", []
  return "task_embedding", lacking


def _rank(args):
  lib = PromptLibrary.existing(args.library)
  act = _activations(args, [args.measure])
  # A target MODEL_DIR gives its task-embedding export (else its best/newest), and that export's step.
  exclude = checked_exclude(args.exclude, lib.tasks())  # a typed name must be a task of the library
  return lib, rank_sources(args.target, lib, args.measure, exclude=exclude, kind=args.kind,
                           activations_fn=act, window=args.window)


def _cmd_retrieve(args) -> int:
  _, ranked = _rank(args)
  ties = warn_ties(ranked, args.top_k)  # of the whole ranking: a tie across the cut shows too
  if args.top_k is not None:
    ranked = ranked[:args.top_k]
  if args.json:
    print(json.dumps([{"task": t, "score": s, "tied": ties.is_tied(t)} for t, s in ranked], indent=2))
    return 0
  w = max(4, *(len(t) for t, _ in ranked))
  print(f"sources ranked by {args.measure} ({args.kind}) for {args.target}")
  print(f"{'rank':>4}  {'task':<{w}}  score")
  for i, (t, s) in enumerate(ranked, 1):
    print(f"{i:>4}  {t:<{w}}  {s:.4f}{'  (tied)' if ties.is_tied(t) else ''}")
  if ties.message():
    print(f"tie: {ties.message()}")
  return 0


def _cmd_init(args) -> int:
  prompt_export.check_export_target(args.out, "npy", args.overwrite)  # before any ranking
  lib, ranked = _rank(args)
  k = 1 if args.strategy == "top1" else args.top_k
  ties = warn_ties(ranked, k)
  chosen = ranked[:k]
  finals = {t: lib.get(t).prompt for t, _ in chosen}
  if args.strategy == "top1":  # the best source as is, whatever the sign of its score
    init, weights = finals[chosen[0][0]], {chosen[0][0]: 1.0}
  else:
    init, weights = weighted_average_init(finals, dict(chosen), top_k=k)
  prompt_export.save_npy(init, args.out)
  summary = {"out": args.out, "strategy": args.strategy, "measure": args.measure, "kind": args.kind,
             "shape": list(init.shape),
             "sources": [{"task": t, "score": s, "weight": weights.get(t, 0.0), "tied": ties.is_tied(t)}
                         for t, s in chosen], "ties": ties.to_dict()}
  if args.json:
    print(json.dumps(summary, indent=2))
  else:
    print(f"wrote {args.out} {tuple(init.shape)} ({args.strategy}, {args.measure} on {args.kind}):")
    for src in summary["sources"]:
      print(f"  {src['task']}: score {src['score']:.4f}, weight {src['weight']:.4f}"
            f"{' (tied)' if src['tied'] else ''}")
    if ties.message():
      print(f"tie: {ties.message()}")
  return 0


def _cmd_transferability(args) -> int:
  from spot_jax.spot import transferability as tr  # pylint: disable=g-import-not-at-top
  ks = sorted(set(args.k or tr.DEFAULT_KS))
  measures = args.measure
  if measures and "all" in measures:
    measures = [m for m in measures if m != "all"] + [m for m in sim.PROMPT_SIMILARITIES if m not in measures]
  for m in measures or []:
    if m not in sim.SIMILARITIES:
      raise ValueError(f"unknown measure {m!r}; choose from {sorted(sim.SIMILARITIES)} or 'all'")
  lib = PromptLibrary.existing(args.library) if args.library else None
  act = _activations(args, measures) if measures else None
  evaluated = tr.evaluate_runs(args.runs, ks, library=lib, measures=measures, kind=args.kind,
                               activations_fn=act, window=args.window)
  out = tr.jsonable({name: {"targets": [r.to_dict() for r in results], "summary": tr.summarize(results)}
                     for name, results in evaluated.items()})
  if args.out:
    fileio.write_json_atomic(args.out, out)
  print(json.dumps(out, indent=2, default=fileio.json_default) if args.json else tr.format_report(evaluated, ks))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="spot-jax")  # also `python -m spot_jax.spot.cli`
  add_library_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
  return parser


def run(args) -> int:
  """Runs a parsed `library` command; user errors print one line on stderr and return 1."""
  try:
    return args.func(args)
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
          IsADirectoryError, import_guard.ShadowedPackageError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
  except OSError as e:  # a full disk or read-only place: the path and the fix; other OSErrors are bugs
    if not fileio.is_unwritable(e):
      raise
    msg = fileio.unwritable_message(e)
  print(f"error: {msg}", file=sys.stderr)
  return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: `main(["library", "list", "--library", DIR])`; a leading "library" is optional."""
  argv = list(sys.argv[1:] if argv is None else argv)
  from spot_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.plain_warnings()
  if not argv or argv[0] != "library":
    argv = ["library"] + argv
  return run(build_parser().parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())

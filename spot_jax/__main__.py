"""`spot-jax` (= `python -m spot_jax`): one entry point for every job.

  spot-jax demo                      the embedded SPoT demo (offline, tiny model, bundled tasks)
  spot-jax train|eval|infer ...      gin-configured jobs with T5X-style flags
  spot-jax export SRC --format F OUT prompt export (.npy, T5X-prompt-tuning numpy layout, PEFT)
  spot-jax library ...               the SPoT prompt library (add, remove, list, similarity, retrieve, init,
                                     transferability)
  spot-jax spot ...                  retrieval + transfer for a target task
  spot-jax bench ...                 throughput benchmarks (bench/)
  spot-jax tasks --list              registered tasks and mixtures
  spot-jax launch --tpu NAME ...     install and run a job on every worker of a Cloud TPU VM/pod
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import argparse
import difflib
import sys
from typing import Optional

USAGE = __doc__


def _export(argv):
  from spot_jax import prompt_export, prompt_io
  p = argparse.ArgumentParser(prog="spot-jax export",
                              description="Write a prompt from any checkpoint or export in another format.")
  p.add_argument("source", help="a MODEL_DIR, numpy export, .npy file or PEFT adapter directory")
  p.add_argument("out", help="output path (.npy file, T5X export directory, or PEFT directory)")
  p.add_argument("--format", choices=prompt_export.EXPORT_FORMATS, required=True)
  p.add_argument("--which", default="auto", choices=("auto", "best", "latest", "task_embedding"),
                 help="which export of a MODEL_DIR to take")
  p.add_argument("--base_model", default=None, help="PEFT base_model_name_or_path")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing export of the same format at OUT (never other files)")
  args = p.parse_args(argv)
  # A relative --base_model is made absolute: AutoPeftModel reads it from wherever the adapter is loaded.
  kwargs = ({"base_model_name_or_path": prompt_io.absolute_local_path(args.base_model)}
            if args.format == "peft" else {})
  try:
    prompt_export.check_export_target(args.out, args.format, args.overwrite)  # before reading SRC
    prompt, src = prompt_io.load_prompt_with_source(args.source, which=args.which)
    if args.format == "peft" and args.base_model is None:
      kwargs["base_model_name_or_path"] = _peft_base_model(src)
    out = prompt_export.export_prompt(prompt, args.out, args.format, overwrite=args.overwrite, **kwargs)
  except (ValueError, OSError) as e:  # user errors: one line naming the path and the fix
    from spot_jax import fileio  # pylint: disable=g-import-not-at-top
    # A full disk or read-only place names OUT, not the temporary name the write used.
    detail = fileio.unwritable_message(e, args.out) if fileio.is_unwritable(e) else e
    print(f"spot-jax export: error: {detail}", file=sys.stderr)
    return 1
  # From a MODEL_DIR: which export it took (best, not always the last step trained) and why.
  taken = prompt_io.export_taken(args.source, src, args.which)
  print(f"wrote {args.format} prompt {prompt.shape} to {out}" + (f": {taken}" if taken else ""))
  return 0


def _peft_base_model(src) -> Optional[str]:
  """The Hugging Face folder the prompt's run trained on (its export records the frozen checkpoint), for
  PEFT's `base_model_name_or_path`: `AutoPeftModelForSeq2SeqLM.from_pretrained(adapter)` loads it. A
  PEFT source's own base model is kept as it is (a Hub id need not be on this machine)."""
  from spot_jax import checkpoints, prompt_io
  frozen = prompt_io.read_export_info(src.export_dir).get("frozen_model") if src.export_dir else None
  if frozen and src.format == "peft":
    print(f"base_model_name_or_path: {frozen} (the source adapter's)")
    return frozen
  try:
    if frozen and checkpoints.detect_format(frozen) == "hf":
      print(f"base_model_name_or_path: {frozen} (the run's frozen checkpoint)")
      return frozen
  except (checkpoints.CheckpointError, OSError):
    pass
  if src.format == "peft":  # an adapter, not a run: it names no base model
    why = "the source adapter names none either"
  elif src.export_dir:  # a training run's export or checkpoint
    why = "the run's frozen model is not a Hugging Face folder it recorded"
  else:  # a bare .npy: no run, no record
    why = "a .npy file records no model"
  print(f"note: the adapter's base_model_name_or_path is unset ({why}): pass --base_model HF_DIR_OR_ID for "
        "AutoPeftModelForSeq2SeqLM, or load it with PeftModel.from_pretrained(your_t5, ADAPTER_DIR)",
        file=sys.stderr)
  return None


COMMANDS = ("demo", "train", "eval", "infer", "export", "library", "spot", "bench", "tasks", "launch")


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  command, rest = argv[0], argv[1:]
  from spot_jax import import_guard  # pylint: disable=g-import-not-at-top
  try:
    return _dispatch(command, rest)
  except import_guard.ShadowedPackageError as e:  # a user's tasks.py or bench.py in place of spot_jax's
    print(f"spot-jax {command}: error: {e}", file=sys.stderr)
    return 2


def _dispatch(command: str, rest) -> int:
  if command in ("train", "eval", "infer"):
    module = __import__(f"spot_jax.{command}", fromlist=["main"])
    module.main(rest)
    return 0
  if command == "launch":
    from spot_jax import launch
    return launch.main(rest)
  if command == "export":
    return _export(rest)
  if command == "library":
    from spot_jax.spot import cli
    return cli.main(rest)
  if command == "spot":
    from spot_jax.spot import pipeline_cli
    return pipeline_cli.main(rest)
  if command == "demo":
    from spot_jax import demo
    return demo.main(rest)
  if command in ("bench", "tasks"):
    from spot_jax import import_guard  # pylint: disable=g-import-not-at-top
    import_guard.check_loaded(command)  # a user's module of that name, imported before
  if command == "bench":
    import bench.__main__ as bench_main
    return bench_main.main(rest)
  if command == "tasks":
    import tasks.__main__ as tasks_main
    return tasks_main.main(rest)
  close = difflib.get_close_matches(command, COMMANDS, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  print(f"spot-jax: unknown command {command!r}{hint}\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())

"""`python -m tasks --list [--markdown] [--module M ...]`: every spot task/mixture, splits, metrics,
and those your own modules register (as MIXTURE_OR_TASK_MODULE names them)."""
import argparse
import importlib
import os
import sys

import seqio

from spot_jax import import_guard
from tasks import registry_list

# Modules that register tasks; missing ones (another helper's) are skipped.
_MODULES = ("glue", "super_glue", "sources", "rank_classification", "mixtures",
            "user_data", "ppt", "bundled")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks")
  parser.add_argument("--list", action="store_true",
                      help="print every registered spot task and mixture")
  parser.add_argument("--markdown", action="store_true", help="as a Markdown table")
  parser.add_argument("--module", action="append", default=[],
                      help="also import this module (your MIXTURE_OR_TASK_MODULE, from the current "
                           "directory or PYTHONPATH) and list what it registers; repeatable")
  args = parser.parse_args(argv)
  if not args.list:
    parser.print_help()
    return 0
  for m in _MODULES:
    try:
      importlib.import_module(f"tasks.{m}")
    except ModuleNotFoundError as e:
      if e.name != f"tasks.{m}":
        raise
  before = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if args.module and os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())  # as `python -m spot_jax.train` finds a module in the current directory
  for name in args.module:
    # `--module tasks` would list spot_jax's own package again (already imported), not a tasks.py here.
    try:
      import_guard.check_user_module(name)
    except import_guard.ShadowedPackageError as e:
      print(f"{parser.prog}: error: {e}", file=sys.stderr)
      return 2
    importlib.import_module(name)
  added = (set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())) - before
  print(registry_list.format_table(registry_list.entries(also=added), markdown=args.markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())

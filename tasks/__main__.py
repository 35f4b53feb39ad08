"""`python -m tasks --list [--markdown]`: every spot task/mixture, splits, metrics."""
import argparse
import importlib
import sys

from tasks import registry_list

# Modules that register tasks; missing ones (another helper's) are skipped.
_MODULES = ("glue", "super_glue", "sources", "rank_classification", "mixtures",
            "user_data", "ppt", "bundled")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks")
  parser.add_argument("--list", action="store_true",
                      help="print every registered spot task and mixture")
  parser.add_argument("--markdown", action="store_true", help="as a Markdown table")
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
  print(registry_list.format_table(registry_list.entries(), markdown=args.markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())

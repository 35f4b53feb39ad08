"""docs/tasks.md's full table is what `python -m tasks --list --markdown` prints, and every rank
task (GLUE/SuperGLUE/sources, bundled, users' files) lists the one rank metric."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _listing() -> str:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-m", "tasks", "--list", "--markdown"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, check=True).stdout
  return out


def test_docs_table_is_the_generated_listing_and_rank_metrics_share_one_name():
  listing = [line for line in _listing().splitlines() if line.startswith("|")]
  doc = (ROOT / "docs" / "tasks.md").read_text()
  table = doc[doc.index("## All tasks and mixtures"):]
  documented = [line for line in table.splitlines() if line.startswith("|")]
  assert documented == listing, "regenerate the table: python -m tasks --list --markdown"
  assert any(line.startswith("| `spot_bundled_movie` |") for line in listing)
  rank_rows = [line for line in listing if "_rank` |" in line]
  assert len(rank_rows) > 30
  for row in rank_rows:  # bundled and GLUE alike
    assert row.endswith("| rank_classification_accuracy |"), row
  assert "rank_accuracy |" not in "\n".join(listing)

"""`python -m tasks --list` and the naming helpers."""
import importlib.util  # noqa: F401

from tasks import __main__ as cli
from tasks import registry_list as reg


def test_version_digits_and_names():
  assert reg.version_digits("glue/rte:2.0.0") == "200"
  assert reg.task_name("super_glue", "boolq", "super_glue/boolq:1.0.2") == \
      "spot_super_glue_boolq_v102"


def test_list_prints_tasks_and_mixtures(capsys):
  assert cli.main(["--list"]) == 0
  out = capsys.readouterr().out
  assert "spot_glue_rte_v200 " in out and "spot_glue_rte_v200_rank" in out
  assert "spot_glue_mix" in out and "matthews_corrcoef" in out
  assert "validation_mismatched" in out
  assert cli.main(["--list", "--markdown"]) == 0
  assert "| `spot_squad_v300` | task |" in capsys.readouterr().out

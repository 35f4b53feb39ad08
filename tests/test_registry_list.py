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
  out = capsys.readouterr().out
  assert "| `spot_squad_v300` | task |" in out
  # Tasks a mixture evaluates but never trains on (rate 0) are counted apart.
  assert "| `spot_glue_mix` | mixture | 9 tasks (1 at rate 0) |  |" in out
  assert "| `spot_super_glue_t5_mix` | mixture | 12 tasks (3 at rate 0) |  |" in out
  assert "| `spot_super_glue_mix` | mixture | 8 tasks |  |" in out


def test_list_shows_what_your_own_module_registers(tmp_path, monkeypatch, capsys):
  """`--module` imports a MIXTURE_OR_TASK_MODULE (found from the current directory) and lists its tasks,
  whatever their names: the unknown-task error sends users here."""
  (tmp_path / "words.tsv").write_text("word\tlabel\ncat\tanimal\noak\tplant\n")
  (tmp_path / "my_listed_tasks.py").write_text(
      "from tasks import user_data\n"
      f"user_data.register_task_from_files('words_by_kind', train={str(tmp_path / 'words.tsv')!r}, "
      f"validation={str(tmp_path / 'words.tsv')!r}, input_template='{{word}}', target_field='label')\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
  assert cli.main(["--list", "--module", "my_listed_tasks"]) == 0
  rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("words_by_kind ")]
  assert len(rows) == 1 and "train" in rows[0] and "validation" in rows[0]

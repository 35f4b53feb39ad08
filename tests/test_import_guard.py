"""A user's own `tasks.py` (the usual name of a seqio task module) or `bench.py` never stands in for
spot_jax's top-level `tasks` / `bench` packages: importing it is one error naming both files and the fix."""
import importlib
import importlib.machinery
import os
import pathlib
import subprocess
import sys

import pytest

import spot_jax

REPO = pathlib.Path(spot_jax.__file__).resolve().parents[1]
USER_TASKS = "print('USER TASKS RAN')\n"
_TRAIN = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin",
          "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'", "--gin.TRAIN_STEPS=1"]


def _run(args, cwd, **env):
  full = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **env)
  return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True,
                        timeout=300)


def _error_lines(stderr: str):
  return [line for line in stderr.splitlines() if ": error: " in line]


def _assert_one_clear_error(out, prog, tmp_path):
  assert out.returncode != 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = _error_lines(out.stderr)
  assert len(errors) == 1, out.stderr[-3000:]
  line = errors[0]
  assert line.startswith(f"{prog}: error: "), line
  assert str(tmp_path / "tasks.py") in line and str(REPO / "tasks" / "__init__.py") in line, line
  assert "my_tasks.py" in line and "--gin.MIXTURE_OR_TASK_MODULE=\"'my_tasks'\"" in line, line
  assert "USER TASKS RAN" not in out.stdout  # never imported in spot_jax's place


def test_train_from_a_folder_holding_tasks_py_is_one_error(tmp_path):
  """`python -m` puts the current directory first on sys.path: the user's tasks.py was imported as
  spot_jax's registry and train crashed with `cannot import name 'user_data' from 'tasks'`."""
  (tmp_path / "tasks.py").write_text(USER_TASKS)
  out = _run(["-m", "spot_jax.train", *_TRAIN, f"--gin.MODEL_DIR='{tmp_path / 'run'}'"], tmp_path)
  _assert_one_clear_error(out, "spot_jax.train", tmp_path)
  assert not (tmp_path / "run").exists()


def test_task_module_named_tasks_is_one_error_from_the_console_script(tmp_path):
  """The `spot-jax` console script (here `python -P`: no current directory on sys.path) imported
  spot_jax's own `tasks` for MIXTURE_OR_TASK_MODULE='tasks', skipping the user's tasks.py silently."""
  (tmp_path / "tasks.py").write_text(USER_TASKS)  # as if it registered 'user_words'
  out = _run(["-P", "-m", "spot_jax", "train", *_TRAIN, f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
              "--gin.MIXTURE_OR_TASK_NAME='user_words'", "--gin.MIXTURE_OR_TASK_MODULE='tasks'"], tmp_path)
  _assert_one_clear_error(out, "spot_jax.train", tmp_path)


def test_the_finder_on_its_own(tmp_path, monkeypatch):
  from spot_jax import import_guard
  own = import_guard.own_init("tasks")
  assert os.path.isfile(own) and pathlib.Path(own).resolve() == REPO / "tasks" / "__init__.py"
  finder = import_guard._Finder()  # pylint: disable=protected-access
  # Called from here, a module that is not spot_jax's, it leaves the import to Python (the user's own
  # `import tasks`); the checks below are those of an import of spot_jax's.
  (tmp_path / "user").mkdir()
  (tmp_path / "user" / "tasks.py").write_text(USER_TASKS)
  monkeypatch.syspath_prepend(str(tmp_path / "user"))
  importlib.invalidate_caches()
  assert finder.find_spec("tasks") is None
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "user")])
  monkeypatch.setattr(import_guard, "_imported_by_spot_jax", lambda: True)
  assert finder.find_spec("json") is None and finder.find_spec("tasks.vocab", ["x"]) is None
  # spot_jax's own package, found on sys.path as usual.
  assert pathlib.Path(finder.find_spec("tasks").origin).resolve() == pathlib.Path(own).resolve()
  # A plain folder named tasks (no __init__.py: a namespace package) does not hide it.
  (tmp_path / "tasks").mkdir()
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  assert pathlib.Path(finder.find_spec("tasks").origin).resolve() == pathlib.Path(own).resolve()
  # A module of the user's, first on sys.path: the error, for bench too.
  (tmp_path / "tasks" / "__init__.py").write_text(USER_TASKS)
  (tmp_path / "bench.py").write_text("")
  importlib.invalidate_caches()
  with pytest.raises(import_guard.ShadowedPackageError, match="my_tasks.py"):
    finder.find_spec("tasks")
  with pytest.raises(import_guard.ShadowedPackageError, match=r"bench\.py shadows .*my_bench\.py"):
    finder.find_spec("bench")
  assert import_guard.foreign_origin("tasks", [str(tmp_path)]) == str(tmp_path / "tasks" / "__init__.py")
  assert import_guard.foreign_origin("my_tasks", [str(tmp_path)]) is None
  # Installed by `import spot_jax` once, before the path finder (which would find a tasks.py first).
  import_guard.install()
  marks = [getattr(f, "spot_jax_import_guard", False) for f in sys.meta_path]
  assert sum(marks) == 1
  assert marks.index(True) < sys.meta_path.index(importlib.machinery.PathFinder)


def test_tasks_list_with_module_tasks_is_one_error(tmp_path, monkeypatch, capsys):
  from spot_jax import __main__ as cli
  (tmp_path / "tasks.py").write_text(USER_TASKS)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  assert cli.main(["tasks", "--list", "--module", "tasks"]) == 2
  err = capsys.readouterr().err
  assert str(tmp_path / "tasks.py") in err and "my_tasks.py" in err and len(err.strip().splitlines()) == 1


_USER_TASKS_MODULE = "def hello():\n  return 'the user value'\n"


def test_a_users_own_import_of_tasks_gets_the_users_module(tmp_path):
  """The guard is spot_jax's: after `import spot_jax`, a user's own `import tasks` (a Celery or invoke
  tasks.py, a notebook using only spot_jax.checkpoints) raised ShadowedPackageError."""
  (tmp_path / "tasks.py").write_text(_USER_TASKS_MODULE)
  script = ("import importlib, spot_jax.checkpoints, spot_jax.import_guard\n"
            "import tasks\n"
            "print(tasks.hello())\n"
            "del __import__('sys').modules['tasks']\n"
            "print(importlib.import_module('tasks').hello())\n")
  out = _run(["-c", script], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.splitlines() == ["the user value", "the user value"], out.stdout


def test_spot_jax_after_the_users_own_tasks_is_imported_is_one_error(tmp_path):
  """A user's tasks.py imported first stands in sys.modules, where no finder is asked: spot_jax's command
  names it rather than failing on `from tasks import user_data`."""
  (tmp_path / "tasks.py").write_text(_USER_TASKS_MODULE)
  script = ("import sys, tasks\n"
            "from spot_jax import __main__ as cli\n"
            "sys.exit(cli.main(['tasks', '--list']))\n")
  out = _run(["-c", script], tmp_path)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("spot-jax tasks: error: "), out.stderr[-3000:]
  assert str(tmp_path / "tasks.py") in lines[0] and "my_tasks.py" in lines[0], lines[0]
  script = ("import tasks\n"
            "from spot_jax import gin_utils\n"
            "gin_utils.configure(['--gin_file=models/t5_1_1.gin'], 'spot_jax.train')\n")
  out = _run(["-c", script], tmp_path)
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = _error_lines(out.stderr)
  assert len(errors) == 1 and errors[0].startswith("spot_jax.train: error: "), out.stderr[-3000:]
  assert str(tmp_path / "tasks.py") in errors[0], errors[0]


def test_spot_jax_importing_a_submodule_of_the_users_tasks_package_is_the_error(tmp_path):
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "__init__.py").write_text(_USER_TASKS_MODULE)
  (tmp_path / "tasks" / "vocab.py").write_text("")
  fake = REPO / "spot_jax" / "not_a_module_of_spot_jax.py"  # as if spot_jax's code imported it
  script = ("import spot_jax, tasks\n"
            "import tasks.vocab\n"  # the user's own: theirs
            "del __import__('sys').modules['tasks.vocab']\n"
            "from spot_jax import import_guard\n"
            "try:\n"
            f"  exec(compile('import tasks.vocab', {str(fake)!r}, 'exec'), {{'__name__': 'x'}})\n"
            "except import_guard.ShadowedPackageError as e:\n"
            "  print('REFUSED', e)\n")
  out = _run(["-c", script], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("REFUSED ") and str(tmp_path / "tasks" / "__init__.py") in out.stdout, out.stdout

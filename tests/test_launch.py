"""`spot-jax launch`: the gcloud commands it would run on a Cloud TPU slice."""
import pathlib
import shlex
import subprocess
import sys

import pytest

from spot_jax import launch


def _commands(*argv):
  return launch.build_commands(launch._parser().parse_args(list(argv)))


def test_local_source_is_shipped_installed_and_run_on_every_worker():
  cmds = _commands("--tpu", "v4-32", "--zone", "us-central2-b", "--project", "p", "train",
                   "--gin_file=runs/prompt_train.gin", "--gin.MODEL_DIR='gs://b/run'")
  # The archive is of this checkout's root (wherever the command runs), not of the current directory.
  root = str(pathlib.Path(launch.__file__).resolve().parents[1])
  assert cmds[0][:4] == ["git", "-C", root, "archive"] and cmds[0][-1] == "HEAD"
  assert cmds[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and cmds[1][-1] == "v4-32:~/spot_jax_src.tar.gz"
  assert cmds[1][-2] == cmds[0][-2].split("=", 1)[1]  # scp ships the file git archive wrote
  for cmd in cmds[1:]:
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=p" in cmd
  install = cmds[2][-1]
  assert "pip install -q -r requirements.txt" in install
  # jax[tpu] at the version requirements.txt installed there, after a check of the workers' Python.
  assert install.index("sys.version_info < (3, 11)") < install.index("requirements.txt") < install.index(
      "jax[tpu]==$(python3 -c 'import jax; print(jax.__version__)')")
  run = cmds[3][-1]
  assert run.startswith("--command=cd ~/spot_jax_src && ")
  argv = shlex.split(run.split("&& ", 1)[1])
  assert argv[:4] == ["python3", "-m", "spot_jax", "train"]
  assert "--gin.MODEL_DIR='gs://b/run'" in argv and argv[-1] == "--jax_distributed"


def test_pip_source_and_skip_install():
  cmds = _commands("--tpu", "t", "--zone", "z", "--source", "git+ssh://git@example.invalid/spot_jax", "eval",
                   "--gin_file=runs/prompt_eval.gin")
  assert len(cmds) == 2 and "pip install -q git+ssh://git@example.invalid/spot_jax" in cmds[0][-1]
  assert _commands("--tpu", "t", "--zone", "z", "--skip_install", "infer")[0][-1].endswith(
      "python3 -m spot_jax infer --jax_distributed")


def test_model_dir_must_be_on_gcs():
  with pytest.raises(SystemExit, match="MODEL_DIR must be on GCS"):
    _commands("--tpu", "t", "--zone", "z", "train", "--gin.MODEL_DIR='/tmp/local'")
  # Every spelling the job's own flag parsing accepts (the space-separated one slipped past).
  for spelling in (["--gin.MODEL_DIR", "'/tmp/local'"], ["--gin_bindings=MODEL_DIR='/tmp/local'"],
                   ["--gin_bindings", "MODEL_DIR = '/tmp/local'"]):
    with pytest.raises(SystemExit, match=r"MODEL_DIR must be on GCS .*got MODEL_DIR='/tmp/local'"):
      _commands("--tpu", "t", "--zone", "z", "train", *spelling)
  with pytest.raises(SystemExit, match="EVAL_OUTPUT_DIR must be on GCS"):
    _commands("--tpu", "t", "--zone", "z", "eval", "--gin.EVAL_OUTPUT_DIR='/tmp/e'")
  _commands("--tpu", "t", "--zone", "z", "train", "--gin.MODEL_DIR", "'gs://b/run'")  # accepted


def test_unknown_job_is_rejected(capsys):
  with pytest.raises(SystemExit):
    _commands("--tpu", "t", "--zone", "z", "demo")
  assert "invalid choice" in capsys.readouterr().err


def test_the_job_flag_initializes_jax_distributed(monkeypatch):
  from spot_jax import gin_utils
  calls = []
  monkeypatch.setattr("jax.distributed.initialize", lambda *a, **k: calls.append((a, k)))
  args = gin_utils._parser("x").parse_args(["--jax_distributed"])
  gin_utils.init_distributed(args)
  assert calls == [((), {})]



def test_the_python_check_refuses_an_older_interpreter(tmp_path):
  """The check the install command runs first, on this machine's Python (passes) and a 3.10 (refused)."""
  check = launch._PYTHON_CHECK.replace("python3 -c ", "", 1)
  code = shlex.split(check)[0]
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0
  old = subprocess.run([sys.executable, "-c", code.replace("(3, 11)", "(99, 0)")], capture_output=True, text=True)
  assert old.returncode == 1 and "spot_jax needs Python >= 3.11 on the workers; this image has" in old.stderr


def test_a_tpu_spec_given_replaces_the_pinned_one():
  cmds = _commands("--tpu", "t", "--zone", "z", "--jax_tpu_spec", "jax[tpu]==9.9", "train",
                   "--gin.MODEL_DIR='gs://b/r'")
  assert "pip install -q -U 'jax[tpu]==9.9'" in cmds[2][-1] and "jax.__version__" not in cmds[2][-1]


def test_local_source_outside_a_git_checkout_is_refused(tmp_path):
  with pytest.raises(SystemExit, match=r"is not a git checkout: run from a clone, or pass --source git"):
    launch.checkout_root(str(tmp_path))


def test_uncommitted_changes_are_named_in_the_warning(tmp_path, caplog):
  """git archive ships HEAD: the warning names the files left behind (it named only the checkout)."""
  import subprocess
  def git(*a):
    subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
  git("init", "-q")
  (tmp_path / "train.gin").write_text("A = 1\n")
  (tmp_path / "notes.txt").write_text("x\n")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
  (tmp_path / "train.gin").write_text("A = 2\n")
  with caplog.at_level("WARNING"):
    assert launch.checkout_root(str(tmp_path)) == str(tmp_path.resolve())
  assert "uncommitted changes (train.gin)" in caplog.text and "notes.txt" not in caplog.text

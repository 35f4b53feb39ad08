"""`spot-jax launch`: the gcloud commands it would run on a Cloud TPU slice."""
import shlex

import pytest

from spot_jax import launch


def _commands(*argv):
  return launch.build_commands(launch._parser().parse_args(list(argv)))


def test_local_source_is_shipped_installed_and_run_on_every_worker():
  cmds = _commands("--tpu", "v4-32", "--zone", "us-central2-b", "--project", "p", "train",
                   "--gin_file=runs/prompt_train.gin", "--gin.MODEL_DIR='gs://b/run'")
  assert cmds[0][:2] == ["git", "archive"]
  assert cmds[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and cmds[1][-1] == "v4-32:~/spot_jax_src.tar.gz"
  for cmd in cmds[1:]:
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=p" in cmd
  install = cmds[2][-1]
  assert "pip install -q -r requirements.txt" in install and "jax[tpu]" in install
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


"""`import spot_jax` turns TensorFlow's C++ log lines below FATAL off (TF_CPP_MIN_LOG_LEVEL=3) unless the
user set the level or TensorFlow is already loaded."""
import os
import pathlib
import subprocess
import sys

import pytest

import spot_jax

REPO = pathlib.Path(spot_jax.__file__).resolve().parents[1]


def test_cli_stderr_has_no_tensorflow_cuda_probe_error(tmp_path):
  """TensorFlow logged `failed call to cuInit ... UNKNOWN ERROR (303)` as an error on every command on
  a machine without a GPU (TF_CPP_MIN_LOG_LEVEL unset; the tests' conftest sets it)."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "spot_jax", "tasks", "--list"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "spot_bundled_movie" in out.stdout
  assert "cuInit" not in out.stderr and "cuda_platform" not in out.stderr, out.stderr[-3000:]


@pytest.mark.parametrize("setting, tensorflow_first, want", [
    (None, False, "3"), ("1", False, "1"), ("0", False, "0"), (None, True, None)])
def test_log_level_default_keeps_the_users_setting(tmp_path, setting, tensorflow_first, want):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = str(REPO)
  if setting is not None:
    env["TF_CPP_MIN_LOG_LEVEL"] = setting
  # A stand-in for an already imported TensorFlow (importing it costs seconds).
  code = ("import os, sys\n" + ("sys.modules['tensorflow'] = object()\n" if tensorflow_first else "") +
          "import spot_jax\nprint(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  assert out.stdout.strip() == str(want)

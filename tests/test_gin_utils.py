"""T5X-style flag handling shared by every gin-configured command."""
import pytest

from spot_jax import gin_utils


def test_run_flags_are_split_from_a_commands_own():
  own, ours = gin_utils.split_run_flags(
      ["--target", "t", "--gin_file", "a.gin", "--gin.X=1", "--gin.Y", "2", "--baseline",
       "--coordinator_address=h:1", "--num_processes", "2", "--jax_distributed", "--top-k", "3"])
  assert own == ["--target", "t", "--baseline", "--top-k", "3"]
  assert ours == ["--gin_file", "a.gin", "--gin.X=1", "--gin.Y", "2", "--coordinator_address=h:1",
                  "--num_processes", "2", "--jax_distributed"]


def test_gin_dot_flags_become_bindings():
  bindings, rest = gin_utils.split_gin_flags(["--gin.MODEL_DIR='/tmp/x'", "--gin.STEPS", "3", "--other"])
  assert bindings == ["MODEL_DIR = '/tmp/x'", "STEPS = 3"] and rest == ["--other"]
  with pytest.raises(SystemExit, match="has no value"):
    gin_utils.split_gin_flags(["--gin.STEPS"])

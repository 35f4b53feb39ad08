"""What the eval/infer CLI tests share (test_eval_infer_cli, test_eval_prompt_steps): the bundled task
on the tiny model, the command line of a run file, and a training MODEL_DIR with three numpy exports."""
import numpy as np
import pytest

TASK = "spot_bundled_movie"
LENGTHS = {"inputs": 32, "targets": 4}


def _args(run_gin, out_macro, out_dir, prompt_file, extra=()):
  return ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin", f"--gin_file=runs/{run_gin}",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.CHECKPOINT_PATH=None",
          f"--gin.PROMPT_FILE={prompt_file!r}" if prompt_file else "--gin.PROMPT_FILE=None",
          f"--gin.{out_macro}='{out_dir}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=4",
          "--gin.spot_jax.model_config.vocab_size=1152", *extra]


RANK = TASK + "_rank"  # scored rows: every prompt gives its own scores, so a mixed-up prompt shows
STEPS = (2, 4, 6)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A training MODEL_DIR with three numpy exports whose prompts differ."""
  from spot_jax import prompt_export
  model_dir = tmp_path_factory.mktemp("run")
  for step in STEPS:
    prompt = np.random.RandomState(step).uniform(-0.5, 0.5, (4, 64)).astype(np.float32)
    prompt_export.export_numpy_checkpoint(prompt, str(model_dir), step)
  return model_dir

"""What the trainer's tests share (test_train, test_train_processes, test_train_config): the bundled
task, a tiny model, and the gin flags of a short `spot_jax.train` run on a (4, 2) mesh."""
from spot_jax.config import size_config

TASK = "spot_bundled_movie"
LENGTHS = {"inputs": 32, "targets": 4}
CFG = size_config("tiny", vocab_size=1152, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                  dropout_rate=0.1)
STEPS, PROMPT_LEN = 24, 4


def _gin_args(model_dir, steps=STEPS, extra=()):
  return ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin",
          "--gin_file=partitioning/model_parallel_2.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
          f"--gin.PROMPT_LENGTH={PROMPT_LEN}", "--gin.SAVE_PERIOD=8", "--gin.EVAL_PERIOD=None",
          "--gin.spot_jax.model_config.vocab_size=1152", "--gin.spot_jax.model_config.d_model=32",
          "--gin.spot_jax.model_config.num_heads=2", "--gin.spot_jax.model_config.head_dim=16",
          "--gin.spot_jax.model_config.d_ff=64", "--gin.spot_jax.train.train.log_period=4",
          *extra]

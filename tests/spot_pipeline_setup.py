"""What the SPoT pipeline tests share (test_pipeline, test_transfer_strategies, test_pipeline_cli): a
tiny frozen model, the bundled tasks, a fast RunConfig, and JAX's compilation cache. Their fixtures
(`frozen`, `library`, `compilation_cache`) are in conftest.py."""
import contextlib
import json
import os

import jax

from spot_jax.config import size_config
from spot_jax.spot import pipeline

SOURCES = ("spot_bundled_movie", "spot_bundled_topic", "spot_bundled_number")
TARGET = "spot_bundled_product"
LENGTHS = {"inputs": 64, "targets": 4}
CFG = size_config("tiny", vocab_size=1152, d_model=32, num_heads=2, head_dim=16, d_ff=64)
P = 4
RUN = pipeline.RunConfig(task_feature_lengths=LENGTHS, batch_size=8, prompt_length=P, log_period=5,
                         eval_batch_size=16, eval_num_examples=32, enable_dropout=False)
SOURCE_STEPS = 10


@contextlib.contextmanager
def compilation_cache(path):
  """Every run here compiles the same step: the persistent cache turns ~8 s compiles into ~1 s. The
  previous settings are restored after."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  try:
    yield pipeline.enable_compilation_cache(str(path), 0)
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    cc.reset_cache()


def _train_records(run_dir):
  return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if "train/loss" in l]

"""`python -m spot_jax.eval`: evaluate a soft prompt on a seqio task or mixture (the `t5x.eval` analogue).

  python -m spot_jax.eval --gin_file=models/t5_1_1_lm_adapted.gin --gin_file=models/sizes/base.gin \
    --gin_file=runs/prompt_eval.gin --gin.MIXTURE_OR_TASK_NAME="'spot_glue_rte_v200'" \
    --gin.CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'" \
    --gin.PROMPT_FILE="'/tmp/rte_prompt'" --gin.EVAL_OUTPUT_DIR="'/tmp/rte_eval'"

Metrics go to EVAL_OUTPUT_DIR as TensorBoard events and `metrics.jsonl` (tags `eval/<task>/<metric>`),
plus seqio's per-task JSON logs (`<task>-metrics.jsonl`, `<task>-<step>.jsonl` with every prediction).
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import gin
import numpy as np

from spot_jax import fileio
from spot_jax.config import T5Config

log = logging.getLogger("spot_jax.eval")


def load_model_and_prompt(checkpoint_path: Optional[str], model_config: Optional[T5Config],
                          prompt_file: Optional[str], seed: int = 0, num_partitions: int = 1,
                          frozen_dtype: str = "float32") -> Tuple[T5Config, Any, Optional[np.ndarray],
                                                                   Optional[int], Any]:
  """(config, params placed on the mesh, prompt or None, prompt step or None, mesh).

  Everything that can be wrong (checkpoint, prompt file, prompt width) is checked before compute.
  """
  from spot_jax import partitioning, prompt_io  # pylint: disable=g-import-not-at-top
  from spot_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  prompt, step = None, None
  if prompt_file:
    prompt, source = prompt_io.load_prompt_with_source(prompt_file)
    step = source.step

  def check_width(config):
    if prompt is not None and prompt.shape[1] != config.d_model:
      raise ValueError(f"the prompt in {prompt_file} has shape {tuple(prompt.shape)} but the model's "
                       f"d_model is {config.d_model}; use a prompt trained for this model size")

  if not checkpoint_path and isinstance(model_config, T5Config):
    check_width(model_config)  # before a fresh initialization
  config, params = train_lib.load_frozen(checkpoint_path, model_config, seed, macro="CHECKPOINT_PATH")
  config = config.replace(dropout_rate=0.0)
  check_width(config)
  mesh = partitioning.make_mesh(num_partitions)
  params, _ = train_lib.place_frozen(params, config, mesh, frozen_dtype)
  return config, params, prompt, step, mesh


@gin.configurable
def evaluate_prompt(mixture_or_task_name: str = gin.REQUIRED, output_dir: Optional[str] = gin.REQUIRED,
                    prompt_file: Optional[str] = gin.REQUIRED, checkpoint_path: Optional[str] = None,
                    model_config: Optional[T5Config] = None,
                    task_feature_lengths: Optional[Mapping[str, int]] = None, split: str = "validation",
                    batch_size: int = 32, num_examples: Optional[int] = None, step: Optional[int] = None,
                    seed: int = 0, num_partitions: int = 1,
                    frozen_dtype: str = "float32") -> Dict[str, Dict[str, Any]]:
  """Evaluates `prompt_file` (any format `prompt_io.load_prompt` reads; None: no prompt) with the
  frozen model from `checkpoint_path` (T5X or HF; None: a fresh `model_config` initialization, for
  tests) and returns `{task: {metric: value}}`. `step` labels the metrics (default: the prompt
  export's step, else 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  from spot_jax import evaluation, input_pipeline, metrics_log  # pylint: disable=g-import-not-at-top
  task = evaluation.get_task(mixture_or_task_name)  # an unknown name fails before the model loads
  if output_dir:
    fileio.check_not_a_file(output_dir, "EVAL_OUTPUT_DIR")
  config, params, prompt, prompt_step, mesh = load_model_and_prompt(
      checkpoint_path, model_config, prompt_file, seed, num_partitions, frozen_dtype)
  input_pipeline.check_vocabulary_fits(task, config.vocab_size)
  step = step if step is not None else (prompt_step or 0)
  is_main = jax.process_index() == 0
  results = evaluation.evaluate(mixture_or_task_name, config, params, prompt, task_feature_lengths,
                                split=split, batch_size=batch_size, num_examples=num_examples, step=step,
                                log_dir=output_dir if is_main else None, mesh=mesh, reuse=False)
  with metrics_log.MetricsLogger(output_dir, enabled=is_main) as logger:
    logger.write(step, results, prefix="eval")
  return results


def main(argv=None):
  from spot_jax import gin_utils  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  return gin_utils.run(gin.get_configurable(evaluate_prompt), argv, prog="spot_jax.eval")


if __name__ == "__main__":
  # Run through the importable module so gin sees `spot_jax.eval.*`, not `__main__.*`.
  from spot_jax import eval as _module
  _module.main()

"""`python -m spot_jax.infer`: greedy predictions of a soft prompt as JSONL (the `t5x.infer` analogue).

  python -m spot_jax.infer --gin_file=models/t5_1_1_lm_adapted.gin --gin_file=models/sizes/base.gin \
    --gin_file=runs/prompt_infer.gin --gin.MIXTURE_OR_TASK_NAME="'spot_glue_rte_v200'" \
    --gin.CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'" \
    --gin.PROMPT_FILE="'/tmp/rte_prompt'" --gin.INFER_OUTPUT_DIR="'/tmp/rte_infer'"

Writes INFER_OUTPUT_DIR/<task>-<split>.jsonl with one `{"inputs", "prediction", "targets"}` object per
example, in the task's order (a mixture writes one file per sub-task). An earlier run's file there
with other content is kept as `<task>-<split>.jsonl.old-<id>` (a warning names it); a rerun that
predicts the same bytes leaves the file as it was. A rank-classification task
(`X_rank`) is not decoded: every option is scored by its log-likelihood and the best one is the
prediction; its objects add `"options"` and their `"scores"`.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import logging
import os
from typing import Dict, List, Mapping, Optional, Tuple

import gin

from spot_jax import fileio
from spot_jax.config import T5Config

log = logging.getLogger("spot_jax.infer")


def write_jsonl(path: str, rows: List[dict]) -> Tuple[bool, Optional[str]]:
  """Atomically writes rows as JSON lines (temporary file, then rename), keeping an earlier file at
  `path` with other content as `<path>.old-<id>` (`fileio.replace_keeping_earlier`); one with the same
  bytes is left as it is. Returns `(written, backup)` as that function does."""
  data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  return fileio.replace_keeping_earlier(path, data.encode("utf-8"))


@gin.configurable
def infer_prompt(mixture_or_task_name: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
                 prompt_file: Optional[str] = gin.REQUIRED, checkpoint_path: Optional[str] = None,
                 model_config: Optional[T5Config] = None,
                 task_feature_lengths: Optional[Mapping[str, int]] = None, split: str = "validation",
                 batch_size: int = 32, num_examples: Optional[int] = None, seed: int = 0,
                 num_partitions: int = 1, frozen_dtype: str = "float32") -> Dict[str, str]:
  """Predicts every example of `split` for each task (rank-classification tasks: the best-scored
  option, `inference.score_options_task`); returns `{task: path of its JSONL}`.

  Without TASK_FEATURE_LENGTHS['targets'], an unlabelled split (every target the placeholder
  '<unk>', as GLUE's test splits) decodes up to the longest target of a labelled split of the task
  (`inference.unlabelled_decode_length`), not the placeholder's length."""
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from spot_jax import evaluation, inference, input_pipeline, truncation  # pylint: disable=g-import-not-at-top
  from spot_jax.eval import load_model_and_prompt  # pylint: disable=g-import-not-at-top
  evaluation.check_num_examples(num_examples, "spot_jax.infer.infer_prompt.num_examples")
  task_or_mixture = evaluation.get_task(mixture_or_task_name)
  # An unreadable vocabulary, a missing split or unprepared TFDS data fails here, before the model loads.
  input_pipeline.check_split(task_or_mixture, split)
  input_pipeline.load_vocabularies(task_or_mixture, checkpoint_path)
  if output_dir:
    fileio.check_not_a_file(output_dir, "INFER_OUTPUT_DIR")
    fileio.check_writable_dir(output_dir)  # predictions are written last: a full disk fails now, not then
  tasks = [t for t in seqio.get_subtasks(task_or_mixture) if split in getattr(t, "splits", (split,))]
  if not tasks:
    raise ValueError(f"no task of {mixture_or_task_name} has a split {split!r}")
  evaluation.warn_left_out(task_or_mixture, split, need_metrics=False)
  # Rank tasks score their options; the others decode, an unlabelled split up to a labelled split's
  # longest target (a task without one is refused here, before the model loads).
  ranked = {task.name: inference.is_rank_task(task, split) for task in tasks}
  decode_lengths = {task.name: inference.unlabelled_decode_length(task, split, task_feature_lengths,
                                                                   num_examples)
                    for task in tasks if not ranked[task.name]}
  config, params, prompt, _, mesh = load_model_and_prompt(checkpoint_path, model_config, prompt_file, seed,
                                                          num_partitions, frozen_dtype)
  input_pipeline.check_vocabulary_fits(task_or_mixture, config.vocab_size, fresh_init=not checkpoint_path,
                                       checkpoint_macro="CHECKPOINT_PATH", checkpoint_path=checkpoint_path)
  written = {}
  for task in tasks:
    truncation.warn_truncation(task, task_feature_lengths, split, num_examples=0)  # its label words
    if ranked[task.name]:
      rows = inference.score_options_task(task.name, config, params, prompt, task_feature_lengths,
                                           split=split, batch_size=batch_size, num_examples=num_examples,
                                           mesh=mesh)
      what = "rank-classification predictions (best-scored option)"
    else:
      rows = inference.predict_task(task.name, config, params, prompt, task_feature_lengths, split=split,
                                     batch_size=batch_size, num_examples=num_examples, mesh=mesh,
                                     max_decode_length=decode_lengths[task.name])
      what = "predictions"
    path = os.path.join(output_dir, f"{task.name}-{split}.jsonl")
    if jax.process_index() == 0:  # the others computed the same rows
      changed, backup = write_jsonl(path, rows)
      if backup:
        log.warning("%s held other predictions (an earlier run's): kept them as %s", path, backup)
      if changed:
        log.info("wrote %d %s of %s to %s", len(rows), what, task.name, path)
      else:
        log.info("%s already holds these %d %s of %s (the same bytes): left as it was", path, len(rows),
                 what, task.name)
    written[task.name] = path
  return written


def main(argv=None):
  from spot_jax import gin_utils  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  return gin_utils.run(gin.get_configurable(infer_prompt), argv, prog="spot_jax.infer")


if __name__ == "__main__":
  # Run through the importable module so gin sees `spot_jax.infer.*`, not `__main__.*`.
  from spot_jax import infer as _module
  _module.main()

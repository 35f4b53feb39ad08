"""seqio evaluation and inference of a frozen T5 driven by a soft prompt.

`seqio.Evaluator` owns the data (the task's eval split through `EncDecFeatureConverter(pack=False)`,
enumerated so order survives batching), postprocessing and metrics; we supply its model functions:
  * predict_fn: greedy decoding with a KV cache (`spot_jax.decode`), for metrics of
    `(targets, predictions)`;
  * score_fn: the summed target log-likelihood (`spot_jax.scoring`), for metrics of
    `(targets, scores)` such as rank classification.
seqio calls only the function a task's metrics need. Batches are padded to a fixed `batch_size` so
each task compiles one decode program and one score program; given a `mesh`, each batch is split over
its `data` axis (each device decodes or scores `batch_size / data` rows).

Inference without metrics (for `spot_jax.infer`, each example's text kept) is `spot_jax.inference`.
"""
from __future__ import annotations

import logging
from unittest import mock
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from spot_jax import decode as decode_lib
from spot_jax import scoring as scoring_lib
from spot_jax.config import T5Config

log = logging.getLogger("spot_jax")

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def get_task(name: str):
  """The registered task/mixture (importing spot_jax's `tasks` registry), with a helpful error."""
  from spot_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.get_task(name)


def left_out_of_eval(task, split: str, need_metrics: bool = True) -> List[Tuple[str, str]]:
  """[(task name, why)] for each task of mixture `task` that evaluating (or, without
  `need_metrics`, inferring) on `split` leaves out (seqio skips them and says so only at INFO).
  A member at rate 0 is there for the splits it has (never trained on), so it is not named."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import registry_list  # pylint: disable=g-import-not-at-top
  if not isinstance(task, seqio.Mixture):
    return []
  out = []
  for t in seqio.get_subtasks(task):
    try:
      splits = t.splits
    except KeyError:  # a TFDS task that asks TFDS, without prepared data: input_pipeline's check
      continue
    if registry_list.at_rate_zero(task, t.name):  # evaluated and inferred only, by design
      continue
    if split not in splits:
      out.append((t.name, f"no {split!r} split; it has {sorted(splits)}"))
    elif need_metrics and not (t.metric_fns or getattr(t, "metric_objs", None)):
      out.append((t.name, "no metric functions"))
  return out


def warn_left_out(task, split: str, need_metrics: bool = True) -> Optional[str]:
  """Logs a warning naming the tasks of mixture `task` left out of evaluation on `split`, and why."""
  left = left_out_of_eval(task, split, need_metrics)
  if not left:
    return None
  what = "evaluation" if need_metrics else "inference"
  msg = (f"mixture {task.name!r}: {len(left)} of its tasks are left out of {what} on {split!r}: "
         + "; ".join(f"{name} ({why})" for name, why in left)
         + f". To include one, give it a {split!r} split"
         + (" and metric functions" if need_metrics else "")
         + ", or evaluate it alone on a split it has (MIXTURE_OR_TASK_NAME, EVAL_SPLIT/INFER_SPLIT)")
  log.warning("%s", msg)
  return msg


def is_rank_dataset(ds) -> bool:
  """Whether a task dataset holds rank-classification rows (one per option of an example):
  an `idx` feature `[example id, option id]` and an `is_correct` feature."""
  spec = ds.element_spec
  if not isinstance(spec, Mapping) or "idx" not in spec or "is_correct" not in spec:
    return False
  shape = spec["idx"].shape
  return shape.rank == 1 and shape[0] == 2


NUM_EXAMPLES_RANGE = "1 or more (or None: the whole split)"


def check_num_examples(num_examples: Optional[int], name: str = "num_examples") -> None:
  """Refuses a `num_examples` that is not None or a positive integer, naming `name` (the gin
  binding) and the range: 0 read the whole split (not "the first 0"), a negative value the whole
  split of a plain task and nothing of a rank-classification one (seqio then crashed on the empty
  split, and infer wrote an empty file)."""
  if num_examples is None:
    return
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)):
    raise ValueError(f"{name} must be an integer {NUM_EXAMPLES_RANGE}, got {num_examples!r} "
                     f"({type(num_examples).__name__}): set --gin.{name}=N (no quotes) or None")
  if num_examples < 1:
    raise ValueError(f"{name} must be {NUM_EXAMPLES_RANGE}, got {num_examples}: set --gin.{name}=N "
                     f"for the first N examples, or None for all of them")


def take_examples(ds, num_examples: Optional[int]):
  """The first `num_examples` examples of a task dataset (all of it when None; `check_num_examples`
  refuses 0 and negative values).

  A rank-classification dataset (`is_rank_dataset`) has one row per option of an example; there
  the first N examples are the rows of the first N distinct example ids (`idx[0]`; an example's
  rows are consecutive), so every kept example keeps all its options. Other datasets: N rows.
  """
  check_num_examples(num_examples)
  if num_examples is None:
    return ds
  if not is_rank_dataset(ds):
    return ds.take(num_examples)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def count(state, row):
    prev, seen = state
    ex = tf.cast(row["idx"][0], tf.int64)
    seen = tf.where(tf.equal(ex, prev), seen, seen + 1)
    return (ex, seen), (seen, row)

  start = (tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
  ds = ds.scan(start, count)
  ds = ds.take_while(lambda seen, row: seen <= num_examples)
  return ds.map(lambda seen, row: row)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  if array.shape[0] == rows:
    return array
  pad = np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)
  return np.concatenate([array, pad], axis=0)


def mesh_of(params):
  """The mesh `params` were placed on (the first leaf with a NamedSharding), else None: training's
  periodic evaluation splits its batches over the training mesh's `data` axis."""
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  for leaf in jax.tree_util.tree_leaves(params):
    if isinstance(getattr(leaf, "sharding", None), NamedSharding):
      return leaf.sharding.mesh
  return None


def _batches(dataset, batch_size: int) -> Iterator[Tuple[np.ndarray, Dict[str, np.ndarray], int]]:
  """(indices, features padded to `batch_size` rows, real row count) from an enumerated dataset."""
  for indices, features in dataset.batch(batch_size).as_numpy_iterator():
    n = int(indices.shape[0])
    feats = {k: _pad_rows(np.asarray(features[k], np.int32), batch_size)
             for k in MODEL_FEATURES if k in features}
    yield np.asarray(indices), feats, n


def make_predict_fn(config: T5Config, params, prompt, batch_size: int, eos_id: int = 1, mesh=None,
                    max_decode_length: Optional[int] = None):
  """seqio `predict_fn(ds, model_feature_shapes=None) -> [(index, token ids)]` by greedy decoding.

  The decode length is the targets' feature length unless `max_decode_length` is given.
  """
  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for indices, feats, n in _batches(dataset, batch_size):
      length = max_decode_length or feats["decoder_target_tokens"].shape[1]
      tokens = decode_lib.greedy_decode(config, params, prompt, feats["encoder_input_tokens"], length,
                                        eos_id=eos_id, mesh=mesh)
      # Full fixed-length rows (zeros after EOS): seqio stacks them into one array, then its
      # vocabulary decode cuts each at EOS.
      out.extend((int(i), [int(x) for x in t]) for i, t in zip(indices[:n], tokens[:n]))
    return out
  return predict_fn


def make_score_fn(config: T5Config, params, prompt, batch_size: int, mesh=None):
  """seqio `score_fn(ds, model_feature_shapes=None) -> [(index, log-likelihood of the targets)]`."""
  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for indices, feats, n in _batches(dataset, batch_size):
      scores = scoring_lib.score(config, params, prompt, feats["encoder_input_tokens"],
                                 feats["decoder_target_tokens"], feats["decoder_input_tokens"], mesh=mesh)
      out.extend((int(i), float(s)) for i, s in zip(indices[:n], scores[:n]))
    return out
  return score_fn


def _plain(value: Any) -> Any:
  """seqio metric values as plain floats where scalar (JSON- and TensorBoard-friendly)."""
  if hasattr(value, "value") and not isinstance(value, np.ndarray):
    value = value.value
  arr = np.asarray(value) if isinstance(value, (np.generic, np.ndarray)) else None
  if arr is not None and arr.shape == ():
    return float(arr)
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  return value


EMPTY_LOGGER_WARNING = "'logger_cls' is empty"


class _DropEmptyLoggerWarning(logging.Filter):
  """Drops seqio's "'logger_cls' is empty" warning: an evaluator built without seqio loggers is
  one whose caller logs the results itself (training's metrics, the SPoT pipeline, the demo)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return EMPTY_LOGGER_WARNING not in record.getMessage()


class PromptEvaluator:
  """A `seqio.Evaluator` built once per (task, lengths, split), evaluated for any prompt.

  Building it reads the split and measures lengths; training evaluates the same evaluator at every
  eval period with the current prompt.

  `logger_cls` (seqio loggers such as `seqio.JSONLogger`) write into `log_dir`; with none, the
  results are only returned (seqio's "'logger_cls' is empty" warning is not printed).
  """

  def __init__(self, mixture_or_task_name: str, feature_lengths: Optional[Mapping[str, int]] = None,
               split: str = "validation", batch_size: int = 32, num_examples: Optional[int] = None,
               log_dir: Optional[str] = None, logger_cls: Sequence[Any] = (),
               use_memory_cache: bool = False, seed: Optional[int] = 42,
               lengths_setting: str = "TASK_FEATURE_LENGTHS"):
    import seqio  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory from JAX
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_num_examples(num_examples)
    from spot_jax import truncation  # pylint: disable=g-import-not-at-top
    task = get_task(mixture_or_task_name)
    subtasks = seqio.get_subtasks(task)
    if not any(split in getattr(t, "splits", (split,)) for t in subtasks):
      raise ValueError(f"{mixture_or_task_name} has no split {split!r} in any of its tasks")
    warn_left_out(task, split)
    if log_dir:
      tf.io.gfile.makedirs(log_dir)  # seqio's loggers expect it to exist
    self.name = mixture_or_task_name
    self.batch_size = int(batch_size)
    # seqio takes the first `num_examples` *rows* of each task; for rank-classification tasks (one
    # row per option) that would cut the last example's options. Take examples instead
    # (`take_examples`) by wrapping the dataset_fn seqio uses to read and cache the split.
    real_cache = seqio.evaluation._cache_and_measure_examples  # pylint: disable=protected-access

    def cache_examples(tasks, dataset_fn, *args, num_examples=None, **kwargs):
      return real_cache(tasks, lambda t: take_examples(dataset_fn(t), num_examples), *args,
                        num_examples=None, **kwargs)

    logger_cls = tuple(logger_cls)
    if logger_cls and not log_dir:
      raise ValueError(f"logger_cls {logger_cls} needs a log_dir to write into")
    absl_logger = logging.getLogger("absl")  # seqio warns through absl.logging
    quiet = _DropEmptyLoggerWarning()
    if not logger_cls:
      absl_logger.addFilter(quiet)
    try:
      with mock.patch.object(seqio.evaluation, "_cache_and_measure_examples", cache_examples):
        self.evaluator = seqio.Evaluator(
            mixture_or_task_name=mixture_or_task_name,
            feature_converter=seqio.EncDecFeatureConverter(pack=False),
            eval_split=split,
            sequence_length=dict(feature_lengths) if feature_lengths else None,
            num_examples=num_examples,
            use_memory_cache=use_memory_cache,
            async_compute_metrics=False,
            logger_cls=logger_cls,
            log_dir=log_dir,
            seed=seed)
    finally:
      absl_logger.removeFilter(quiet)
    self.last_outputs: Dict[str, Any] = {}
    # Cut examples: the label words, then every example this evaluation reads (once more, here; on
    # process 0, which says it for all: every process evaluates the same examples).
    for t in self.evaluator.eval_tasks:
      truncation.warn_truncation(t, feature_lengths, split, num_examples=0, setting=lengths_setting)
      if feature_lengths and jax.process_index() == 0:
        cached = self.evaluator.cached_task_datasets[t.name]
        truncation.warn_cut_examples(t, split, cached.as_numpy_iterator(), feature_lengths,
                                     "its metrics", lengths_setting,
                                     unit="option rows" if is_rank_dataset(cached) else "examples")
    if not self.evaluator.eval_tasks:
      log.warning("%s: no task has a %r split and metric functions; nothing to evaluate",
                  mixture_or_task_name, split)

  @property
  def task_names(self) -> List[str]:
    return [t.name for t in self.evaluator.eval_tasks]

  def evaluate(self, config: T5Config, params, prompt, step: Optional[int] = None, eos_id: int = 1,
               mesh=None) -> Dict[str, Dict[str, Any]]:
    """`{task name: {metric: value}}` for this prompt (`[P, d]`, or None for no prompt)."""
    if not self.evaluator.eval_tasks:
      return {}
    if prompt is not None:
      prompt = np.asarray(jax.device_get(prompt), np.float32)
      if prompt.ndim != 2 or prompt.shape[1] != config.d_model:
        raise ValueError(f"prompt has shape {prompt.shape}; expected [P, d_model={config.d_model}]")
    predict_fn = make_predict_fn(config, params, prompt, self.batch_size, eos_id, mesh)
    score_fn = make_score_fn(config, params, prompt, self.batch_size, mesh)
    future, outputs = self.evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn,
                                              score_fn=score_fn)
    self.last_outputs = outputs
    results = future.result() or {}
    return {task: {k: _plain(v) for k, v in metrics.items()} for task, metrics in results.items()}


_EVALUATORS: Dict[Any, PromptEvaluator] = {}


def evaluate(mixture_or_task_name: str, config: T5Config, params, prompt,
             feature_lengths: Optional[Mapping[str, int]] = None, split: str = "validation",
             batch_size: int = 32, num_examples: Optional[int] = None, step: Optional[int] = None,
             log_dir: Optional[str] = None, mesh=None, reuse: bool = True,
             lengths_setting: str = "TASK_FEATURE_LENGTHS") -> Dict[str, Dict[str, Any]]:
  """Evaluate a prompt on a seqio task or mixture: `{task: {metric: value}}`.

  Predict metrics use greedy decoding up to the targets length; score metrics (rank classification)
  use target log-likelihoods. With `reuse`, the seqio Evaluator for the same (task, lengths, split,
  batch size, examples, log_dir) is built once per process and reused (periodic evaluation in
  training). `log_dir` additionally writes seqio's JSON logs there (`seqio.JSONLogger`: per task
  `<task>-metrics.jsonl` and `<task>-<step:06d>.jsonl` with every example's prediction or score);
  without it no seqio logger is used and the caller logs the returned metrics. `lengths_setting`: the
  gin binding `feature_lengths` came from, named by the truncation warning.
  """
  key = (mixture_or_task_name, tuple(sorted((feature_lengths or {}).items())), split, batch_size,
         num_examples, log_dir)
  evaluator = _EVALUATORS.get(key) if reuse else None
  if evaluator is None:
    logger_cls = ()
    if log_dir:
      import seqio  # pylint: disable=g-import-not-at-top
      logger_cls = (seqio.JSONLogger,)
    evaluator = PromptEvaluator(mixture_or_task_name, feature_lengths, split, batch_size, num_examples,
                                log_dir=log_dir, logger_cls=logger_cls, lengths_setting=lengths_setting)
    if reuse:
      _EVALUATORS[key] = evaluator
  return evaluator.evaluate(config, params, prompt, step=step, mesh=mesh)

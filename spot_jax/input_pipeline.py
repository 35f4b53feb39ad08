"""Task → host batches: a seqio task or mixture, converted for an encoder-decoder without packing.

Each process reads its own shard (seqio ShardInfo) and yields numpy batches of `global / processes`
rows. The pipeline is deterministic for a seed, so resuming at step `s` skips `s` batches.

Everything a user can get wrong fails when `get_batches` is called, before any batch, with the fix:
a split the task lacks, TFDS data that is not prepared (`DataNotPreparedError`), a vocabulary that
cannot be read (`tasks.vocab.VocabularyError`), and training on a `_rank` evaluation task.
Features longer than TASK_FEATURE_LENGTHS are cut (seqio trims them, keeping EOS); `get_batches`
warns from the first examples at once and counts the cut ones among all the batches it hands out
(`spot_jax.truncation`).
"""
from __future__ import annotations

import difflib
import logging
import os
from typing import Iterator, List, Mapping, Optional

import gin
import numpy as np

from spot_jax import truncation as truncation_lib

log = logging.getLogger("spot_jax")

FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights")


def get_task(name: str):
  """The registered seqio task or mixture, or an error that lists close names."""
  import seqio
  import tasks  # noqa: F401  (registers spot_jax's tasks)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    base = name[:-len("_rank")] if name.endswith("_rank") else None
    if base and base in seqio.TaskRegistry.names():
      # The module that registers `base` was imported: the module hint below would mislead.
      raise ValueError(
          f"unknown task or mixture {name!r}: task {base!r} is registered, but without rank "
          f"classification, so it has no {name!r} twin. Register {base!r} with "
          "rank_classification=True (tasks.user_data.register_task_from_files(..., "
          "rank_classification=True, label_names=[...]), or `rank_classification = True` in its gin "
          f"scope) to also get {name!r}, or use {base!r} itself (docs/user_data.md).") from None
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown task or mixture {name!r}.{hint} List them with `python -m tasks --list` "
                     "(`--module my_tasks` adds your own). "
                     "A task your own module registers (e.g. with tasks.user_data.register_task_from_files) "
                     "exists only once that module is imported: pass --gin.MIXTURE_OR_TASK_MODULE=\"'my_tasks'\" "
                     "(a module importable from the current directory or PYTHONPATH), or register it from "
                     "a gin file (docs/user_data.md).") from None


class DataNotPreparedError(ValueError):
  """A TFDS-backed task whose dataset is not prepared (downloaded and generated) in the data dir."""


def _leaf_tasks(task) -> List:
  import seqio
  return list(task.tasks) if isinstance(task, seqio.Mixture) else [task]


def _tfds_data_dir(loader) -> str:
  try:
    return loader.builder.data_dir
  except Exception:  # pylint: disable=broad-except  (only for the message)
    return os.environ.get("TFDS_DATA_DIR") or "the default TFDS data directory (~/tensorflow_datasets)"


def _not_prepared(task, leaf, split: str, error: BaseException) -> DataNotPreparedError:
  loader = leaf.source.tfds_dataset
  name = loader.name or loader.resolved_tfds_name(split)
  who = (f"task {leaf.name!r} (of mixture {task.name!r})" if leaf is not task
         else f"task {leaf.name!r}")
  detail = error.args[0] if isinstance(error, KeyError) and error.args else error
  return DataNotPreparedError(
      f"{who} reads the TFDS dataset {name} (split {split!r}), which is not prepared in "
      f"{_tfds_data_dir(loader)} (TFDS: {detail}). Point TFDS at a directory that holds the prepared "
      f"data with --tfds_data_dir=DIR or the environment variable TFDS_DATA_DIR=DIR, or prepare it "
      f"on a machine with network access (`tfds build {name} --data_dir=DIR`, or "
      f"tfds.builder({name!r}, data_dir=DIR).download_and_prepare()) and copy DIR here. "
      f"Offline, the bundled tasks (spot_bundled_*) and your own files "
      f"(tasks.user_data.register_task_from_files) need no TFDS data.")


def check_data_prepared(task, split: str):
  """Raises `DataNotPreparedError` if a TFDS dataset `task` (or its mixture's tasks) reads for
  `split` is not generated; TFDS itself would end in a bare KeyError deep inside seqio."""
  import seqio
  for leaf in _leaf_tasks(task):
    source = getattr(leaf, "source", None)
    if not isinstance(source, seqio.TfdsDataSource):
      continue
    try:
      splits = leaf.splits  # splits=None tasks ask TFDS, whose info is empty when not generated
    except KeyError:
      splits = ()
    if splits and split not in splits:
      continue  # a mixture's task without this split (check_split names a single task's)
    try:
      source.num_input_examples(split)
    except KeyError as e:
      raise _not_prepared(task, leaf, split, e) from e


def check_split(task, split: str):
  splits = getattr(task, "splits", None)
  if splits and split not in splits:
    raise ValueError(f"{task.name} has no split {split!r}; it has {sorted(splits)}")
  check_data_prepared(task, split)


def _base_name(name: str) -> str:
  return name[:-len("_rank")] if name.endswith("_rank") else f"the task {name} was derived from"


def _rank_training_error(task, leaf) -> ValueError:
  within = f" (in mixture {task.name})" if leaf is not task else ""
  return ValueError(
      f"{leaf.name}{within} is a rank-classification evaluation task: its train split holds every "
      f"label option as a target (only the rows with is_correct are right), so training on it ends "
      f"at chance accuracy. Train on {_base_name(leaf.name)} (the task without `_rank`) and "
      f"evaluate or score on {leaf.name}.")


def check_trainable(task):
  """Refuses training on rank-classification evaluation tasks (`X_rank`; tasks.rank_classification
  and tasks.user_data mark their option-expanding preprocessor, see `rank_mode`). One in a mixture at
  rate 0 is never sampled: it is there to be evaluated (training's periodic evaluation reads the
  mixture), as tasks/mixtures.py's rate-0 members are."""
  import seqio
  from tasks import rank_classification as rank_lib
  from tasks import registry_list
  for leaf in _leaf_tasks(task):
    if rank_lib.is_rank_eval(leaf):  # marked tasks here; unmarked ones once their features are read
      if isinstance(task, seqio.Mixture) and registry_list.at_rate_zero(task, leaf.name):
        continue
      raise _rank_training_error(task, leaf)


def load_vocabularies(task, checkpoint_path: Optional[str] = None):
  """Reads the SentencePiece models of a task's features now, with an error that names the path.

  `checkpoint_path`: the frozen model's; when the project's vocabulary cannot be read and it is a
  Hugging Face folder holding its own `spiece.model` (T5's and mT5's downloads do), the error names that
  file as the one to use (offline, the default gs://t5-data/... cannot be read)."""
  from tasks import vocab as vocab_lib
  for leaf in _leaf_tasks(task):
    for feature in leaf.output_features.values():
      vocabulary = getattr(feature, "vocabulary", None)
      if vocabulary is not None:
        try:
          vocab_lib.ensure_loaded(vocabulary, task=leaf.name)
        except vocab_lib.VocabularyError as e:
          from spot_jax.checkpoints import hf  # pylint: disable=g-import-not-at-top  (files only, no model)
          local_copy = hf.sentencepiece_model(checkpoint_path)
          if local_copy is None:
            raise
          raise e.with_local_copy(local_copy) from e.__cause__


# T5 checkpoints pad their embedding to a multiple of 128 rows (32100 ids -> 32128, mT5's 250100 ->
# 250112): a model with 128 or more rows beyond the task's vocabulary was trained on another one.
VOCAB_PADDING = 128


def padded_vocab_size(size: int) -> int:
  """`size` rounded up to a multiple of `VOCAB_PADDING`, as T5 checkpoints pad their embeddings (the
  bundled tasks' 1100 ids -> 1152, the demo backbone's; T5's 32100 -> 32128)."""
  return -(-size // VOCAB_PADDING) * VOCAB_PADDING


def check_vocabulary_fits(task, model_vocab_size: int, fresh_init: bool = False,
                          checkpoint_macro: str = "INITIAL_CHECKPOINT_PATH", checkpoint_path: Optional[str] = None):
  """Refuses, before any compute, a task whose vocabulary is not the model's.

  Larger: ids the model has no embedding row for would gather NaN and poison the loss. Much smaller
  (by `VOCAB_PADDING` ids or more): the task tokenizes with another SentencePiece model (e.g. a
  bundled `spot_bundled_*` task on a real T5), so training would run on meaningless ids.

  `fresh_init`: the model is a fresh initialization of the gin size (`checkpoint_macro` is None), whose
  vocab_size is the gin's to choose: the error gives the binding that fits the task. `checkpoint_path`:
  the frozen model's, for `load_vocabularies`' error.
  """
  load_vocabularies(task, checkpoint_path)
  sizes = {feature: getattr(getattr(task.output_features.get(feature), "vocabulary", None), "vocab_size", None)
           for feature in ("inputs", "targets")}
  largest = max((size for size in sizes.values() if size is not None), default=None)
  for feature, size in sizes.items():
    if size is None or VOCAB_PADDING > model_vocab_size - size >= 0:
      continue
    said = f"{task.name}'s {feature} vocabulary has {size} ids but the model's vocab_size is {model_vocab_size}"
    if fresh_init:
      raise ValueError(
          f"{said}, and the model is a fresh initialization of the gin size ({checkpoint_macro} is None), "
          f"whose vocab_size is the gin configuration's (T5's 32128 in models/t5_1_1.gin): give it the task's "
          f"vocabulary, padded to a multiple of {VOCAB_PADDING} as T5 checkpoints pad theirs, with "
          f"--gin.spot_jax.model_config.vocab_size={padded_vocab_size(largest)}, or set {checkpoint_macro} "
          "to the model the task was made for")
    from spot_jax.checkpoints import hf  # pylint: disable=g-import-not-at-top  (files only, no model)
    local_copy = hf.sentencepiece_model(checkpoint_path)
    own = (f" The checkpoint's folder holds the model's own SentencePiece model: export SPOT_JAX_VOCAB="
           f"{local_copy} (for the tasks that read SPOT_JAX_VOCAB)" if local_copy else "")
    if size > model_vocab_size:
      raise ValueError(
          f"{said}: ids from {model_vocab_size} on have no embedding. Use a checkpoint "
          f"(or model config) with vocab_size >= {size}, or register the task with the model's "
          "vocabulary." + own)
    raise ValueError(
        f"{said}: the task does not use the model's vocabulary (checkpoints pad theirs "
        f"by fewer than {VOCAB_PADDING} ids), so its token ids would mean other words to the model. "
        "Register the task with the model's SentencePiece model (SPOT_JAX_VOCAB for the GLUE, "
        "SuperGLUE, SPoT and PPT tasks and tasks.user_data; the bundled spot_bundled_* tasks have "
        "their own 1100-id vocabulary, for the demo backbone), or load the model it was made for."
        + (own or (" mT5's is gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model (a local copy "
                   "offline): export SPOT_JAX_VOCAB=/path/to/it" if model_vocab_size in (250100, 250112) else "")))


class Batches:
  """What `get_batches` returns: an iterator of numpy batches of the model's `FEATURES`, with a
  `truncation` (`spot_jax.truncation.TruncationCount`, None when the task's examples cannot be
  counted) of the batches it returned. `close()` reports that count (a training run calls it when it ends)."""

  def __init__(self, ds, truncation: Optional[truncation_lib.TruncationCount]):
    self._ds, self._it = ds, None
    self.truncation = truncation

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      self._it = self._ds.as_numpy_iterator()
    batch = next(self._it)
    if self.truncation is not None:
      self.truncation.add({f: batch.pop(truncation_lib.UNTRIMMED.format(f))
                           for f in self.truncation.features})
    return {k: np.asarray(v, np.int32) for k, v in batch.items()}

  def close(self) -> List[str]:
    """Reports the truncation count (once); returns its messages."""
    return self.truncation.report() if self.truncation is not None else []


@gin.configurable
def get_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                batch_size: int, shuffle: bool = True, seed: Optional[int] = 0,
                num_epochs: Optional[int] = None, skip_batches: int = 0,
                shard_index: Optional[int] = None, num_shards: Optional[int] = None,
                drop_remainder: bool = True) -> Iterator[dict]:
  """Numpy batches of `batch_size // num_shards` rows for this process (EncDec features), as `Batches`.

  The checks and the dataset are done on the call (errors surface here, not at the first batch);
  split "train" of a rank-classification evaluation task (`X_rank`) is refused. Examples cut to
  `task_feature_lengths` are warned about from the first examples at once
  (`spot_jax.truncation.warn_truncation`); a feature with none cut there is counted in every batch
  returned (`Batches.truncation`), reported by `Batches.close()`.
  """
  import jax
  import seqio
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory from JAX
  shard_index = jax.process_index() if shard_index is None else shard_index
  num_shards = jax.process_count() if num_shards is None else num_shards
  if batch_size % num_shards:
    raise ValueError(f"BATCH_SIZE={batch_size} must divide over {num_shards} processes")
  task = get_task(mixture_or_task_name)
  if split == "train":
    check_trainable(task)
  check_split(task, split)
  load_vocabularies(task)
  kwargs = dict(split=split, use_cached=False, shuffle=shuffle, seed=seed,
                shard_info=seqio.ShardInfo(shard_index, num_shards), num_epochs=num_epochs,
                try_in_mem_cache=False)
  try:
    ds = None
    if isinstance(task, seqio.Mixture):  # a mixture keeps its tasks' texts only when asked to
      try:
        ds = task.get_dataset(dict(task_feature_lengths), passthrough_features=[
            f"{f}_pretokenized" for f in ("inputs", "targets")], **kwargs)
      except (TypeError, ValueError):  # a task without them: mixed without them (and not counted)
        ds = None
    if ds is None:
      ds = task.get_dataset(dict(task_feature_lengths), **kwargs)
  except KeyError as e:
    if "generated" not in str(e):
      raise
    raise DataNotPreparedError(f"{task.name}: TFDS data for split {split!r} is not prepared ({e}); "
                               "set --tfds_data_dir=DIR or TFDS_DATA_DIR to prepared data") from e
  from tasks import rank_classification as rank_lib
  if split == "train" and rank_lib.is_rank_eval(task, ds.element_spec):
    raise _rank_training_error(task, task)
  truncation_lib.warn_truncation(task, task_feature_lengths, split)
  # Counted: the features the start-up check found no cut in. One it did find cut in (a task of long
  # documents cut by design) was warned about already, and counting it would tokenize most of its
  # examples twice (1.7x the input pipeline's time in a review's test); where cuts are rare, so are
  # the second tokenizations.
  countable = {f: c for f, c in truncation_lib.countable_features(task, task_feature_lengths,
                                                                ds.element_spec).items()
               if not truncation_lib.found_cut(task, f, task_feature_lengths[f])}
  lengths = dict(task_feature_lengths)
  carried = {}
  if countable:
    ds = truncation_lib.with_untrimmed_lengths(ds, task_feature_lengths, countable)
    carried = {truncation_lib.UNTRIMMED.format(f): seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
               for f in countable}
    lengths.update({k: 1 for k in carried})
  ds = seqio.EncDecFeatureConverter(pack=False, passthrough_features=carried or None)(ds, lengths)
  ds = ds.map(lambda ex: {k: ex[k] for k in FEATURES + tuple(carried)}, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size // num_shards, drop_remainder=drop_remainder)
  if skip_batches:
    ds = ds.skip(skip_batches)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  count = (truncation_lib.TruncationCount(task, split, task_feature_lengths, tuple(countable),
                                          first_batch=skip_batches, shard=(shard_index, num_shards))
           if countable else None)
  return Batches(ds, count)


@gin.configurable
def task_vocabulary(mixture_or_task_name: str = gin.REQUIRED):
  """The targets vocabulary of a task (for vocabulary-based prompt initializers)."""
  return get_task(mixture_or_task_name).output_features["targets"].vocabulary

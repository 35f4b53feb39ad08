"""Task → host batches: a seqio task or mixture, converted for an encoder-decoder without packing.

Each process reads its own shard (seqio ShardInfo) and yields numpy batches of `global / processes`
rows. The pipeline is deterministic for a seed, so resuming at step `s` skips `s` batches.
"""
from __future__ import annotations

import difflib
from typing import Iterator, Mapping, Optional

import gin
import numpy as np

FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights")


def get_task(name: str):
  """The registered seqio task or mixture, or an error that lists close names."""
  import seqio
  import tasks  # noqa: F401  (registers spot_jax's tasks)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown task or mixture {name!r}.{hint} List them with `python -m tasks --list`; "
                     f"register your own with tasks.user_data.register_task_from_files.") from None


def check_split(task, split: str):
  splits = getattr(task, "splits", None)
  if splits and split not in splits:
    raise ValueError(f"{task.name} has no split {split!r}; it has {sorted(splits)}")


def check_vocabulary_fits(task, model_vocab_size: int):
  """Token ids the model has no embedding row for would gather NaN and poison the loss: refuse a
  task whose vocabulary is larger than the model's before any compute."""
  for feature in ("inputs", "targets"):
    spec = task.output_features.get(feature)
    size = getattr(getattr(spec, "vocabulary", None), "vocab_size", None)
    if size is not None and size > model_vocab_size:
      raise ValueError(
          f"{task.name}'s {feature} vocabulary has {size} ids but the model's vocab_size is "
          f"{model_vocab_size}: ids from {model_vocab_size} on have no embedding. Use a checkpoint "
          f"(or model config) with vocab_size >= {size}, or register the task with the model's "
          "vocabulary.")


@gin.configurable
def get_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                batch_size: int, shuffle: bool = True, seed: Optional[int] = 0,
                num_epochs: Optional[int] = None, skip_batches: int = 0,
                shard_index: Optional[int] = None, num_shards: Optional[int] = None,
                drop_remainder: bool = True) -> Iterator[dict]:
  """Numpy batches of `batch_size // num_shards` rows for this process (EncDec features)."""
  import jax
  import seqio
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory from JAX
  shard_index = jax.process_index() if shard_index is None else shard_index
  num_shards = jax.process_count() if num_shards is None else num_shards
  if batch_size % num_shards:
    raise ValueError(f"BATCH_SIZE={batch_size} must divide over {num_shards} processes")
  task = get_task(mixture_or_task_name)
  check_split(task, split)
  ds = task.get_dataset(dict(task_feature_lengths), split=split, use_cached=False, shuffle=shuffle,
                        seed=seed, shard_info=seqio.ShardInfo(shard_index, num_shards),
                        num_epochs=num_epochs, try_in_mem_cache=False)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds, dict(task_feature_lengths))
  ds = ds.map(lambda ex: {k: ex[k] for k in FEATURES}, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size // num_shards, drop_remainder=drop_remainder)
  if skip_batches:
    ds = ds.skip(skip_batches)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(v, np.int32) for k, v in batch.items()}


@gin.configurable
def task_vocabulary(mixture_or_task_name: str = gin.REQUIRED):
  """The targets vocabulary of a task (for vocabulary-based prompt initializers)."""
  return get_task(mixture_or_task_name).output_features["targets"].vocabulary

"""Helpers the task tests share: a tiny vocabulary and offline TFDS mocks.

Import from tests (`from tests import conftest_tasks as ct` or
`import conftest_tasks`); nothing here touches the network.
"""
import contextlib
import functools
import os
import random
import tempfile
from unittest import mock

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

FEATURE_LENGTHS = {"inputs": 64, "targets": 16}

_WORDS = ("the a of to and in is was for on that with as by it at from this "
          "entailment neutral contradiction not_entailment equivalent not_equivalent "
          "duplicate not_duplicate acceptable unacceptable positive negative True "
          "False choice1 choice2 question context premise hypothesis sentence "
          "sentence1 sentence2 passage answer options record query entities wsc "
          "text rte mnli cola sst2 qqp qnli mrpc stsb wnli boolq cb copa multirc "
          "wic winogrande hellaswag cosmos_qa race drop yelp_polarity review snli "
          "anli doc_nli abcdefghij").split()


@functools.lru_cache(maxsize=None)
def tiny_spm_path() -> str:
  """Trains (once per process, ~1 s) a 300-piece SentencePiece model."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  rng = random.Random(0)
  letters = "abcdefghij "
  lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(300)]
  lines += ["".join(rng.choice(letters) for _ in range(40)) for _ in range(300)]
  lines += ["0.0 0.2 0.4 0.6 0.8 1.0 2.4 3.8 5.0 * # ( ) : , . ? ! - ' \" <unk>"] * 5
  d = tempfile.mkdtemp(prefix="spot_spm_")
  corpus = os.path.join(d, "corpus.txt")
  with open(corpus, "w") as f:
    f.write("\n".join(lines))
  prefix = os.path.join(d, "tiny")
  spm.SentencePieceTrainer.train(
      input=corpus, model_prefix=prefix, vocab_size=300, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      byte_fallback=False, minloglevel=2)
  return prefix + ".model"


@functools.lru_cache(maxsize=None)
def tiny_vocabulary(extra_ids: int = 100) -> seqio.Vocabulary:
  return seqio.SentencePieceVocabulary(tiny_spm_path(), extra_ids=extra_ids)


@contextlib.contextmanager
def mock_tfds(num_examples: int = 3):
  """TFDS mock data (random strings, ints < 2) whose splits report a size.

  mock_data's code policy cannot answer split sizes, which examples-
  proportional mixing rates ask for; report `num_examples` instead.
  """
  # Datasets memoized under another mock read lazily from that mock's context: never reuse them.
  _DATASETS.clear()
  try:
    with tfds.testing.mock_data(num_examples=num_examples, max_value=2), \
        mock.patch.object(seqio.TfdsDataSource, "num_input_examples",
                          lambda self, split: num_examples):
      yield
  finally:
    _DATASETS.clear()


def raw_examples(provider_name: str, split: str = "validation", n: int = 4,
                 sequence_length=None):
  """Preprocessed + tokenized examples (numpy) of a task or mixture."""
  provider = seqio.get_mixture_or_task(provider_name)
  ds = provider.get_dataset(sequence_length or FEATURE_LENGTHS, split=split,
                            shuffle=False, try_in_mem_cache=False, seed=0)
  return list(ds.take(n).as_numpy_iterator())


def converted_batch(provider_name: str, split: str = "validation",
                    batch_size: int = 2):
  """One batch through EncDecFeatureConverter(pack=False)."""
  provider = seqio.get_mixture_or_task(provider_name)
  ds = provider.get_dataset(FEATURE_LENGTHS, split=split, shuffle=False,
                            try_in_mem_cache=False, seed=0)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds, FEATURE_LENGTHS)
  return next(ds.batch(batch_size).as_numpy_iterator())


def run_text_preprocessor(preprocessor, example: dict, **kwargs):
  """Applies a dataset-level preprocessor to one hand-written example."""
  ds = tf.data.Dataset.from_tensors(example)
  return list(preprocessor(ds, **kwargs).as_numpy_iterator())


def check_batch(batch, vocab_size: int):
  """Asserts a converted batch is well formed for an encoder-decoder model."""
  for k in ("encoder_input_tokens", "decoder_target_tokens",
            "decoder_input_tokens", "decoder_loss_weights"):
    assert k in batch, k
  assert batch["encoder_input_tokens"].shape[1] == FEATURE_LENGTHS["inputs"]
  assert batch["decoder_target_tokens"].shape[1] == FEATURE_LENGTHS["targets"]
  assert np.all(batch["decoder_target_tokens"] < vocab_size)
  # Every example has at least one target token (eos at least).
  assert np.all(batch["decoder_loss_weights"].sum(axis=1) >= 1)
  assert np.all((batch["encoder_input_tokens"] > 0).sum(axis=1) >= 1)


# --- shared, memoized task datasets (tracing a pipeline costs ~1 s) ---------

_DATASETS = {}
_TASK_GET_DATASET = seqio.Task.get_dataset  # the real one, before any patch


def task_dataset(task_name: str, split: str = "validation"):
  """A task's tokenized dataset, built once per process and reused.

  Build it inside `mock_tfds()` + `use_vocabulary(tiny_vocabulary())`; the
  result stays iterable afterwards.
  """
  key = (task_name, split)
  if key not in _DATASETS:
    task = seqio.get_mixture_or_task(task_name)
    _DATASETS[key] = _TASK_GET_DATASET(
        task, FEATURE_LENGTHS, split=split, shuffle=False, try_in_mem_cache=False,
        seed=0).take(4).cache()
  return _DATASETS[key]


@contextlib.contextmanager
def memoized_task_datasets():
  """Makes seqio.Task.get_dataset return `task_dataset` (for mixtures)."""
  def get_dataset(self, sequence_length=None, split="train", *args, **kwargs):
    del sequence_length, args, kwargs
    return task_dataset(self.name, split).repeat()
  with mock.patch.object(seqio.Task, "get_dataset", get_dataset):
    yield


def tokenized_examples(task_name: str, split: str = "validation", n: int = 2):
  return list(task_dataset(task_name, split).take(n).as_numpy_iterator())


def check_tokenized(examples, vocab_size: int):
  """Asserts tokenized examples have int ids in range, eos-terminated targets."""
  assert examples, "no examples"
  for ex in examples:
    for k in ("inputs", "targets"):
      ids = ex[k]
      assert ids.ndim == 1 and len(ids) >= 1, (k, ids)
      assert ids.dtype in (np.int32, np.int64), ids.dtype
      assert np.all((ids >= 0) & (ids < vocab_size)), (k, ids)
      assert len(ids) <= FEATURE_LENGTHS[k]
    assert ex["targets"][-1] == 1, "targets must end with eos (id 1)"


def byte_text_task(name, rows, splits=("train", "validation"), label_names=None, metric_fns=()):
  """Registers (again) a byte-vocabulary task over `rows` ({"inputs", "targets"} texts) for every
  split in `splits`; `label_names` bound to its postprocessor as the GLUE tasks bind theirs."""
  from tasks import postprocessors  # pylint: disable=import-outside-toplevel
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  features = {k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True) for k in ("inputs", "targets")}
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {k: [r[k] for r in rows] for k in ("inputs", "targets")}), splits=list(splits)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=list(metric_fns),
      postprocess_fn=(functools.partial(postprocessors.string_label, label_names=label_names)
                      if label_names else None))
  return name


@contextlib.contextmanager
def mock_tfds_rows(rows_of):
  """TFDS mock data that serves `rows_of(builder, split)` (a list of feature dicts, hand-made as a
  TFDS config's rows) for each read, under the tiny vocabulary; yields that vocabulary. Use it per
  test: it must not outlive the test and shadow another mock's data."""
  from tasks import vocab  # pylint: disable=import-outside-toplevel

  def as_dataset(builder, split, **kwargs):
    del kwargs
    rows = rows_of(builder, str(split))
    return tf.data.Dataset.from_tensor_slices({k: np.array([r[k] for r in rows]) for k in rows[0]})
  with tfds.testing.mock_data(as_dataset_fn=as_dataset), vocab.use_vocabulary(tiny_vocabulary()) as v:
    yield v

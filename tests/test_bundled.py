"""Tests for tasks.bundled and tasks.make_bundled_data (all offline)."""

import filecmp
import os

import pytest
import seqio

from tasks import bundled
from tasks import make_bundled_data


def _batch(name, split, lengths=bundled.FEATURE_LENGTHS, n=4):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split=split, shuffle=False, try_in_mem_cache=False)
  conv = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
  return next(conv.batch(n).as_numpy_iterator())


def test_names_and_metadata():
  assert len(bundled.TASK_NAMES) == 6
  assert set(bundled.SENTIMENT_TASKS) < set(bundled.TASK_NAMES)
  registered = set(seqio.TaskRegistry.names())
  for name in bundled.TASK_NAMES + bundled.RANK_TASK_NAMES:
    assert name in registered
  for name in bundled.SENTIMENT_TASKS:
    assert bundled.LABEL_NAMES[name] == ("negative", "positive")
  others = set(bundled.TASK_NAMES) - set(bundled.SENTIMENT_TASKS)
  for name in others:  # unrelated tasks use other label words.
    assert not set(bundled.LABEL_NAMES[name]) & {"negative", "positive"}


@pytest.mark.parametrize("name", bundled.TASK_NAMES)
def test_every_task_batches(name):
  vocab = bundled.get_vocabulary()
  for split in ("train", "validation", "test"):
    task = seqio.get_mixture_or_task(name)
    assert task.num_input_examples(split) == bundled.SPLIT_SIZES[split]
  batch = _batch(name, "validation")
  assert batch["encoder_input_tokens"].shape == (4, 64)
  for row in batch["decoder_target_tokens"]:
    assert vocab.decode(row.tolist()) in bundled.LABEL_NAMES[name]
  text = vocab.decode(batch["encoder_input_tokens"][0].tolist())
  assert not text.startswith(name)  # no task prefix in the inputs.
  assert batch["encoder_input_tokens"][0][-1] == 0  # fits: padding at the end


def test_rank_variant_batches():
  name = bundled.TASK_NAMES[0] + "_rank"
  batch = _batch(name, "test")
  vocab = bundled.get_vocabulary()
  targets = [vocab.decode(r.tolist()) for r in batch["decoder_target_tokens"]]
  assert targets == ["negative", "positive", "negative", "positive"]


def test_labels_are_balanced_and_lengths_fit():
  for name in bundled.TASK_NAMES:
    short = name[len(bundled.PREFIX):]
    with open(bundled.task_files(short)["validation"]) as f:
      labels = [line.rstrip("\n").split("\t")[-1] for line in f][1:]
    counts = [labels.count(l) for l in bundled.LABEL_NAMES[name]]
    assert sum(counts) == 200 and min(counts) >= 200 / len(counts) * 0.6, (name, counts)


def test_vocabulary():
  vocab = bundled.get_vocabulary()
  assert vocab.vocab_size == 1100
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.encode("<extra_id_0>") == [1099]
  for labels in bundled.LABEL_NAMES.values():
    for label in labels:
      ids = vocab.encode(label)
      assert vocab.decode(ids) == label and 2 not in ids


def test_corpus():
  with open(bundled.CORPUS_PATH) as f:
    docs = f.read().strip().split("\n\n")
  sentences = [s for d in docs for s in d.split("\n")]
  assert len(docs) >= 500 and len(sentences) >= 3000
  assert all(s.endswith(".") for s in sentences)


def test_data_is_small():
  total = sum(os.path.getsize(os.path.join(root, f))
              for root, _, files in os.walk(bundled.DATA_DIR) for f in files)
  assert total < 1.5e6


def test_generator_is_deterministic(tmp_path):
  written = make_bundled_data.generate(str(tmp_path))
  assert len(written) == 6 * 3 + 2
  for path in written:
    rel = os.path.relpath(path, tmp_path)
    assert filecmp.cmp(path, os.path.join(bundled.DATA_DIR, rel), shallow=False), rel

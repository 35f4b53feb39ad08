"""GLUE tasks: names, label order vs TFDS, and tokenized batches offline."""
import importlib.util  # noqa: F401  (before gin anywhere)
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import glue, rank_classification, vocab  # noqa: E402

ALL = glue.TASK_NAMES + [rank_classification.rank_name(n) for n in glue.TASK_NAMES
                         if not n.startswith("spot_glue_stsb")]


@pytest.fixture(scope="module")
def env():
  with ct.mock_tfds(3), vocab.use_vocabulary(ct.tiny_vocabulary()) as v:
    yield v


def test_names():
  assert "spot_glue_rte_v200" in glue.TASK_NAMES
  assert len(glue.TASK_NAMES) == 9
  assert len(glue.GLUE_MIXTURE_TASKS) == 8


def test_label_names_match_tfds():
  import tensorflow_datasets as tfds
  configs = {c.name: c for c in tfds.builder_cls("glue").BUILDER_CONFIGS}
  for task, (labels, _, _) in glue.GLUE_TASKS.items():
    assert str(configs[task].version) == glue.VERSION
    if labels is not None:
      assert list(labels) == list(configs[task].label_classes), task


@pytest.mark.parametrize("name", ALL)
def test_task_yields_tokenized_examples(env, name):
  ct.check_tokenized(ct.tokenized_examples(name), env.vocab_size)


def test_mnli_splits_and_text(env):
  ex = ct.tokenized_examples("spot_glue_mnli_v200", "validation_mismatched", 1)[0]
  assert ex["inputs_pretokenized"].startswith(b"mnli hypothesis: ")
  assert b" premise: " in ex["inputs_pretokenized"]
  assert ex["targets_pretokenized"] in (b"entailment", b"neutral", b"contradiction")


def test_converted_batch(env):
  ct.check_batch(ct.converted_batch("spot_glue_rte_v200"), env.vocab_size)

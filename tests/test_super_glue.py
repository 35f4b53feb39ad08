"""SuperGLUE tasks: names, label order vs TFDS, and tokenized batches offline."""
import importlib.util  # noqa: F401
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import rank_classification, registry_list, super_glue, vocab  # noqa: E402


def _split(name):
  return "test" if ("_axb_" in name or "_axg_" in name) else "validation"


ALL = super_glue.TASK_NAMES + [
    rank_classification.rank_name(n) for n in super_glue.TASK_NAMES
    if "record" not in n]


@pytest.fixture(scope="module")
def env():
  with ct.mock_tfds(3), vocab.use_vocabulary(ct.tiny_vocabulary()) as v:
    yield v


def test_names():
  assert "spot_super_glue_boolq_v102" in super_glue.TASK_NAMES
  assert len(super_glue.TASK_NAMES) == 10


def test_label_names_match_tfds():
  import tensorflow_datasets as tfds
  configs = {c.name: c for c in tfds.builder_cls("super_glue").BUILDER_CONFIGS}
  for task, (config, labels, _, _) in super_glue.SUPER_GLUE_TASKS.items():
    assert str(configs[config].version) == super_glue.VERSION
    if labels is not None:
      assert list(labels) == list(configs[config].label_classes), task


@pytest.mark.parametrize("name", ALL)
def test_task_yields_tokenized_examples(env, name):
  ct.check_tokenized(ct.tokenized_examples(name, _split(name)), env.vocab_size)


def test_record_keeps_answers_and_ids(env):
  ex = ct.tokenized_examples("spot_super_glue_record_v102", "validation", 1)[0]
  assert ex["inputs_pretokenized"].startswith(b"record query: ")
  assert b" entities: " in ex["inputs_pretokenized"]
  assert ex["targets_pretokenized"] in list(ex["answers"]) + [b"<unk>"]
  assert "idx/passage" in ex and "idx/query" in ex


def test_multirc_ids(env):
  ex = ct.tokenized_examples("spot_super_glue_multirc_v102", "validation", 1)[0]
  assert ex["inputs_pretokenized"].startswith(b"multirc question: ")
  assert {"idx/paragraph", "idx/question", "idx/answer"} <= set(ex)


def _text(task, example):
  ds = tf.data.Dataset.from_tensors(example)
  for fn in registry_list.SPECS[super_glue.name(task)].text_preprocessors:
    ds = fn(ds)
  return list(ds.as_numpy_iterator())


def test_axb_is_cast_as_super_glue_rte_like_t5():
  # T5 renames AX-b's sentence1/sentence2 to premise/hypothesis, so AX-b reads
  # like SuperGLUE RTE ("rte hypothesis: ... premise: ..."), not GLUE RTE.
  (axb,) = _text("axb", {"sentence1": "A cat sat.", "sentence2": "An animal sat.",
                         "label": np.int64(1), "idx": np.int32(3)})
  (rte,) = _text("rte", {"premise": "A cat sat.", "hypothesis": "An animal sat.",
                         "label": np.int64(1), "idx": np.int32(3)})
  assert axb["inputs"] == b"rte hypothesis: An animal sat. premise: A cat sat."
  assert axb["inputs"] == rte["inputs"]
  assert axb["targets"] == b"not_entailment" and axb["idx"] == 3
  (axg,) = _text("axg", {"premise": "P.", "hypothesis": "H.", "label": np.int64(0),
                         "idx": np.int32(0)})
  assert axg["inputs"] == b"rte hypothesis: H. premise: P."


def test_axb_task_text(env):
  ex = ct.tokenized_examples("spot_super_glue_axb_v102", "test", 1)[0]
  assert ex["inputs_pretokenized"].startswith(b"rte hypothesis: ")
  assert b" premise: " in ex["inputs_pretokenized"]

"""SPoT source tasks: TFDS names resolve, every task tokenizes, C4 objectives."""
import importlib.util  # noqa: F401
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import rank_classification, sources, vocab  # noqa: E402
from tasks import registry_list as reg  # noqa: E402

ALL = sources.TASK_NAMES + [rank_classification.rank_name(n) for n in sources.TASK_NAMES
                            if reg.SPECS[n].kind in rank_classification.RANK_KINDS]


@pytest.fixture(scope="module")
def env():
  with ct.mock_tfds(3), vocab.use_vocabulary(ct.tiny_vocabulary()) as v:
    yield v


def test_tfds_names_and_versions_exist():
  import tensorflow_datasets as tfds
  for spec in sources.specs():
    name, version = spec.tfds_name.split(":")
    builder, _, config = name.partition("/")
    cls = tfds.builder_cls(builder)
    if config:
      cfg = {c.name: c for c in cls.BUILDER_CONFIGS}[config]
      assert str(cfg.version or cls.VERSION) == version, spec.tfds_name
    else:
      assert str(cls.VERSION) == version, spec.tfds_name


def test_spot_source_list_is_registered():
  import seqio
  for name in sources.SPOT_SOURCE_TASKS + sources.EXTRA_SOURCE_TASKS:
    assert name in seqio.TaskRegistry.names(), name
  assert len(sources.SPOT_SOURCE_TASKS) == 16  # the paper's 17 minus CxC


@pytest.mark.parametrize("name", ALL)
def test_task_yields_tokenized_examples(env, name):
  ct.check_tokenized(ct.tokenized_examples(name), env.vocab_size)


def test_span_corruption_uses_sentinels(env):
  for ex in ct.tokenized_examples(sources.C4_SPAN_CORRUPTION, n=3):
    sentinel0 = env.vocab_size - 1
    assert ex["targets"][0] == sentinel0  # targets start with <extra_id_0>
    assert sentinel0 in ex["inputs"]
    assert np.sum(ex["inputs"] >= env.vocab_size - 100) == np.sum(
        ex["targets"] >= env.vocab_size - 100)


def test_prefix_lm_splits_a_segment(env):
  for ex in ct.tokenized_examples(sources.C4_PREFIX_LM, n=3):
    assert len(ex["inputs"]) >= 2 and len(ex["targets"]) >= 2  # >=1 token + eos
    assert not np.any(ex["inputs"] >= env.vocab_size - 100)


def test_multiple_choice_text(env):
  ex = ct.tokenized_examples("spot_winogrande_v120", n=1)[0]
  assert ex["inputs_pretokenized"].startswith(b"winogrande sentence: ")
  assert b" options: (A) " in ex["inputs_pretokenized"]
  assert ex["targets_pretokenized"] in list(ex["options"])

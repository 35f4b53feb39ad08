"""Mixtures: members exist, rates are capped, every mixture yields batches."""
import importlib.util  # noqa: F401
import os
import sys

import pytest
import seqio

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import glue, mixtures, super_glue, vocab  # noqa: E402
from tasks import registry_list as reg  # noqa: E402


@pytest.fixture(scope="module")
def env():
  with ct.mock_tfds(3), vocab.use_vocabulary(ct.tiny_vocabulary()) as v, \
      ct.memoized_task_datasets():
    yield v


def test_definitions():
  defs = mixtures.definitions()
  assert set(defs) == set(mixtures.MIXTURE_NAMES)
  assert len(defs["spot_glue_mix"]) == 8 and "spot_glue_wnli_v200" not in defs["spot_glue_mix"]
  assert len(defs["spot_super_glue_mix"]) == 8
  assert defs["spot_glue_super_glue_mix"] == defs["spot_glue_mix"] + defs["spot_super_glue_mix"]
  assert "spot_glue_mnli_v200" in defs["spot_nli_mix"]
  assert "spot_yelp_polarity_v020" in defs["spot_sentiment_mix"]
  assert "spot_squad_v300" in defs["spot_qa_mix"]
  assert "spot_winogrande_v120" in defs["spot_commonsense_mix"]
  for name, members in defs.items():
    assert members and len(set(members)) == len(members), name
    for m in members:
      assert reg.SPECS[m].kind != "lm" and "train" in reg.SPECS[m].split_names
  every = set(defs["spot_everything_mix"])
  for name, members in defs.items():
    assert set(members) <= every, name


class _FakeTask:
  def __init__(self, n):
    self.n, self.cache_dir, self.name = n, None, "fake"

  def num_input_examples(self, split):
    return self.n


def test_rate_is_examples_proportional_with_cap():
  rate = mixtures.rate(cap=1000)
  assert rate(_FakeTask(10)) == 10
  assert rate(_FakeTask(10 ** 6)) == 1000


@pytest.mark.parametrize("name", sorted(mixtures.MIXTURE_NAMES))
def test_mixture_yields_batches(env, name):
  assert name in seqio.MixtureRegistry.names()
  batch = ct.converted_batch(name, split="validation")
  ct.check_batch(batch, env.vocab_size)


def test_record_and_race_are_weighted_by_their_examples_not_tfds_rows(monkeypatch):
  # One TFDS row of ReCoRD holds several answers, one of RACE several questions: seqio's uncached
  # fallback counts rows (100730 ReCoRD queries, 18728 RACE-high articles).
  monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: 18728)
  mix = seqio.get_mixture_or_task("spot_sources_mix")
  race = seqio.get_mixture_or_task("spot_race_high_v200")
  record = seqio.get_mixture_or_task("spot_super_glue_record_v102")
  assert mix.get_rate(race) == 62445.0
  assert mix.get_rate(record) == 138854.0
  assert mix.get_rate(seqio.get_mixture_or_task("spot_glue_mnli_v200")) == 18728.0  # rows = examples
  assert mixtures.rate(cap=1000)(race) == 1000.0
  from spot_jax.spot import pipeline
  assert pipeline.examples_proportional(race) == 62445.0


class _EvalOnlyTask(_FakeTask):
  splits = ("validation",)

  def num_input_examples(self, split):
    raise KeyError(split)  # what seqio's sources raise for a split they lack


def test_rate_of_a_task_without_train_split_names_the_task_and_the_fix():
  """Found by a seqio/user-data audit: a users' task with only a validation file in a mixture with
  `rate()` ended in seqio's bare `KeyError: 'train'`."""
  task = _EvalOnlyTask(5)
  task.name = "my_eval_only"
  with pytest.raises(ValueError, match=r"task 'my_eval_only' has no 'train' split \(it has \['validation'\]\)") as e:
    mixtures.rate()(task)
  msg = str(e.value)
  assert "train=FILE" in msg and "leave it out of the mixture" in msg and "fixed rate" in msg
  with_train = _FakeTask(7)
  with_train.splits = ("train", "validation")
  assert mixtures.examples_rate(with_train) == 7

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


# --- tasks held at rate 0: evaluated (or inferred) with the mixture, never trained on --------------
AX, MNLI, MNLI_MM = "spot_glue_ax_v200", "spot_glue_mnli_v200", "spot_glue_mnli_mismatched_v200"


def test_eval_only_members_are_t5s_glue_ones_and_follow_mnli():
  """T5's glue_v002_proportional (t5/data/glue_utils.py GLUE_WEIGHT_MAPPING) holds
  glue_mnli_mismatched_v002 and glue_ax_v002 at rate 0 (its glue_mnli_matched_v002 is our MNLI's
  validation split). AX is not in ours: an eval or infer of the mixture would then need glue/ax
  prepared (check_data_prepared visits every member with the split)."""
  defs, eval_only = mixtures.definitions(), mixtures.eval_only_definitions()
  for name, members in defs.items():  # every mixture that trains on MNLI evaluates MNLI-mm
    assert eval_only.get(name, []) == ([MNLI_MM] if MNLI in members else []), name
  for name in seqio.MixtureRegistry.names():
    assert AX not in [t.name for t in seqio.get_mixture_or_task(name).tasks], name
  assert set(eval_only) == {"spot_glue_mix", "spot_glue_super_glue_mix", "spot_nli_mix",
                            "spot_sources_mix", "spot_everything_mix"}
  for name, extra in eval_only.items():
    assert not set(extra) & set(defs[name]), name  # never also trained on
  for name in seqio.MixtureRegistry.names():  # T5's WNLI is evaluated alone, as T5's WSC-simple eval
    assert glue.WNLI_SIMPLE_EVAL not in [t.name for t in seqio.get_mixture_or_task(name).tasks], name


def test_glue_mix_rates(env):
  del env  # mock TFDS: every split has 3 examples
  mix = seqio.get_mixture_or_task("spot_glue_mix")
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates == {**{glue.name(t): 3.0 for t in glue.GLUE_MIXTURE_TASKS}, MNLI_MM: 0.0}
  for name in mixtures.MIXTURE_NAMES:  # each task once: the rate-0 ones beside, not among, the trained
    mix = seqio.get_mixture_or_task(name)
    members = mixtures.definitions()[name] + mixtures.eval_only_definitions().get(name, [])
    assert sorted(t.name for t in mix.tasks) == sorted(members), name
    assert [t.name for t in mix.tasks if mix.get_rate(t) == 0.0] == sorted(
        mixtures.eval_only_definitions().get(name, [])), name


def _sampled_benchmarks(mixture_tasks, n=60):
  """The first word ("rte", "mnli") of `n` training examples drawn from a mixture of these tasks."""
  name = "test_spot_rate0_mix"
  reg.add_mixture(name, mixture_tasks, None)
  ds = seqio.get_mixture_or_task(name).get_dataset(ct.FEATURE_LENGTHS, split="train", shuffle=False,
                                                   seed=0, copy_pretokenized=True)
  seen = [ex["inputs_pretokenized"].split(b" ")[0].decode() for ex in ds.take(n).as_numpy_iterator()]
  seqio.MixtureRegistry.remove(name)
  return seen


def test_training_never_samples_a_task_at_rate_0(env):
  del env
  rte = glue.name("rte")
  # Even one with a train split: seqio builds its dataset, but the sampler never draws from it.
  assert set(_sampled_benchmarks([(rte, 1.0), (MNLI, 0.0)])) == {"rte"}
  assert set(_sampled_benchmarks([(rte, 1.0), (MNLI, 1.0)])) == {"rte", "mnli"}
  # spot_glue_mix's rate-0 tasks have no train split: seqio leaves them out of training.
  mix = seqio.get_mixture_or_task("spot_glue_mix")
  assert [t.name for t in mix.tasks if "train" not in t.splits] == [MNLI_MM]
  from spot_jax import input_pipeline
  input_pipeline.check_trainable(mix)  # neither refused nor counted


def test_evaluating_the_glue_mix_evaluates_mnli_mismatched(env):
  from spot_jax import evaluation
  mix = seqio.get_mixture_or_task("spot_glue_mix")
  evaluated = [t.name for t in seqio.evaluation.get_valid_eval_tasks(seqio.get_subtasks(mix), "validation")]
  assert MNLI_MM in evaluated and MNLI in evaluated and len(evaluated) == 9
  assert evaluation.left_out_of_eval(mix, "validation") == []
  # Inferring on the test split writes MNLI-m's ("test" is test_matched) and MNLI-mm's test sets
  # beside the others' (AX: spot_glue_ax_v200 on its own).
  assert evaluation.left_out_of_eval(mix, "test", need_metrics=False) == []
  tested = [t.name for t in seqio.get_subtasks(mix) if "test" in t.splits]
  assert MNLI in tested and MNLI_MM in tested and len(tested) == 9, tested
  # A user's mixture member at a fixed rate 0 lacking the split is there by design: not named; one
  # at a rate of 1 is (the warning is for a task that lacks the split or metrics by mistake).
  name = "test_spot_rate0_left_out"
  for rate, named in ((0.0, []), (1.0, [(AX, "no 'validation' split; it has ['test']")])):
    reg.add_mixture(name, [(MNLI, 1.0), (AX, rate)], None)
    try:
      assert evaluation.left_out_of_eval(seqio.get_mixture_or_task(name), "validation") == named
    finally:
      seqio.MixtureRegistry.remove(name)
  ct.check_batch(ct.converted_batch("spot_glue_mix", split="test"), env.vocab_size)

"""GLUE tasks: names, label order vs TFDS, and tokenized batches offline."""
import importlib.util  # noqa: F401  (before gin anywhere)
import os
import sys

import numpy as np
import pytest
import seqio

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import glue, rank_classification, registry_list, vocab  # noqa: E402
from tasks import postprocessors as post  # noqa: E402

AX = "spot_glue_ax_v200"
MNLI_MM = "spot_glue_mnli_mismatched_v200"
ALL = glue.TASK_NAMES + [rank_classification.rank_name(n) for n in glue.TASK_NAMES
                         if n not in ("spot_glue_stsb_v200", AX)]


def _split(name):
  return "test" if name == AX else "validation"


@pytest.fixture(scope="module")
def env():
  with ct.mock_tfds(3), vocab.use_vocabulary(ct.tiny_vocabulary()) as v:
    yield v


def test_names():
  assert "spot_glue_rte_v200" in glue.TASK_NAMES
  assert len(glue.TASK_NAMES) == 11 and {AX, MNLI_MM} <= set(glue.TASK_NAMES)
  assert glue.WNLI_SIMPLE_EVAL == "spot_glue_wnli_v200_simple_eval"
  assert len(glue.GLUE_MIXTURE_TASKS) == 8
  names = seqio.TaskRegistry.names()
  # AX has no labels to score options against (T5 gives it no metrics): no rank variant; WNLI-simple
  # judges its one candidate: none either.
  assert MNLI_MM + "_rank" in names and AX + "_rank" not in names
  assert glue.WNLI_SIMPLE_EVAL in names and glue.WNLI_SIMPLE_EVAL + "_rank" not in names


def test_label_names_match_tfds():
  import tensorflow_datasets as tfds
  configs = {c.name: c for c in tfds.builder_cls("glue").BUILDER_CONFIGS}
  for task, (labels, _, _) in glue.GLUE_TASKS.items():  # "ax", "mnli_mismatched": TFDS's own configs
    assert str(configs[task].version) == glue.VERSION
    if labels is not None:
      assert list(labels) == list(configs[task].label_classes), task


@pytest.mark.parametrize("name", ALL)
def test_task_yields_tokenized_examples(env, name):
  ct.check_tokenized(ct.tokenized_examples(name, _split(name)), env.vocab_size)


def test_mnli_splits_and_text(env):
  ex = ct.tokenized_examples("spot_glue_mnli_v200", "validation_mismatched", 1)[0]
  assert ex["inputs_pretokenized"].startswith(b"mnli hypothesis: ")
  assert b" premise: " in ex["inputs_pretokenized"]
  assert ex["targets_pretokenized"] in (b"entailment", b"neutral", b"contradiction")


def test_converted_batch(env):
  ct.check_batch(ct.converted_batch("spot_glue_rte_v200"), env.vocab_size)


# --- AX, MNLI-mismatched and WNLI-simple on hand-made TFDS rows ---------------------------------
# Expected strings worked by hand from T5 (google-research/text-to-text-transfer-transformer):
# t5/data/glue_utils.py get_glue_text_preprocessor casts "ax" and "mnli*" as MNLI, i.e. T5's `glue`
# preprocessor with benchmark_name="mnli", the text features in sorted order ("hypothesis",
# "premise") and label -1 -> "<unk>"; t5/data/tasks.py reads AX's test split only, without metrics,
# and glue_mnli_mismatched_v002 from the mismatched validation/test sets; glue_wnli_v002_simple_eval
# is `wnli_simple` (worked examples in test_preprocessors.py) scored by `wsc_simple`.

def _mnli_row(premise, hypothesis, label, idx):
  return {"premise": premise, "hypothesis": hypothesis, "label": np.int64(label), "idx": np.int32(idx)}


_ROWS = {
    ("ax", "test"): [_mnli_row("The cat sat on the mat.", "The cat did not sit on the mat.", -1, 0),
                     _mnli_row("Dogs bark.", "Some animals bark.", -1, 1)],
    ("mnli", "validation_matched"): [_mnli_row("Matched premise.", "Matched hypothesis.", 0, 0)],
    ("mnli", "validation_mismatched"): [_mnli_row("Mismatched premise.", "Mismatched hypothesis.", 2, 0),
                                        _mnli_row("Second premise.", "Second hypothesis.", 1, 1)],
    ("mnli", "test_mismatched"): [_mnli_row("Test premise.", "Test hypothesis.", -1, 0)],
    ("mnli", "test_matched"): [_mnli_row("Matched test premise.", "Matched test hypothesis.", -1, 0)],
    ("wnli", "validation"): [
        {"sentence1": "The fish ate the worm. It was tasty.", "sentence2": "The worm was tasty.",
         "label": np.int64(1), "idx": np.int32(0)},
        {"sentence1": "Mary gave the book to Anna, and thanked her.", "sentence2": "Mary thanked Anna.",
         "label": np.int64(0), "idx": np.int32(1)}],
}
_ROWS[("wnli", "test")] = [dict(r, label=np.int64(-1)) for r in _ROWS[("wnli", "validation")]]


@pytest.fixture()  # per test: must not outlive it and shadow `env`'s random mock data
def rows_env():
  with ct.mock_tfds_rows(lambda builder, split: _ROWS[(builder.builder_config.name, split)]) as v:
    yield v


_LONG = {"inputs": 128, "targets": 16}


def _examples(task, split):
  return ct.raw_examples(task, split, n=10, sequence_length=_LONG)


def _texts(task, split):
  return [(r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode())
          for r in _examples(task, split)]


def test_ax_is_the_diagnostic_test_set_cast_as_mnli_like_t5(rows_env):
  task = seqio.get_mixture_or_task(AX)
  assert task.source.tfds_dataset.name == "glue/ax:2.0.0"
  assert list(task.splits) == ["test"] and task.metric_fns == []
  assert _texts(AX, "test") == [
      ("mnli hypothesis: The cat did not sit on the mat. premise: The cat sat on the mat.", "<unk>"),
      ("mnli hypothesis: Some animals bark. premise: Dogs bark.", "<unk>")]
  assert [int(r["idx"]) for r in _examples(AX, "test")] == [0, 1]
  # MNLI's text and label words: a prompt trained on MNLI answers AX as it answers MNLI.
  (mnli,) = _texts("spot_glue_mnli_v200", "validation")
  assert mnli == ("mnli hypothesis: Matched hypothesis. premise: Matched premise.", "entailment")
  assert registry_list.SPECS[AX].text_preprocessors[0].keywords == \
      registry_list.SPECS["spot_glue_mnli_v200"].text_preprocessors[0].keywords
  assert task.postprocess_fn("neutral") == 1 and task.postprocess_fn("maybe") == -1


def test_mnli_test_is_the_matched_test_set_as_validation_is_the_matched_one(rows_env):
  """A mixture's "test" split then holds MNLI-m's test set (GLUE submissions need it)."""
  assert _texts("spot_glue_mnli_v200", "test") == [
      ("mnli hypothesis: Matched test hypothesis. premise: Matched test premise.", "<unk>")]
  assert _texts("spot_glue_mnli_v200", "test") == _texts("spot_glue_mnli_v200", "test_matched")


def test_mnli_mismatched_reads_the_mismatched_sets(rows_env):
  task = seqio.get_mixture_or_task(MNLI_MM)
  assert task.source.tfds_dataset.name == "glue/mnli:2.0.0"  # the data MNLI's users have prepared
  assert sorted(task.splits) == ["test", "validation"]  # no train split: evaluated, never trained
  assert _texts(MNLI_MM, "validation") == [
      ("mnli hypothesis: Mismatched hypothesis. premise: Mismatched premise.", "contradiction"),
      ("mnli hypothesis: Second hypothesis. premise: Second premise.", "neutral")]
  assert _texts(MNLI_MM, "test") == [("mnli hypothesis: Test hypothesis. premise: Test premise.", "<unk>")]
  (metric,) = task.metric_fns
  predictions = [task.postprocess_fn(p) for p in ("contradiction", "entailment")]
  assert metric([2, 1], predictions) == {"accuracy": 50.0}


def test_wnli_simple_eval_text_matches_t5(rows_env):
  task = seqio.get_mixture_or_task(glue.WNLI_SIMPLE_EVAL)
  assert task.source.tfds_dataset.name == "glue/wnli:2.0.0"
  assert list(task.splits) == ["validation", "test"]
  expected = [("wsc: The fish ate the worm. *It* was tasty.", "The worm"),
              ("wsc: Mary gave the book to Anna, and thanked *her* .", "Anna")]
  assert _texts(glue.WNLI_SIMPLE_EVAL, "validation") == expected
  assert [int(r["label"]) for r in _examples(glue.WNLI_SIMPLE_EVAL, "validation")] == [1, 0]
  assert _texts(glue.WNLI_SIMPLE_EVAL, "test") == expected
  assert [int(r["label"]) for r in _examples(glue.WNLI_SIMPLE_EVAL, "test")] == [-1, -1]
  ct.check_tokenized(ct.raw_examples(glue.WNLI_SIMPLE_EVAL, "validation"), rows_env.vocab_size)


def test_wnli_simple_eval_is_scored_as_t5_scores_wsc_simple():
  task = seqio.get_mixture_or_task(glue.WNLI_SIMPLE_EVAL)
  assert registry_list.SPECS[glue.WNLI_SIMPLE_EVAL].postprocess_fn is post.wsc_simple
  (metric,) = task.metric_fns
  entailed = {"targets_pretokenized": b"The worm", "label": np.int64(1)}
  not_entailed = {"targets_pretokenized": b"Anna", "label": np.int64(0)}
  assert task.postprocess_fn(b"The worm", example=entailed, is_target=True) == 1
  assert task.postprocess_fn(b"Anna", example=not_entailed, is_target=True) == 0
  # The model names the referent; named == candidate is right when sentence2 is entailed (label 1).
  predictions = [task.postprocess_fn(p, example=e) for p, e in [
      ("worm", entailed),        # names the candidate: 1, label 1: right
      ("the fish", entailed),    # another referent: 0, label 1: wrong
      ("Mary", not_entailed),    # another referent: 0, label 0: right
      ("anna", not_entailed),    # names the candidate: 1, label 0: wrong
      ("", not_entailed)]]       # nothing: -1, wrong whatever the label
  assert predictions == [1, 0, 0, 1, -1]
  assert metric([1, 1, 0, 0, 0], predictions) == {"accuracy": 40.0}


def test_ax_infers_without_feature_lengths_its_decode_length_from_its_label_words(rows_env, caplog):
  """AX has no labelled split to take an unlabelled split's decode length from; `spot-jax infer`
  without TASK_FEATURE_LENGTHS refused it. Its label words (MNLI's) set it now."""
  import logging
  from spot_jax import inference
  task = seqio.get_mixture_or_task(AX)
  words = max(len(rows_env.encode(w)) for w in ("entailment", "neutral", "contradiction"))
  with caplog.at_level(logging.INFO, logger="spot_jax"):
    assert inference.unlabelled_decode_length(task, "test") == words + 1
  assert "decode length is the longest of its label words" in caplog.text
  assert inference.labelled_target_length(task, "test") == (inference.LABEL_WORDS, words + 1)
  # MNLI-mismatched's unlabelled test split still takes it from its validation split.
  assert inference.labelled_target_length(seqio.get_mixture_or_task(MNLI_MM), "test")[0] == "validation"

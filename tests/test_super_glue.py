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


# --- T5's WSC "simple" tasks and DPR -----------------------------------------
# The expected strings below were derived by hand from T5's reference logic
# (google-research/text-to-text-transfer-transformer, t5/data/preprocessors.py
# `wsc_simple` and `definite_pronoun_resolution_simple`): WSC splits the text on
# single spaces, puts "X" in place of the word at span2_index (words before and
# after joined around it by single spaces), replaces every " X " by
# " *<span2_text>* " and prefixes "wsc: "; the target is span1_text, and the
# train task keeps only label != 0. DPR stars the first " <pronoun>" followed
# by a space, "." or ",", prefixes "wsc: ", and targets candidates[label].

def _wsc_row(text, span1, i1, span2, i2, label, idx):
  return {"text": text, "span1_text": span1, "span1_index": np.int32(i1),
          "span2_text": span2, "span2_index": np.int32(i2), "label": np.int64(label),
          "idx": np.int32(idx)}


_WSC_ROWS = {
    "train": [
        _wsc_row("The trophy doesn't fit into the brown suitcase because it is too large.",
                 "The trophy", 0, "it", 9, 1, 0),
        _wsc_row("The trophy doesn't fit into the brown suitcase because it is too large.",
                 "the brown suitcase", 5, "it", 9, 0, 1),
        # A pronoun ending the text: T5's join leaves a trailing space after the mark.
        _wsc_row("Bob paid Tom because Tom had helped him", "Tom", 2, "him", 7, 1, 2),
    ],
    "validation": [
        _wsc_row("Ann asked Mary what time the library closes, because she had forgotten.",
                 "Ann", 0, "she", 9, 1, 0),
        _wsc_row("Ann asked Mary what time the library closes, because she had forgotten.",
                 "Mary", 2, "she", 9, 0, 1),
    ],
}
_WSC_ROWS["test"] = [dict(r, label=np.int64(-1)) for r in _WSC_ROWS["validation"]]

_DPR_ROWS = {
    "train": [{"sentence": "He said he would call him when he arrived.", "pronoun": "he",
               "candidates": ["Bob", "Tom"], "label": np.int64(1)},
              {"sentence": "The cat chased the dog and the owner scolded it.", "pronoun": "it",
               "candidates": ["the cat", "the dog"], "label": np.int64(0)}],
}
_DPR_ROWS["test"] = _DPR_ROWS["train"]


@pytest.fixture()  # per test: must not outlive it and shadow `env`'s random mock data
def wsc_env():
  with ct.mock_tfds_rows(lambda builder, split: (
      _DPR_ROWS if builder.name == "definite_pronoun_resolution" else _WSC_ROWS)[split]) as v:
    yield v


_LONG = {"inputs": 256, "targets": 32}


def _texts(task, split):
  rows = ct.raw_examples(task, split, n=10, sequence_length=_LONG)
  return [(r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode()) for r in rows]


def test_wsc_simple_names_and_registration():
  import seqio
  assert super_glue.WSC_SIMPLE_TASK_NAMES == [
      "spot_super_glue_wsc_v102_simple_train", "spot_super_glue_wsc_v102_simple_eval",
      "spot_dpr_v110_simple"]
  train, ev, dpr = (seqio.get_mixture_or_task(n) for n in super_glue.WSC_SIMPLE_TASK_NAMES)
  assert train.source.tfds_dataset.name == "super_glue/wsc.fixed:1.0.2"
  assert list(train.splits) == ["train"] and not train.metric_fns
  assert list(ev.splits) == ["validation", "test"]
  assert dpr.source.tfds_dataset.name == "definite_pronoun_resolution:1.1.0"
  assert list(dpr.splits) == ["train", "test"]
  names = seqio.TaskRegistry.names()
  # Rank variant for DPR (two candidates); none for WSC-simple (one candidate, judged).
  assert "spot_dpr_v110_simple_rank" in names
  assert not any(n.startswith("spot_super_glue_wsc_v102_simple") and n.endswith("_rank")
                 for n in names)


def test_wsc_simple_train_text_matches_t5(wsc_env):
  # Only label-1 rows; the label-0 row (idx 1) is dropped.
  assert _texts(super_glue.WSC_SIMPLE_TRAIN, "train") == [
      ("wsc: The trophy doesn't fit into the brown suitcase because *it* is too large.",
       "The trophy"),
      ("wsc: Bob paid Tom because Tom had helped *him* ", "Tom"),
  ]


def test_wsc_simple_eval_text_matches_t5(wsc_env):
  expected_inputs = ("wsc: Ann asked Mary what time the library closes, because *she* "
                     "had forgotten.")
  assert _texts(super_glue.WSC_SIMPLE_EVAL, "validation") == [
      (expected_inputs, "Ann"), (expected_inputs, "Mary")]
  rows = ct.raw_examples(super_glue.WSC_SIMPLE_EVAL, "test", sequence_length=_LONG)
  assert [int(r["label"]) for r in rows] == [-1, -1]
  ct.check_tokenized(ct.raw_examples(super_glue.WSC_SIMPLE_EVAL, "validation"),
                     wsc_env.vocab_size)


def test_dpr_simple_text_matches_t5(wsc_env):
  assert _texts(super_glue.DPR_SIMPLE, "train") == [
      # Case-sensitive, first match only: "He" opens the sentence, the later "he" stays.
      ("wsc: He said *he* would call him when he arrived.", "Tom"),
      ("wsc: The cat chased the dog and the owner scolded *it*.", "the cat"),
  ]
  rank = ct.raw_examples("spot_dpr_v110_simple_rank", "test", n=4, sequence_length=_LONG)
  assert [r["targets_pretokenized"] for r in rank] == [b"Bob", b"Tom", b"the cat", b"the dog"]
  assert [bool(r["is_correct"]) for r in rank] == [False, True, True, False]


def test_wsc_simple_data_fixes_that_t5_hard_codes():
  # T5 hand-fixes two texts of the data whose span2_index word is not the
  # pronoun: one has the pronoun with its quote attached (T5 writes `X ,"`),
  # one has span2_index one word early. Same shapes here, our own sentences.
  from tasks import preprocessors as pre
  (attached,) = ct.run_text_preprocessor(
      pre.wsc_simple, _wsc_row('Ann waved at Sue. "Good for her," she said.', "Sue", 3,
                               "her", 6, 1, 0))
  assert attached["inputs"] == b'wsc: Ann waved at Sue. "Good for *her* ," she said.'
  (early,) = ct.run_text_preprocessor(
      pre.wsc_simple, _wsc_row("They might want to use it , but not now.", "They", 0,
                               "it", 4, 1, 0))
  assert early["inputs"] == b"wsc: They might want to use *it* , but not now."


def test_wsc_simple_postprocessor_and_metric():
  import seqio
  task = seqio.get_mixture_or_task(super_glue.WSC_SIMPLE_EVAL)
  post, (metric,) = task.postprocess_fn, task.metric_fns
  ex = {"targets_pretokenized": b"The brown suitcase", "label": np.int64(1)}
  assert post(b"The brown suitcase", example=ex, is_target=True) == 1
  assert post(b"<ignored>", example=dict(ex, label=np.int64(0)), is_target=True) == 0
  # Case, surrounding spaces and determiners do not count; either word set may
  # contain the other; an apostrophe on one side only, or punctuation, do.
  for prediction, expected in [
      ("the brown suitcase", 1), ("  Brown Suitcase ", 1), ("suitcase", 1),
      ("that big brown suitcase", 1), ("this suitcase", 1), ("the trophy", 0),
      ("suitcase.", 0), ("the suitcase's lid", 0), ("", -1), ("the", -1)]:
    assert post(prediction, example=ex, is_target=False) == expected, prediction
  # Label 1 + named the candidate: right; label 0 + named another: right;
  # label 1 + named another: wrong; label 0 + empty prediction (-1): wrong.
  targets = [1, 0, 1, 0]
  predictions = [post(p, example=ex) for p in ("suitcase", "trophy", "trophy", "")]
  assert predictions == [1, 0, 0, -1]
  assert metric(targets, predictions) == {"accuracy": 50.0}


def test_wsc_dpr_mixture(wsc_env):
  import seqio
  from tasks import mixtures
  mix = seqio.get_mixture_or_task(mixtures.WSC_DPR_MIXTURE)
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates == {super_glue.DPR_SIMPLE: 1322.0, super_glue.WSC_SIMPLE_TRAIN: 259.0,
                   super_glue.WSC_SIMPLE_EVAL: 0.0}
  # Evaluating the mixture on validation evaluates WSC-simple only (T5's set-up).
  evaluated = [t.name for t in mix.tasks if "validation" in t.splits and t.metric_fns]
  assert evaluated == [super_glue.WSC_SIMPLE_EVAL]
  ds = mix.get_dataset(ct.FEATURE_LENGTHS, split="train", shuffle=False, seed=0,
                       try_in_mem_cache=False)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds, ct.FEATURE_LENGTHS)
  ct.check_batch(next(ds.batch(2).as_numpy_iterator()), wsc_env.vocab_size)
  everything = mixtures.definitions()["spot_everything_mix"]
  assert not set(super_glue.WSC_SIMPLE_TASK_NAMES) & set(everything)


def test_super_glue_t5_mixture_has_t5s_weights(env):
  """T5's super_glue_v102_proportional (t5/data/glue_utils.py SUPER_GLUE_WEIGHT_MAPPING)."""
  import seqio
  from tasks import mixtures
  mix = seqio.get_mixture_or_task(mixtures.SUPER_GLUE_T5_MIXTURE)
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates == {
      "spot_dpr_v110_simple": 1322.0, "spot_super_glue_wsc_v102_simple_train": 259.0,
      "spot_super_glue_wsc_v102_simple_eval": 0.0, "spot_super_glue_boolq_v102": 9427.0,
      "spot_super_glue_cb_v102": 250.0, "spot_super_glue_copa_v102": 400.0,
      "spot_super_glue_multirc_v102": 27243.0, "spot_super_glue_record_v102": 138854.0,
      "spot_super_glue_rte_v102": 2490.0, "spot_super_glue_wic_v102": 5428.0,
      "spot_super_glue_axb_v102": 0.0, "spot_super_glue_axg_v102": 0.0}
  assert super_glue.name("wsc") not in rates  # WSC the T5 way only
  ds = mix.get_dataset(ct.FEATURE_LENGTHS, split="train", shuffle=False, seed=0,
                       try_in_mem_cache=False)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds, ct.FEATURE_LENGTHS)
  ct.check_batch(next(ds.batch(2).as_numpy_iterator()), env.vocab_size)


def test_wsc_simple_tasks_run_on_random_mock_data(env):
  # Random TFDS mock rows (span2_index rarely points at span2_text) must not fail.
  for name, split in [(super_glue.WSC_SIMPLE_TRAIN, "train"),
                      (super_glue.WSC_SIMPLE_EVAL, "validation"),
                      (super_glue.DPR_SIMPLE, "test")]:
    rows = ct.raw_examples(name, split)
    if name != super_glue.WSC_SIMPLE_TRAIN:  # train keeps label-1 rows: may be none
      ct.check_tokenized(rows, env.vocab_size)

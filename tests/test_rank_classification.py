"""Rank classification: row expansion, the score metric, an end-to-end task."""
import importlib.util  # noqa: F401
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import metrics, postprocessors, rank_classification, vocab  # noqa: E402
from tasks import registry_list as reg  # noqa: E402

EXAMPLES = [
    {"inputs": "q1", "options": ["yes", "no", "maybe"], "label": 1},
    {"inputs": "q2", "options": ["yes", "no", "maybe"], "label": 2},
]


def _expand(mode):
  import tensorflow as tf
  ds = tf.data.Dataset.from_generator(
      lambda: iter(EXAMPLES),
      output_signature={"inputs": tf.TensorSpec([], tf.string),
                        "options": tf.TensorSpec([None], tf.string),
                        "label": tf.TensorSpec([], tf.int64)})
  return list(rank_classification.rank_classification(ds, mode=mode).as_numpy_iterator())


def test_eval_mode_one_row_per_option():
  rows = _expand("eval")
  assert [r["inputs"] for r in rows] == [b"q1"] * 3 + [b"q2"] * 3
  assert [r["targets"] for r in rows] == [b"yes", b"no", b"maybe"] * 2
  assert [tuple(r["idx"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
  assert [bool(r["is_correct"]) for r in rows] == [False, True, False, False, False, True]


def test_train_mode_keeps_correct_rows():
  rows = _expand("train")
  assert [(r["inputs"], r["targets"]) for r in rows] == [(b"q1", b"no"), (b"q2", b"maybe")]


def test_bad_mode():
  with pytest.raises(ValueError, match="mode"):
    _expand("predict")


def test_metric_over_postprocessed_rows():
  rows = _expand("eval")
  targets = [postprocessors.rank_classification(None, example=r, is_target=True)
             for r in rows]
  # Example 0: best option 1 (correct); example 1: best option 0 (wrong).
  scores = [-3.0, -1.0, -2.0, -0.5, -4.0, -0.9]
  assert metrics.rank_classification_accuracy(targets, scores) == {"accuracy": 50.0}
  scores = [-3.0, -1.0, -2.0, -5.0, -4.0, -0.9]
  assert metrics.rank_classification_accuracy(targets, scores) == {"accuracy": 100.0}


def test_every_rankable_spec_has_a_variant():
  """Every classification / multiple-choice task with metrics; not GLUE's AX (unlabelled, no metrics,
  as in T5: no options to score against a label)."""
  import seqio
  for name, spec in reg.SPECS.items():
    registered = rank_classification.rank_name(name) in seqio.TaskRegistry.names()
    assert registered == (spec.kind in rank_classification.RANK_KINDS and bool(spec.metric_fns)), name
  assert reg.SPECS["spot_glue_ax_v200"].kind == "classification"
  assert "spot_glue_ax_v200_rank" not in seqio.TaskRegistry.names()


def test_registered_variant_end_to_end():
  import seqio
  task = seqio.get_mixture_or_task("spot_super_glue_cb_v102_rank")
  assert task.score_metric_fns and not task.predict_metric_fns
  with ct.mock_tfds(2), vocab.use_vocabulary(ct.tiny_vocabulary()):
    rows = ct.tokenized_examples("spot_super_glue_cb_v102_rank", n=3)
  assert [r["targets_pretokenized"] for r in rows] == [
      b"entailment", b"contradiction", b"neutral"]
  assert sum(bool(r["is_correct"]) for r in rows) == 1  # mock labels are valid
  assert [tuple(r["idx"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]
  np.testing.assert_array_equal(rows[0]["inputs"], rows[2]["inputs"])


def test_is_rank_eval_reads_the_mark_then_the_metrics_and_rows():
  import functools
  from types import SimpleNamespace
  score = [lambda targets, scores: {}]
  eval_step = functools.partial(rank_classification.rank_classification, mode="eval")
  train_step = functools.partial(rank_classification.rank_classification, mode="train")
  rows = {"idx": None, "is_correct": None}
  task = lambda steps, scored, predicted: SimpleNamespace(
      preprocessors=steps, score_metric_fns=scored, predict_metric_fns=predicted)
  # The mark decides, whatever the metrics and rows say.
  assert rank_classification.is_rank_eval(task([eval_step], [], [len]))
  assert not rank_classification.is_rank_eval(task([train_step], score, []), rows)
  # Unmarked: score-only metrics and `is_correct` rows, both needed.
  assert rank_classification.is_rank_eval(task([], score, []), rows)
  assert not rank_classification.is_rank_eval(task([], score, []))  # rows unknown
  assert not rank_classification.is_rank_eval(task([], score, []), {"idx": None})
  assert not rank_classification.is_rank_eval(task([], score, [len]), rows)
  assert not rank_classification.is_rank_eval(task([], [], []), rows)

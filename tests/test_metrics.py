"""Metrics give known values on hand-made predictions."""
import importlib.util  # noqa: F401

import numpy as np
import pytest
import scipy.stats

from tasks import metrics as M


def test_accuracy_f1_mcc():
  t, p = [1, 1, 0, 0], [1, 0, 0, 0]
  assert M.accuracy(t, p) == {"accuracy": 75.0}
  assert M.f1(t, p)["f1"] == pytest.approx(100 * 2 / 3)
  assert M.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(100 * 2 / np.sqrt(12))
  # An invalid prediction (-1) is an error for F1 and MCC.
  assert M.f1([1, 0], [-1, 0])["f1"] == 0.0
  assert M.matthews_corrcoef([1, 0], [1, 0])["matthews_corrcoef"] == pytest.approx(100.0)


def _mcc_from_indicators(t, p):
  """MCC as the correlation of one-hot class indicators (Gorodkin's R_K)."""
  classes = sorted(set(t) | set(p))
  x = np.array([[c == v for c in classes] for v in t], np.float64)
  y = np.array([[c == v for c in classes] for v in p], np.float64)
  x, y = x - x.mean(0), y - y.mean(0)
  return (x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())


def test_mcc_keeps_invalid_predictions_as_their_own_class_as_t5():
  # T5 scores CoLA with sklearn's matthews_corrcoef on the raw ids, -1 included.
  t, p = [1, 0, 1, 0], [1, 0, -1, 0]
  out = M.matthews_corrcoef(t, p)["matthews_corrcoef"]
  assert out == pytest.approx(100 * 6 / np.sqrt(80))  # not 100 * 2 / sqrt(12) (-1 -> 0)
  assert out == pytest.approx(100 * _mcc_from_indicators(t, p))
  t, p = [1, 1, 0, 0, 1, 0, 1], [1, -1, 0, 1, -1, 0, 0]
  assert M.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
      100 * _mcc_from_indicators(t, p))
  assert M.matthews_corrcoef([1, 0, 1], [1, 1, 1])["matthews_corrcoef"] == 0.0


def test_mean_multiclass_f1():
  metric = M.mean_multiclass_f1(3)
  out = metric([0, 1, 2, 2], [0, 1, 2, 1])
  # class0 f1 1, class1 f1 2/3, class2 f1 2/3
  assert out == {"mean_3class_f1": pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)}


def test_correlations_match_scipy():
  t = [0.0, 1.2, 3.4, 3.4, 5.0, 2.2]
  p = [0.2, 1.0, 3.8, 2.0, 4.6, 2.2]
  assert M.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(
      100 * scipy.stats.pearsonr(t, p)[0])
  assert M.spearman_corrcoef(t, p)["spearman_corrcoef"] == pytest.approx(
      100 * scipy.stats.spearmanr(t, p)[0])
  assert M.pearson_corrcoef([1, 2, 3], [2, 4, 6])["pearson_corrcoef"] == pytest.approx(100)


@pytest.mark.parametrize("targets,predictions", [
    ([1.0, 2.0, 3.0, 4.0], [2.4] * 4),  # a prompt that always writes one number
    ([2.0] * 3, [1.0, 2.0, 3.0]),
    ([1.0, 2.0, 3.0], [1.0, float("nan"), 3.0]),  # string_to_float("nan")
    ([1.0], [1.0]), ([], [])])
def test_undefined_correlations_are_nan_as_in_t5(targets, predictions):
  # T5 reports scipy's NaN here; 0 would rank a constant prompt above an anticorrelated one.
  assert np.isnan(M.pearson_corrcoef(targets, predictions)["pearson_corrcoef"])
  assert np.isnan(M.spearman_corrcoef(targets, predictions)["spearman_corrcoef"])


def test_squad_em_f1_max_over_answers():
  out = M.squad([["The cat", "a dog"], ["Paris"]], ["cat", "in Paris France"])
  # ex1: EM 1 (articles dropped); ex2: EM 0, F1 = 2*(1/3*1)/(1/3+1) = 0.5
  assert out["em"] == pytest.approx(50.0)
  assert out["f1"] == pytest.approx(100 * (1 + 0.5) / 2)


def test_squad_f1_is_zero_without_common_tokens_even_when_both_empty():
  # T5 (qa_utils) and the SQuAD v1.1 script: no shared token -> F1 0, while
  # EM compares the normalized strings ("the" and "a" both normalize to "").
  assert M.squad([["The"]], ["a"]) == {"em": pytest.approx(100.0), "f1": 0.0}
  out = M.record([{"group": (0, 0), "answers": ["The"]}], ["an"])
  assert out == {"em": pytest.approx(100.0), "f1": 0.0}


def test_record_deduplicates_questions():
  targets = [{"group": (0, 0), "answers": ["Obama", "Barack Obama"]}] * 2 + [
      {"group": (0, 1), "answers": ["Merkel"]}]
  out = M.record(targets, ["Barack Obama", "Barack Obama", "Putin"])
  assert out == {"em": pytest.approx(50.0), "f1": pytest.approx(50.0)}


def test_multirc_f1a_and_em():
  targets = [{"group": (0, 0), "value": 1}, {"group": (0, 0), "value": 0},
             {"group": (0, 1), "value": 1}, {"group": (0, 1), "value": 1}]
  preds = [{"value": 1}, {"value": 0}, {"value": 1}, {"value": 0}]
  out = M.multirc(targets, preds)
  assert out["exact_match"] == pytest.approx(50.0)
  assert out["f1a"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 0 + 1))


def test_rank_classification_accuracy_ties_to_first_option():
  targets = [(0, 0, True), (0, 1, False), (1, 0, False), (1, 1, True)]
  assert M.rank_classification_accuracy(targets, [-1.0, -1.0, -2.0, -1.0]) == {
      "accuracy": 100.0}
  assert M.rank_classification_accuracy(targets, [-2.0, -1.0, -1.0, -1.0]) == {
      "accuracy": 0.0}


def test_rank_classification_accuracy_refuses_cut_examples():
  # Example 1 lost its correct option (only option 0 was scored): an error, not a miss.
  targets = [(0, 0, True), (0, 1, False), (1, 0, False)]
  with pytest.raises(ValueError, match="example 1 .*incomplete"):
    M.rank_classification_accuracy(targets, [-1.0, -2.0, -1.0])
  # Unlabelled split (no correct option anywhere) still scores 0 as before.
  assert M.rank_classification_accuracy([(0, 0, False), (0, 1, False)], [-1.0, -2.0]) == {
      "accuracy": 0.0}


def test_macro_f1_over_a_known_label_set_counts_every_label_as_t5_and_sklearn():
  """T5's mean_multiclass_f1 is sklearn's fbeta over labels range(num_classes): a label no target
  holds still counts (F1 0 when it is predicted). Found by a seqio/user-data audit: the label-free
  form gave 66.7 here, sklearn with labels=[a, b] gives 33.3 (hand computation below)."""
  t, p = ["a"] * 4, ["a", "a", "b", "b"]
  # a: tp 2, fp 0, fn 2 -> F1 2/3; b: tp 0 -> F1 0; mean over [a, b] = 1/3.
  assert M.macro_f1(t, p, labels=["a", "b"])["macro_f1"] == pytest.approx(100 / 3)
  assert M.macro_f1_over(["a", "b"])(t, p) == {"macro_f1": pytest.approx(100 / 3)}
  assert M.macro_f1_over(("a", "b")).__name__ == "macro_f1"
  # Without a label set: the labels the targets hold (sklearn with labels=sorted(set(targets))).
  assert M.macro_f1(t, p)["macro_f1"] == pytest.approx(200 / 3)
  # A label that nobody predicts or holds counts as 0, as in T5 with num_classes=3.
  assert M.macro_f1(t, ["a"] * 4, labels=["a", "b", "c"])["macro_f1"] == pytest.approx(100 / 3)
  # Text labels as users' tasks compare them; an answer outside the label set is a miss.
  assert M.macro_f1([b"a ", "b"], ["a", "maybe"], labels=["a", "b"])["macro_f1"] == pytest.approx(50.0)
  with pytest.raises(ValueError, match="distinct labels"):
    M.macro_f1_over(["a", "a"])


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_over_class_ids_is_t5s_mean_multiclass_f1(seed):
  rng = np.random.RandomState(seed)
  t = rng.randint(0, 3, 20)
  p = rng.randint(-1, 3, 20)  # -1: an invalid prediction
  t[t == 2] = 1  # class 2 never a target: counts only where T5 counts it
  want = M.mean_multiclass_f1(3)(t, p)["mean_3class_f1"]
  assert M.macro_f1_over([0, 1, 2])(t, p)["macro_f1"] == pytest.approx(want)
  assert M.macro_f1_over([0, 1, 2])(list(t), [np.int64(x) for x in p])["macro_f1"] == pytest.approx(want)

"""Evaluation metrics (seqio legacy metric functions), values in percent as T5.

Predict metrics take `(targets, predictions)`; score metrics (rank
classification) take `(targets, scores)`; seqio tells them apart by the
argument names, so keep those names.
"""
import collections
import re
import string
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import scipy.stats


def accuracy(targets, predictions) -> Dict[str, float]:
  t, p = list(targets), list(predictions)
  return {"accuracy": 100.0 * float(np.mean([a == b for a, b in zip(t, p)]))}


def _binary_counts(targets, predictions):
  t = np.asarray(targets)
  p = np.asarray(predictions)
  # An invalid prediction (not 0/1) counts as wrong, whatever the target.
  p = np.where(np.isin(p, (0, 1)), p, 1 - t)
  tp = int(np.sum((p == 1) & (t == 1)))
  fp = int(np.sum((p == 1) & (t == 0)))
  fn = int(np.sum((p == 0) & (t == 1)))
  tn = int(np.sum((p == 0) & (t == 0)))
  return tp, fp, fn, tn


def _f1(tp, fp, fn):
  return 0.0 if tp == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def f1(targets, predictions) -> Dict[str, float]:
  """Binary F1 of class 1; invalid predictions (-1) count as errors."""
  tp, fp, fn, _ = _binary_counts(targets, predictions)
  return {"f1": 100.0 * _f1(tp, fp, fn)}


def matthews_corrcoef(targets, predictions) -> Dict[str, float]:
  """MCC (CoLA, AX-b) as T5 computes it (sklearn's matthews_corrcoef on the
  raw class ids): the multiclass form over every value seen, so an invalid
  prediction (-1) is an error that forms a class of its own rather than
  being turned into the other label. Equals the binary MCC when all
  predictions are valid; 0 when either side holds a single class."""
  t = np.asarray(list(targets))
  p = np.asarray(list(predictions))
  n = float(len(t))
  if not n:
    return {"matthews_corrcoef": 0.0}
  classes = np.union1d(t, p)
  t_sum = np.array([np.sum(t == c) for c in classes], np.float64)
  p_sum = np.array([np.sum(p == c) for c in classes], np.float64)
  correct = float(np.sum(t == p))
  cov_tp = correct * n - t_sum @ p_sum
  cov_pp = n * n - p_sum @ p_sum
  cov_tt = n * n - t_sum @ t_sum
  denom = np.sqrt(cov_tt * cov_pp)
  mcc = 0.0 if denom == 0 else float(cov_tp / denom)
  return {"matthews_corrcoef": 100.0 * mcc}


def mean_multiclass_f1(num_classes: int):
  """Macro F1 over num_classes (CB); returns a metric fn."""
  def metric(targets, predictions):
    t, p = np.asarray(targets), np.asarray(predictions)
    scores = []
    for c in range(num_classes):
      tp = int(np.sum((p == c) & (t == c)))
      fp = int(np.sum((p == c) & (t != c)))
      fn = int(np.sum((p != c) & (t == c)))
      scores.append(_f1(tp, fp, fn))
    return {f"mean_{num_classes}class_f1": 100.0 * float(np.mean(scores))}
  metric.__name__ = f"mean_{num_classes}class_f1"
  return metric


def _label(x):
  """Text labels as users' tasks compare them (bytes decoded, surrounding whitespace stripped);
  class ids unchanged."""
  if isinstance(x, bytes):
    x = x.decode("utf-8")
  if isinstance(x, str):
    return x.strip()
  return x.item() if isinstance(x, np.generic) else x


def macro_f1(targets, predictions, labels: Optional[Sequence] = None) -> Dict[str, float]:
  """Macro F1 in percent: the unweighted mean of each label's F1 (2·tp / (2·tp + fp + fn); 0 when
  tp is 0).

  `labels`: the task's label set (class ids or label words). Every label counts, also one that no
  target holds (its F1 is then 0 if it was predicted, as wrong predictions of it are false
  positives); a prediction outside the set is a miss of its target's label. This is T5's
  `mean_multiclass_f1(num_classes)` (sklearn's fbeta_score over labels range(num_classes)) and
  sklearn's `f1_score(targets, predictions, labels=labels, average="macro")`.
  Without `labels`, the labels are those the targets hold (sklearn with labels=sorted(set(targets))):
  a predicted label that no target holds is not averaged in, it only counts as a miss.
  """
  t = [_label(x) for x in targets]
  p = [_label(x) for x in predictions]
  names = [_label(x) for x in labels] if labels is not None else sorted(set(t), key=repr)
  if not names:
    return {"macro_f1": 0.0}
  f1s = []
  for c in names:
    tp = sum(a == c and b == c for a, b in zip(t, p))
    fp = sum(a != c and b == c for a, b in zip(t, p))
    fn = sum(a == c and b != c for a, b in zip(t, p))
    f1s.append(_f1(tp, fp, fn))
  return {"macro_f1": 100.0 * float(np.mean(f1s))}


def macro_f1_over(labels: Sequence):
  """`macro_f1` over a task's known label set, as a seqio metric fn `f(targets, predictions)`
  (for a task registered with its label words: tasks.user_data's `label_names`)."""
  labels = tuple(labels)
  if not labels or len(set(map(_label, labels))) != len(labels):
    raise ValueError(f"macro_f1 needs distinct labels, got {list(labels)}")

  def metric(targets, predictions):
    return macro_f1(targets, predictions, labels)
  metric.__name__ = "macro_f1"
  return metric


def _correlation(fn, targets, predictions) -> float:
  """T5's correlation metrics are scipy's: NaN where the coefficient is undefined (constant
  predictions or targets, a NaN prediction), not 0 — a prompt that always writes "2.4" has no
  correlation to report, and 0 would rank it above one that anticorrelates. Under 2 items is NaN too
  (scipy's pearsonr raises there)."""
  t, p = np.asarray(targets, np.float64), np.asarray(predictions, np.float64)
  if len(t) < 2:
    return float("nan")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ConstantInputWarning: the NaN says it
    return float(fn(t, p)[0])


def pearson_corrcoef(targets, predictions) -> Dict[str, float]:
  return {"pearson_corrcoef": 100.0 * _correlation(scipy.stats.pearsonr, targets, predictions)}


def spearman_corrcoef(targets, predictions) -> Dict[str, float]:
  return {"spearman_corrcoef": 100.0 * _correlation(scipy.stats.spearmanr, targets, predictions)}


# --- SQuAD-style EM / F1 (max over gold answers) ---------------------------

def normalize_answer(s: str) -> str:
  """Lower case, no punctuation, no articles, single spaces (SQuAD script)."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _token_f1(gold: str, pred: str) -> float:
  g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
  common = collections.Counter(g) & collections.Counter(p)
  same = sum(common.values())
  if same == 0:
    return 0.0  # as T5 and the SQuAD v1.1 script, even when both are empty
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def _em_f1(answers: Sequence[str], prediction: str):
  answers = list(answers) or [""]
  em = max(float(normalize_answer(a) == normalize_answer(prediction)) for a in answers)
  f = max(_token_f1(a, prediction) for a in answers)
  return em, f


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]):
  """EM and token F1, each the max over the gold answers of an example."""
  scores = np.array([_em_f1(t, p) for t, p in zip(targets, predictions)])
  if not len(scores):
    return {"em": 0.0, "f1": 0.0}
  return {"em": 100.0 * scores[:, 0].mean(), "f1": 100.0 * scores[:, 1].mean()}


def record(targets, predictions):
  """ReCoRD EM/F1: one score per question (the preprocessor repeats a
  question once per gold answer), max over that question's answers."""
  seen = {}
  for t, p in zip(targets, predictions):
    seen.setdefault(t["group"], (t["answers"], p))
  answers, preds = zip(*seen.values()) if seen else ((), ())
  return squad(answers, preds)


def multirc(targets, predictions):
  """MultiRC F1a (binary F1 over all answer options) and EM (share of
  questions whose every answer option is labelled correctly)."""
  t = [x["value"] for x in targets]
  p = [x["value"] for x in predictions]
  tp, fp, fn, _ = _binary_counts(t, p)
  groups = collections.defaultdict(list)
  for tt, pp in zip(targets, predictions):
    groups[tt["group"]].append(tt["value"] == pp["value"])
  em = float(np.mean([all(v) for v in groups.values()])) if groups else 0.0
  return {"f1a": 100.0 * _f1(tp, fp, fn), "exact_match": 100.0 * em}


def rank_classification_accuracy(targets, scores):
  """Accuracy of the best-scored option of each example.

  targets: (example id, option id, is_correct) per scored row (see
  postprocessors.rank_classification); scores: the model's log-likelihood of
  each row's target. Ties go to the lowest option id.

  Every example must come with all its options. In a labelled split, an
  example without a correct option has been cut (e.g. the first N *rows*
  taken instead of the first N examples): it raises ValueError rather than
  silently counting as a miss. A split without any correct option
  (unlabelled, label -1) still scores 0. A cut that keeps the correct option
  cannot be told from the rows, so callers must keep whole examples
  (`spot_jax.evaluation.take_examples`).
  """
  best: Dict[int, tuple] = {}
  options = collections.defaultdict(list)
  has_correct = collections.defaultdict(bool)
  for (ex, opt, correct), score in zip(targets, scores):
    options[ex].append(int(opt))
    has_correct[ex] |= bool(correct)
    key = (-float(score), opt)
    if ex not in best or key < best[ex][0]:
      best[ex] = (key, bool(correct))
  if not best:
    return {"accuracy": 0.0}
  labelled = any(has_correct.values())
  for ex, opts in options.items():
    if labelled and not has_correct[ex]:
      raise ValueError(
          f"rank classification: example {ex} has no correct option among its scored option "
          f"ids {sorted(opts)}: its options are incomplete (or its label is missing); score every option of each example "
          "(take the first N examples, not N rows)")
  return {"accuracy": 100.0 * float(np.mean([c for _, c in best.values()]))}

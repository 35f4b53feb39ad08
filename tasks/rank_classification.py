"""Rank-classification variants: score every option instead of decoding.

For each classification / multiple-choice task `X` this registers `X_rank`,
whose examples are one row per (example, option): inputs unchanged, targets =
the option's text, `idx` = [example id, option id], `is_correct`. A model
scores each row (log-likelihood of the targets); the metric
(`metrics.rank_classification_accuracy`) picks the best-scored option per
example. seqio 0.0.20 has no rank_classification preprocessor, hence ours.
Train on the base task; use the variant for evaluation ("eval" mode keeps
every option; "train" mode keeps only the correct one). The expanding
preprocessor carries its mode (`mark_rank_preprocessor`), so `rank_mode(task)`
tells an evaluation-only rank task (its train split holds every option as a
target) from a trainable one; spot_jax's training input refuses the former.
"""
import functools
from typing import Callable, Optional

import tensorflow as tf

from tasks import glue, sources, super_glue  # noqa: F401  (registers specs)
from tasks import metrics as M
from tasks import postprocessors as post
from tasks import registry_list as reg

RANK_KINDS = ("classification", "multiple_choice")


def rank_classification(dataset: tf.data.Dataset, mode: str = "eval") -> tf.data.Dataset:
  """Expands examples with "options"/"label" into one row per option."""
  if mode not in ("eval", "train"):
    raise ValueError(f"rank_classification mode must be 'eval' or 'train', got {mode!r}")

  def expand(index, x):
    options = x["options"]
    n = tf.shape(options)[0]
    option_ids = tf.range(n)
    is_correct = tf.equal(option_ids, tf.cast(x["label"], tf.int32))
    rows = {
        "inputs": tf.fill([n], x["inputs"]),
        "targets": options,
        "idx": tf.stack([tf.fill([n], tf.cast(index, tf.int32)), option_ids], axis=1),
        "is_correct": is_correct,
    }
    ds = tf.data.Dataset.from_tensor_slices(rows)
    if mode == "train":
      ds = ds.filter(lambda r: r["is_correct"])
    return ds

  return dataset.enumerate().flat_map(expand)


RANK_MODE_ATTR = "spot_rank_classification_mode"


def mark_rank_preprocessor(fn: Callable, mode: str) -> Callable:
  """Tags a rank-classification preprocessor with its mode ("eval"/"train")."""
  setattr(fn, RANK_MODE_ATTR, mode)
  return fn


def _preprocessor_mode(fn) -> Optional[str]:
  mode = getattr(fn, RANK_MODE_ATTR, None)
  if mode is not None:
    return mode
  if fn is rank_classification:
    return "eval"
  if isinstance(fn, functools.partial) and fn.func is rank_classification:
    return fn.keywords.get("mode", "eval")
  return None


def rank_mode(task) -> Optional[str]:
  """"eval" for a rank-classification task that keeps every option (targets
  of wrong options included: evaluate/score only), "train" for one that keeps
  only the correct option, None for any other task. Looks at the preprocessors
  (ours and the users'-data ones are marked), not at the name."""
  modes = [_preprocessor_mode(p) for p in getattr(task, "preprocessors", ())]
  modes = [m for m in modes if m is not None]
  return modes[-1] if modes else None


def scores_only(task) -> bool:
  """Whether `task`'s metrics all take scores (it has some, and none takes decoded text)."""
  return bool(getattr(task, "score_metric_fns", None)) and not getattr(task, "predict_metric_fns", None)


def is_rank_eval(task, features=None) -> bool:
  """Whether `task` is a rank-classification evaluation task: one row per option, scored rather
  than decoded or trained on. Its option-expanding preprocessor's mark (`rank_mode`) decides; an
  unmarked task counts when its metrics take scores only and `features` (its dataset's element
  spec; unknown when None) carries `is_correct`. Training's refusal and `infer` both ask this."""
  mode = rank_mode(task)
  if mode is not None:
    return mode == "eval"
  return scores_only(task) and features is not None and "is_correct" in features


def rank_name(task_name: str) -> str:
  return task_name + "_rank"


def register(vocabulary=None, name_suffix: str = "", mode: str = "eval"):
  """Registers `<task>_rank` for every rank-able spec (a classification or multiple-choice task with
  metrics: GLUE's AX, unlabelled and without metrics as in T5, has nothing to score against); returns
  the names."""
  names = []
  for spec in list(reg.SPECS.values()):
    if spec.kind not in RANK_KINDS or not spec.metric_fns:
      continue
    task = reg.build_task(
        spec, vocabulary, name=rank_name(spec.name) + name_suffix,
        extra_preprocessors=[mark_rank_preprocessor(
            functools.partial(rank_classification, mode=mode), mode)],
        postprocess_fn=post.rank_classification,
        metric_fns=[M.rank_classification_accuracy])
    names.append(task.name)
  return names


TASK_NAMES = register()

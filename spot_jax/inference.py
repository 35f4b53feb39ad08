"""Inference without metrics (`spot_jax.infer`): each example's text kept beside its prediction,
by greedy decoding (`predict_task`) or, on a rank-classification task, by scoring every option
(`score_options_task`). Unlabelled splits are recognised here too (every target the placeholder
`UNLABELLED_TARGET`, as GLUE's test splits): infer decodes them as long as a labelled split's longest
target, and eval warns that their metrics mean nothing. seqio's Evaluator (`spot_jax.evaluation`)
keeps no texts and takes its lengths from the split itself, hence this separate path."""
from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from spot_jax import decode as decode_lib
from spot_jax import scoring as scoring_lib
from spot_jax import truncation
from spot_jax.config import T5Config
from spot_jax.evaluation import get_task, is_rank_dataset, take_examples

log = logging.getLogger("spot_jax")


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_examples(task, split: str, feature_lengths: Optional[Mapping[str, int]] = None,
                  num_examples: Optional[int] = None) -> List[Dict[str, Any]]:
  """The task's examples in order (tokenized `inputs`, optional `targets`, their text); with
  `num_examples`, the first N examples (`take_examples`: all option rows of N rank examples)."""
  ds = task.get_dataset(dict(feature_lengths) if feature_lengths else None, split=split, shuffle=False,
                        num_epochs=1, use_cached=False, try_in_mem_cache=False)
  return list(take_examples(ds, num_examples).as_numpy_iterator())


# The target of every example of an unlabelled split: T5's GLUE test splits (label -1) and
# tasks.user_data's unlabelled test split (its UNLABELLED_TARGET) hold this placeholder.
UNLABELLED_TARGET = "<unk>"
# The splits an unlabelled split takes its decode length from, in this order (then the others).
LABELLED_SPLITS = ("validation", "train")


def _target_text(example, vocabulary) -> Optional[str]:
  if "targets_pretokenized" in example:
    return _text(example["targets_pretokenized"])
  if "targets" in example:
    return vocabulary.decode(list(map(int, example["targets"])))
  return None


def _is_placeholder(example, vocabulary) -> bool:
  """Whether an example has no target or the placeholder `UNLABELLED_TARGET`."""
  return _target_text(example, vocabulary) in (None, UNLABELLED_TARGET)


def _lengths_flag(inputs: Any = "N", targets: Any = "M") -> str:
  return f"--gin.TASK_FEATURE_LENGTHS=\"{{'inputs': {inputs}, 'targets': {targets}}}\""


# What `labelled_target_length` names as its source when the task's label words set the length.
LABEL_WORDS = "label words"


def _label_words_length(task) -> Optional[int]:
  """Tokens (EOS included) of the longest label word the task's registration names
  (`truncation.known_labels`), or None."""
  labels = truncation.known_labels(task)
  if not labels:
    return None
  feature = task.output_features["targets"]
  eos = 1 if getattr(feature, "add_eos", True) else 0
  return max(len(feature.vocabulary.encode(label)) for label in labels) + eos


def labelled_target_length(task, split: str) -> Tuple[str, int]:
  """(split, tokens) of the longest target (EOS included) of the first labelled split of `task`
  other than `split` (`LABELLED_SPLITS` first, then the others by name): the decode length of an
  unlabelled `split`, whose placeholder targets say nothing of the answers' length. A task with no
  labelled split whose registration names its label words (GLUE's AX, test split only) gets
  (`LABEL_WORDS`, tokens of the longest label word). Else a ValueError naming TASK_FEATURE_LENGTHS."""
  try:
    splits = list(task.splits)
  except KeyError:  # a TFDS task that asks TFDS, without prepared data
    splits = []
  others = [s for s in LABELLED_SPLITS if s != split and s in splits]
  others += sorted(s for s in splits if s != split and s not in others)
  vocabulary = task.output_features["targets"].vocabulary
  for other in others:
    try:
      lengths = [len(e["targets"]) for e in load_examples(task, other)
                 if not _is_placeholder(e, vocabulary)]
    except Exception as e:  # pylint: disable=broad-except  (e.g. TFDS data not prepared for it)
      log.debug("%s: split %r not read for its target length: %s", task.name, other, e)
      continue
    if lengths:
      return other, max(lengths)
  length = _label_words_length(task)
  if length:
    return LABEL_WORDS, length
  raise ValueError(
      f"task {task.name!r}: every target of its {split!r} split is the placeholder "
      f"{UNLABELLED_TARGET!r} (an unlabelled split), so the split cannot set the decode length, and "
      f"the task has no labelled split to take it from (it has {sorted(splits)}). Set it: "
      f"{_lengths_flag()}, M the longest answer in tokens plus 1 for EOS")


def _note_unlabelled(task, split: str, other: str, length: int) -> None:
  source = "of its label words" if other == LABEL_WORDS else f"target of its {other!r} split"
  log.info("task %r: every %r target is the placeholder %r (an unlabelled split), so the decode length "
           "is the longest %s: %d tokens with EOS (%s sets it)", task.name, split,
           UNLABELLED_TARGET, source, length, _lengths_flag())


def warn_if_unlabelled(task, split: str, probe: int = 64) -> List[str]:
  """Warns (and returns the names) of the tasks whose `split` is unlabelled: its first `probe` examples
  all hold the placeholder target, so an evaluation would score predictions against `<unk>`, a number
  that means nothing, without a word. `eval` calls it before the model loads."""
  import seqio  # pylint: disable=g-import-not-at-top
  names = []
  for sub in seqio.evaluation.get_valid_eval_tasks(seqio.get_subtasks(task), split):
    vocabulary = sub.output_features["targets"].vocabulary
    ds = sub.get_dataset(None, split=split, shuffle=False, num_epochs=1, use_cached=False,
                         try_in_mem_cache=False)
    examples = list(ds.take(probe).as_numpy_iterator())
    if examples and all(_is_placeholder(e, vocabulary) for e in examples):
      names.append(sub.name)
  if names:
    warnings.warn(f"the {split!r} split of {', '.join(map(repr, names))} is unlabelled (every target is the "
                  f"placeholder {UNLABELLED_TARGET!r}), so its metrics score the predictions against that "
                  "placeholder and mean nothing: evaluate a labelled split (--gin.EVAL_SPLIT=\"'validation'\"), "
                  "or write predictions with spot_jax.infer")
  return names


def unlabelled_decode_length(task, split: str, feature_lengths: Optional[Mapping[str, int]] = None,
                             num_examples: Optional[int] = None) -> Optional[int]:
  """The decode length `predict_task` needs for an unlabelled `split` (its first `num_examples`
  examples all hold the placeholder target `UNLABELLED_TARGET`, or no target) without
  TASK_FEATURE_LENGTHS['targets']: `labelled_target_length`, with a one-line note. None when the
  split is labelled (read up to its first labelled example) or the length is given. Raises, naming
  the fix, when the task has no labelled split; `infer` calls it before the model loads."""
  if (feature_lengths or {}).get("targets"):
    return None
  vocabulary = task.output_features["targets"].vocabulary
  ds = task.get_dataset(dict(feature_lengths) if feature_lengths else None, split=split, shuffle=False,
                        num_epochs=1, use_cached=False, try_in_mem_cache=False)
  seen = False
  for example in take_examples(ds, num_examples).as_numpy_iterator():
    if not _is_placeholder(example, vocabulary):
      return None
    seen = True
  if not seen:
    return None
  other, length = labelled_target_length(task, split)
  _note_unlabelled(task, split, other, length)
  return length


def predict_task(task_name: str, config: T5Config, params, prompt,
                 feature_lengths: Optional[Mapping[str, int]] = None, split: str = "validation",
                 batch_size: int = 32, num_examples: Optional[int] = None, eos_id: int = 1,
                 mesh=None, max_decode_length: Optional[int] = None) -> List[Dict[str, Any]]:
  """Greedy predictions of one task's split: `[{"inputs", "prediction", "targets"}]` in order.

  Texts are the task's `*_pretokenized` features when present, else the decoded ids. Without
  `feature_lengths`, the longest example sets the input length and the longest target the decode
  length; on an unlabelled split (every target the placeholder `UNLABELLED_TARGET`, as GLUE's test
  splits) the longest target of a labelled split does (`labelled_target_length`, noted in the
  log). `max_decode_length` overrides both.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  task = get_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{task_name} is a mixture; run inference on one of its tasks: "
                     f"{[t.name for t in seqio.get_subtasks(task)]}")
  examples = load_examples(task, split, feature_lengths, num_examples)
  if not examples:
    return []
  if feature_lengths and jax.process_index() == 0:  # the same examples in every process
    truncation.warn_cut_examples(task, split, examples, feature_lengths, "its predictions")
  in_vocab = task.output_features["inputs"].vocabulary
  out_vocab = task.output_features["targets"].vocabulary
  lengths = dict(feature_lengths or {})
  in_len = lengths.get("inputs") or max(len(e["inputs"]) for e in examples)
  dec_len = max_decode_length or lengths.get("targets")
  if not dec_len and all(_is_placeholder(e, out_vocab) for e in examples):
    other, dec_len = labelled_target_length(task, split)
    _note_unlabelled(task, split, other, dec_len)
  dec_len = dec_len or max([len(e.get("targets", ())) for e in examples] + [1])
  if prompt is not None:
    prompt = np.asarray(jax.device_get(prompt), np.float32)
  rows = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    enc = np.zeros((batch_size, in_len), np.int32)
    for r, e in enumerate(chunk):
      ids = np.asarray(e["inputs"], np.int32)[:in_len]
      enc[r, :len(ids)] = ids
    tokens = decode_lib.greedy_decode(config, params, prompt, enc, dec_len, eos_id, mesh=mesh)
    for e, t in zip(chunk, tokens):
      row = {"inputs": _text(e["inputs_pretokenized"]) if "inputs_pretokenized" in e
             else in_vocab.decode(list(map(int, e["inputs"]))),
             "prediction": out_vocab.decode(decode_lib.trim_after_eos(t, eos_id))}
      if "targets_pretokenized" in e:
        row["targets"] = _text(e["targets_pretokenized"])
      elif "targets" in e:
        row["targets"] = out_vocab.decode(list(map(int, e["targets"])))
      rows.append(row)
  return rows


def is_rank_task(task, split: Optional[str] = None) -> bool:
  """Whether `task` is a rank-classification evaluation task (`X_rank`): one row per option of an
  example, scored rather than decoded (`tasks.rank_classification.is_rank_eval`). An unmarked
  task is judged by its `split` rows (`idx` [example, option] and `is_correct`, `is_rank_dataset`);
  without a split, only a marked one counts."""
  from tasks import rank_classification as rank_lib  # pylint: disable=g-import-not-at-top
  if rank_lib.rank_mode(task) is not None or split is None or not rank_lib.scores_only(task):
    return rank_lib.is_rank_eval(task)
  ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1, use_cached=False,
                        try_in_mem_cache=False)
  return rank_lib.is_rank_eval(task, ds.element_spec) and is_rank_dataset(ds)


def _option_rows(task, examples) -> List[Dict[str, Any]]:
  """Rank rows grouped per example (first-seen order): `{"inputs", "options", "correct", "rows"}`."""
  in_vocab = task.output_features["inputs"].vocabulary
  out_vocab = task.output_features["targets"].vocabulary
  grouped: Dict[int, Dict[str, Any]] = {}
  for e in examples:
    ex, opt = (int(x) for x in e["idx"])
    group = grouped.get(ex)
    if group is None:
      group = grouped[ex] = {
          "inputs": _text(e["inputs_pretokenized"]) if "inputs_pretokenized" in e
                    else in_vocab.decode(list(map(int, e["inputs"]))),
          "options": [], "correct": [], "rows": []}
    group["options"].append((opt, _text(e["targets_pretokenized"]) if "targets_pretokenized" in e
                             else out_vocab.decode(list(map(int, e["targets"])))))
    group["correct"].append(bool(e.get("is_correct", False)))
    group["rows"].append(e)
  return list(grouped.values())


def score_options_task(task_name: str, config: T5Config, params, prompt,
                       feature_lengths: Optional[Mapping[str, int]] = None, split: str = "validation",
                       batch_size: int = 32, num_examples: Optional[int] = None,
                       mesh=None) -> List[Dict[str, Any]]:
  """Rank-classification inference: every option of each example scored by its target
  log-likelihood (`spot_jax.scoring`, as evaluation scores it), the best one chosen (ties: the
  lowest option id, as the metric breaks them). One row per example, in order:
  `{"inputs", "prediction": chosen option, "targets": the correct option (labelled splits only),
  "options": [option texts by option id], "scores": [their log-likelihoods]}`.

  Without `feature_lengths`, the longest input and the longest option set the lengths.
  """
  task = get_task(task_name)
  examples = load_examples(task, split, feature_lengths, num_examples)
  if not examples:
    return []
  if feature_lengths and jax.process_index() == 0:  # the same examples in every process
    truncation.warn_cut_examples(task, split, examples, feature_lengths, "its option scores",
                                 unit="option rows")
  lengths = dict(feature_lengths or {})
  in_len = lengths.get("inputs") or max(len(e["inputs"]) for e in examples)
  tgt_len = lengths.get("targets") or max(len(e["targets"]) for e in examples)
  if prompt is not None:
    prompt = np.asarray(jax.device_get(prompt), np.float32)
  scores = np.zeros(len(examples), np.float32)
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    enc = np.zeros((batch_size, in_len), np.int32)
    tgt = np.zeros((batch_size, tgt_len), np.int32)
    for r, e in enumerate(chunk):
      ids = np.asarray(e["inputs"], np.int32)[:in_len]
      enc[r, :len(ids)] = ids
      ids = np.asarray(e["targets"], np.int32)[:tgt_len]
      tgt[r, :len(ids)] = ids
    out = scoring_lib.score(config, params, prompt, enc, tgt, mesh=mesh)
    scores[start:start + len(chunk)] = out[:len(chunk)]
  by_row = {id(e): float(s) for e, s in zip(examples, scores)}
  rows = []
  for group in _option_rows(task, examples):
    order = sorted(range(len(group["options"])), key=lambda i: group["options"][i][0])
    options = [group["options"][i][1] for i in order]
    option_scores = [by_row[id(group["rows"][i])] for i in order]
    correct = [group["correct"][i] for i in order]
    best = min(range(len(order)), key=lambda i: (-option_scores[i], group["options"][order[i]][0]))
    row = {"inputs": group["inputs"], "prediction": options[best]}
    if any(correct):
      row["targets"] = options[correct.index(True)]
    row["options"] = options
    row["scores"] = option_scores
    rows.append(row)
  return rows

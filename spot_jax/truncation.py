"""Examples cut to TASK_FEATURE_LENGTHS: found, counted and said, with the length that keeps them whole.

seqio trims a feature longer than its length (keeping EOS) without a word; a prompt then trains on, or
is scored on, cut inputs, and distinct label words can become one target. Three checks, by what a run
reads:
- `warn_truncation`, at start-up: a task's label words and its first `TRUNCATION_PEEK` examples (not a
  pass over the data; the warning says which examples it read).
- `TruncationCount`, over training batches as they flow: each example's untrimmed length rides beside
  it (`with_untrimmed_lengths`) to the host, where `input_pipeline.Batches` takes it out and counts it.
- `warn_cut_examples`, over a whole evaluation or inference split (infer holds it in memory; eval
  reads it once more at start-up): each distinct text that fills its length is tokenized again to
  tell a cut from an exact fit.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger("spot_jax")


def _leaf_tasks(task) -> List:
  import seqio
  return list(task.tasks) if isinstance(task, seqio.Mixture) else [task]


TRUNCATION_PEEK = 64  # examples of each task that `warn_truncation` reads (not a data pass)
_TRUNCATION_CHECKED = set()  # (task, split, lengths) looked at
_TRUNCATION_WARNED = set()  # (task, feature, length) warned about, whichever split showed it
_TRUNCATION_NEEDED = {}  # (task, feature, length) -> the length the start-up check found needed


def known_labels(task) -> Optional[Tuple[str, ...]]:
  """The task's label words when its registration states them (a `label_names=` bound to its
  postprocessor or a preprocessor, as the GLUE, SuperGLUE and SPoT source tasks do), else None."""
  for fn in [getattr(task, "postprocessor", None)] + list(getattr(task, "preprocessors", ())):
    if isinstance(fn, functools.partial) and fn.keywords.get("label_names"):
      return tuple(str(n) for n in fn.keywords["label_names"])
  return None


def _needs_sequence_length(task) -> bool:
  for prep in getattr(task, "preprocessors", ()):
    try:
      param = inspect.signature(prep).parameters.get("sequence_length")
    except (TypeError, ValueError):
      continue
    if param is not None and param.default is inspect.Parameter.empty:
      return True
  return False


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cut(ids: Sequence[int], length: int) -> Tuple[int, ...]:
  """What seqio's append_eos_after_trim keeps of a sequence ending in EOS: length-1 ids + EOS."""
  ids = tuple(int(i) for i in ids)
  return ids if len(ids) <= length else ids[:length - 1] + ids[-1:]


def _peek(leaf, split: str, n: int) -> List[Mapping]:
  """The first `n` examples of `split`, tokenized and not trimmed (EOS included)."""
  ds = leaf.get_dataset(None, split=split, shuffle=False, num_epochs=1, use_cached=False,
                        try_in_mem_cache=False)
  return list(ds.take(n).as_numpy_iterator())


def truncation_report(leaf, feature_lengths: Mapping[str, int], split: str,
                      num_examples: int = TRUNCATION_PEEK) -> Dict[str, dict]:
  """{feature: {"length", "cut", "seen", "needed", "merged"}} for each of `inputs`/`targets` that
  TASK_FEATURE_LENGTHS cuts in the task's label words or its first `num_examples` examples of
  `split`: how many of those are cut, the length that keeps them whole (EOS included), and pairs of
  distinct targets (label words) that become the same target once cut. Empty when nothing is cut."""
  out: Dict[str, dict] = {}
  rows = [] if _needs_sequence_length(leaf) or not num_examples else _peek(leaf, split, num_examples)
  labels = known_labels(leaf)
  for feature in ("inputs", "targets"):
    length = feature_lengths.get(feature)
    spec = leaf.output_features.get(feature)
    if not length or spec is None:
      continue
    seqs = {}  # ids -> text
    for row in rows:
      if feature in row:
        seqs.setdefault(tuple(int(i) for i in row[feature]),
                        _text(row.get(f"{feature}_pretokenized", "")))
    cut = sum(1 for row in rows if feature in row and len(row[feature]) > length)
    if feature == "targets" and labels:
      eos = [spec.vocabulary.eos_id] if getattr(spec, "add_eos", True) else []
      for label in labels:
        seqs.setdefault(tuple(spec.vocabulary.encode(label)) + tuple(eos), label)
    longest = max((len(ids) for ids in seqs), default=0)
    if longest <= length:
      continue
    merged, by_cut = [], {}
    if feature == "targets":
      for ids, text in sorted(seqs.items(), key=lambda kv: kv[1]):
        first = by_cut.setdefault(_cut(ids, length), (ids, text))
        if first[0] != ids and len(merged) < 3:
          merged.append((first[1], text))
    out[feature] = {"length": int(length), "cut": cut, "seen": len(rows), "needed": longest,
                    "merged": merged, "labels": bool(labels) and feature == "targets"}
  return out


def _merged(pairs) -> str:
  return "distinct targets become the same target (" + "; ".join(f"{a!r} and {b!r}" for a, b in pairs) + ")"


def _truncation_message(task_name: str, feature: str, r: Mapping, split: str,
                        fixed: Mapping[str, int], setting: str = "TASK_FEATURE_LENGTHS") -> str:
  where = []
  if r["cut"]:
    where.append(f"{r['cut']} of the first {r['seen']} {split!r} examples")
  if r.get("labels") and not r["cut"]:
    where.append("its label words")
  msg = (f"task {task_name!r}: {' and '.join(where) or 'some examples'} have {feature} longer than "
         f"{setting}[{feature!r}]={r['length']} tokens (up to {r['needed']} with EOS); seqio "
         f"cuts them to {r['length']} (keeping EOS)")
  if r["merged"]:
    msg += f", so {_merged(r['merged'])} and cannot be learned or told apart"
  return (f"{msg}. Raise it to at least {r['needed']}: --gin.{setting}=\"{fixed}\""
          + (" (only these were read: later examples may need more)" if r["seen"] else ""))


def warn_truncation(task, feature_lengths: Optional[Mapping[str, int]], split: str,
                    num_examples: int = TRUNCATION_PEEK, setting: str = "TASK_FEATURE_LENGTHS") -> List[str]:
  """Warns (once per task, feature and length) for each task of `task` (a mixture's tasks with
  `split`) whose inputs or targets `feature_lengths` cuts: `truncation_report` on its label
  words and first `num_examples` examples (0: the label words only), not a pass over the data (the
  warning says which examples it read). Returns the warnings. Never raises: a task whose examples
  cannot be read here is left to the real pipeline's error. `setting` is the gin binding the lengths
  came from, which the warning tells the user to raise."""
  if not feature_lengths:
    return []
  warnings = []
  for leaf in _leaf_tasks(task):
    key = (leaf.name, split, tuple(sorted((k, int(v)) for k, v in feature_lengths.items() if v)))
    if key in _TRUNCATION_CHECKED:
      continue
    _TRUNCATION_CHECKED.add(key)
    try:
      if split not in leaf.splits:
        continue
      report = truncation_report(leaf, feature_lengths, split, num_examples)
    except Exception as e:  # pylint: disable=broad-except  (a warning must not stop the run)
      log.debug("truncation check of %s skipped: %s", leaf.name, e)
      continue
    fixed = {**{k: int(v) for k, v in feature_lengths.items() if v},
             **{feature: r["needed"] for feature, r in report.items()}}
    for feature, r in report.items():
      key = (leaf.name, feature, r["length"])
      _TRUNCATION_NEEDED[key] = max(_TRUNCATION_NEEDED.get(key, 0), r["needed"])
      if (leaf.name, feature, r["length"]) in _TRUNCATION_WARNED:
        continue
      _TRUNCATION_WARNED.add((leaf.name, feature, r["length"]))
      warnings.append(_truncation_message(leaf.name, feature, r, split, fixed, setting))
      log.warning("%s", warnings[-1])
  return warnings


def found_cut(task, feature: str, length: int) -> bool:
  """Whether the start-up check (`warn_truncation`) found `feature` of `task`, or of one of its
  tasks, cut at `length`."""
  return any((name, feature, int(length)) in _TRUNCATION_NEEDED
             for name in [task.name] + [leaf.name for leaf in _leaf_tasks(task)])


def count_cut_examples(task, examples: Iterable[Mapping], feature_lengths: Mapping[str, int]
                       ) -> Dict[str, dict]:
  """{feature: {"length", "cut", "seen", "needed", "merged"}} for each of `inputs`/`targets` that
  `feature_lengths` cut in `examples`: a task's examples as seqio hands them to a run (trimmed,
  numpy). An example whose ids fill the length is tokenized again from its `<feature>_pretokenized`
  text (where the ids came from; once per distinct text) to tell a cut from an exact fit; "merged"
  holds up to 3 pairs of distinct target texts that the cut made the same ids. Features whose ids a preprocessor makes from
  the lengths (span corruption) are not counted: they fit by construction."""
  lengths = {f: int(feature_lengths[f]) for f in ("inputs", "targets")
             if feature_lengths and feature_lengths.get(f)}
  if not lengths or _needs_sequence_length(task):
    return {}
  counts = {}
  for feature, length in lengths.items():
    spec = task.output_features.get(feature)
    if spec is not None and getattr(spec, "vocabulary", None) is not None:
      counts[feature] = {"length": length, "cut": 0, "seen": 0, "needed": 0, "merged": [],
                         "vocabulary": spec.vocabulary, "eos": 1 if getattr(spec, "add_eos", True) else 0,
                         "by_ids": {}, "full": {}}
  for ex in examples:
    for feature, c in counts.items():
      if feature not in ex:
        continue
      c["seen"] += 1
      text = ex.get(f"{feature}_pretokenized")
      if len(ex[feature]) < c["length"] or text is None or np.ndim(text) != 0:
        continue
      text = _text(text)
      full = c["full"].get(text)  # rank rows repeat their example's input: tokenized once
      if full is None:
        full = c["full"][text] = len(c["vocabulary"].encode(text)) + c["eos"]
      if full > c["length"]:
        c["cut"] += 1
        c["needed"] = max(c["needed"], full)
      if feature == "targets":  # distinct texts whose kept ids (cut, or filling the length) are the same
        first = c["by_ids"].setdefault(tuple(int(i) for i in ex[feature]), text)
        pair = tuple(sorted((first, text)))
        if first != text and pair not in c["merged"] and len(c["merged"]) < 3:
          c["merged"].append(pair)
  keep = ("length", "cut", "seen", "needed", "merged")
  return {f: {k: c[k] for k in keep} for f, c in counts.items() if c["cut"]}


def warn_cut_examples(task, split: str, examples: Iterable[Mapping], feature_lengths: Mapping[str, int],
                      what: str, setting: str = "TASK_FEATURE_LENGTHS", unit: str = "examples") -> List[str]:
  """Counts the cut examples of a split a run reads whole (`count_cut_examples`) and warns once per
  feature with the count and the length that keeps them all. `what` says what the cut inputs or
  targets spoil ("its metrics", "its predictions"); `unit` what a row is ("option rows" for rank
  classification). Returns the warnings."""
  report = count_cut_examples(task, examples, feature_lengths)
  fixed = {**{k: int(v) for k, v in feature_lengths.items() if v},
           **{feature: r["needed"] for feature, r in report.items()}}
  out = []
  for feature, r in report.items():
    msg = (f"task {task.name!r}: {r['cut']} of the {r['seen']} {split!r} {unit} have {feature} longer than "
           f"{setting}[{feature!r}]={r['length']} tokens (up to {r['needed']} with EOS); seqio cuts them to "
           f"{r['length']} (keeping EOS), so {what} come from cut {feature}")
    if r["merged"]:
      msg += f", and {_merged(r['merged'])}, which cannot be told apart"
    out.append(f"{msg}. Raise it to at least {r['needed']}: --gin.{setting}=\"{fixed}\"")
    log.warning("%s", out[-1])
  return out


# Each example's length before seqio trims it (EOS included), carried beside the batch from the task's
# dataset to `Batches`, which takes it out again: the model and the trainer never see it.
UNTRIMMED = "{}_untrimmed_length"


def countable_features(task, feature_lengths: Mapping[str, int], element_spec) -> Dict[str, Tuple]:
  """{feature: (vocabulary, EOS ids appended)} for `inputs`/`targets` whose cut examples the pipeline
  can count: the ids seqio tokenized from the example's `<feature>_pretokenized` text
  (`seqio.preprocessors.tokenize`), which the dataset keeps. Empty for a task whose preprocessors
  make the ids from `sequence_length` (span corruption, prefix LM: they fit by construction, and their
  text is not the ids' source)."""
  import tensorflow as tf
  if any(_needs_sequence_length(leaf) for leaf in _leaf_tasks(task)):
    return {}
  out = {}
  for feature in ("inputs", "targets"):
    spec = task.output_features.get(feature)
    text = element_spec.get(f"{feature}_pretokenized") if isinstance(element_spec, Mapping) else None
    if (not feature_lengths.get(feature) or spec is None or getattr(spec, "vocabulary", None) is None
        or text is None or text.dtype != tf.string or text.shape.rank != 0):
      continue
    out[feature] = (spec.vocabulary, 1 if getattr(spec, "add_eos", True) else 0)
  return out


def with_untrimmed_lengths(ds, feature_lengths: Mapping[str, int], countable: Mapping[str, Tuple]):
  """Adds `<feature>_untrimmed_length` ([1] int32) to each example of the task's (trimmed) dataset: its
  kept length when shorter than the limit (nothing was cut), else the length of its text tokenized
  again, EOS included. Only examples that fill the limit are tokenized again."""
  import tensorflow as tf

  def record(ex):
    out = dict(ex)
    for feature, (vocabulary, eos) in countable.items():
      kept = tf.size(ex[feature], out_type=tf.int32)
      text = ex[f"{feature}_pretokenized"]
      full = tf.cond(kept >= int(feature_lengths[feature]),
                     lambda v=vocabulary, t=text, e=eos: tf.size(v.encode_tf(t), out_type=tf.int32) + e,
                     lambda k=kept: k)
      out[UNTRIMMED.format(feature)] = tf.reshape(full, [1])
    return out
  return ds.map(record, num_parallel_calls=tf.data.AUTOTUNE)


class TruncationCount:
  """Counts, over the batches a run actually reads, the examples whose inputs or targets
  TASK_FEATURE_LENGTHS cut (seqio trims them, keeping EOS), and says so: one warning at the first cut
  example that the start-up check (`warn_truncation`, the first examples only) did not already warn
  about, and `report()`, one line per cut feature with the count, once, when the run ends."""

  def __init__(self, task, split: str, feature_lengths: Mapping[str, int], features: Sequence[str],
               setting: str = "TASK_FEATURE_LENGTHS", first_batch: int = 0, shard: Tuple[int, int] = (0, 1)):
    self.task_name = task.name
    self.leaf_names = [leaf.name for leaf in _leaf_tasks(task)]
    self.split, self.setting, self.shard = split, setting, shard
    self.lengths = {k: int(v) for k, v in feature_lengths.items() if v}
    self.features = tuple(features)
    self.first_batch = first_batch  # batches skipped (a resumed run): this count starts after them
    self.batches = 0
    self.examples = 0
    self.cut = {f: 0 for f in self.features}
    self.needed = {f: 0 for f in self.features}
    self._reported = False

  def _need(self, feature: str) -> int:
    """The length that keeps whole what this count and the start-up check saw of `feature`."""
    return max([self.needed.get(feature, 0)] + [
        _TRUNCATION_NEEDED.get((name, feature, self.lengths.get(feature)), 0)
        for name in [self.task_name] + self.leaf_names])

  def _fixed(self) -> Dict[str, int]:
    return {f: max(n, self._need(f)) for f, n in self.lengths.items()}

  def _what(self) -> str:
    kind = "mixture" if self.leaf_names != [self.task_name] else "task"
    return f"{kind} {self.task_name!r}"

  def _warned_at_start(self, feature: str) -> bool:
    return any((name, feature, self.lengths[feature]) in _TRUNCATION_WARNED
               for name in [self.task_name] + self.leaf_names)

  def add(self, untrimmed: Mapping[str, np.ndarray]) -> None:
    self.batches += 1
    rows = 0
    for feature in self.features:
      full = np.asarray(untrimmed[feature]).reshape(-1)
      rows = max(rows, full.size)
      cut = full > self.lengths[feature]
      if not cut.any():
        continue
      first_cut = not self.cut[feature]
      self.cut[feature] += int(cut.sum())
      self.needed[feature] = max(self.needed[feature], int(full.max()))
      if first_cut and not self._warned_at_start(feature):
        _TRUNCATION_WARNED.add((self.task_name, feature, self.lengths[feature]))
        log.warning(
            "%s: an example in batch %d of its %r data (example %d this run read) has %s of %d tokens with "
            "EOS, longer than %s[%r]=%d; seqio cuts it to %d (keeping EOS). The examples checked at the start "
            "had none that long. Raise it to at least %d: --gin.%s=\"%s\" (later examples may need more: "
            "the count of all that are cut is reported when the run ends)", self._what(),
            self.first_batch + self.batches, self.split, self.examples + int(np.argmax(cut)) + 1, feature,
            int(full[cut][0]), self.setting, feature, self.lengths[feature], self.lengths[feature],
            self._need(feature), self.setting, self._fixed())
    self.examples += rows

  def messages(self) -> List[str]:
    """One line per feature with cut examples: how many of the examples read, and the length needed."""
    out = []
    where = f" (this process's shard {self.shard[0]} of {self.shard[1]})" if self.shard[1] > 1 else ""
    span = (f"batches {self.first_batch + 1}-{self.first_batch + self.batches}" if self.batches > 1
            else f"batch {self.first_batch + 1}")
    for feature in self.features:
      if not self.cut[feature]:
        continue
      out.append(
          f"{self._what()}: {self.cut[feature]} of the {self.examples} {self.split!r} examples this run read "
          f"({span}){where} had {feature} longer than {self.setting}[{feature!r}]={self.lengths[feature]} "
          f"tokens (up to {self.needed[feature]} with EOS); seqio cut them to {self.lengths[feature]} "
          f"(keeping EOS). Raise it to at least {self._need(feature)}: --gin.{self.setting}=\"{self._fixed()}\"")
    return out

  def report(self) -> List[str]:
    """Logs `messages()` as warnings, once (later calls return them without logging again)."""
    out = self.messages()
    if not self._reported:
      self._reported = True
      for msg in out:
        log.warning("%s", msg)
      if not out and self.batches:
        log.info("%s: none of the %d %r examples this run read had %s longer than %s", self._what(),
                 self.examples, self.split, " or ".join(self.features), self.setting)
    return out

"""Task → host batches: a seqio task or mixture, converted for an encoder-decoder without packing.

Each process reads its own shard (seqio ShardInfo) and yields numpy batches of `global / processes`
rows. The pipeline is deterministic for a seed, so resuming at step `s` skips `s` batches.

Everything a user can get wrong fails when `get_batches` is called, before any batch, with the fix:
a split the task lacks, TFDS data that is not prepared (`DataNotPreparedError`), a vocabulary that
cannot be read (`tasks.vocab.VocabularyError`), and training on a `_rank` evaluation task.
Features longer than TASK_FEATURE_LENGTHS are cut (seqio trims them, keeping EOS);
`warn_truncation` looks at a task's label words and its first examples and warns once when that
happens (training and evaluation call it), naming the length needed and the gin macro. The batches
`get_batches` returns also count the cut examples among all they hold, as they flow
(`TruncationCount`: each example's untrimmed length rides beside it to the host and is taken out
there), so a task whose long examples come later is reported too: at the first one, and in total
when the run calls `Batches.close()`.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import logging
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np

log = logging.getLogger("spot_jax")

FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights")


def get_task(name: str):
  """The registered seqio task or mixture, or an error that lists close names."""
  import seqio
  import tasks  # noqa: F401  (registers spot_jax's tasks)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    base = name[:-len("_rank")] if name.endswith("_rank") else None
    if base and base in seqio.TaskRegistry.names():
      # The module that registers `base` was imported: the module hint below would mislead.
      raise ValueError(
          f"unknown task or mixture {name!r}: task {base!r} is registered, but without rank "
          f"classification, so it has no {name!r} twin. Register {base!r} with "
          "rank_classification=True (tasks.user_data.register_task_from_files(..., "
          "rank_classification=True, label_names=[...]), or `rank_classification = True` in its gin "
          f"scope) to also get {name!r}, or use {base!r} itself (docs/user_data.md).") from None
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown task or mixture {name!r}.{hint} List them with `python -m tasks --list` "
                     "(`--module my_tasks` adds your own). "
                     "A task your own module registers (e.g. with tasks.user_data.register_task_from_files) "
                     "exists only once that module is imported: pass --gin.MIXTURE_OR_TASK_MODULE=\"'my_tasks'\" "
                     "(a module importable from the current directory or PYTHONPATH), or register it from "
                     "a gin file (docs/user_data.md).") from None


class DataNotPreparedError(ValueError):
  """A TFDS-backed task whose dataset is not prepared (downloaded and generated) in the data dir."""


def _leaf_tasks(task) -> List:
  import seqio
  return list(task.tasks) if isinstance(task, seqio.Mixture) else [task]


def _tfds_data_dir(loader) -> str:
  try:
    return loader.builder.data_dir
  except Exception:  # pylint: disable=broad-except  (only for the message)
    return os.environ.get("TFDS_DATA_DIR") or "the default TFDS data directory (~/tensorflow_datasets)"


def _not_prepared(task, leaf, split: str, error: BaseException) -> DataNotPreparedError:
  loader = leaf.source.tfds_dataset
  name = loader.name or loader.resolved_tfds_name(split)
  who = (f"task {leaf.name!r} (of mixture {task.name!r})" if leaf is not task
         else f"task {leaf.name!r}")
  detail = error.args[0] if isinstance(error, KeyError) and error.args else error
  return DataNotPreparedError(
      f"{who} reads the TFDS dataset {name} (split {split!r}), which is not prepared in "
      f"{_tfds_data_dir(loader)} (TFDS: {detail}). Point TFDS at a directory that holds the prepared "
      f"data with --tfds_data_dir=DIR or the environment variable TFDS_DATA_DIR=DIR, or prepare it "
      f"on a machine with network access (`tfds build {name} --data_dir=DIR`, or "
      f"tfds.builder({name!r}, data_dir=DIR).download_and_prepare()) and copy DIR here. "
      f"Offline, the bundled tasks (spot_bundled_*) and your own files "
      f"(tasks.user_data.register_task_from_files) need no TFDS data.")


def check_data_prepared(task, split: str):
  """Raises `DataNotPreparedError` if a TFDS dataset `task` (or its mixture's tasks) reads for
  `split` is not generated; TFDS itself would end in a bare KeyError deep inside seqio."""
  import seqio
  for leaf in _leaf_tasks(task):
    source = getattr(leaf, "source", None)
    if not isinstance(source, seqio.TfdsDataSource):
      continue
    try:
      splits = leaf.splits  # splits=None tasks ask TFDS, whose info is empty when not generated
    except KeyError:
      splits = ()
    if splits and split not in splits:
      continue  # a mixture's task without this split (check_split names a single task's)
    try:
      source.num_input_examples(split)
    except KeyError as e:
      raise _not_prepared(task, leaf, split, e) from e


def check_split(task, split: str):
  splits = getattr(task, "splits", None)
  if splits and split not in splits:
    raise ValueError(f"{task.name} has no split {split!r}; it has {sorted(splits)}")
  check_data_prepared(task, split)


def _base_name(name: str) -> str:
  return name[:-len("_rank")] if name.endswith("_rank") else f"the task {name} was derived from"


def _rank_training_error(task, leaf) -> ValueError:
  within = f" (in mixture {task.name})" if leaf is not task else ""
  return ValueError(
      f"{leaf.name}{within} is a rank-classification evaluation task: its train split holds every "
      f"label option as a target (only the rows with is_correct are right), so training on it ends "
      f"at chance accuracy. Train on {_base_name(leaf.name)} (the task without `_rank`) and "
      f"evaluate or score on {leaf.name}.")


def check_trainable(task):
  """Refuses training on rank-classification evaluation tasks (`X_rank`; tasks.rank_classification
  and tasks.user_data mark their option-expanding preprocessor, see `rank_mode`). One in a mixture at
  rate 0 is never sampled: it is there to be evaluated (training's periodic evaluation reads the
  mixture), as tasks/mixtures.py's rate-0 members are."""
  import seqio
  from tasks import rank_classification as rank_lib
  for leaf in _leaf_tasks(task):
    if rank_lib.is_rank_eval(leaf):  # marked tasks here; unmarked ones once their features are read
      if isinstance(task, seqio.Mixture) and task.get_rate(leaf) == 0:
        continue
      raise _rank_training_error(task, leaf)


def load_vocabularies(task, checkpoint_path: Optional[str] = None):
  """Reads the SentencePiece models of a task's features now, with an error that names the path.

  `checkpoint_path`: the frozen model's; when the project's vocabulary cannot be read and it is a
  Hugging Face folder holding its own `spiece.model` (T5's and mT5's downloads do), the error names that
  file as the one to use (offline, the default gs://t5-data/... cannot be read)."""
  from tasks import vocab as vocab_lib
  for leaf in _leaf_tasks(task):
    for feature in leaf.output_features.values():
      vocabulary = getattr(feature, "vocabulary", None)
      if vocabulary is not None:
        try:
          vocab_lib.ensure_loaded(vocabulary, task=leaf.name)
        except vocab_lib.VocabularyError as e:
          from spot_jax.checkpoints import hf  # pylint: disable=g-import-not-at-top  (files only, no model)
          local_copy = hf.sentencepiece_model(checkpoint_path)
          if local_copy is None:
            raise
          raise e.with_local_copy(local_copy) from e.__cause__


# T5 checkpoints pad their embedding to a multiple of 128 rows (32100 ids -> 32128, mT5's 250100 ->
# 250112): a model with 128 or more rows beyond the task's vocabulary was trained on another one.
VOCAB_PADDING = 128


def padded_vocab_size(size: int) -> int:
  """`size` rounded up to a multiple of `VOCAB_PADDING`, as T5 checkpoints pad their embeddings (the
  bundled tasks' 1100 ids -> 1152, the demo backbone's; T5's 32100 -> 32128)."""
  return -(-size // VOCAB_PADDING) * VOCAB_PADDING


def check_vocabulary_fits(task, model_vocab_size: int, fresh_init: bool = False,
                          checkpoint_macro: str = "INITIAL_CHECKPOINT_PATH", checkpoint_path: Optional[str] = None):
  """Refuses, before any compute, a task whose vocabulary is not the model's.

  Larger: ids the model has no embedding row for would gather NaN and poison the loss. Much smaller
  (by `VOCAB_PADDING` ids or more): the task tokenizes with another SentencePiece model (e.g. a
  bundled `spot_bundled_*` task on a real T5), so training would run on meaningless ids.

  `fresh_init`: the model is a fresh initialization of the gin size (`checkpoint_macro` is None), whose
  vocab_size is the gin's to choose: the error gives the binding that fits the task. `checkpoint_path`:
  the frozen model's, for `load_vocabularies`' error.
  """
  load_vocabularies(task, checkpoint_path)
  sizes = {feature: getattr(getattr(task.output_features.get(feature), "vocabulary", None), "vocab_size", None)
           for feature in ("inputs", "targets")}
  largest = max((size for size in sizes.values() if size is not None), default=None)
  for feature, size in sizes.items():
    if size is None or VOCAB_PADDING > model_vocab_size - size >= 0:
      continue
    said = f"{task.name}'s {feature} vocabulary has {size} ids but the model's vocab_size is {model_vocab_size}"
    if fresh_init:
      raise ValueError(
          f"{said}, and the model is a fresh initialization of the gin size ({checkpoint_macro} is None), "
          f"whose vocab_size is the gin configuration's (T5's 32128 in models/t5_1_1.gin): give it the task's "
          f"vocabulary, padded to a multiple of {VOCAB_PADDING} as T5 checkpoints pad theirs, with "
          f"--gin.spot_jax.model_config.vocab_size={padded_vocab_size(largest)}, or set {checkpoint_macro} "
          "to the model the task was made for")
    from spot_jax.checkpoints import hf  # pylint: disable=g-import-not-at-top  (files only, no model)
    local_copy = hf.sentencepiece_model(checkpoint_path)
    own = (f" The checkpoint's folder holds the model's own SentencePiece model: export SPOT_JAX_VOCAB="
           f"{local_copy} (for the tasks that read SPOT_JAX_VOCAB)" if local_copy else "")
    if size > model_vocab_size:
      raise ValueError(
          f"{said}: ids from {model_vocab_size} on have no embedding. Use a checkpoint "
          f"(or model config) with vocab_size >= {size}, or register the task with the model's "
          "vocabulary." + own)
    raise ValueError(
        f"{said}: the task does not use the model's vocabulary (checkpoints pad theirs "
        f"by fewer than {VOCAB_PADDING} ids), so its token ids would mean other words to the model. "
        "Register the task with the model's SentencePiece model (SPOT_JAX_VOCAB for the GLUE, "
        "SuperGLUE, SPoT and PPT tasks and tasks.user_data; the bundled spot_bundled_* tasks have "
        "their own 1100-id vocabulary, for the demo backbone), or load the model it was made for."
        + (own or (" mT5's is gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model (a local copy "
                   "offline): export SPOT_JAX_VOCAB=/path/to/it" if model_vocab_size in (250100, 250112) else "")))


# ----------------------------------------------------------------------------------- truncation

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
  rows = [] if _needs_sequence_length(leaf) else _peek(leaf, split, num_examples)
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
    pairs = "; ".join(f"{a!r} and {b!r}" for a, b in r["merged"])
    msg += f", so distinct targets become the same target ({pairs}) and cannot be learned or told apart"
  return (f"{msg}. Raise it to at least {r['needed']}: --gin.{setting}=\"{fixed}\" (only these were "
          "read: later examples may need more)")


def warn_truncation(task, feature_lengths: Optional[Mapping[str, int]], split: str,
                    num_examples: int = TRUNCATION_PEEK, setting: str = "TASK_FEATURE_LENGTHS") -> List[str]:
  """Warns (once per task, feature and length) for each task of `task` (a mixture's tasks with
  `split`) whose inputs or targets `feature_lengths` cuts: `truncation_report` on its label
  words and first `num_examples` examples, not a pass over the data (the warning says which
  examples it read). Returns the warnings. Never raises: a task whose examples cannot be read here is
  left to the real pipeline's error. `setting` is the gin binding the lengths came from, which the
  warning tells the user to raise."""
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


# Each example's length before seqio trims it (EOS included), carried beside the batch from the task's
# dataset to `Batches`, which takes it out again: the model and the trainer never see it.
_UNTRIMMED = "{}_untrimmed_length"


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


def _with_untrimmed_lengths(ds, feature_lengths: Mapping[str, int], countable: Mapping[str, Tuple]):
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
      out[_UNTRIMMED.format(feature)] = tf.reshape(full, [1])
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


class Batches:
  """What `get_batches` returns: an iterator of numpy batches of the model's `FEATURES`, with a
  `truncation` (`TruncationCount`, None when the task's examples cannot be counted) of the batches it
  returned. `close()` reports that count (a training run calls it when it ends)."""

  def __init__(self, ds, truncation: Optional[TruncationCount]):
    self._ds, self._it = ds, None
    self.truncation = truncation

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      self._it = self._ds.as_numpy_iterator()
    batch = next(self._it)
    if self.truncation is not None:
      self.truncation.add({f: batch.pop(_UNTRIMMED.format(f)) for f in self.truncation.features})
    return {k: np.asarray(v, np.int32) for k, v in batch.items()}

  def close(self) -> List[str]:
    """Reports the truncation count (once); returns its messages."""
    return self.truncation.report() if self.truncation is not None else []


@gin.configurable
def get_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                batch_size: int, shuffle: bool = True, seed: Optional[int] = 0,
                num_epochs: Optional[int] = None, skip_batches: int = 0,
                shard_index: Optional[int] = None, num_shards: Optional[int] = None,
                drop_remainder: bool = True) -> Iterator[dict]:
  """Numpy batches of `batch_size // num_shards` rows for this process (EncDec features), as `Batches`.

  The checks and the dataset are done on the call (errors surface here, not at the first batch);
  split "train" of a rank-classification evaluation task (`X_rank`) is refused. Examples cut to
  `task_feature_lengths` are warned about from the first examples at once (`warn_truncation`); a feature
  with none cut there is counted in every batch returned (`Batches.truncation`), reported by
  `Batches.close()`.
  """
  import jax
  import seqio
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory from JAX
  shard_index = jax.process_index() if shard_index is None else shard_index
  num_shards = jax.process_count() if num_shards is None else num_shards
  if batch_size % num_shards:
    raise ValueError(f"BATCH_SIZE={batch_size} must divide over {num_shards} processes")
  task = get_task(mixture_or_task_name)
  if split == "train":
    check_trainable(task)
  check_split(task, split)
  load_vocabularies(task)
  kwargs = dict(split=split, use_cached=False, shuffle=shuffle, seed=seed,
                shard_info=seqio.ShardInfo(shard_index, num_shards), num_epochs=num_epochs,
                try_in_mem_cache=False)
  try:
    ds = None
    if isinstance(task, seqio.Mixture):  # a mixture keeps its tasks' texts only when asked to
      try:
        ds = task.get_dataset(dict(task_feature_lengths), passthrough_features=[
            f"{f}_pretokenized" for f in ("inputs", "targets")], **kwargs)
      except (TypeError, ValueError):  # a task without them: mixed without them (and not counted)
        ds = None
    if ds is None:
      ds = task.get_dataset(dict(task_feature_lengths), **kwargs)
  except KeyError as e:
    if "generated" not in str(e):
      raise
    raise DataNotPreparedError(f"{task.name}: TFDS data for split {split!r} is not prepared ({e}); "
                               "set --tfds_data_dir=DIR or TFDS_DATA_DIR to prepared data") from e
  from tasks import rank_classification as rank_lib
  if split == "train" and rank_lib.is_rank_eval(task, ds.element_spec):
    raise _rank_training_error(task, task)
  warn_truncation(task, task_feature_lengths, split)
  # Counted: the features the start-up check found no cut in. One it did find cut in (a task of long
  # documents cut by design) was warned about already, and counting it would tokenize most of its
  # examples twice (1.7x the input pipeline's time in a review's test); where cuts are rare, so are
  # the second tokenizations.
  names = [task.name] + [leaf.name for leaf in _leaf_tasks(task)]
  countable = {f: c for f, c in countable_features(task, task_feature_lengths, ds.element_spec).items()
               if not any((n, f, int(task_feature_lengths[f])) in _TRUNCATION_NEEDED for n in names)}
  lengths = dict(task_feature_lengths)
  carried = {}
  if countable:
    ds = _with_untrimmed_lengths(ds, task_feature_lengths, countable)
    carried = {_UNTRIMMED.format(f): seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for f in countable}
    lengths.update({k: 1 for k in carried})
  ds = seqio.EncDecFeatureConverter(pack=False, passthrough_features=carried or None)(ds, lengths)
  ds = ds.map(lambda ex: {k: ex[k] for k in FEATURES + tuple(carried)}, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size // num_shards, drop_remainder=drop_remainder)
  if skip_batches:
    ds = ds.skip(skip_batches)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  count = (TruncationCount(task, split, task_feature_lengths, tuple(countable), first_batch=skip_batches,
                           shard=(shard_index, num_shards)) if countable else None)
  return Batches(ds, count)


@gin.configurable
def task_vocabulary(mixture_or_task_name: str = gin.REQUIRED):
  """The targets vocabulary of a task (for vocabulary-based prompt initializers)."""
  return get_task(mixture_or_task_name).output_features["targets"].vocabulary

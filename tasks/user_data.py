"""Register a seqio Task from a user's own TSV, CSV or JSONL files.

`register_task_from_files` turns labelled files into an encoder-decoder Task
(`inputs`/`targets` text features) in one call, from Python or from gin: the
input template, the label map, the metrics, the `_rank` twin, overwrite (and
the warning about mixtures that keep the old task) and the gin entry point are
here. Reading and checking the files, exactly as the tf.data pipeline reads
them (field splitting, encodings, line ends, label normalization, errors naming
file:line and the fix), is `tasks.user_files`; its public names are re-exported
here, so `tasks.user_data.UserDataError`, `decode_fields`, `normalize_label` and
the like keep working.
"""

import importlib.util  # noqa: F401  (gin 0.5 needs it imported first)
import os
import string
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import gin
import seqio
import tensorflow as tf

from tasks import metrics as metrics_lib
from tasks import postprocessors as post_lib
from tasks import rank_classification as rank_lib
from tasks import vocab as vocab_lib
# Reading and checking the files; the public names are re-exported: callers import them from here.
from tasks.user_files import (LABEL_STRIP_CHARS, UNLABELLED_TARGET, PathSpec, UserDataError,
                              decode_fields, infer_format, is_blank, normalize_label, read_records,
                              read_text, validate_file)
from tasks.user_files import (_UNLABELLED, _Labels, _TextFileSource, _check_split, _expand,
                              _jsonl_source, _tf_normalize_label)

__all__ = [
    "DEFAULT_VOCAB_PATH", "DEFAULT_EXTRA_IDS", "SPLITS", "LABELS_ARE", "accuracy", "macro_f1",
    "METRICS", "text_postprocessor", "template_fields", "default_vocabulary",
    "register_task_from_files", "register_from_gin",
    # from user_files.py
    "UserDataError", "UNLABELLED_TARGET", "PathSpec", "LABEL_STRIP_CHARS", "normalize_label",
    "infer_format", "read_text", "decode_fields", "read_records", "validate_file", "is_blank",
]

# The default vocabulary is the project's (`tasks.vocab.DEFAULT_VOCABULARY`):
# `tasks.vocab.set_vocabulary`/`use_vocabulary`, else $SPOT_JAX_VOCAB, else T5's
# public cc_all.32000 model + 100 sentinels (32100 ids; T5X's .100extra copy, which
# holds them, gives the same ids), resolved and
# loaded lazily, so nothing is fetched until a task is tokenized.
DEFAULT_VOCAB_PATH = vocab_lib.DEFAULT_VOCAB_PATH
DEFAULT_EXTRA_IDS = vocab_lib.DEFAULT_EXTRA_IDS
SPLITS = ("train", "validation", "test")
LABELS_ARE = ("names", "indices")


# ----------------------------------------------------------------- metrics


def _to_str(x) -> str:
  if isinstance(x, bytes):
    x = x.decode("utf-8")
  return str(x).strip()


def accuracy(targets, predictions) -> Dict[str, float]:
  """Exact-match accuracy in percent (T5 convention)."""
  if not targets:
    return {"accuracy": 0.0}
  hits = sum(_to_str(t) == _to_str(p) for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / len(targets)}


def macro_f1(targets, predictions) -> Dict[str, float]:
  """Macro-averaged F1 over the labels seen in targets, in percent."""
  targets = [_to_str(t) for t in targets]
  predictions = [_to_str(p) for p in predictions]
  f1s = []
  for label in sorted(set(targets)):
    tp = sum(t == label and p == label for t, p in zip(targets, predictions))
    fp = sum(t != label and p == label for t, p in zip(targets, predictions))
    fn = sum(t == label and p != label for t, p in zip(targets, predictions))
    f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
  return {"macro_f1": 100.0 * sum(f1s) / max(len(f1s), 1)}


METRICS: Dict[str, Callable] = {"accuracy": accuracy, "macro_f1": macro_f1}


def text_postprocessor(output, example=None, is_target=False):
  """Decodes bytes and strips whitespace so metrics compare plain strings."""
  del example, is_target
  return _to_str(output)


# ------------------------------------------------------- template and labels


def template_fields(template: str) -> List[str]:
  """Names of the `{field}` placeholders of an input template, in order."""
  fields = []
  for _, field, spec, conv in string.Formatter().parse(template):
    if field is None:
      continue
    if not field or field.isdigit() or spec or conv:
      raise UserDataError(
          f"input_template {template!r}: use plain named fields like "
          "'{premise}' (no positional '{}', format specs or conversions); "
          "write '{{' and '}}' for literal braces.")
    fields.append(field)
  return fields


def _template_parts(template: str) -> List[Tuple[str, Optional[str]]]:
  return [(lit, field) for lit, field, _, _ in string.Formatter().parse(template)]


def _label_map(label_names: Optional[Sequence[str]],
               labels_are: Optional[str] = None) -> Optional[_Labels]:
  """Accepted (normalized) file value -> label name: the names themselves and/or their indices."""
  if labels_are is not None and labels_are not in LABELS_ARE:
    raise UserDataError(f"labels_are={labels_are!r}: use 'names' (the files hold the label "
                        "names), 'indices' (they hold 0..n-1) or None (either).")
  if label_names is None:
    if labels_are is not None:
      raise UserDataError(f"labels_are={labels_are!r} needs label_names.")
    return None
  if isinstance(label_names, str):
    raise UserDataError(f"label_names={label_names!r} is one string; pass a list of names, "
                        f"e.g. {label_names.split() or [label_names]}.")
  names = [str(n) for n in label_names]
  keys = [normalize_label(n) for n in names]
  if not names or len(set(keys)) != len(keys) or not all(keys):
    raise UserDataError(f"label_names must be distinct and non-empty (ignoring surrounding "
                        f"whitespace): {names}")
  by_name = dict(zip(keys, names))
  by_index = {str(i): n for i, n in enumerate(names)}
  if labels_are is None:
    clash = [(k, by_name[k], by_index[k]) for k in by_index
             if k in by_name and by_name[k] != by_index[k]]
    if clash:
      k, as_name, as_index = clash[0]
      more = f"; so could {[c[0] for c in clash[1:]]}" if clash[1:] else ""
      raise UserDataError(
          f"label_names {names} are ambiguous: a file label {k!r} could be the name {as_name!r} or "
          f"the index {k} (-> {as_index!r}){more}. Pass labels_are='indices' if the files hold "
          f"0..{len(names) - 1} (0 -> {names[0]!r}), or labels_are='names' if they hold the names "
          "themselves.")
  mapping = {}
  if labels_are in (None, "indices"):
    mapping.update(by_index)
  if labels_are in (None, "names"):
    mapping.update(by_name)
  return _Labels(names, mapping, labels_are)


# ---------------------------------------------------- tf pipeline (after the source)


def _format_fn(template: str, target_field: str, labels: Optional[_Labels]):
  parts = _template_parts(template)
  if labels is not None:
    keys = tf.constant(list(labels.mapping.keys()))
    values = tf.constant(list(labels.mapping.values()))
  unk = tf.constant(UNLABELLED_TARGET)

  def fmt(ex):
    pieces = []
    for lit, field in parts:
      if lit:
        pieces.append(tf.constant(lit))
      if field is not None:
        pieces.append(ex[field])
    inputs = tf.strings.join(pieces) if pieces else tf.constant("")
    target = ex[target_field]
    unlabelled = ex[_UNLABELLED]
    if labels is not None:
      label = _tf_normalize_label(target)
      hit = tf.equal(keys, label)
      # Registration checked every label, so this holds unless a file changed since: then stop
      # with the label rather than train on label_names[0] (argmax of all-false is 0).
      check = tf.debugging.Assert(
          tf.logical_or(tf.reduce_any(hit), unlabelled),
          ["tasks.user_data: a label in field", target_field, "is not in label_names:", label,
           "(did a file change after it was registered? register the task again)"])
      with tf.control_dependencies([check]):
        target = tf.gather(values, tf.argmax(tf.cast(hit, tf.int32)))
    target = tf.where(unlabelled, unk, target)
    return {"inputs": inputs, "targets": target}

  return fmt


def _rank_expand(label_names: Sequence[str]):
  """One row per label option, as `tasks.rank_classification` (eval mode):
  `idx` = [example id, option id], `is_correct`."""
  options = tf.constant([str(n) for n in label_names])
  n = len(label_names)

  def expand(ds):
    def one(i, ex):
      return tf.data.Dataset.from_tensor_slices({
          "inputs": tf.fill([n], ex["inputs"]),
          "targets": options,
          "idx": tf.stack([tf.fill([n], tf.cast(i, tf.int32)), tf.range(n)], axis=1),
          "is_correct": tf.equal(options, ex["targets"]),
      })
    return ds.enumerate().flat_map(one)

  return rank_lib.mark_rank_preprocessor(expand, "eval")


def default_vocabulary() -> seqio.Vocabulary:
  """The project's lazy vocabulary (see `tasks.vocab`); nothing is read here."""
  return vocab_lib.DEFAULT_VOCABULARY


def _vocabulary(vocabulary) -> seqio.Vocabulary:
  if vocabulary is None:
    return default_vocabulary()
  if isinstance(vocabulary, (str, os.PathLike)):
    return vocab_lib.get_vocabulary(os.fspath(vocabulary), DEFAULT_EXTRA_IDS)
  return vocabulary


def _metric_fns(metrics, label_names: Optional[Sequence[str]] = None) -> List[Callable]:
  """The metric functions; "macro_f1" of a task with label_names averages over all of them (T5's
  mean_multiclass_f1: a class no target holds still counts), else over the labels the targets hold."""
  if isinstance(metrics, str) or callable(metrics):
    metrics = [metrics]  # metrics="macro_f1" means ["macro_f1"], not its letters
  fns = []
  for m in metrics:
    if callable(m):
      fns.append(m)
    elif m == "macro_f1" and label_names:
      fns.append(metrics_lib.macro_f1_over([normalize_label(str(n)) for n in label_names]))
    elif m in METRICS:
      fns.append(METRICS[m])
    else:
      raise UserDataError(
          f"unknown metric {m!r}; use one of {sorted(METRICS)} or pass a "
          "function f(targets, predictions) -> dict.")
  return fns


def _mixtures_holding(task: seqio.Task) -> List[str]:
  """Names of the registered mixtures that hold this very Task object."""
  names = []
  for name in seqio.MixtureRegistry.names():
    try:
      mixture = seqio.MixtureRegistry.get(name)
      if any(t is task for t in mixture.tasks):
        names.append(name)
    except Exception:  # pylint: disable=broad-except  (a broken mixture is not ours to report)
      continue
  return names


def _replace(name: str, new: Optional[seqio.Task]) -> None:
  """Removes task `name` if registered and registers `new` (if any) in its place; warns about
  mixtures that keep the old Task object (seqio resolves a mixture's tasks when it is made)."""
  old = seqio.TaskRegistry.get(name) if name in seqio.TaskRegistry.names() else None
  if old is not None:
    seqio.TaskRegistry.remove(name)
    stale = _mixtures_holding(old)
    if stale:
      warnings.warn(  # a Python warning: a notebook shows it, where absl's log may go unseen
          f"task {name!r} was registered again, but mixture(s) {stale} still hold the old task (seqio "
          "looks a mixture's tasks up when the mixture is made); register them again "
          "(seqio.MixtureRegistry.remove(name), then add) to use the new one.")
  if new is not None:
    seqio.TaskRegistry.add_provider(name, new)


def _add(task: seqio.Task, overwrite: bool) -> seqio.Task:
  if task.name in seqio.TaskRegistry.names() and not overwrite:
    raise UserDataError(
        f"a task named {task.name!r} is already registered; choose another "
        "name or pass overwrite=True.")
  _replace(task.name, task)
  return task


# The `_rank` twin each task `name` registered here has; overwrite=True without
# rank_classification removes that twin (and only it: another task of that name is the user's).
_RANK_TWINS: Dict[str, seqio.Task] = {}


def _check_names(name: str, rank_classification: bool, overwrite: bool) -> None:
  wanted = [name] + ([name + "_rank"] if rank_classification else [])
  taken = [n for n in wanted if n in seqio.TaskRegistry.names()]
  if taken and not overwrite:
    raise UserDataError(
        f"a task named {taken[0]!r} is already registered; choose another name or pass "
        "overwrite=True (nothing was registered).")


_FORMATS = ("tsv", "csv", "jsonl")


# pylint: disable-next=redefined-builtin
def _file_format(name: str, format: Optional[str], files: Sequence[str]) -> str:
  """The one format of all of a task's files: `format` (any case), else from each file's suffix."""
  if format is not None:
    fmt = format.lower() if isinstance(format, str) else format
    if fmt not in _FORMATS:
      raise UserDataError(f"task {name!r}: format={format!r}: use 'tsv', 'csv' or 'jsonl' (any "
                          "case), or None to take it from the files' suffix.")
    return fmt
  by_format: Dict[str, List[str]] = {}
  for f in files:
    by_format.setdefault(infer_format(f), []).append(f)
  if len(by_format) > 1:
    got = "; ".join(f"{fmt}: {fs}" for fmt, fs in by_format.items())
    # Convert into CSV or JSONL (pandas' to_csv quotes fields, which a TSV reads literally).
    into = next(f for f in by_format if f != "tsv")
    other = next(f for f in by_format if f != into)
    raise UserDataError(
        f"task {name!r}: all files of a task must share one format, but these mix "
        f"{' and '.join(by_format)} ({got}). Convert the {other} files to {into}, e.g. with "
        f"pandas: {_PANDAS_READ[other]}{_PANDAS_WRITE[into]}, or pass only files of one format.")
  return next(iter(by_format))


# For the mixed-format error: how to convert a file from one format to another with pandas.
_PANDAS_READ = {"tsv": "pd.read_csv(path, sep='\\t', quoting=3, dtype=str, keep_default_na=False)",
                "csv": "pd.read_csv(path, dtype=str, keep_default_na=False)",
                "jsonl": "pd.read_json(path, lines=True, dtype=False)"}
_PANDAS_WRITE = {"csv": ".to_csv(out, index=False)",
                 "jsonl": ".to_json(out, orient='records', lines=True, force_ascii=False)"}


# ------------------------------------------------------------ public entry


def register_task_from_files(
    name: str,
    train: PathSpec = None,
    validation: PathSpec = None,
    test: PathSpec = None,
    format: Optional[str] = None,  # pylint: disable=redefined-builtin
    input_template: str = "premise: {premise} hypothesis: {hypothesis}",
    target_field: str = "label",
    label_names: Optional[Sequence[str]] = None,
    metrics: Union[str, Callable, Sequence[Union[str, Callable]]] = ("accuracy",),
    vocabulary: Union[None, str, seqio.Vocabulary] = None,
    rank_classification: bool = False,
    overwrite: bool = False,
    labels_are: Optional[str] = None,
) -> seqio.Task:
  """Registers a seqio Task `name` (and `name + "_rank"`) from files.

  Args:
    name: the task name, as used in `MIXTURE_OR_TASK_NAME`.
    train, validation, test: a path, glob or list of them per split; at least
      one split is required. `gs://` paths work (read through tf.io.gfile).
      The test split may be unlabelled (no target column, or with label_names
      every label empty): its target is then `UNLABELLED_TARGET` ("<unk>"),
      for `infer`; metrics on it mean nothing.
    format: "tsv", "csv" or "jsonl" (any case); inferred from the file suffix if None (all
      files must then have the same format).
    input_template: Python format string over the record's fields producing
      the `inputs` text; no task prefix is added.
    target_field: the field holding the target text or label.
    label_names: if given, labels must be one of these names or an integer
      index into them (`0` -> `label_names[0]`); targets are the names. Labels
      are compared with surrounding whitespace (`LABEL_STRIP_CHARS`) stripped.
    metrics: a name from `METRICS`, a function `f(targets, predictions)`, or a
      list of them.
    vocabulary: a seqio Vocabulary, a SentencePiece model path (100 extra ids,
      appended unless the file holds them), or None for the project's
      vocabulary, resolved when the task is tokenized:
      `tasks.vocab.set_vocabulary`/`use_vocabulary`, else $SPOT_JAX_VOCAB, else
      T5's cc_all.32000 + 100 extra ids.
    rank_classification: also register `name + "_rank"`: one scored example
      per label option, metric `rank_classification_accuracy` (accuracy of the
      best-scored option, reported as "accuracy"; needs label_names). Train on
      `name`, evaluate on `name + "_rank"`.
    overwrite: replace an already registered task of the same name (and the
      `_rank` twin an earlier call registered, which goes away if
      rank_classification is now False).
    labels_are: "names" (the files hold label names), "indices" (they hold
      0..n-1) or None (either; refused when a name is also another index, as
      with label_names ["1", ..., "5"]).

  Returns:
    The registered seqio.Task (the plain, decode-evaluated one).
  """
  if rank_classification and label_names is None:
    raise UserDataError(f"task {name!r}: rank_classification=True needs "
                        "label_names (the options to score).")
  _check_names(name, rank_classification, overwrite)
  split_paths = {"train": train, "validation": validation, "test": test}
  split_files = {s: _expand(p, s) for s, p in split_paths.items() if p is not None}
  if not split_files:
    raise UserDataError(f"task {name!r}: give at least one of train=, "
                        "validation=, test= (a file path or glob).")
  fmt = _file_format(name, format, [f for fs in split_files.values() for f in fs])
  fields = template_fields(input_template)
  labels = _label_map(label_names, labels_are)
  metric_fns = _metric_fns(metrics, label_names)
  splits = {s: _check_split(s, fs, fmt, fields, target_field, labels, input_template)
            for s, fs in split_files.items()}

  columns = list(dict.fromkeys(fields + [target_field]))
  if fmt == "jsonl":
    source = _jsonl_source(split_files, columns, splits)
  else:
    source = _TextFileSource(split_files, splits, fmt, columns)

  vocab = _vocabulary(vocabulary)
  output_features = {
      "inputs": seqio.Feature(vocab, add_eos=True, required=False),
      "targets": seqio.Feature(vocab, add_eos=True),
  }
  format_fn = _format_fn(input_template, target_field, labels)
  base = [lambda ds: ds.map(format_fn, num_parallel_calls=tf.data.AUTOTUNE)]
  tail = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]
  task = seqio.Task(
      name, source=source, output_features=output_features,
      preprocessors=base + tail, postprocess_fn=text_postprocessor,
      metric_fns=metric_fns)
  rank = None
  if rank_classification:
    rank = seqio.Task(
        name + "_rank", source=source, output_features=output_features,
        preprocessors=base + [_rank_expand(labels.names)] + tail,
        postprocess_fn=post_lib.rank_classification,
        metric_fns=[metrics_lib.rank_classification_accuracy])
  # Everything is checked (names first of all): register both, or (overwrite=True) replace both.
  _replace(name, task)
  twin = name + "_rank"
  if rank is not None:
    _replace(twin, rank)
    _RANK_TWINS[name] = rank
  elif _RANK_TWINS.get(name) is not None:
    if (twin in seqio.TaskRegistry.names()
        and seqio.TaskRegistry.get(twin) is _RANK_TWINS[name]):
      _replace(twin, None)  # the stale twin of an earlier registration of `name`
    del _RANK_TWINS[name]
  return task


# For gin files (`@name/tasks.user_data.register_task_from_files()`). Python callers get the plain
# function, whose errors then read as our one-line messages, without gin's "In call to configurable".
gin.external_configurable(register_task_from_files, module="tasks.user_data")


@gin.configurable
def register_from_gin(tasks: Sequence[seqio.Task] = ()) -> List[str]:
  """Gin entry point: evaluating `tasks` registers them; returns their names.

  Bind a list of scoped `@name/register_task_from_files()` references (see
  docs/user_data.md); a training entry point calls this after parsing gin.
  """
  return [t.name for t in tasks]

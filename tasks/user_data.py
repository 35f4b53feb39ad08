"""Register a seqio Task from a user's own TSV, CSV or JSONL files.

`register_task_from_files` turns labelled files into an encoder-decoder Task
(`inputs`/`targets` text features) in one call, from Python or from gin. Files
are read once with Python at registration, so a malformed line, a missing field
or an unknown label fails at once with the file, the line number and the fix,
instead of deep inside a tf.data pipeline during training.

TSV and CSV files need a header line naming the columns; they are read through
`seqio.TextLineDataSource` + `tf.io.decode_csv` (one record per physical line;
TSV fields are taken literally, CSV fields may be double-quoted). JSONL files
hold one JSON object per line and are read through `seqio.FunctionDataSource`.
"""

import csv
import importlib.util  # noqa: F401  (gin 0.5 needs it imported first)
import json
import os
import string
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import seqio
import tensorflow as tf

from tasks import metrics as metrics_lib
from tasks import postprocessors as post_lib
from tasks import rank_classification as rank_lib
from tasks import vocab as vocab_lib

# The default vocabulary is the project's (`tasks.vocab.DEFAULT_VOCABULARY`):
# `tasks.vocab.set_vocabulary`/`use_vocabulary`, else $SPOT_JAX_VOCAB, else T5's
# public cc_all.32000.100extra model + 100 sentinels (32100 ids), resolved and
# loaded lazily, so nothing is fetched until a task is tokenized.
DEFAULT_VOCAB_PATH = vocab_lib.DEFAULT_VOCAB_PATH
DEFAULT_EXTRA_IDS = vocab_lib.DEFAULT_EXTRA_IDS
SPLITS = ("train", "validation", "test")
_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}

PathSpec = Union[str, Sequence[str], None]


class UserDataError(ValueError):
  """A user data file or a registration argument is invalid."""


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


def _label_map(label_names: Optional[Sequence[str]]) -> Optional[Dict[str, str]]:
  """Accepted raw label -> label word: the names themselves and their indices."""
  if label_names is None:
    return None
  names = [str(n) for n in label_names]
  if len(set(names)) != len(names) or not names:
    raise UserDataError(f"label_names must be distinct and non-empty: {names}")
  mapping = {str(i): n for i, n in enumerate(names)}
  mapping.update({n: n for n in names})
  return mapping


# --------------------------------------------------------- eager validation


def infer_format(path: str) -> str:
  for suffix, fmt in _SUFFIXES.items():
    if path.lower().endswith(suffix):
      return fmt
  raise UserDataError(
      f"cannot infer the format of {path!r} from its suffix; name it .tsv, "
      ".csv or .jsonl, or pass format='tsv'|'csv'|'jsonl'.")


def _expand(paths: PathSpec, split: str) -> List[str]:
  if paths is None:
    return []
  if isinstance(paths, str):
    paths = [paths]
  files = []
  for p in paths:
    matched = sorted(tf.io.gfile.glob(p))
    if not matched:
      raise UserDataError(f"{split} file {p!r} does not exist (no file matches).")
    files.extend(matched)
  return files


def _split_line(line: str, fmt: str) -> List[str]:
  if fmt == "tsv":
    return line.split("\t")
  return next(csv.reader([line]))


def _json_value(v) -> str:
  return v if isinstance(v, str) else json.dumps(v)


def _lines(text: str) -> List[str]:
  """The lines of a file's text, split on "\n" only (a "\r" before it, of CRLF files, is dropped).

  Not `str.splitlines()`, which also splits on U+2028/U+2029, \x85, \x0b, \x0c and \x1c-\x1e: JSON
  strings may hold those unescaped, and the training pipeline (tf.data.TextLineDataset) reads a TSV/CSV
  line up to "\n" too, so that validation and training see the same records.
  """
  lines = text.split("\n")
  if lines and lines[-1] == "":  # the newline that ends the last line starts no line
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_records(path: str, fmt: str):
  """Yields `(line_number, record_dict)` from a file, raising on bad lines.

  TSV/CSV: line 1 is the header; JSONL: blank lines are skipped. Lines end at "\n" (or "\r\n").
  """
  with tf.io.gfile.GFile(path, "r") as f:
    lines = _lines(f.read())
  if fmt == "jsonl":
    for n, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserDataError(
            f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); each "
            "line of a .jsonl file must be one JSON object.") from None
      if not isinstance(rec, dict):
        raise UserDataError(
            f"{path}:{n}: expected a JSON object like {{\"field\": ...}}, got "
            f"{type(rec).__name__}.")
      yield n, {k: _json_value(v) for k, v in rec.items()}
    return
  if not lines:
    raise UserDataError(f"{path}: empty file; a {fmt.upper()} file needs a "
                        "header line naming its columns.")
  header = _split_line(lines[0], fmt)
  if len(set(header)) != len(header):
    raise UserDataError(f"{path}:1: duplicate column names in header {header}.")
  sep = "tab" if fmt == "tsv" else "comma"
  for n, line in enumerate(lines[1:], 2):
    if not line:
      raise UserDataError(
          f"{path}:{n}: empty line; remove blank lines from {fmt.upper()} files.")
    try:
      values = _split_line(line, fmt)
    except csv.Error as e:
      raise UserDataError(f"{path}:{n}: cannot parse CSV ({e}).") from None
    if len(values) != len(header):
      hint = ("a tab inside a field" if fmt == "tsv" else
              "an unquoted comma inside a field (wrap it in double quotes)")
      raise UserDataError(
          f"{path}:{n}: expected {len(header)} {sep}-separated fields "
          f"{header} but found {len(values)}; check for {hint} or a missing "
          "field.")
    yield n, dict(zip(header, values))


def _read_header(path: str, fmt: str) -> List[str]:
  with tf.io.gfile.GFile(path, "r") as f:
    first = f.readline().rstrip("\r\n")
  return _split_line(first, fmt)


def validate_file(path: str, fmt: str, fields: Sequence[str], target_field: str,
                  labels: Optional[Mapping[str, str]],
                  template: str) -> int:
  """Checks every record of a file; returns the number of examples."""
  needed = list(dict.fromkeys(list(fields) + [target_field]))
  if fmt != "jsonl":
    header = _read_header(path, fmt)
    for name in needed:
      if name not in header:
        what = ("target_field" if name == target_field and name not in fields
                else f"input_template {template!r}")
        raise UserDataError(
            f"{path}:1: the header {header} has no column {name!r} used by "
            f"{what}; rename the column or change the argument.")
  count = 0
  for n, rec in read_records(path, fmt):
    for name in needed:
      if name not in rec:
        what = ("target_field" if name == target_field and name not in fields
                else f"input_template {template!r}")
        raise UserDataError(
            f"{path}:{n}: record has no field {name!r} used by {what}; add "
            "it to the record or change the argument.")
    if labels is not None:
      label = rec[target_field].strip()
      if label not in labels:
        names = [v for k, v in labels.items() if k == v]
        raise UserDataError(
            f"{path}:{n}: unknown label {label!r} in field {target_field!r}; "
            f"expected one of {names} or an index 0..{len(names) - 1}. Fix "
            "the label or add it to label_names.")
    count += 1
  if count == 0:
    raise UserDataError(f"{path}: no examples found.")
  return count


# --------------------------------------------------------------- tf pipeline


def _parse_text_lines(ds: tf.data.Dataset, columns: Sequence[str],
                      fmt: str) -> tf.data.Dataset:
  """Turns header-less lines into dicts of string columns."""
  defaults = [""] * len(columns)

  def parse(line):
    values = tf.io.decode_csv(
        line, record_defaults=defaults,
        field_delim="\t" if fmt == "tsv" else ",",
        use_quote_delim=fmt == "csv")
    return dict(zip(columns, values))

  return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _format_fn(template: str, target_field: str,
               labels: Optional[Mapping[str, str]]):
  parts = _template_parts(template)
  if labels is not None:
    keys = tf.constant(list(labels.keys()))
    values = tf.constant(list(labels.values()))

  def fmt(ex):
    pieces = []
    for lit, field in parts:
      if lit:
        pieces.append(tf.constant(lit))
      if field is not None:
        pieces.append(ex[field])
    inputs = tf.strings.join(pieces) if pieces else tf.constant("")
    target = ex[target_field]
    if labels is not None:
      target = tf.strings.strip(target)
      hit = tf.argmax(tf.cast(tf.equal(keys, target), tf.int32))
      target = tf.gather(values, hit)
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


def _jsonl_source(split_files: Mapping[str, List[str]], columns: Sequence[str],
                  counts: Mapping[str, int]) -> seqio.FunctionDataSource:
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    files = split_files[split]

    def gen():
      for path in files:
        for _, rec in read_records(path, "jsonl"):
          yield {c: rec.get(c, "") for c in columns}

    sig = {c: tf.TensorSpec([], tf.string) for c in columns}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)

  return seqio.FunctionDataSource(
      dataset_fn, splits=list(split_files), num_input_examples=dict(counts))


def default_vocabulary() -> seqio.Vocabulary:
  """The project's lazy vocabulary (see `tasks.vocab`); nothing is read here."""
  return vocab_lib.DEFAULT_VOCABULARY


def _vocabulary(vocabulary) -> seqio.Vocabulary:
  if vocabulary is None:
    return default_vocabulary()
  if isinstance(vocabulary, (str, os.PathLike)):
    return vocab_lib.get_vocabulary(os.fspath(vocabulary), DEFAULT_EXTRA_IDS)
  return vocabulary


def _metric_fns(metrics) -> List[Callable]:
  fns = []
  for m in metrics:
    if callable(m):
      fns.append(m)
    elif m in METRICS:
      fns.append(METRICS[m])
    else:
      raise UserDataError(
          f"unknown metric {m!r}; use one of {sorted(METRICS)} or pass a "
          "function f(targets, predictions) -> dict.")
  return fns


def _add(task: seqio.Task, overwrite: bool) -> seqio.Task:
  if task.name in seqio.TaskRegistry.names():
    if not overwrite:
      raise UserDataError(
          f"a task named {task.name!r} is already registered; choose another "
          "name or pass overwrite=True.")
    seqio.TaskRegistry.remove(task.name)
  seqio.TaskRegistry.add_provider(task.name, task)
  return task


# ------------------------------------------------------------ public entry


@gin.configurable
def register_task_from_files(
    name: str,
    train: PathSpec = None,
    validation: PathSpec = None,
    test: PathSpec = None,
    format: Optional[str] = None,  # pylint: disable=redefined-builtin
    input_template: str = "premise: {premise} hypothesis: {hypothesis}",
    target_field: str = "label",
    label_names: Optional[Sequence[str]] = None,
    metrics: Sequence[Union[str, Callable]] = ("accuracy",),
    vocabulary: Union[None, str, seqio.Vocabulary] = None,
    rank_classification: bool = False,
    overwrite: bool = False,
) -> seqio.Task:
  """Registers a seqio Task `name` (and `name + "_rank"`) from files.

  Args:
    name: the task name, as used in `MIXTURE_OR_TASK_NAME`.
    train, validation, test: a path, glob or list of them per split; at least
      one split is required. `gs://` paths work (read through tf.io.gfile).
    format: "tsv", "csv" or "jsonl"; inferred from the file suffix if None.
    input_template: Python format string over the record's fields producing
      the `inputs` text; no task prefix is added.
    target_field: the field holding the target text or label.
    label_names: if given, labels must be one of these names or an integer
      index into them (`0` -> `label_names[0]`); targets are the names.
    metrics: names from `METRICS` or functions `f(targets, predictions)`.
    vocabulary: a seqio Vocabulary, a SentencePiece model path (100 extra ids
      are appended), or None for the project's vocabulary, resolved when the
      task is tokenized: `tasks.vocab.set_vocabulary`/`use_vocabulary`, else
      $SPOT_JAX_VOCAB, else T5's cc_all.32000.100extra + 100 extra ids.
    rank_classification: also register `name + "_rank"`: one scored example
      per label option, metric `rank_classification_accuracy` (accuracy of the
      best-scored option, reported as "accuracy"; needs label_names). Train on
      `name`, evaluate on `name + "_rank"`.
    overwrite: replace an already registered task of the same name.

  Returns:
    The registered seqio.Task (the plain, decode-evaluated one).
  """
  split_paths = {"train": train, "validation": validation, "test": test}
  split_files = {s: _expand(p, s) for s, p in split_paths.items() if p is not None}
  if not split_files:
    raise UserDataError(f"task {name!r}: give at least one of train=, "
                        "validation=, test= (a file path or glob).")
  all_files = [f for fs in split_files.values() for f in fs]
  fmts = {format or infer_format(f) for f in all_files}
  if len(fmts) != 1 or not fmts <= {"tsv", "csv", "jsonl"}:
    raise UserDataError(f"task {name!r}: all files must share one format of "
                        f"tsv/csv/jsonl; got {sorted(fmts)} for {all_files}.")
  fmt = fmts.pop()
  fields = template_fields(input_template)
  labels = _label_map(label_names)
  if rank_classification and label_names is None:
    raise UserDataError(f"task {name!r}: rank_classification=True needs "
                        "label_names (the options to score).")
  counts = {s: sum(validate_file(f, fmt, fields, target_field, labels,
                                 input_template) for f in fs)
            for s, fs in split_files.items()}

  columns = list(dict.fromkeys(fields + [target_field]))
  if fmt == "jsonl":
    source = _jsonl_source(split_files, columns, counts)
    parse = []
  else:
    headers = {tuple(_read_header(f, fmt)) for f in all_files}
    if len(headers) != 1:
      raise UserDataError(f"task {name!r}: all {fmt.upper()} files must have "
                          f"the same header; got {sorted(headers)}.")
    header = list(headers.pop())
    source = seqio.TextLineDataSource(
        split_files, skip_header_lines=1, num_input_examples=counts)
    parse = [lambda ds: _parse_text_lines(ds, header, fmt)]

  vocab = _vocabulary(vocabulary)
  output_features = {
      "inputs": seqio.Feature(vocab, add_eos=True, required=False),
      "targets": seqio.Feature(vocab, add_eos=True),
  }
  format_fn = _format_fn(input_template, target_field, labels)
  base = parse + [lambda ds: ds.map(format_fn,
                                    num_parallel_calls=tf.data.AUTOTUNE)]
  tail = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]
  task = _add(seqio.Task(
      name, source=source, output_features=output_features,
      preprocessors=base + tail, postprocess_fn=text_postprocessor,
      metric_fns=_metric_fns(metrics)), overwrite)
  if rank_classification:
    _add(seqio.Task(
        name + "_rank", source=source, output_features=output_features,
        preprocessors=base + [_rank_expand(label_names)] + tail,
        postprocess_fn=post_lib.rank_classification,
        metric_fns=[metrics_lib.rank_classification_accuracy]),
         overwrite)
  return task


@gin.configurable
def register_from_gin(tasks: Sequence[seqio.Task] = ()) -> List[str]:
  """Gin entry point: evaluating `tasks` registers them; returns their names.

  Bind a list of scoped `@name/register_task_from_files()` references (see
  docs/user_data.md); a training entry point calls this after parsing gin.
  """
  return [t.name for t in tasks]

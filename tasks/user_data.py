"""Register a seqio Task from a user's own TSV, CSV or JSONL files.

`register_task_from_files` turns labelled files into an encoder-decoder Task
(`inputs`/`targets` text features) in one call, from Python or from gin. Files
are read once with Python at registration, so a malformed line, a missing field
or an unknown label fails at once with the file, the line number and the fix,
instead of deep inside a tf.data pipeline during training.

TSV and CSV files need a header line naming the columns; they are read through
`seqio.TextLineDataSource` + `tf.io.decode_csv` (one record per physical line;
TSV fields are taken literally, CSV fields may be double-quoted). The check at
registration reads them exactly as that pipeline does (`_text_lines`,
`decode_fields`), so what it accepts trains and what it refuses is named. JSONL
files hold one JSON object per line and are read through
`seqio.FunctionDataSource` with the same Python code as the check.
"""

import importlib.util  # noqa: F401  (gin 0.5 needs it imported first)
import json
import os
import string
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from absl import logging
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
# The target of every example of an unlabelled test split (as the GLUE tasks' test splits).
UNLABELLED_TARGET = "<unk>"
LABELS_ARE = ("names", "indices")
_UNLABELLED = "_user_data_unlabelled"  # internal feature: the example's split has no labels

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


# The one definition of a label's normalization, used by the check (`normalize_label`) and by the
# tf.data pipeline (`_tf_normalize_label`): strip these characters at both ends. They are exactly
# the characters for which Python's `str.isspace()` holds (ASCII whitespace, \x1c-\x1f, \x85, NBSP,
# U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F, U+3000); tests/test_user_data.py checks that.
LABEL_STRIP_CHARS = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
                     + "".join(map(chr, range(0x2000, 0x200b))) + "\u2028\u2029\u202f\u205f\u3000")
_STRIP_CLASS = "".join(f"\\x{{{ord(c):x}}}" for c in LABEL_STRIP_CHARS)
_TF_STRIP_PATTERN = f"^[{_STRIP_CLASS}]+|[{_STRIP_CLASS}]+$"  # RE2: `$` is the end of the text


def normalize_label(value: str) -> str:
  """A label as it is looked up in label_names: LABEL_STRIP_CHARS stripped at both ends."""
  return value.strip(LABEL_STRIP_CHARS)


def _tf_normalize_label(value: tf.Tensor) -> tf.Tensor:
  """`normalize_label` on a tf.string tensor (UTF-8), in the graph."""
  return tf.strings.regex_replace(value, _TF_STRIP_PATTERN, "")


class _Labels(NamedTuple):
  names: List[str]
  mapping: Dict[str, str]  # normalized file value -> label name (the target)
  labels_are: Optional[str]

  def expected(self) -> str:
    if self.labels_are == "indices":
      return f"an index 0..{len(self.names) - 1} into {self.names}"
    if self.labels_are == "names":
      return f"one of {self.names}"
    return f"one of {self.names} or an index 0..{len(self.names) - 1}"


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


# --------------------------------------------------- reading files as tf.data does


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


_SAVE_AS_UTF8 = ("save it as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)'; LibreOffice: character "
                 "set 'Unicode (UTF-8)'; or `iconv -f latin1 -t utf-8 in.tsv > out.tsv`)")


def read_text(path: str) -> str:
  """A file's text, decoded as UTF-8; a leading UTF-8 byte-order mark (Excel's 'CSV UTF-8') is
  dropped. Other encodings fail with the file, the line and the fix."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
      where = f"{path}:1: the file starts with a UTF-16 byte-order mark: it is UTF-16"
    else:
      line = data.count(b"\n", 0, data.index(b"\x00")) + 1
      where = f"{path}:{line}: a NUL byte; the file is probably UTF-16"
    raise UserDataError(
        f"{where} (Excel's 'Unicode Text' and Windows' 'Unicode' save it so), not UTF-8; "
        f"{_SAVE_AS_UTF8.replace('latin1', 'utf-16')}.")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    start = data.rfind(b"\n", 0, e.start) + 1
    snippet = data[start:e.start + 8].split(b"\n")[0]
    raise UserDataError(
        f"{path}:{line}: not UTF-8: byte 0x{data[e.start]:02x} at column {e.start - start + 1} "
        f"({snippet!r}); the file is probably latin-1/Windows-1252; {_SAVE_AS_UTF8}.") from None
  return text[1:] if text.startswith("\ufeff") else text


def _lines(text: str) -> List[str]:
  """The lines of a JSONL file's text, split on "\n" only (a "\r" before it, of CRLF files, is dropped).

  Not `str.splitlines()`, which also splits on U+2028/U+2029, \x85, \x0b, \x0c and \x1c-\x1e: JSON
  strings may hold those unescaped. The check and the pipeline both read JSONL with this function.
  """
  lines = text.split("\n")
  if lines and lines[-1] == "":  # the newline that ends the last line starts no line
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def _text_lines(path: str, text: str) -> List[str]:
  r"""The lines of a TSV/CSV file exactly as `tf.data.TextLineDataset` reads them.

  TextLineDataset ends a line at "\n" only and deletes every "\r" in it, and a last line left empty
  is no line. A "\r" that does not end a line (old Mac files end lines with "\r" alone; a stray one
  inside a field) would silently be deleted from the text, so it is refused here.
  """
  lines = text.split("\n")
  out = []
  for n, line in enumerate(lines, 1):
    bare = line.rstrip("\r")
    if "\r" in bare:
      raise UserDataError(
          f"{path}:{n}: a carriage return (\\r) inside the line (column "
          f"{bare.index(chr(13)) + 1}); "
          "the training pipeline (tf.data.TextLineDataset) deletes every \\r, so this line would "
          "be read differently. If the file ends its lines with \\r alone (old Mac / Excel for Mac "
          "'CSV'), convert it to \\n line ends (`tr '\\r' '\\n'`); else remove the \\r from the "
          "field.")
    out.append(bare)
  if out and out[-1] == "":
    out.pop()
  return out


class _FieldError(Exception):

  def __init__(self, problem: str, fix: str):
    super().__init__(problem)
    self.problem, self.fix = problem, fix


def decode_fields(line: str, fmt: str) -> List[str]:
  """The fields of one TSV/CSV line exactly as `tf.io.decode_csv` (the training pipeline) splits
  them, or `_FieldError` where decode_csv would fail. TSV: no quoting. CSV: a field is either
  unquoted (no `"` in it at all) or wholly quoted, with `""` for a quote, and its closing quote
  followed by the comma or the line end (RFC 4180, stricter than Python's csv module)."""
  delim = "\t" if fmt == "tsv" else ","
  if fmt == "tsv" or '"' not in line:
    return line.split(delim) if line else []
  fields, i, n = [], 0, len(line)
  while i < n:
    start = i
    if line[i] == '"':
      i += 1
      field = []
      while i < n - 1 and not (line[i] == '"' and line[i + 1] == delim):
        if line[i] != '"':
          field.append(line[i])
          i += 1
        elif line[i + 1] == '"':
          field.append('"')
          i += 2
        else:
          raise _FieldError(
              f"the quoted field starting at column {start + 1} ({line[start:i + 1]!r}) is "
              f"followed by {line[i + 1]!r} after its closing quote instead of a comma or the "
              "line end",
              "remove what follows the closing quote (a space before the comma counts), or quote "
              "the whole field and double each quote inside it (\"\")")
      if not (i < n and line[i] == '"'):
        raise _FieldError(
            f"the quoted field starting at column {start + 1} ({line[start:start + 30]!r}) is not "
            "closed on this line; a line break inside a quoted field (pandas and Excel write "
            "these) is not supported: each example must be on one line",
            "replace line breaks inside fields by spaces before saving (pandas: "
            "df[col] = df[col].str.replace('\\n', ' ')), or use JSONL")
      i += 2
      fields.append("".join(field))
    else:
      end = line.find(delim, i)
      end = n if end < 0 else end
      if '"' in line[i:end]:
        raise _FieldError(
            f"a double quote inside the unquoted field at column {start + 1} "
            f"({line[start:end]!r})",
            "quote the whole field and double each quote inside it: "
            f"{chr(34) + line[start:end].replace(chr(34), chr(34) * 2) + chr(34)} (as pandas' "
            "to_csv and Python's csv.writer write it)")
      fields.append(line[i:end])
      i = end + 1
  if line[-1] == delim:
    fields.append("")
  return fields


def _json_value(v) -> str:
  return v if isinstance(v, str) else json.dumps(v)


def _fields_or_raise(path: str, n: int, line: str, fmt: str) -> List[str]:
  try:
    return decode_fields(line, fmt)
  except _FieldError as e:
    raise UserDataError(f"{path}:{n}: {e.problem}; the training pipeline (tf.io.decode_csv) "
                        f"cannot read it. Fix: {e.fix}.") from None


def _header(path: str, lines: List[str], fmt: str) -> List[str]:
  if not lines:
    raise UserDataError(f"{path}: empty file; a {fmt.upper()} file needs a "
                        "header line naming its columns.")
  if not lines[0]:
    raise UserDataError(f"{path}:1: the first line is empty; a {fmt.upper()} file's first line "
                        "must be the header naming its columns (remove the blank lines above it).")
  header = _fields_or_raise(path, 1, lines[0], fmt)
  if len(set(header)) != len(header):
    raise UserDataError(f"{path}:1: duplicate column names in header {header}.")
  return header


def read_records(path: str, fmt: str):
  """Yields `(line_number, record_dict)` from a file, raising on bad lines.

  TSV/CSV: line 1 is the header; lines are read as the training pipeline reads them (see
  `_text_lines`, `decode_fields`). Blank lines are skipped in every format (TSV/CSV: empty lines;
  JSONL: lines of whitespace), by the check and by the pipeline alike.
  """
  return _read(path, fmt)[1]


def _read(path: str, fmt: str):
  """(the TSV/CSV header or None, the generator of `read_records`), reading the file once."""
  text = read_text(path)
  if fmt == "jsonl":
    return None, _jsonl_records(path, _lines(text))
  lines = _text_lines(path, text)
  header = _header(path, lines, fmt)
  return header, _text_records(path, lines, header, fmt)


def _jsonl_records(path: str, lines: List[str]):
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


def _text_records(path: str, lines: List[str], header: List[str], fmt: str):
  sep = "tab" if fmt == "tsv" else "comma"
  for n, line in enumerate(lines[1:], 2):
    if not line:
      continue  # the pipeline skips it too (_parse_text_lines)
    values = _fields_or_raise(path, n, line, fmt)
    if len(values) != len(header):
      hint = ("a tab inside a field" if fmt == "tsv" else
              "an unquoted comma inside a field (wrap the field in double quotes)")
      raise UserDataError(
          f"{path}:{n}: expected {len(header)} {sep}-separated fields "
          f"{header} but found {len(values)}; check for {hint} or a missing "
          "field.")
    yield n, dict(zip(header, values))


class _FileInfo(NamedTuple):
  count: int
  header: Optional[List[str]]  # TSV/CSV
  labelled: Optional[Tuple[bool, int]]  # (whether the first example has a label, its line)


def _what(name: str, target_field: str, fields: Sequence[str], template: str) -> str:
  return ("target_field" if name == target_field and name not in fields
          else f"input_template {template!r}")


def _check_file(path: str, fmt: str, fields: Sequence[str], target_field: str,
                labels: Optional[_Labels], template: str, split: str) -> _FileInfo:
  """Checks every record of a file as the pipeline will read it.

  Only a test file may be unlabelled: without the target column (key), or, with label_names,
  with every label empty. A file is labelled or unlabelled as a whole.
  """
  may_lack = split == "test"
  needed = list(dict.fromkeys(list(fields) + [target_field]))
  header, records = _read(path, fmt)
  if fmt != "jsonl":
    for name in needed:
      if name not in header and not (name == target_field and name not in fields and may_lack):
        near = [h for h in header if normalize_label(h) == name]
        hint = (f" (the header has {near[0]!r}: remove the space after the separator)"
                if near else "")
        raise UserDataError(
            f"{path}:1: the header {header} has no column {name!r} used by "
            f"{_what(name, target_field, fields, template)}{hint}; rename the column or change "
            "the argument." + ("" if name != target_field or near or split == "test" else
                               " Only a test split may be unlabelled."))
  count, first = 0, None
  for n, rec in records:
    for name in needed:
      if name not in rec and not (name == target_field and name not in fields and may_lack):
        raise UserDataError(
            f"{path}:{n}: record has no field {name!r} used by "
            f"{_what(name, target_field, fields, template)}; add it to the record or change "
            "the argument." + ("" if name != target_field or split == "test" else
                               " Only a test split may be unlabelled."))
    value = rec.get(target_field)
    labelled = value is not None
    if labels is not None and value is not None:
      label = normalize_label(value)
      labelled = label != ""
      if label not in labels.mapping and (labelled or not may_lack):
        empty = ("" if labelled else
                 " (only a test split may be unlabelled, and then every test label is empty)")
        raise UserDataError(
            f"{path}:{n}: unknown label {label!r} in field {target_field!r}{empty}; expected "
            f"{labels.expected()}. Fix the label or add it to label_names.")
    if first is None:
      first = (labelled, n)
    elif labelled != first[0]:
      have, lack = ((f"{path}:{n}", f"{path}:{first[1]}") if labelled else
                    (f"{path}:{first[1]}", f"{path}:{n}"))
      raise UserDataError(
          f"{lack}: this test example has no label in field {target_field!r} but {have} has one; "
          "label every example of the test split or none (an unlabelled test split gets the "
          f"placeholder target {UNLABELLED_TARGET!r}).")
    count += 1
  if count == 0:
    raise UserDataError(f"{path}: no examples found.")
  return _FileInfo(count, header, first)


def validate_file(path: str, fmt: str, fields: Sequence[str], target_field: str,
                  labels: Optional[Mapping[str, str]], template: str,
                  split: str = "train") -> int:
  """Checks every record of a file; returns the number of examples."""
  if labels is not None and not isinstance(labels, _Labels):
    names = list(dict.fromkeys(labels.values()))
    labels = _Labels(names, {normalize_label(k): v for k, v in labels.items()}, None)
  return _check_file(path, fmt, fields, target_field, labels, template, split).count


class _SplitInfo(NamedTuple):
  count: int
  header: Optional[List[str]]
  unlabelled: bool


def _check_split(split: str, files: List[str], fmt: str, fields: Sequence[str], target_field: str,
                 labels: Optional[_Labels], template: str) -> _SplitInfo:
  infos = [_check_file(f, fmt, fields, target_field, labels, template, split) for f in files]
  status = {info.labelled[0] for info in infos}
  if len(status) > 1:
    have = next(f for f, i in zip(files, infos) if i.labelled[0])
    lack = next(f for f, i in zip(files, infos) if not i.labelled[0])
    raise UserDataError(
        f"{lack}: this test file has no labels in field {target_field!r} but {have} has; label "
        "every example of the test split or none.")
  header = None
  if fmt != "jsonl":
    headers = {tuple(i.header) for i in infos}
    if len(headers) != 1:
      raise UserDataError(f"the {split} {fmt.upper()} files {files} must have the same header; "
                          f"got {sorted(headers)}.")
    header = list(infos[0].header)
  return _SplitInfo(sum(i.count for i in infos), header, not status.pop())


# --------------------------------------------------------------- tf pipeline


def _parse_text_lines(ds: tf.data.Dataset, header: Sequence[str], fmt: str,
                      columns: Sequence[str], unlabelled: bool) -> tf.data.Dataset:
  """Turns header-less lines into dicts of string `columns` (a column the header lacks, the
  target of an unlabelled test split, is ""), skipping empty lines as `read_records` does."""
  defaults = [""] * len(header)

  def parse(line):
    values = dict(zip(header, tf.io.decode_csv(
        line, record_defaults=defaults,
        field_delim="\t" if fmt == "tsv" else ",",
        use_quote_delim=fmt == "csv")))
    out = {c: values[c] if c in values else tf.constant("") for c in columns}
    out[_UNLABELLED] = tf.constant(unlabelled)
    return out

  ds = ds.filter(lambda line: tf.strings.length(line) > 0)
  return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


class _TextFileSource(seqio.TextLineDataSource):
  """seqio's TextLineDataSource (file sharding and shuffling unchanged) that parses each split's
  lines with that split's header."""

  def __init__(self, split_files: Mapping[str, List[str]], splits: Mapping[str, _SplitInfo],
               fmt: str, columns: Sequence[str]):
    super().__init__(dict(split_files), skip_header_lines=1,
                     num_input_examples={s: i.count for s, i in splits.items()})
    self._splits, self._fmt, self._columns = dict(splits), fmt, list(columns)

  # pylint: disable-next=keyword-arg-before-vararg
  def get_dataset(self, split: str = "train", *args, **kwargs) -> tf.data.Dataset:
    info = self._splits[split]
    return _parse_text_lines(super().get_dataset(split, *args, **kwargs), info.header, self._fmt,
                             self._columns, info.unlabelled)


def _jsonl_source(split_files: Mapping[str, List[str]], columns: Sequence[str],
                  splits: Mapping[str, _SplitInfo]) -> seqio.FunctionDataSource:
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    files = split_files[split]
    unlabelled = splits[split].unlabelled

    def gen():
      for path in files:
        for _, rec in read_records(path, "jsonl"):
          out = {c: rec.get(c, "") for c in columns}
          out[_UNLABELLED] = unlabelled
          yield out

    sig = {c: tf.TensorSpec([], tf.string) for c in columns}
    sig[_UNLABELLED] = tf.TensorSpec([], tf.bool)
    return tf.data.Dataset.from_generator(gen, output_signature=sig)

  return seqio.FunctionDataSource(
      dataset_fn, splits=list(split_files),
      num_input_examples={s: i.count for s, i in splits.items()})


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
      logging.warning(
          "task %r was registered again, but mixture(s) %s still hold the old task (seqio looks a "
          "mixture's tasks up when the mixture is made); register them again "
          "(seqio.MixtureRegistry.remove(name), then add) to use the new one.", name, stale)
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
    format: "tsv", "csv" or "jsonl"; inferred from the file suffix if None.
    input_template: Python format string over the record's fields producing
      the `inputs` text; no task prefix is added.
    target_field: the field holding the target text or label.
    label_names: if given, labels must be one of these names or an integer
      index into them (`0` -> `label_names[0]`); targets are the names. Labels
      are compared with surrounding whitespace (`LABEL_STRIP_CHARS`) stripped.
    metrics: a name from `METRICS`, a function `f(targets, predictions)`, or a
      list of them.
    vocabulary: a seqio Vocabulary, a SentencePiece model path (100 extra ids
      are appended), or None for the project's vocabulary, resolved when the
      task is tokenized: `tasks.vocab.set_vocabulary`/`use_vocabulary`, else
      $SPOT_JAX_VOCAB, else T5's cc_all.32000.100extra + 100 extra ids.
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
  all_files = [f for fs in split_files.values() for f in fs]
  fmts = {format or infer_format(f) for f in all_files}
  if len(fmts) != 1 or not fmts <= {"tsv", "csv", "jsonl"}:
    raise UserDataError(f"task {name!r}: all files must share one format of "
                        f"tsv/csv/jsonl; got {sorted(fmts)} for {all_files}.")
  fmt = fmts.pop()
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

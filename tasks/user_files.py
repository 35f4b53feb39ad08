"""Reading and checking a user's TSV, CSV and JSONL files exactly as the training pipeline reads them.

`tasks.user_data.register_task_from_files` (which builds and registers the seqio Tasks) checks
every file here once, with Python, at registration, so a malformed line, a missing field or an
unknown label fails at once with the file, the line number and the fix, instead of deep inside a
tf.data pipeline during training. The same module holds that pipeline's sources, so the check and
the reader it mirrors sit side by side.

TSV and CSV files need a header line naming the columns; they are read through
`seqio.TextLineDataSource` + `tf.io.decode_csv` (`_TextFileSource`: one record per physical line;
TSV fields are taken literally, CSV fields may be double-quoted). The check reads them exactly as
that pipeline does (`_text_lines`, `decode_fields`), so what it accepts trains and what it refuses
is named. JSONL files hold one JSON object per line and are read through
`seqio.FunctionDataSource` (`_jsonl_source`) with the same Python code as the check. Text must be
UTF-8 (`read_text`); labels are compared with `LABEL_STRIP_CHARS` stripped (`normalize_label`, and
`_tf_normalize_label` in the graph).
"""

import json
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import seqio
import tensorflow as tf

_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
# The target of every example of an unlabelled test split (as the GLUE tasks' test splits).
UNLABELLED_TARGET = "<unk>"
_UNLABELLED = "_user_data_unlabelled"  # internal feature: the example's split has no labels

PathSpec = Union[str, Sequence[str], None]


class UserDataError(ValueError):
  """A user data file or a registration argument is invalid."""


# ------------------------------------------------------ label normalization


# The one definition of a label's normalization, used by the check (`normalize_label`) and by the
# tf.data pipeline (`_tf_normalize_label`): strip these characters at both ends. They are exactly
# the characters for which Python's `str.isspace()` holds (ASCII whitespace, \x1c-\x1f, \x85, NBSP,
# U+1680, U+2000-U+200A, U+2028/9, U+202F, U+205F, U+3000); tests/test_user_files.py checks that.
LABEL_STRIP_CHARS = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
                     + "".join(map(chr, range(0x2000, 0x200b))) + "\u2028\u2029\u202f\u205f\u3000")
_STRIP_CLASS = "".join(f"\\x{{{ord(c):x}}}" for c in LABEL_STRIP_CHARS)
_TF_STRIP_PATTERN = f"^[{_STRIP_CLASS}]+|[{_STRIP_CLASS}]+$"  # RE2: `$` is the end of the text


def is_blank(line: str) -> bool:
  """Whether a line holds nothing but whitespace (`LABEL_STRIP_CHARS`, i.e. `str.isspace()`; a TSV
  line of tabs and spaces too): it is skipped as an empty line, by the check and by the pipeline
  (`_tf_is_blank`) alike, in every format."""
  return not line.strip(LABEL_STRIP_CHARS)


def _tf_is_blank(line: tf.Tensor) -> tf.Tensor:
  """`is_blank` on a tf.string tensor (UTF-8), in the graph."""
  return tf.strings.regex_full_match(line, f"[{_STRIP_CLASS}]*")


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


# --------------------------------------------------- reading files as tf.data does


def infer_format(path: str) -> str:
  for suffix, fmt in _SUFFIXES.items():
    if path.lower().endswith(suffix):
      return fmt
  raise UserDataError(
      f"cannot infer the format of {path!r} from its suffix; name it .tsv, "
      ".csv or .jsonl, or pass format='tsv'|'csv'|'jsonl'.")


def _relative_hint(path: str) -> str:
  """For a relative path that matched nothing: what it was resolved against, and the fixes."""
  if os.path.isabs(path) or "://" in path:
    return ""
  tilde = (f" `~` is not expanded: pass os.path.expanduser({path!r})."
           if path.startswith("~") else "")
  return tilde + (f" A relative path is resolved against the current directory ({os.getcwd()}), not "
          "against your tasks module's or gin file's folder; pass an absolute path (in a module: "
          f"os.path.join(os.path.dirname(os.path.abspath(__file__)), {path!r})) or run from the "
          "folder that holds it.")


def _expand(paths: PathSpec, split: str) -> List[str]:
  if paths is None:
    return []
  if isinstance(paths, str):
    paths = [paths]
  if not paths:
    raise UserDataError(f"{split}=[] names no file: give a file path or glob (e.g. '/data/{split}.tsv'), "
                        f"or leave {split} out")
  files = []
  for p in paths:
    matched = sorted(tf.io.gfile.glob(p))
    if not matched:
      raise UserDataError(f"{split} file {p!r} does not exist (no file matches).{_relative_hint(p)}")
    folders = [m for m in matched if tf.io.gfile.isdir(m)]
    if folders:
      raise UserDataError(f"{split} file {folders[0]!r} is a folder: give its files (e.g. "
                          f"'{folders[0].rstrip('/')}/*.tsv')")
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
  if is_blank(lines[0]):
    raise UserDataError(f"{path}:1: the first line is empty (or only whitespace); a {fmt.upper()} "
                        "file's first line must be the header naming its columns (remove the blank "
                        "lines above it).")
  header = _fields_or_raise(path, 1, lines[0], fmt)
  if len(set(header)) != len(header):
    raise UserDataError(f"{path}:1: duplicate column names in header {header}.")
  return header


def read_records(path: str, fmt: str):
  """Yields `(line_number, record_dict)` from a file, raising on bad lines.

  TSV/CSV: line 1 is the header; lines are read as the training pipeline reads them (see
  `_text_lines`, `decode_fields`). Blank lines (empty or only whitespace, `is_blank`) are skipped
  in every format, by the check and by the pipeline alike.
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
    if is_blank(line):
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
    # A null is no value (a test split's missing label), as an absent key: it was the text "null".
    yield n, {k: _json_value(v) for k, v in rec.items() if v is not None}


def _text_records(path: str, lines: List[str], header: List[str], fmt: str):
  sep = "tab" if fmt == "tsv" else "comma"
  for n, line in enumerate(lines[1:], 2):
    if is_blank(line):
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


# --------------------------------------------- tf pipeline: the Task's data sources


def _parse_text_lines(ds: tf.data.Dataset, header: Sequence[str], fmt: str,
                      columns: Sequence[str], unlabelled: bool) -> tf.data.Dataset:
  """Turns header-less lines into dicts of string `columns` (a column the header lacks, the
  target of an unlabelled test split, is ""), skipping blank lines (`is_blank`: empty or only
  whitespace) as `read_records` does."""
  defaults = [""] * len(header)

  def parse(line):
    values = dict(zip(header, tf.io.decode_csv(
        line, record_defaults=defaults,
        field_delim="\t" if fmt == "tsv" else ",",
        use_quote_delim=fmt == "csv")))
    out = {c: values[c] if c in values else tf.constant("") for c in columns}
    out[_UNLABELLED] = tf.constant(unlabelled)
    return out

  ds = ds.filter(lambda line: tf.logical_not(_tf_is_blank(line)))
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

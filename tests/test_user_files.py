"""Tests for tasks.user_files: reading and checking users' TSV/CSV/JSONL files exactly as the
training pipeline reads them (lines, fields, encodings, labels), and the errors naming file:line."""

import json

import pytest
import seqio

from tasks import user_data as ud
from tasks import user_files as uf
from user_data_setup import VOCAB, _rows, _texts, _write


# Characters str.splitlines() splits on that JSON strings and TSV/CSV fields may hold as they are.
_NOT_NEWLINES = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e"


def test_lines_end_at_newline_only(tmp_path):
  """A JSONL string or a TSV/CSV field holding U+2028 (etc.) is one record, as the training pipeline
  reads it; CRLF files still read."""
  weird = "a" + _NOT_NEWLINES + "b"
  train = tmp_path / "d.jsonl"
  train.write_text(json.dumps({"q": weird, "label": "yes"}, ensure_ascii=False)
                   + "\r\n" + json.dumps({"q": "plain", "label": "no"}) + "\r\n", encoding="utf-8")
  train = str(train)
  assert [r for _, r in uf.read_records(train, "jsonl")] == [
      {"q": weird, "label": "yes"}, {"q": "plain", "label": "no"}]
  ud.register_task_from_files("ud_test_jsonl_u2028", train=train, input_template="q: {q}",
                              vocabulary=VOCAB, overwrite=True)
  assert _texts("ud_test_jsonl_u2028") == [("q: " + weird, "yes"), ("q: plain", "no")]
  for fmt, sep in (("tsv", "\t"), ("csv", ",")):
    path = tmp_path / f"d.{fmt}"
    path.write_text(f"text{sep}label\r\n{weird}{sep}good\r\nbye{sep}bad\r\n", encoding="utf-8")
    path = str(path)
    assert list(uf.read_records(path, fmt)) == [(2, {"text": weird, "label": "good"}),
                                                (3, {"text": "bye", "label": "bad"})]
    name = f"ud_test_{fmt}_u2028"
    ud.register_task_from_files(name, train=path, input_template="say: {text}", vocabulary=VOCAB,
                                overwrite=True)
    assert seqio.get_mixture_or_task(name).num_input_examples("train") == 2
    assert _texts(name) == [("say: " + weird, "good"), ("say: bye", "bad")]


@pytest.mark.parametrize("name,text,kwargs,expected", [
    ("bad.tsv", "premise\thypothesis\tlabel\na\tb\tyes\na\tb\tc\tyes\n", {},
     ["bad.tsv:3:", "expected 3 tab-separated fields", "found 4"]),
    ("bad.csv", "premise,hypothesis,label\na,b\n", {},
     ["bad.csv:2:", "expected 3 comma-separated", "quotes"]),
    ("bad.jsonl", '{"premise": "a", "hypothesis": "b", "label": "x"}\n{"premise": \n', {},
     ["bad.jsonl:2:", "not valid JSON"]),
    ("lab.tsv", "premise\thypothesis\tlabel\na\tb\tyes\na\tb\tmaybe\n",
     {"label_names": ["no", "yes"]},
     ["lab.tsv:3:", "unknown label 'maybe'", "label_names"]),
    ("lab.jsonl", '{"premise": "a", "hypothesis": "b", "label": 5}\n',
     {"label_names": ["no", "yes"]}, ["lab.jsonl:1:", "unknown label '5'"]),
    ("miss.tsv", "premise\thyp\tlabel\na\tb\tyes\n", {},
     ["miss.tsv:1:", "no column 'hypothesis'", "input_template"]),
    ("miss.jsonl", '{"premise": "a", "hypothesis": "b", "label": "x"}\n'
     '{"premise": "a", "label": "x"}\n', {},
     ["miss.jsonl:2:", "no field 'hypothesis'"]),
    ("tgt.tsv", "premise\thypothesis\tgold\na\tb\tyes\n", {},
     ["tgt.tsv:1:", "no column 'label'", "target_field"]),
])
def test_errors_name_file_and_line(tmp_path, name, text, kwargs, expected):
  path = _write(tmp_path / name, text)
  with pytest.raises(uf.UserDataError) as e:
    ud.register_task_from_files("ud_test_err", train=path, vocabulary=VOCAB,
                                overwrite=True, **kwargs)
  for part in expected:
    assert part in str(e.value)
  assert "In call to configurable" not in str(e.value)  # gin's line, for Python callers (as documented)
  assert "ud_test_err" not in seqio.TaskRegistry.names()


def test_label_whitespace_is_one_definition():
  """LABEL_STRIP_CHARS is exactly Python's whitespace, and the graph strips it as the check does
  (ends only, never inside)."""
  import tensorflow as tf
  assert set(uf.LABEL_STRIP_CHARS) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
  samples = [c + "pos itive" + c + c for c in uf.LABEL_STRIP_CHARS]
  samples += ["", " ", "\u3000x\xa0y\u2029"]
  got = [t.decode() for t in uf._tf_normalize_label(tf.constant(samples)).numpy()]
  assert got == [uf.normalize_label(s) for s in samples]
  assert got[0] == "pos itive" and got[-1] == "x\xa0y"


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_labels_with_unicode_whitespace_get_their_own_label(tmp_path, fmt):
  """A label with U+00A0, U+3000, \\x1c ... around it was accepted by the check (str.strip) but
  matched nothing in the graph (tf.strings.strip is ASCII only): argmax made it label_names[0]."""
  every = ("\xa0\u3000" + "".join(map(chr, range(0x2000, 0x200b))) + "\u202f\u205f\u1680\u2028"
           "\u2029\x85\x1c\x1d\x1e\x1f\x0b\x0c \t\n\r")  # LABEL_STRIP_CHARS, literally
  chars = [c for c in every if fmt == "jsonl" or c not in "\t\n\r"]
  labels = [c + "positive" + c for c in chars] + ["negative", "1\u3000"]
  if fmt == "jsonl":
    text = "".join(json.dumps({"s": f"x{i}", "label": l}) + "\n" for i, l in enumerate(labels))
  else:
    sep = "\t" if fmt == "tsv" else ","
    text = f"s{sep}label\n" + "".join(f"x{i}{sep}{l}\n" for i, l in enumerate(labels))
  path = tmp_path / f"d.{fmt}"
  path.write_text(text, encoding="utf-8")
  name = f"ud_test_ws_{fmt}"
  ud.register_task_from_files(name, train=str(path), validation=str(path), test=str(path),
                              input_template="{s}", label_names=["negative", "positive"],
                              rank_classification=True, vocabulary=VOCAB, overwrite=True)
  want = ["positive"] * len(chars) + ["negative", "positive"]
  for split in ud.SPLITS:
    assert [t for t, _ in _rows(name, split)] == want
  rank = _rows(name + "_rank", "validation")
  assert [t for t, ok in rank if ok] == want


@pytest.mark.parametrize("line,expected", [
    ('5" screen,positive', ["double quote inside the unquoted field", '"5"" screen"']),
    ('say "hi" now,positive', ["double quote inside the unquoted field", '"say ""hi"" now"']),
    ('"abc" ,positive', ["followed by ' ' after its closing quote", "remove what follows"]),
    ('"abc"def,positive', ["followed by 'd' after its closing quote"]),
    ('x,"positive" ', ["followed by ' ' after its closing quote"]),
    (' "a,b",positive', ["double quote inside the unquoted field at column 1 (' \"a')"]),
    ('"line one', ["not closed on this line", "line break inside a quoted field", "one line"]),
])
def test_csv_the_pipeline_cannot_read_is_refused(tmp_path, line, expected):
  """Python's csv module read these; tf.io.decode_csv, which reads them in training, does not."""
  path = _write(tmp_path / "d.csv", f"s,label\nfine,negative\n{line}\nline two\",negative\n")
  with pytest.raises(uf.UserDataError) as e:
    ud.register_task_from_files("ud_test_csvq", train=path, input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)
  for part in ["d.csv:3:", "tf.io.decode_csv", "Fix:"] + expected:
    assert part in str(e.value)


def test_decode_fields_is_decode_csv():
  """The check splits a line as tf.io.decode_csv does, and fails where it fails."""
  import random
  import tensorflow as tf
  rng = random.Random(0)
  lines = set()
  for _ in range(1500):
    lines.add("".join(rng.choice('a",\t "é') for _ in range(rng.randint(1, 9))))
  for line in sorted(lines):
    for fmt in ("csv", "tsv"):
      try:
        mine = uf.decode_fields(line, fmt)
      except uf._FieldError:
        mine = None
      n = len(mine) if mine else 2
      try:
        theirs = [t.numpy().decode() for t in tf.io.decode_csv(
            line, [""] * n, field_delim="\t" if fmt == "tsv" else ",",
            use_quote_delim=fmt == "csv")]
      except tf.errors.InvalidArgumentError:
        theirs = None
      assert mine == theirs, (line, fmt)


def test_carriage_return_inside_a_line_is_refused(tmp_path):
  """tf.data.TextLineDataset deletes every \\r: "good\\rmovie" trained as "goodmovie"; \\r-only line
  ends (old Mac files) made one line of the whole file."""
  for text in ("s\tlabel\ngood\rmovie\tpositive\n", "s\tlabel\rgood\tpositive\r"):
    path = tmp_path / "d.tsv"
    path.write_bytes(text.encode())
    with pytest.raises(uf.UserDataError, match=r"d.tsv:\d: a carriage return .* deletes every"):
      ud.register_task_from_files("ud_test_cr", train=str(path), input_template="{s}",
                                  vocabulary=VOCAB, overwrite=True)


def test_encodings(tmp_path):
  """UTF-8 with a byte-order mark (Excel's 'CSV UTF-8') reads; latin-1 and UTF-16 name the fix."""
  for fmt, text in (("tsv", "s\tlabel\ncafé\tpositive\n"), ("csv", "s,label\ncafé,positive\n"),
                    ("jsonl", '{"s": "café", "label": "positive"}\n')):
    path = tmp_path / f"bom.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    ud.register_task_from_files("ud_test_bom", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)
    assert _texts("ud_test_bom") == [("café", "positive")]
  path = tmp_path / "l1.tsv"
  path.write_bytes("s\tlabel\nok\tnegative\ncafé\tpositive\n".encode("latin-1"))
  with pytest.raises(uf.UserDataError, match=r"l1.tsv:3: not UTF-8: byte 0xe9 .*save it as UTF-8"):
    ud.register_task_from_files("ud_test_enc", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)
  path = tmp_path / "u16.tsv"
  path.write_bytes("s\tlabel\ncafé\tpositive\n".encode("utf-16"))
  with pytest.raises(uf.UserDataError,
                     match=r"u16.tsv:1: the file starts with a UTF-16 byte-order mark.*as UTF-8"):
    ud.register_task_from_files("ud_test_enc", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)
  path.write_bytes("s\tlabel\ncafé\tpositive\n".encode("utf-16-le"))  # no byte-order mark
  with pytest.raises(uf.UserDataError, match=r"u16.tsv:1: a NUL byte; .*probably UTF-16"):
    ud.register_task_from_files("ud_test_enc", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)


@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_blank_lines_are_skipped_in_check_and_pipeline(tmp_path, fmt):
  sep = "\t" if fmt == "tsv" else ","
  path = tmp_path / f"d.{fmt}"
  path.write_bytes(f"s{sep}label\r\na{sep}x\r\n\r\n\nb{sep}y\n\n\r\n".encode())
  ud.register_task_from_files("ud_test_blank", train=str(path), input_template="{s}",
                              vocabulary=VOCAB, overwrite=True)
  assert seqio.get_mixture_or_task("ud_test_blank").num_input_examples("train") == 2
  assert _texts("ud_test_blank") == [("a", "x"), ("b", "y")]


def test_a_jsonl_null_is_no_value_not_the_text_null(tmp_path):
  """`"label": null` became the label "null": a test split counted as labelled, scored against it."""
  path = tmp_path / "test.jsonl"
  path.write_text('{"text": "good movie", "label": null}\n{"text": "bad movie", "label": null}\n')
  assert [rec for _, rec in uf.read_records(str(path), "jsonl")] == [{"text": "good movie"}, {"text": "bad movie"}]
  train = tmp_path / "train.jsonl"
  train.write_text('{"text": "good movie", "label": "pos"}\n{"text": null, "label": "neg"}\n')
  with pytest.raises(ud.UserDataError, match=r"train.jsonl:2: .*text"):
    ud.register_task_from_files("test_user_files_null", train=str(train), input_template="{text}",
                                label_names=["pos", "neg"], vocabulary=VOCAB)


def test_an_empty_file_list_or_a_folder_is_named_as_such(tmp_path):
  """Before: `train=[]` said "files [] must have the same header; got []", a folder asked for a suffix."""
  (tmp_path / "data").mkdir()
  for train, expected in (([], r"train=\[\] names no file: give a file path or glob"),
                          (str(tmp_path / "data"), r"train file '.*data' is a folder: give its files \(e\.g\. "
                                                   r"'.*data/\*\.tsv'\)")):
    with pytest.raises(uf.UserDataError, match=expected):
      ud.register_task_from_files("ud_test_empty_list", train=train, input_template="q: {q}",
                                  target_field="label", format="tsv", vocabulary=VOCAB)


def test_a_relative_path_that_matches_nothing_names_the_current_directory(tmp_path, monkeypatch):
  """Run from another folder, `train="data dir/train.csv"` said only "does not exist"."""
  (tmp_path / "proj" / "data dir").mkdir(parents=True)
  (tmp_path / "elsewhere").mkdir()
  _write(tmp_path / "proj" / "data dir" / "train.csv", "s,label\nnice one,pos\nawful,neg\n")
  kw = dict(input_template="{s}", vocabulary=VOCAB, overwrite=True)
  monkeypatch.chdir(tmp_path / "elsewhere")
  with pytest.raises(uf.UserDataError) as e:
    ud.register_task_from_files("ud_test_relative", train="data dir/train.csv", **kw)
  assert str(e.value) == (
      "train file 'data dir/train.csv' does not exist (no file matches). A relative path is resolved "
      f"against the current directory ({tmp_path / 'elsewhere'}), not against your tasks module's or gin "
      "file's folder; pass an absolute path (in a module: "
      "os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data dir/train.csv')) or run from the "
      "folder that holds it.")
  missing = str(tmp_path / "proj" / "no.csv")  # an absolute path: no word about the current directory
  with pytest.raises(uf.UserDataError) as e:
    ud.register_task_from_files("ud_test_relative", validation=missing, **kw)
  assert str(e.value) == f"validation file {missing!r} does not exist (no file matches)."
  with pytest.raises(uf.UserDataError, match=r"^train file '~/d\.csv' does not exist \(no file matches\)\. "
                     r"`~` is not expanded: pass os\.path\.expanduser\('~/d\.csv'\)\. A relative path"):
    ud.register_task_from_files("ud_test_relative", train="~/d.csv", **kw)
  monkeypatch.chdir(tmp_path / "proj")  # paths still resolve as before: from the current directory
  ud.register_task_from_files("ud_test_relative", train="data dir/train.csv", **kw)
  assert _texts("ud_test_relative") == [("nice one", "pos"), ("awful", "neg")]


# Lines of only whitespace (an editor's leftover indentation): spaces, a tab, NBSP, U+3000, mixed.
_BLANKS = ["   ", "\t", " \t ", "\xa0", "\u3000 ", "\t\t"]


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_lines_of_only_whitespace_are_skipped_as_empty_lines(tmp_path, fmt):
  """A CSV line of spaces said "wsline.csv:3: expected 2 comma-separated fields ... but found 1",
  though empty lines are skipped: now the check, the example count and the pipeline skip it."""
  sep = "\t" if fmt == "tsv" else ","
  rows = [("nice one", "pos"), ("awful", "neg")]
  if fmt == "jsonl":
    good = [json.dumps({"s": s, "label": label}) for s, label in rows]
  else:
    good = [f"s{sep}label"] + [f"{s}{sep}{label}" for s, label in rows]
  lines = good[:-1] + _BLANKS + good[-1:] + ["  "]
  path = _write(tmp_path / f"wsline.{fmt}", "\n".join(lines) + "\n")
  first = 1 if fmt == "jsonl" else 2
  assert list(uf.read_records(path, fmt)) == [
      (first, {"s": "nice one", "label": "pos"}),
      (first + 1 + len(_BLANKS), {"s": "awful", "label": "neg"})]
  ud.register_task_from_files("ud_test_wsline", train=path, validation=path, input_template="{s}",
                              label_names=["pos", "neg"], rank_classification=True,
                              vocabulary=VOCAB, overwrite=True)
  task = seqio.get_mixture_or_task("ud_test_wsline")
  assert task.num_input_examples("train") == task.num_input_examples("validation") == 2
  assert _texts("ud_test_wsline") == _texts("ud_test_wsline", "validation") == list(rows)
  assert len(_rows("ud_test_wsline_rank", "validation")) == 4  # 2 examples x 2 options
  assert uf.is_blank(" \t\xa0\u3000") and not uf.is_blank(" ,") and not uf.is_blank("\u200b")
  if fmt != "jsonl":  # a header line of only whitespace is an empty first line
    header_ws = _write(tmp_path / f"hdr.{fmt}", "  \n" + "\n".join(good) + "\n")
    with pytest.raises(uf.UserDataError) as e:
      ud.register_task_from_files("ud_test_wsline", train=header_ws, input_template="{s}",
                                  vocabulary=VOCAB, overwrite=True)
    assert str(e.value) == (
        f"{header_ws}:1: the first line is empty (or only whitespace); a {fmt.upper()} file's first "
        "line must be the header naming its columns (remove the blank lines above it).")

"""Tests for tasks.user_data: registration from TSV/CSV/JSONL, errors, gin."""

import importlib.util  # noqa: F401  (before gin: gin 0.5 bug)
import json
import os

import gin
import pytest
import seqio

from tasks import metrics
from tasks import user_data as ud

VOCAB = seqio.ByteVocabulary()
SPM = os.path.join(os.path.dirname(__file__), "..", "tasks", "data",
                   "bundled_spm.model")


def _examples(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      None, split=split, shuffle=False, try_in_mem_cache=False)
  return [{k: (v.decode() if isinstance(v, bytes) else v)
           for k, v in ex.items() if not k.endswith("s") or
           k.endswith("pretokenized")}
          for ex in ds.as_numpy_iterator()]


def _texts(name, split="train"):
  return [(e["inputs_pretokenized"], e["targets_pretokenized"])
          for e in _examples(name, split)]


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_tsv_int_and_string_labels(tmp_path):
  train = _write(tmp_path / "train.tsv",
                 'premise\thypothesis\tlabel\nA man sleeps.\tA person rests.\t0\n'
                 'It rains.\tThe "sun" shines.\tcontradiction\n')
  ud.register_task_from_files("ud_test_tsv", train=train, validation=train,
                              label_names=["entailment", "contradiction"],
                              vocabulary=VOCAB, overwrite=True)
  assert _texts("ud_test_tsv") == [
      ("premise: A man sleeps. hypothesis: A person rests.", "entailment"),
      ('premise: It rains. hypothesis: The "sun" shines.', "contradiction")]
  task = seqio.get_mixture_or_task("ud_test_tsv")
  assert task.num_input_examples("validation") == 2


def test_csv_quoted_fields_and_custom_template(tmp_path):
  train = _write(tmp_path / "d.csv",
                 'text,extra,label\n"hello, world",x,good\nbye,y,bad\n')
  ud.register_task_from_files("ud_test_csv", train=train,
                              input_template="say: {text} [{extra}]",
                              vocabulary=VOCAB, overwrite=True)
  assert _texts("ud_test_csv") == [("say: hello, world [x]", "good"),
                                   ("say: bye [y]", "bad")]


def test_jsonl_and_rank_classification(tmp_path):
  lines = [{"q": "two plus two", "label": 1}, {"q": "sky color", "label": "no"}]
  train = _write(tmp_path / "d.jsonl",
                 "\n".join(json.dumps(l) for l in lines) + "\n\n")
  ud.register_task_from_files("ud_test_jsonl", train=train,
                              input_template="question: {q}",
                              label_names=["no", "yes"], vocabulary=VOCAB,
                              rank_classification=True, overwrite=True)
  assert _texts("ud_test_jsonl") == [("question: two plus two", "yes"),
                                     ("question: sky color", "no")]
  rank = _examples("ud_test_jsonl_rank")
  # The same rows as the GLUE/SuperGLUE `_rank` tasks: idx = [example, option].
  assert [(e["targets_pretokenized"], e["idx"].tolist(), bool(e["is_correct"]))
          for e in rank] == [("no", [0, 0], False), ("yes", [0, 1], True),
                             ("no", [1, 0], True), ("yes", [1, 1], False)]
  task = seqio.get_mixture_or_task("ud_test_jsonl_rank")
  # One rank metric for every task: tasks.metrics.rank_classification_accuracy.
  assert task.score_metric_fns == [metrics.rank_classification_accuracy]
  targets = [task.postprocess_fn(None, example=e, is_target=True) for e in rank]
  assert targets == [(0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False)]
  # Example 0 scores the right option best, example 1 the wrong one.
  scores = [-3.0, -1.0, -2.0, -0.5]
  assert metrics.rank_classification_accuracy(targets, scores) == {"accuracy": 50.0}
  assert metrics.rank_classification_accuracy(targets, [-1.0] * 4) == {"accuracy": 50.0}  # ties: first


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
  assert [r for _, r in ud.read_records(train, "jsonl")] == [
      {"q": weird, "label": "yes"}, {"q": "plain", "label": "no"}]
  ud.register_task_from_files("ud_test_jsonl_u2028", train=train, input_template="q: {q}",
                              vocabulary=VOCAB, overwrite=True)
  assert _texts("ud_test_jsonl_u2028") == [("q: " + weird, "yes"), ("q: plain", "no")]
  for fmt, sep in (("tsv", "\t"), ("csv", ",")):
    path = tmp_path / f"d.{fmt}"
    path.write_text(f"text{sep}label\r\n{weird}{sep}good\r\nbye{sep}bad\r\n", encoding="utf-8")
    path = str(path)
    assert list(ud.read_records(path, fmt)) == [(2, {"text": weird, "label": "good"}),
                                                (3, {"text": "bye", "label": "bad"})]
    name = f"ud_test_{fmt}_u2028"
    ud.register_task_from_files(name, train=path, input_template="say: {text}", vocabulary=VOCAB,
                                overwrite=True)
    assert seqio.get_mixture_or_task(name).num_input_examples("train") == 2
    assert _texts(name) == [("say: " + weird, "good"), ("say: bye", "bad")]


def test_batches_through_feature_converter(tmp_path):
  train = _write(tmp_path / "t.tsv", "premise\thypothesis\tlabel\na\tb\tyes\n" * 1
                 + "c\td\tno\n")
  ud.register_task_from_files("ud_test_conv", train=train, vocabulary=VOCAB,
                              overwrite=True)
  lengths = {"inputs": 32, "targets": 4}
  ds = seqio.get_mixture_or_task("ud_test_conv").get_dataset(
      lengths, split="train", shuffle=False, try_in_mem_cache=False)
  batch = next(seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
               .batch(2).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (2, 32)
  assert batch["decoder_target_tokens"].shape == (2, 4)
  assert VOCAB.decode(batch["decoder_target_tokens"][0].tolist()) == "yes"


def test_metrics():
  assert ud.accuracy(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == {"accuracy": 75.0}
  # labels a (tp 1, fn 1 -> f1 2/3) and b (tp 1, fp 1 -> f1 2/3).
  assert ud.macro_f1(["a", "a", "b"], ["a", "b", "b"])["macro_f1"] == pytest.approx(200 / 3)


def test_macro_f1_of_a_task_with_label_names_counts_every_label_as_t5(tmp_path):
  """A class no validation target holds still counts (T5's mean_multiclass_f1, sklearn with labels=):
  targets all 'negative', predictions half 'positive' give 33.3, not 66.7 (the labels seen only)."""
  train = _write(tmp_path / "t.tsv", "sentence\tlabel\na\tnegative\nb\tpositive\n")
  ud.register_task_from_files("ud_test_macro_f1", train=train, input_template="{sentence}",
                              label_names=["negative", "positive"],
                              metrics="macro_f1", vocabulary=VOCAB, overwrite=True)
  (metric,) = seqio.get_mixture_or_task("ud_test_macro_f1").metric_fns
  got = metric(["negative"] * 4, ["negative", "negative", "positive", "positive"])["macro_f1"]
  assert got == pytest.approx(100 / 3)  # negative: tp 2, fn 2 -> 2/3; positive: fp 2 -> 0


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
  with pytest.raises(ud.UserDataError) as e:
    ud.register_task_from_files("ud_test_err", train=path, vocabulary=VOCAB,
                                overwrite=True, **kwargs)
  for part in expected:
    assert part in str(e.value)
  assert "In call to configurable" not in str(e.value)  # gin's line, for Python callers (as documented)
  assert "ud_test_err" not in seqio.TaskRegistry.names()


def test_argument_errors(tmp_path):
  path = _write(tmp_path / "d.txt", "premise\thypothesis\tlabel\na\tb\tc\n")
  with pytest.raises(ud.UserDataError, match="suffix"):
    ud.register_task_from_files("ud_test_arg", train=path, vocabulary=VOCAB)
  with pytest.raises(ud.UserDataError, match="does not exist"):
    ud.register_task_from_files("ud_test_arg", train=str(tmp_path / "no.tsv"))
  with pytest.raises(ud.UserDataError, match="needs label_names"):
    ud.register_task_from_files("ud_test_arg", train=path, format="tsv",
                                rank_classification=True, vocabulary=VOCAB)
  with pytest.raises(ud.UserDataError, match="unknown metric"):
    ud.register_task_from_files("ud_test_arg", train=path, format="tsv",
                                metrics=("bleu",), vocabulary=VOCAB)
  ud.register_task_from_files("ud_test_dup", train=path, format="tsv",
                              vocabulary=VOCAB, overwrite=True)
  with pytest.raises(ud.UserDataError, match="overwrite=True"):
    ud.register_task_from_files("ud_test_dup", train=path, format="tsv",
                                vocabulary=VOCAB)


def test_register_from_gin(tmp_path):
  train = _write(tmp_path / "train.tsv", "sentence\tlabel\nnice one\t1\nawful\t0\n")
  gin.clear_config()
  try:
    gin.parse_config(f"""
import tasks.user_data
my_sst/tasks.user_data.register_task_from_files.name = "ud_test_gin"
my_sst/tasks.user_data.register_task_from_files.train = "{train}"
my_sst/tasks.user_data.register_task_from_files.input_template = "sentence: {{sentence}}"
my_sst/tasks.user_data.register_task_from_files.label_names = ["negative", "positive"]
my_sst/tasks.user_data.register_task_from_files.overwrite = True
my_sst/tasks.user_data.register_task_from_files.vocabulary = "{SPM}"
tasks.user_data.register_from_gin.tasks = [@my_sst/tasks.user_data.register_task_from_files()]
""")
    assert ud.register_from_gin() == ["ud_test_gin"]
    vocab = seqio.get_mixture_or_task("ud_test_gin").output_features["inputs"].vocabulary
    assert vocab.vocab_size == 1100
  finally:
    gin.clear_config()
  assert _texts("ud_test_gin") == [("sentence: nice one", "positive"),
                                   ("sentence: awful", "negative")]


# ------------------------------------------- default vocabulary = tasks.vocab's


@pytest.fixture
def no_vocab_override(monkeypatch):
  """No set_vocabulary() override, so the env var / default decide (restored after)."""
  from tasks import vocab
  monkeypatch.setattr(vocab, "_override", None)
  return vocab


def _register_default_vocab(tmp_path, name="ud_test_default_vocab", **kw):
  train = _write(tmp_path / "t.tsv", "premise\thypothesis\tlabel\na\tb\tyes\nc\td\tno\n")
  return ud.register_task_from_files(name, train=train, overwrite=True, **kw)


def _first_target(name, lengths={"inputs": 16, "targets": 4}):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split="train", shuffle=False, try_in_mem_cache=False)
  return next(ds.as_numpy_iterator())["targets"].tolist()


def test_default_vocabulary_follows_spot_jax_vocab(tmp_path, monkeypatch, no_vocab_override):
  """SPOT_JAX_VOCAB (no network: a local model) is what a task without vocabulary= uses."""
  vocab = no_vocab_override
  monkeypatch.setenv(vocab.ENV_VAR, SPM)
  task = _register_default_vocab(tmp_path)
  assert task.output_features["targets"].vocabulary is vocab.DEFAULT_VOCABULARY
  assert ud.default_vocabulary() is vocab.DEFAULT_VOCABULARY
  # Resolved from the env var when used: the bundled 1000 pieces + 100 extra ids, nothing fetched.
  assert task.output_features["inputs"].vocabulary.vocab_size == 1100
  bundled_spm = seqio.SentencePieceVocabulary(SPM, extra_ids=100)
  assert _first_target("ud_test_default_vocab") == bundled_spm.encode("yes") + [1]


def test_default_vocabulary_follows_set_and_use_vocabulary(tmp_path, monkeypatch,
                                                           no_vocab_override):
  vocab = no_vocab_override
  monkeypatch.setenv(vocab.ENV_VAR, str(tmp_path / "not_read.model"))  # the override wins
  _register_default_vocab(tmp_path)
  byte_vocab = seqio.ByteVocabulary()
  with vocab.use_vocabulary(byte_vocab):
    assert _first_target("ud_test_default_vocab") == byte_vocab.encode("yes") + [1]
  vocab.set_vocabulary(SPM)
  assert seqio.get_mixture_or_task(
      "ud_test_default_vocab").output_features["targets"].vocabulary.vocab_size == 1100


def test_explicit_vocabulary_still_wins(tmp_path, monkeypatch, no_vocab_override):
  monkeypatch.setenv(no_vocab_override.ENV_VAR, str(tmp_path / "not_read.model"))
  task = _register_default_vocab(tmp_path, vocabulary=VOCAB)
  assert task.output_features["targets"].vocabulary is VOCAB
  assert _first_target("ud_test_default_vocab") == VOCAB.encode("yes") + [1]
  task = _register_default_vocab(tmp_path, vocabulary=SPM)  # a path: + 100 extra ids
  assert task.output_features["targets"].vocabulary.vocab_size == 1100
  bundled_spm = seqio.SentencePieceVocabulary(SPM, extra_ids=100)
  assert _first_target("ud_test_default_vocab") == bundled_spm.encode("yes") + [1]


def test_default_is_the_t5_vocabulary_with_100_extra_ids(tmp_path, monkeypatch, no_vocab_override,
                                                         shared_fixtures):
  """The T5 model (cc_all.32000.100extra) has 32000 pieces: + 100 extra ids = 32100 ids and
  <extra_id_0> = 32099, the same ids the old users'-data default (cc_all.32000 + 100) gave."""
  vocab = no_vocab_override
  assert ud.DEFAULT_VOCAB_PATH == vocab.DEFAULT_VOCAB_PATH
  assert ud.DEFAULT_EXTRA_IDS == vocab.DEFAULT_EXTRA_IDS == 100
  monkeypatch.setenv(vocab.ENV_VAR, str(shared_fixtures / "t5_vocab.model"))
  task = _register_default_vocab(tmp_path)
  v = task.output_features["targets"].vocabulary
  assert v.vocab_size == 32100 and v.encode("<extra_id_0>") == [32099]


# ------------------------------------------------- found by a user-data audit


def _rows(name, split):
  return [(e["targets_pretokenized"], e.get("is_correct")) for e in _examples(name, split)]


def test_label_whitespace_is_one_definition():
  """LABEL_STRIP_CHARS is exactly Python's whitespace, and the graph strips it as the check does
  (ends only, never inside)."""
  import tensorflow as tf
  assert set(ud.LABEL_STRIP_CHARS) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
  samples = [c + "pos itive" + c + c for c in ud.LABEL_STRIP_CHARS]
  samples += ["", " ", "\u3000x\xa0y\u2029"]
  got = [t.decode() for t in ud._tf_normalize_label(tf.constant(samples)).numpy()]
  assert got == [ud.normalize_label(s) for s in samples]
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


def test_a_label_no_name_matches_stops_the_pipeline(tmp_path):
  """Labels are checked at registration; a file changed after it fails loudly in the graph instead
  of training on label_names[0]."""
  import tensorflow as tf
  path = tmp_path / "d.tsv"
  path.write_text("s\tlabel\na\tpositive\nb\tnegative\n")
  ud.register_task_from_files("ud_test_changed", validation=str(path), input_template="{s}",
                              label_names=["negative", "positive"], vocabulary=VOCAB,
                              overwrite=True)
  path.write_text("s\tlabel\na\tpositive\nb\tneutral\n")
  with pytest.raises(tf.errors.InvalidArgumentError, match="not in label_names"):
    _rows("ud_test_changed", "validation")


def test_label_names_that_are_other_indices_are_refused(tmp_path):
  """Star ratings 0..4 with label_names "1".."5": "0" was "1" by index and "1" was "1" by name."""
  path = _write(tmp_path / "stars.tsv", "s\tlabel\nawful\t0\nbad\t1\nok\t2\ngood\t3\ngreat\t4\n")
  kw = dict(validation=path, input_template="{s}", label_names=["1", "2", "3", "4", "5"],
            vocabulary=VOCAB, overwrite=True)
  with pytest.raises(ud.UserDataError, match=r"ambiguous: a file label '1' could be the name '1' "
                     r"or the index 1 \(-> '2'\).*labels_are='indices'.*labels_are='names'"):
    ud.register_task_from_files("ud_test_stars", **kw)
  assert "ud_test_stars" not in seqio.TaskRegistry.names()
  ud.register_task_from_files("ud_test_stars", labels_are="indices", **kw)
  assert [t for t, _ in _rows("ud_test_stars", "validation")] == ["1", "2", "3", "4", "5"]
  with pytest.raises(ud.UserDataError, match=r"stars.tsv:2: unknown label '0'.*one of \['1'"):
    ud.register_task_from_files("ud_test_stars", labels_are="names", **kw)
  names = _write(tmp_path / "names.tsv", "s\tlabel\nawful\t1\ngreat\t5\n")
  ud.register_task_from_files("ud_test_stars", **dict(kw, validation=names), labels_are="names")
  assert [t for t, _ in _rows("ud_test_stars", "validation")] == ["1", "5"]
  with pytest.raises(ud.UserDataError, match=r"stars.tsv:6: unknown label '4'.*index 0..3"):
    ud.register_task_from_files("ud_test_stars", **dict(kw, label_names=["a", "b", "c", "d"]),
                                labels_are="indices")
  # Names that are their own indices are not ambiguous.
  ud.register_task_from_files("ud_test_stars", **dict(kw, label_names=["0", "1", "2", "3", "4"]))
  with pytest.raises(ud.UserDataError, match="labels_are='nums'"):
    ud.register_task_from_files("ud_test_stars", labels_are="nums", **kw)


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
  with pytest.raises(ud.UserDataError) as e:
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
        mine = ud.decode_fields(line, fmt)
      except ud._FieldError:
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
    with pytest.raises(ud.UserDataError, match=r"d.tsv:\d: a carriage return .* deletes every"):
      ud.register_task_from_files("ud_test_cr", train=str(path), input_template="{s}",
                                  vocabulary=VOCAB, overwrite=True)


def _twin_setup(tmp_path, *names):
  for n in names:
    if n in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(n)
  path = _write(tmp_path / "d.tsv", "s\tlabel\na\tpositive\nb\tnegative\n")
  return dict(validation=path, input_template="{s}", vocabulary=VOCAB)


def test_overwrite_removes_the_stale_rank_twin(tmp_path):
  kw = _twin_setup(tmp_path, "ud_test_tw", "ud_test_tw_rank")
  ud.register_task_from_files("ud_test_tw", label_names=["negative", "positive"],
                              rank_classification=True, **kw)
  ud.register_task_from_files("ud_test_tw", overwrite=True, **kw)  # now without rank_classification
  assert "ud_test_tw" in seqio.TaskRegistry.names()
  assert "ud_test_tw_rank" not in seqio.TaskRegistry.names()


def test_no_half_registration(tmp_path):
  """A `_rank` task that is not a twin is the user's: a clash registers nothing; overwrite keeps
  it."""
  kw = _twin_setup(tmp_path, "ud_test_own", "ud_test_own_rank")
  ud.register_task_from_files("ud_test_own_rank", **kw)
  with pytest.raises(ud.UserDataError, match="'ud_test_own_rank' is already registered") as e:
    ud.register_task_from_files("ud_test_own", label_names=["negative", "positive"],
                                rank_classification=True, **kw)
  assert "ud_test_own" not in seqio.TaskRegistry.names()
  assert "nothing was registered" in str(e.value)
  ud.register_task_from_files("ud_test_own", overwrite=True, **kw)
  assert "ud_test_own_rank" in seqio.TaskRegistry.names()


def test_re_registering_warns_about_mixtures_holding_the_old_task(tmp_path, caplog):
  """seqio resolves a mixture's tasks when it is made: the mixture keeps the old Task object."""
  kw = _twin_setup(tmp_path, "ud_test_mx")
  ud.register_task_from_files("ud_test_mx", **kw)
  seqio.MixtureRegistry.add("ud_test_mx_mix", ["ud_test_mx"], default_rate=1.0)
  try:
    with caplog.at_level("WARNING"):
      ud.register_task_from_files("ud_test_mx", overwrite=True, **kw)
    assert "['ud_test_mx_mix'] still hold the old task" in caplog.text
  finally:
    seqio.MixtureRegistry.remove("ud_test_mx_mix")


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
  with pytest.raises(ud.UserDataError, match=r"l1.tsv:3: not UTF-8: byte 0xe9 .*save it as UTF-8"):
    ud.register_task_from_files("ud_test_enc", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)
  path = tmp_path / "u16.tsv"
  path.write_bytes("s\tlabel\ncafé\tpositive\n".encode("utf-16"))
  with pytest.raises(ud.UserDataError,
                     match=r"u16.tsv:1: the file starts with a UTF-16 byte-order mark.*as UTF-8"):
    ud.register_task_from_files("ud_test_enc", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)
  path.write_bytes("s\tlabel\ncafé\tpositive\n".encode("utf-16-le"))  # no byte-order mark
  with pytest.raises(ud.UserDataError, match=r"u16.tsv:1: a NUL byte; .*probably UTF-16"):
    ud.register_task_from_files("ud_test_enc", train=str(path), input_template="{s}",
                                vocabulary=VOCAB, overwrite=True)


def test_metrics_as_one_string(tmp_path):
  path = _write(tmp_path / "d.tsv", "s\tlabel\na\tx\n")
  task = ud.register_task_from_files("ud_test_m1", train=path, input_template="{s}",
                                     metrics="macro_f1", vocabulary=VOCAB, overwrite=True)
  assert task.metric_fns == [ud.macro_f1]
  task = ud.register_task_from_files("ud_test_m1", train=path, input_template="{s}",
                                     metrics=ud.accuracy, vocabulary=VOCAB, overwrite=True)
  assert task.metric_fns == [ud.accuracy]


@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_blank_lines_are_skipped_in_check_and_pipeline(tmp_path, fmt):
  sep = "\t" if fmt == "tsv" else ","
  path = tmp_path / f"d.{fmt}"
  path.write_bytes(f"s{sep}label\r\na{sep}x\r\n\r\n\nb{sep}y\n\n\r\n".encode())
  ud.register_task_from_files("ud_test_blank", train=str(path), input_template="{s}",
                              vocabulary=VOCAB, overwrite=True)
  assert seqio.get_mixture_or_task("ud_test_blank").num_input_examples("train") == 2
  assert _texts("ud_test_blank") == [("a", "x"), ("b", "y")]


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_unlabelled_test_split(tmp_path, fmt):
  """A test split without labels (no label column/key, or every label empty) has the placeholder
  target "<unk>", for infer; train and validation must be labelled."""
  sep = "\t" if fmt == "tsv" else ","

  def write(name, rows, header):
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "jsonl":
      path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    else:
      path.write_text(sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows))
    return str(path)

  train = write("train", [("a", "positive"), ("b", "1")], ("s", "label"))
  no_column = write("nocol", [("c",), ("d",)], ("s",))
  empty = write("empty", [("c", ""), ("d", " ")], ("s", "label"))
  mixed = write("mixed", [("c", "positive"), ("d", "")], ("s", "label"))
  kw = dict(input_template="{s}", vocabulary=VOCAB, overwrite=True)
  labels = ["negative", "positive"]
  for test in (no_column, empty):
    ud.register_task_from_files("ud_test_unl", train=train, test=test, label_names=labels,
                                rank_classification=True, **kw)
    assert _texts("ud_test_unl", "test") == [("c", "<unk>"), ("d", "<unk>")]
    assert _texts("ud_test_unl", "train") == [("a", "positive"), ("b", "positive")]
    assert [ok for _, ok in _rows("ud_test_unl_rank", "test")] == [False] * 4
  ud.register_task_from_files("ud_test_unl", train=train, test=no_column, **kw)  # free text
  assert _texts("ud_test_unl", "test") == [("c", "<unk>"), ("d", "<unk>")]
  with pytest.raises(ud.UserDataError, match=r"mixed\.\w+:(2|3): this test example has no label .*"
                     r"mixed\.\w+:(1|2) has one; label every example"):
    ud.register_task_from_files("ud_test_unl", train=train, test=mixed, label_names=labels, **kw)
  with pytest.raises(ud.UserDataError, match="Only a test split may be unlabelled"):
    ud.register_task_from_files("ud_test_unl", validation=no_column, label_names=labels, **kw)
  with pytest.raises(ud.UserDataError, match="unknown label '' .*only a test split"):
    ud.register_task_from_files("ud_test_unl", validation=empty, label_names=labels, **kw)

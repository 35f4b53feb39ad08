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

"""Tests for tasks.user_data: registration from TSV/CSV/JSONL, errors, gin."""

import importlib.util  # noqa: F401  (before gin: gin 0.5 bug)
import ast
import inspect
import json
import pathlib
import re

import gin
import pytest
import seqio

from tasks import metrics
from tasks import user_data as ud
from user_data_setup import SPM, VOCAB, _examples, _rows, _texts, _write


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
  """T5's default model (cc_all.32000, the shared fixture) has 32000 pieces: + 100 extra ids = 32100
  ids and <extra_id_0> = 32099 (T5X's cc_all.32000.100extra gives the same: tests/test_vocab.py)."""
  vocab = no_vocab_override
  assert ud.DEFAULT_VOCAB_PATH == vocab.DEFAULT_VOCAB_PATH
  assert ud.DEFAULT_EXTRA_IDS == vocab.DEFAULT_EXTRA_IDS == 100
  monkeypatch.setenv(vocab.ENV_VAR, str(shared_fixtures / "t5_vocab.model"))
  task = _register_default_vocab(tmp_path)
  v = task.output_features["targets"].vocabulary
  assert v.vocab_size == 32100 and v.encode("<extra_id_0>") == [32099]


# ------------------------------------------------- found by a user-data audit


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


def test_re_registering_warns_about_mixtures_holding_the_old_task(tmp_path):
  """seqio resolves a mixture's tasks when it is made: the mixture keeps the old Task object."""
  kw = _twin_setup(tmp_path, "ud_test_mx")
  ud.register_task_from_files("ud_test_mx", **kw)
  seqio.MixtureRegistry.add("ud_test_mx_mix", ["ud_test_mx"], default_rate=1.0)
  try:
    with pytest.warns(UserWarning, match=r"\['ud_test_mx_mix'\] still hold the old task"):
      ud.register_task_from_files("ud_test_mx", overwrite=True, **kw)
  finally:
    seqio.MixtureRegistry.remove("ud_test_mx_mix")


def test_metrics_as_one_string(tmp_path):
  path = _write(tmp_path / "d.tsv", "s\tlabel\na\tx\n")
  task = ud.register_task_from_files("ud_test_m1", train=path, input_template="{s}",
                                     metrics="macro_f1", vocabulary=VOCAB, overwrite=True)
  assert task.metric_fns == [ud.macro_f1]
  task = ud.register_task_from_files("ud_test_m1", train=path, input_template="{s}",
                                     metrics=ud.accuracy, vocabulary=VOCAB, overwrite=True)
  assert task.metric_fns == [ud.accuracy]


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


def test_format_is_case_insensitive_and_a_format_mix_names_the_fix(tmp_path):
  """format="CSV" said "all files must share one format of tsv/csv/jsonl; got ['CSV']"; a csv+jsonl
  task was refused without a word on what to do."""
  csv = _write(tmp_path / "train.csv", "s,label\nnice one,pos\nawful,neg\n")
  jsonl = _write(tmp_path / "dev.jsonl", '{"s": "fine", "label": "pos"}\n')
  kw = dict(input_template="{s}", vocabulary=VOCAB, overwrite=True)
  for fmt, path in (("CSV", csv), ("Csv", csv), ("JSONL", jsonl)):
    ud.register_task_from_files("ud_test_fmt", train=path, format=fmt, **kw)
    assert len(_texts("ud_test_fmt")) == (2 if path == csv else 1)
  with pytest.raises(ud.UserDataError) as e:
    ud.register_task_from_files("ud_test_fmt", train=csv, format="txt", **kw)
  assert str(e.value) == ("task 'ud_test_fmt': format='txt': use 'tsv', 'csv' or 'jsonl' (any case), "
                          "or None to take it from the files' suffix.")
  with pytest.raises(ud.UserDataError) as e:
    ud.register_task_from_files("ud_test_fmt", train=csv, validation=jsonl, **kw)
  assert str(e.value) == (
      f"task 'ud_test_fmt': all files of a task must share one format, but these mix csv and jsonl "
      f"(csv: [{csv!r}]; jsonl: [{jsonl!r}]). Convert the jsonl files to csv, e.g. with pandas: "
      "pd.read_json(path, lines=True, dtype=False).to_csv(out, index=False), or pass only files of "
      "one format.")
  tsv = _write(tmp_path / "dev.tsv", "s\tlabel\nfine\tpos\n")  # never converted into TSV
  with pytest.raises(ud.UserDataError, match=r"mix tsv and csv .* Convert the tsv files to csv, e\.g\. "
                     r"with pandas: pd\.read_csv\(path, sep='\\t', quoting=3, dtype=str, "
                     r"keep_default_na=False\)\.to_csv\(out, index=False\), or pass only"):
    ud.register_task_from_files("ud_test_fmt", train=tsv, validation=csv, **kw)


_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "user_data.md"


def test_the_documented_call_shows_the_defaults_it_claims():
  """docs/user_data.md listed `rank_classification=True  # also registers "my_rte_rank"` among
  default arguments; the default is False, and a user then asked for a `_rank` task that was not there."""
  doc = _DOC.read_text()
  block = doc[doc.index("user_data.register_task_from_files(\n"):]
  block = block[:block.index("\n)\n")]
  shown = dict(re.findall(r"^    (\w+)=(.*?),\s*(?:#.*)?$", block, re.M))
  assert {"rank_classification", "format", "labels_are", "metrics", "vocabulary", "test"} <= set(shown)
  defaults = inspect.signature(ud.register_task_from_files).parameters
  for arg, value in shown.items():
    if arg not in ("train", "validation", "label_names"):  # the doc says these are examples
      assert ast.literal_eval(value) == defaults[arg].default, arg
  assert "Besides `name`, `train`, `validation` and `label_names`, every argument shown is at its " \
         "default." in doc


def test_user_data_error_is_one_class_and_the_docs_say_where_it_lives():
  """Tracebacks print tasks.user_files.UserDataError; the docs named only tasks.user_data's."""
  from tasks import user_files
  assert ud.UserDataError is user_files.UserDataError
  assert f"{ud.UserDataError.__module__}.{ud.UserDataError.__qualname__}" == "tasks.user_files.UserDataError"
  doc = " ".join(_DOC.read_text().split())
  assert ("All errors are `tasks.user_data.UserDataError` (a `ValueError`). The class is defined in "
          "`tasks.user_files`") in doc
  assert "a traceback prints it as `tasks.user_files.UserDataError`: one class under two names" in doc

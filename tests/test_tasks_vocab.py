"""A vocabulary that cannot be read (no network for the gs:// default, a wrong path) fails with an
error naming the path and the fixes, not a raw TensorFlow traceback; set_vocabulary with a path."""
import os
import re
import threading

import pytest
import seqio
import tensorflow as tf

from spot_jax import input_pipeline
from tasks import user_data, vocab

LENGTHS = {"inputs": 16, "targets": 4}
BUNDLED_SPM = os.path.join(os.path.dirname(__file__), "..", "tasks", "data", "bundled_spm.model")


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
  monkeypatch.setattr(vocab, "_override", None)


def _assert_names_path_and_fixes(error, path):
  msg = str(error)
  assert f"cannot load the SentencePiece vocabulary {path}" in msg, msg
  assert "export SPOT_JAX_VOCAB=/path/to/sentencepiece.model" in msg, msg
  assert "tasks.vocab.set_vocabulary('/path/to/sentencepiece.model')" in msg, msg


def test_missing_spot_jax_vocab_names_the_path_and_the_fixes(tmp_path, monkeypatch):
  missing = str(tmp_path / "no_such_dir" / "sentencepiece.model")
  monkeypatch.setenv(vocab.ENV_VAR, missing)
  task = input_pipeline.get_task("spot_glue_rte_v200")  # the lazy project vocabulary
  with pytest.raises(vocab.VocabularyError) as info:
    input_pipeline.check_vocabulary_fits(task, 32128)  # the path of the user's traceback
  _assert_names_path_and_fixes(info.value, missing)
  assert "from the environment variable SPOT_JAX_VOCAB" in str(info.value)
  assert isinstance(info.value.__cause__, tf.errors.NotFoundError)  # the original error, chained
  assert isinstance(info.value, ValueError)  # CLIs print ValueErrors as one line
  with pytest.raises(vocab.VocabularyError):  # every use of the lazy vocabulary, not one path
    vocab.DEFAULT_VOCABULARY.encode("hello")


def test_unreadable_default_says_spot_jax_vocab_is_unset(tmp_path, monkeypatch):
  # Stands in for gs://t5-data/... without network (a test must not depend on the network).
  missing = str(tmp_path / "t5" / "sentencepiece.model")
  monkeypatch.delenv(vocab.ENV_VAR, raising=False)
  monkeypatch.setattr(vocab, "DEFAULT_VOCAB_PATH", missing)
  with pytest.raises(vocab.VocabularyError) as info:
    vocab.DEFAULT_VOCABULARY.vocab_size  # pylint: disable=pointless-statement
  _assert_names_path_and_fixes(info.value, missing)
  assert "SPOT_JAX_VOCAB is not set" in str(info.value)
  assert info.value.__cause__ is not None


def _user_task(tmp_path, name, **kw):
  train = tmp_path / "train.tsv"
  train.write_text("premise\thypothesis\tlabel\na\tb\tyes\nc\td\tno\n")
  return user_data.register_task_from_files(name, train=str(train), overwrite=True, **kw)


def test_batches_of_a_user_task_fail_with_the_clear_error(tmp_path, monkeypatch):
  missing = str(tmp_path / "missing.model")
  monkeypatch.setenv(vocab.ENV_VAR, missing)
  _user_task(tmp_path, "spot_test_vocab_missing")  # no vocabulary=: the project's default
  with pytest.raises(vocab.VocabularyError, match="missing.model.*SPOT_JAX_VOCAB=/path/to"):
    input_pipeline.get_batches("spot_test_vocab_missing", LENGTHS, "train", 2)
  # An explicit path that cannot be read names the task and the path.
  _user_task(tmp_path, "spot_test_vocab_explicit", vocabulary=str(tmp_path / "explicit.model"))
  with pytest.raises(vocab.VocabularyError, match=r"explicit\.model that task spot_test_vocab_explicit"):
    input_pipeline.get_batches("spot_test_vocab_explicit", LENGTHS, "train", 2)
  for name in ("spot_test_vocab_missing", "spot_test_vocab_explicit"):
    seqio.TaskRegistry.remove(name)


def test_set_vocabulary_with_a_path_returns():
  """set_vocabulary('/path') took the (non-reentrant) lock twice and hung forever."""
  done = threading.Event()

  def call():
    vocab.set_vocabulary(BUNDLED_SPM)
    done.set()

  threading.Thread(target=call, daemon=True).start()
  assert done.wait(30), "set_vocabulary(path) deadlocked"
  assert vocab.resolve().vocab_size == 1100


def test_an_hf_folder_holding_spiece_model_is_named_as_the_vocabulary_to_use(tmp_path, monkeypatch):
  """Offline, the default gs://t5-data/... vocabulary cannot be read; a Hugging Face download of T5 or
  mT5 holds the model's own SentencePiece model as spiece.model, which the error did not mention (it
  said export SPOT_JAX_VOCAB=/path/to/sentencepiece.model). Now it names that file; the error of a
  folder without one, or of no checkpoint, is as before."""
  import shutil
  import gin
  import jax
  from spot_jax import checkpoints, gin_utils
  from spot_jax import train as train_lib
  from spot_jax.model import init_params
  from train_setup import CFG
  missing = str(tmp_path / "t5" / "sentencepiece.model")  # stands in for gs://t5-data/... offline
  monkeypatch.delenv(vocab.ENV_VAR, raising=False)
  monkeypatch.setattr(vocab, "DEFAULT_VOCAB_PATH", missing)
  monkeypatch.setattr(vocab, "_cache", {})
  folder = tmp_path / "t5_hf"
  checkpoints.write_hf(init_params(CFG, jax.random.PRNGKey(0)), CFG, str(folder))
  task = input_pipeline.get_task("spot_glue_rte_v200")  # the lazy project vocabulary
  with pytest.raises(vocab.VocabularyError) as info:  # no spiece.model: as before
    input_pipeline.check_vocabulary_fits(task, 32128, checkpoint_path=str(folder))
  _assert_names_path_and_fixes(info.value, missing)
  shutil.copy(BUNDLED_SPM, folder / "spiece.model")
  spiece = str(folder / "spiece.model")
  with pytest.raises(vocab.VocabularyError) as info:
    input_pipeline.check_vocabulary_fits(task, 32128, checkpoint_path=str(folder))
  said = str(info.value)
  assert f"cannot load the SentencePiece vocabulary {missing}" in said, said
  assert f"The checkpoint's folder holds its own SentencePiece model, {spiece}" in said, said
  assert f"export SPOT_JAX_VOCAB={spiece}" in said and f"set_vocabulary('{spiece}')" in said, said
  assert isinstance(info.value.__cause__, tf.errors.NotFoundError)
  with pytest.raises(vocab.VocabularyError) as info:  # no checkpoint: as before
    input_pipeline.check_vocabulary_fits(task, 32128)
  _assert_names_path_and_fixes(info.value, missing)
  # Through `train` with INITIAL_CHECKPOINT_PATH the folder, on a user's task of the project vocabulary.
  _user_task(tmp_path, "spot_test_vocab_hf")
  args = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/from_checkpoint.gin", "--gin_file=runs/prompt_train.gin",
          f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.MIXTURE_OR_TASK_NAME='spot_test_vocab_hf'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
          "--gin.EVAL_PERIOD=None", f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'"]
  try:
    with pytest.raises(SystemExit, match=rf"spot_jax: error: cannot load the SentencePiece vocabulary .* "
                                         rf"export SPOT_JAX_VOCAB={re.escape(spiece)}"):
      gin_utils.run(gin.get_configurable(train_lib.train), args)
  finally:
    seqio.TaskRegistry.remove("spot_test_vocab_hf")
  # Once pointed at it, the file loads: 1000 pieces here, and the sentinels the HF tokenizer appends.
  monkeypatch.setenv(vocab.ENV_VAR, spiece)
  assert vocab.resolve().vocab_size == 1100


def _in_chain(error, kind):
  while error is not None and not isinstance(error, kind):
    error = error.__cause__ or error.__context__
  return error


def test_a_task_registered_with_a_missing_model_file_fails_with_the_vocabulary_error(tmp_path, monkeypatch):
  """`register_task_from_files(..., vocabulary="/nonexistent/spm.model")`, then `get_dataset`: a bare
  `NotFoundError: /nonexistent/spm.model; No such file or directory` (the file was first read to count its
  sentinels, outside the error wrapping), not the documented VocabularyError naming the fix."""
  monkeypatch.setattr(vocab, "_cache", {})
  missing = str(tmp_path / "nonexistent" / "spm.model")
  name = "spot_test_vocab_explicit_dataset"
  said = (f"cannot load the SentencePiece vocabulary {missing} that task {name} was registered with: "
          f"NotFoundError: {missing}; No such file or directory. Register the task with a model file this "
          "machine can read (a local path), or with vocabulary=None for the project's vocabulary (tasks.vocab: "
          "set_vocabulary, else $SPOT_JAX_VOCAB).")
  _user_task(tmp_path, name, vocabulary=missing)
  try:
    task = seqio.get_mixture_or_task(name)
    with pytest.raises(Exception) as info:  # tokenized in tf.data: TensorFlow wraps it (StagingError)
      next(iter(task.get_dataset(None, split="train", shuffle=False)))
    error = _in_chain(info.value, vocab.VocabularyError)
    assert error is not None and str(error) == said, info.value
    assert isinstance(error.__cause__, tf.errors.NotFoundError)
    with pytest.raises(vocab.VocabularyError) as info:  # in Python, as it is
      task.output_features["inputs"].vocabulary.encode("a b")
    assert str(info.value) == said
  finally:
    seqio.TaskRegistry.remove(name)
  # A path the project's vocabulary is read from names SPOT_JAX_VOCAB or set_vocabulary, as the lazy one does.
  monkeypatch.setenv(vocab.ENV_VAR, missing)
  with pytest.raises(vocab.VocabularyError) as info:
    vocab.get_vocabulary().encode("a b")
  _assert_names_path_and_fixes(info.value, missing)
  assert "(from the environment variable SPOT_JAX_VOCAB)" in str(info.value)
  vocab.set_vocabulary(missing)
  with pytest.raises(vocab.VocabularyError, match=r"\(set by tasks\.vocab\.set_vocabulary/use_vocabulary\)"):
    vocab.resolve().encode("a b")

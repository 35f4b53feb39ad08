"""The lazy vocabulary: no GCS at import, overrides, env var, re-registration."""
import importlib.util  # noqa: F401
import os
import sys

import seqio

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import glue, vocab  # noqa: E402


def test_import_does_not_load_a_model():
  assert vocab.get_vocabulary().sentencepiece_model_file == vocab.DEFAULT_VOCAB_PATH \
      or os.environ.get(vocab.ENV_VAR)
  # Nothing has been loaded: seqio reads the model file lazily.
  assert vocab.get_vocabulary()._model is None  # pylint: disable=protected-access
  assert str(vocab.DEFAULT_VOCABULARY) == "LazyVocabulary()"


def test_env_var(monkeypatch):
  monkeypatch.setenv(vocab.ENV_VAR, ct.tiny_spm_path())
  assert vocab.resolve().vocab_size == 400  # 300 pieces + 100 extra ids


def test_use_vocabulary_forwards_everything():
  tiny = ct.tiny_vocabulary()
  with vocab.use_vocabulary(tiny):
    lazy = vocab.DEFAULT_VOCABULARY
    assert lazy.vocab_size == tiny.vocab_size and lazy.eos_id == 1
    ids = lazy.encode("the cat")
    assert ids == tiny.encode("the cat") and lazy.decode(ids) == "the cat"
    assert list(lazy.encode_tf("the cat").numpy()) == ids
  assert vocab.resolve() is not tiny


def test_register_with_another_vocabulary():
  byte_vocab = seqio.ByteVocabulary()
  names = glue.register(vocabulary=byte_vocab, name_suffix="_bytes")
  assert "spot_glue_rte_v200_bytes" in names
  task = seqio.get_mixture_or_task("spot_glue_rte_v200_bytes")
  assert task.output_features["inputs"].vocabulary is byte_vocab
  assert seqio.get_mixture_or_task("spot_glue_rte_v200").output_features[
      "targets"].vocabulary is vocab.DEFAULT_VOCABULARY
  for n in names:
    seqio.TaskRegistry.remove(n)

"""The lazy vocabulary: no GCS at import, overrides, env var, re-registration."""
import importlib.util  # noqa: F401
import os
import sys

import pytest
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


def _with_sentinels_built_in(path, tmp_path, name="spm.100extra.model"):
  """The model file with its 100 sentinels written into it, as T5X's `cc_all.32000.100extra` and
  mT5's `mc4.250000.100extra` are: the model seqio builds by appending them, serialized."""
  out = tmp_path / name
  out.write_bytes(seqio.SentencePieceVocabulary(str(path), extra_ids=100).sp_model)
  return str(out)


def test_a_file_holding_its_sentinels_gives_the_same_ids_with_100_extra_ids(tmp_path, monkeypatch):
  """seqio alone refuses it with 100 extra ids ("<extra_id_99> is already defined"); spot_jax reads it
  as T5X does (none appended), so both public T5 files give one vocabulary."""
  plain = ct.tiny_spm_path()
  built_in = _with_sentinels_built_in(plain, tmp_path)
  assert vocab.built_in_sentinels(plain) == 0 and vocab.built_in_sentinels(built_in) == 100
  with pytest.raises(Exception, match="already defined"):
    seqio.SentencePieceVocabulary(built_in, extra_ids=100).load_model()
  want = seqio.SentencePieceVocabulary(plain, extra_ids=100)
  monkeypatch.setenv(vocab.ENV_VAR, built_in)
  got = vocab.resolve()
  assert got.vocab_size == want.vocab_size == 400
  text = "the cat <extra_id_0> sat <extra_id_7>"
  assert got.encode(text) == want.encode(text) and want.encode("<extra_id_0>") == [399]
  assert got.decode(want.encode(text)) == want.decode(want.encode(text))
  assert vocab.get_vocabulary(built_in, extra_ids=0).vocab_size == 400  # T5X's own binding


def test_extra_ids_other_than_the_files_sentinels_are_refused(tmp_path, monkeypatch):
  built_in = _with_sentinels_built_in(ct.tiny_spm_path(), tmp_path)
  monkeypatch.setenv(vocab.ENV_VAR, built_in)
  vocab.set_vocabulary(built_in, extra_ids=50)
  try:
    with pytest.raises(vocab.VocabularyError, match=r"already holds 100 <extra_id_N> pieces, but 50 extra ids "
                                                    r"were asked for: use extra_ids=100"):
      vocab.DEFAULT_VOCABULARY.vocab_size  # pylint: disable=pointless-statement
  finally:
    vocab.set_vocabulary(None)


def test_t5s_two_public_files_give_32100_ids(tmp_path, shared_fixtures):
  """The shared fixture is cc_all.32000 (32000 pieces); its `.100extra` form must read the same."""
  plain = str(shared_fixtures / "t5_vocab.model")
  assert vocab.built_in_sentinels(plain) == 0
  for path in (plain, _with_sentinels_built_in(plain, tmp_path)):
    v = vocab.get_vocabulary(path)
    assert v.vocab_size == 32100 and v.encode("<extra_id_0>") == [32099] and v.encode("<extra_id_99>") == [32000]

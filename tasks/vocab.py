"""The vocabulary every spot_jax task tokenizes with, resolved lazily.

Tasks are registered at import time, but importing `tasks` must never touch
GCS or the network. The registered output features therefore hold one
`LazyVocabulary` proxy; the real `seqio.SentencePieceVocabulary` is built the
first time a dataset is tokenized or decoded. Which model it loads, first
match wins:
  1. `set_vocabulary(...)` / `use_vocabulary(...)` (Python, gin or tests),
  2. the environment variable `SPOT_JAX_VOCAB` (a path; `gs://` works),
  3. `DEFAULT_VOCAB_PATH`, the public T5 vocabulary.
A model that cannot be read (no network for the `gs://` default, a wrong path)
raises `VocabularyError`, naming the path and the ways to point at a local copy.

Two public files give T5's 32100 ids: `cc_all.32000` (T5's default: 32000
pieces, 100 sentinels appended) and `cc_all.32000.100extra` (T5X's gin files:
the sentinels already in the file). Both are accepted with the same 100 extra
ids: `SentinelAwareVocabulary` appends none to a file that holds them (seqio
would refuse it: "<extra_id_99> is already defined"), as T5X reads it.
"""
import contextlib
import logging
import os
import re
import threading
from typing import Optional, Union

import seqio

# T5's own default (t5.data's DEFAULT_SPM_PATH + DEFAULT_EXTRA_IDS); T5X's `.100extra` copy works too.
DEFAULT_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100
ENV_VAR = "SPOT_JAX_VOCAB"

VocabLike = Union[str, os.PathLike, seqio.Vocabulary]


class VocabularyError(ValueError):
  """The SentencePiece model of the tasks' vocabulary cannot be loaded. `load_error` sets what it was
  made of (`path`, the `cause`, its `origin`, the `task` that registered it), so that a caller who knows
  a local copy (a checkpoint folder's own `spiece.model`) can say it again naming that file
  (`with_local_copy`)."""

  def __init__(self, message: str, path: Optional[str] = None, cause: Optional[BaseException] = None,
               origin: str = "", task: Optional[str] = None):
    super().__init__(message)
    self.path, self.cause, self.origin, self.task = path, cause, origin, task

  def with_local_copy(self, local_copy: str) -> "VocabularyError":
    """This error naming `local_copy` as the model file to use; itself when it was not made by
    `load_error` for the project's vocabulary (a task's own vocabulary is not SPOT_JAX_VOCAB's to change)."""
    if self.cause is None or self.task is not None:
      return self
    return load_error(self.path, self.cause, self.origin, local_copy=local_copy)


_SENTINEL = re.compile(r"\u2581?<extra_id_(\d+)>")


def built_in_sentinels(path: str) -> int:
  """How many `<extra_id_N>` pieces a SentencePiece model file already holds (T5X's `.100extra`
  files and mT5's `mc4.250000.100extra` hold 100; `cc_all.32000` none)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (seqio reads model files with it too)
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    model = sentencepiece_model_pb2.ModelProto.FromString(f.read())
  return sum(1 for piece in model.pieces if _SENTINEL.fullmatch(piece.piece))


class SentinelAwareVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` that appends no sentinels to a model file already holding
  them: `extra_ids` is what the ids must include, and the ids are the same either way."""

  def _model_context(self):
    if self._model is not None:
      return super()._model_context()
    try:  # the first use: reads the file
      if self._extra_ids:
        held = built_in_sentinels(self.sentencepiece_model_file)
        if held and held != self._extra_ids:
          raise VocabularyError(
              f"{self.sentencepiece_model_file} already holds {held} <extra_id_N> pieces, but "
              f"{self._extra_ids} extra ids were asked for: use extra_ids={held} (or 0), as the file's "
              "own sentinels are the extra ids")
        if held:
          logging.getLogger("spot_jax").info(
              "%s holds its %d sentinels (<extra_id_N> pieces): none appended", self.sentencepiece_model_file,
              held)
          self._extra_ids = 0
      return super()._model_context()
    except VocabularyError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (TF, OS and protobuf errors alike)
      raise self._load_error(e) from e

  def _load_error(self, error: BaseException) -> "VocabularyError":
    """`load_error` for this file, whoever reads it first (a task's dataset, tokenizing in tf.data): the
    project's vocabulary names SPOT_JAX_VOCAB and set_vocabulary, a task's own the tasks registered with
    it (`register_task_from_files(..., vocabulary=PATH)`), whose fix is another path."""
    if self is _override or (_override is None and self is get_vocabulary()):
      return load_error(self.sentencepiece_model_file, error, _origin(self))
    return load_error(self.sentencepiece_model_file, error, task=", ".join(_tasks_using(self)))


def _tasks_using(vocabulary: seqio.Vocabulary) -> list:
  """The registered tasks whose features hold `vocabulary` (for an error's text)."""
  names = []
  for name in sorted(seqio.TaskRegistry.names()):
    try:
      features = seqio.TaskRegistry.get(name).output_features.values()
    except Exception:  # pylint: disable=broad-except  (a message only)
      continue
    if any(getattr(f, "vocabulary", None) is vocabulary for f in features):
      names.append(name)
  return names


_lock = threading.Lock()
_override: Optional[seqio.Vocabulary] = None
_cache: dict = {}


def get_vocabulary(path: Optional[str] = None,
                   extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.Vocabulary:
  """Returns a SentencePiece vocabulary (the model file is read on first use).

  Args:
    path: SentencePiece model file; default `$SPOT_JAX_VOCAB`, else the T5 one.
    extra_ids: sentinel ids (`<extra_id_0>` = vocab_size - 1); T5 uses 100.
      Appended to the file's pieces, unless the file holds them already.
  """
  path = str(path or os.environ.get(ENV_VAR) or DEFAULT_VOCAB_PATH)
  key = (path, extra_ids)
  with _lock:
    if key not in _cache:
      _cache[key] = SentinelAwareVocabulary(path, extra_ids=extra_ids)
    return _cache[key]


def _as_vocabulary(vocab: VocabLike, extra_ids: int) -> seqio.Vocabulary:
  if isinstance(vocab, seqio.Vocabulary):
    return vocab
  return get_vocabulary(os.fspath(vocab), extra_ids)


def set_vocabulary(vocab: Optional[VocabLike] = None,
                   extra_ids: int = DEFAULT_EXTRA_IDS) -> None:
  """Makes every spot_jax task use `vocab` (a path or a seqio.Vocabulary).

  `None` restores the default (env var, then the T5 vocabulary). Usable from
  gin: `tasks.vocab.set_vocabulary.vocab = "/path/spm.model"` with a call
  site, or simply export SPOT_JAX_VOCAB.
  """
  global _override
  # Built outside the lock: a path goes through get_vocabulary, which takes it too.
  resolved = None if vocab is None else _as_vocabulary(vocab, extra_ids)
  with _lock:
    _override = resolved


@contextlib.contextmanager
def use_vocabulary(vocab: VocabLike, extra_ids: int = DEFAULT_EXTRA_IDS):
  """Context manager: the tasks tokenize with `vocab` inside the block."""
  global _override
  previous = _override
  set_vocabulary(vocab, extra_ids)
  try:
    yield resolve()
  finally:
    with _lock:
      _override = previous


def resolve() -> seqio.Vocabulary:
  """The concrete vocabulary the proxy currently stands for."""
  return _override if _override is not None else get_vocabulary()


def _origin(vocab: seqio.Vocabulary) -> str:
  if vocab is _override:
    return "set by tasks.vocab.set_vocabulary/use_vocabulary"
  if os.environ.get(ENV_VAR):
    return f"from the environment variable {ENV_VAR}"
  return f"the default, tasks.vocab.DEFAULT_VOCAB_PATH; {ENV_VAR} is not set"


def load_error(path: str, error: BaseException, origin: str = "",
               task: Optional[str] = None, local_copy: Optional[str] = None) -> VocabularyError:
  """A `VocabularyError` for a model file that could not be read (chain `error` to it). `task`: the
  vocabulary is the one that task was registered with, which SPOT_JAX_VOCAB does not change.
  `local_copy`: a model file this machine has that fits the model (a Hugging Face T5 or mT5 folder's
  `spiece.model`), named as the value to use. `task` may name several ("a, b"), or none ("": a task's
  own vocabulary, the task not known)."""
  cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  if task is not None:
    tasks = f"tasks {task} were" if ", " in task else f"task {task} was" if task else "a task was"
    return VocabularyError(
        f"cannot load the SentencePiece vocabulary {path} that {tasks} registered with: "
        f"{type(error).__name__}: {cause}. Register the task with a model file this machine can "
        f"read (a local path), or with vocabulary=None for the project's vocabulary (tasks.vocab: "
        f"set_vocabulary, else ${ENV_VAR}).", path, error, origin, task)
  said = f"cannot load the SentencePiece vocabulary {path}{f' ({origin})' if origin else ''}: " \
         f"{type(error).__name__}: {cause}. "
  if local_copy:
    return VocabularyError(
        f"{said}The checkpoint's folder holds its own SentencePiece model, {local_copy}: point the tasks "
        f"at it with export {ENV_VAR}={local_copy}, or call tasks.vocab.set_vocabulary('{local_copy}') "
        f"in Python (it wins over {ENV_VAR}); {DEFAULT_EXTRA_IDS} extra ids are appended to its pieces, "
        "as the Hugging Face tokenizer appends them.", path, error, origin)
  return VocabularyError(
      f"{said}Point the tasks at a model file this machine can read (without network, a local copy of "
      f"the T5 vocabulary {DEFAULT_VOCAB_PATH}): export {ENV_VAR}=/path/to/sentencepiece.model, "
      f"or call tasks.vocab.set_vocabulary('/path/to/sentencepiece.model') in Python (it wins "
      f"over {ENV_VAR}); "
      f"{DEFAULT_EXTRA_IDS} extra ids are appended to the model's pieces (none to a file that holds "
      f"them, as T5X's cc_all.32000.100extra does).", path, error, origin)


def ensure_loaded(vocab: seqio.Vocabulary, origin: str = "",
                  task: Optional[str] = None) -> seqio.Vocabulary:
  """Reads a SentencePiece vocabulary's model now, raising `VocabularyError` if it can't. `task`
  names the task a (non-lazy) vocabulary was registered with, for the error's advice."""
  if isinstance(vocab, LazyVocabulary):
    return vocab.target  # loads (or raises VocabularyError) itself
  if isinstance(vocab, seqio.SentencePieceVocabulary) and getattr(vocab, "_model", None) is None:
    try:
      vocab.load_model()
    except VocabularyError as e:  # a `SentinelAwareVocabulary`'s: said again with what the caller knows
      if e.cause is None or (not origin and task is None):
        raise
      raise load_error(vocab.sentencepiece_model_file, e.cause, origin, task) from e.cause
    except Exception as e:  # pylint: disable=broad-except  (TF, OS and protobuf errors alike)
      raise load_error(vocab.sentencepiece_model_file, e, origin, task) from e
  return vocab


class LazyVocabulary(seqio.Vocabulary):
  """A seqio.Vocabulary that forwards everything to `resolve()` at use time."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def target(self) -> seqio.Vocabulary:
    vocab = resolve()
    if isinstance(vocab, seqio.SentencePieceVocabulary) and getattr(vocab, "_model", None) is None:
      ensure_loaded(vocab, _origin(vocab))
    return vocab

  # Public API: forward whole calls so the target's own extra-id logic applies.
  @property
  def vocab_size(self) -> int:
    return self.target.vocab_size

  @property
  def extra_ids(self) -> int:
    return self.target.extra_ids

  @property
  def pad_id(self) -> int:
    return self.target.pad_id

  @property
  def eos_id(self):
    return self.target.eos_id

  @property
  def unk_id(self):
    return self.target.unk_id

  @property
  def bos_id(self):
    return self.target.bos_id

  def encode(self, s):
    return self.target.encode(s)

  def decode(self, ids):
    return self.target.decode(ids)

  def encode_tf(self, s):
    return self.target.encode_tf(s)

  def decode_tf(self, ids):
    return self.target.decode_tf(ids)

  # Abstract hooks (unused because the public methods are forwarded).
  @property
  def _base_vocab_size(self):
    return self.target.vocab_size - self.target.extra_ids

  def _encode(self, s):
    return self.target.encode(s)

  def _decode(self, ids):
    return self.target.decode(ids)

  def _encode_tf(self, s):
    return self.target.encode_tf(s)

  def _decode_tf(self, ids):
    return self.target.decode_tf(ids)

  def __eq__(self, other):
    return isinstance(other, LazyVocabulary) or other == resolve()  # no forced model load

  def __hash__(self):
    return hash("spot_jax.LazyVocabulary")

  def __str__(self):
    return "LazyVocabulary()"  # never resolves (no GCS access)


DEFAULT_VOCABULARY = LazyVocabulary()


def output_features(vocabulary: Optional[seqio.Vocabulary] = None,
                    add_eos: bool = True) -> dict:
  """EncDec output features ("inputs", "targets") over `vocabulary`."""
  vocabulary = vocabulary or DEFAULT_VOCABULARY
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=add_eos),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=add_eos),
  }

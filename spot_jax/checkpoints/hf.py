"""Hugging Face T5 checkpoints: `config.json` + `model.safetensors` (or shards + index), or Flax's
`flax_model.msgpack` (`hf_flax`) when a folder has no safetensors.

PyTorch `nn.Linear` weights are `[out, in]`; T5X kernels are `[in, out]`, so every projection is
transposed, as is the relative-position table (`[buckets, heads]` in HF, `[heads, buckets]` in
T5X). HF keeps the relative bias only in block 0 of each stack, which is exactly T5X's one shared
table per stack. Read through `safetensors.numpy`: no torch, no pickle.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

# Registers numpy's 'bfloat16' name: safetensors' numpy reader builds BF16 arrays with
# `np.dtype("bfloat16")`, which fails in a process that has not imported ml_dtypes (or jax) yet.
import ml_dtypes  # noqa: F401
import numpy as np

from spot_jax.checkpoints import hf_flax
from spot_jax.checkpoints import t5x as _io
from spot_jax.checkpoints.infer_config import (CheckpointError, expected_shapes, flatten, np_dtype,
                                               unflatten)
from spot_jax.checkpoints.hf_config import config_from_hf, config_to_hf
from spot_jax.config import T5Config

INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


def has_safetensors(path: str) -> bool:
  return _io.exists(_io.join(path, WEIGHTS_FILE)) or _io.exists(_io.join(path, INDEX_FILE))


def is_hf_dir(path: str) -> bool:
  return _io.exists(_io.join(path, "config.json")) and (has_safetensors(path) or hf_flax.has_weights(path))


# The SentencePiece model T5's and mT5's Hugging Face tokenizers keep beside the weights (`T5Tokenizer`'s
# vocab_file): the pieces of the model's vocabulary, to which the tokenizer appends 100 sentinels.
SENTENCEPIECE_FILE = "spiece.model"


def sentencepiece_model(path: Optional[str]) -> Optional[str]:
  """`PATH/spiece.model` when `path` is a Hugging Face folder holding one (a download of T5 or mT5 does),
  else None: a local copy of the model's vocabulary that the tasks can read offline."""
  if not path:
    return None
  try:
    found = _io.join(path, SENTENCEPIECE_FILE)
    return found if is_hf_dir(path) and _io.exists(found) else None
  except Exception:  # pylint: disable=broad-except  (a hint for an error message only)
    return None


# ----------------------------------------------------------------------------- config.json

# ----------------------------------------------------------------------------- name mapping

def _attn(hf: str, t5x: str) -> Dict[str, Tuple[str, bool]]:
  return {f"{t5x}/{ours}/kernel": (f"{hf}.{theirs}.weight", True)
          for theirs, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))}


def _mlp(hf: str, t5x: str, config: T5Config) -> Dict[str, Tuple[str, bool]]:
  names = ("wi_0", "wi_1", "wo") if config.gated else ("wi", "wo")
  return {f"{t5x}/{n}/kernel": (f"{hf}.DenseReluDense.{n}.weight", True) for n in names}


def name_map(config: T5Config) -> Dict[str, Tuple[str, bool]]:
  """`{t5x name: (HF name, transposed)}` for every parameter of `config`."""
  m = {"token_embedder/embedding": ("shared.weight", False),
       "encoder/encoder_norm/scale": ("encoder.final_layer_norm.weight", False),
       "decoder/decoder_norm/scale": ("decoder.final_layer_norm.weight", False)}
  for stack in ("encoder", "decoder"):
    m[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)
  for i in range(config.num_encoder_layers):
    hf, ours = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    m.update(_attn(f"{hf}.0.SelfAttention", f"{ours}/attention"))
    m[f"{ours}/pre_attention_layer_norm/scale"] = (f"{hf}.0.layer_norm.weight", False)
    m.update(_mlp(f"{hf}.1", f"{ours}/mlp", config))
    m[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.1.layer_norm.weight", False)
  for i in range(config.num_decoder_layers):
    hf, ours = f"decoder.block.{i}.layer", f"decoder/layers_{i}"
    m.update(_attn(f"{hf}.0.SelfAttention", f"{ours}/self_attention"))
    m[f"{ours}/pre_self_attention_layer_norm/scale"] = (f"{hf}.0.layer_norm.weight", False)
    m.update(_attn(f"{hf}.1.EncDecAttention", f"{ours}/encoder_decoder_attention"))
    m[f"{ours}/pre_cross_attention_layer_norm/scale"] = (f"{hf}.1.layer_norm.weight", False)
    m.update(_mlp(f"{hf}.2", f"{ours}/mlp", config))
    m[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.2.layer_norm.weight", False)
  if not config.tie_word_embeddings:
    m["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
  return m


# Tied copies HF may store instead of (or beside) `shared.weight`.
_EMBEDDING_ALIASES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


# ----------------------------------------------------------------------------- reading

DAMAGED = "the file is truncated or damaged: download or copy it again"

# safetensors dtype names -> numpy. `safetensors.numpy.load(bytes)` knows no BF16 (numpy has no
# bfloat16), so bytes are decoded here, with ml_dtypes' bfloat16.
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
                       "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


def load_safetensors_bytes(data: bytes, source: str = "safetensors file") -> Dict[str, np.ndarray]:
  """`{name: array}` from the bytes of a safetensors file, bfloat16 included."""
  from safetensors import deserialize
  try:
    items = deserialize(data)
  except Exception as e:  # safetensors raises its own SafetensorError
    raise CheckpointError(f"{source} is not a readable safetensors file ({e}): {DAMAGED}") from e
  out = {}
  for name, info in items:
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(_unread_dtype(source, name, info["dtype"]))
    out[name] = np.frombuffer(info["data"], dtype=np_dtype(dtype).newbyteorder("<")).reshape(info["shape"])
  return out


# ----------------------------------------------------------------------------- gs:// by byte range

# How a slice of a gs:// tensor is fetched. Each byte range is one ranged GET through tensorstore's `gcs`
# kvstore, which transfers exactly the bytes asked for; all the ranges of a slice are in flight at once.
# (tf.io.gfile cannot do this: TF's GCS file fills a 64 MiB read-ahead buffer at every seek, so each
# ranged read of a few rows transferred up to 64 MiB, to the end of the file.)
#
# A slice of a row-major PyTorch `[out, in]` weight is rows [r0, r1) and, in each row, the bytes of its
# columns. A row split (a `mlp` or `heads` shard of `wi`, `q`, `k`, `v`) is one contiguous range. A column
# split (the `mlp` or `heads` shard of `wo` or of the attention output `o`, whose HF layout is the
# transpose of T5X's) leaves a gap between the pieces of consecutive rows: the rest of each row. The rule:
# when that gap is at most SPOT_JAX_GCS_MAX_GAP_BYTES (default 1 MiB), one range spans the rows, gaps
# included (the bytes from the slice's first to its last); otherwise each row's piece is its own range.
# Why 1 MiB (an estimate, not measured against GCS here): a request costs about one round trip, some
# 10-50 ms, in which one connection streams some 1-10 MB, so a gap under 1 MiB is cheaper to read than
# to skip with another request. At T5's sizes every column split then reads the span: XXL's float32
# `wo` [4096, 10240] split 8 ways is 4096 pieces of 5 KiB, 4096 requests against one of 160 MiB. Set
# SPOT_JAX_GCS_MAX_GAP_BYTES=0 where bytes cost more than requests (cross-region egress, a slow link):
# every column split is then one range per row, 1/8 of the bytes.
GCS_MAX_GAP_ENV = "SPOT_JAX_GCS_MAX_GAP_BYTES"
GCS_MAX_GAP_DEFAULT = 1 << 20


def gcs_max_gap_bytes() -> int:
  """The largest gap between two pieces of a slice that is read rather than skipped by a second request."""
  raw = os.environ.get(GCS_MAX_GAP_ENV, "").strip()
  if not raw:
    return GCS_MAX_GAP_DEFAULT
  try:
    value = int(raw)
  except ValueError:
    value = -1
  if value < 0:
    raise CheckpointError(f"{GCS_MAX_GAP_ENV}={raw!r} is not a number of bytes (0 or more; unset: "
                          f"{GCS_MAX_GAP_DEFAULT})")
  return value


def plan_byte_ranges(offset: int, shape: Tuple[int, ...], itemsize: int, index: Tuple[slice, ...],
                     max_gap: int) -> Tuple[list, Any]:
  """How to fetch the slice `index` (one `slice(start, stop)` per dimension) of a row-major tensor at
  byte `offset`: `(ranges, assemble)`, where `ranges` are `(start, stop)` byte ranges of the file and
  `assemble(chunks)` turns their bytes (a list, in order) into the slice as a uint8 array of shape
  `(rows, row bytes asked for)` plus what is left to index in numpy afterwards (see `_RemoteSafetensors.read`)."""
  if not shape:
    return [(offset, offset + itemsize)], lambda chunks: (np.frombuffer(chunks[0], np.uint8).reshape(1, itemsize), ())
  r0, r1 = index[0].start, index[0].stop
  inner = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
  row = (shape[1] if len(shape) > 1 else 1) * inner
  if len(shape) > 1 and all(s.start == 0 and s.stop == n for s, n in zip(index[2:], shape[2:])):
    b0, b1, rest = index[1].start * inner, index[1].stop * inner, ()  # the columns' bytes in each row
  else:  # 1-D, or a slice inside the trailing dimensions: whole rows, the rest indexed in numpy
    b0, b1, rest = 0, row, index[1:]
  rows, width = r1 - r0, b1 - b0
  if rows == 0 or width == 0:
    return [], lambda chunks: (np.zeros((rows, width), np.uint8), rest)
  first = offset + r0 * row + b0
  if width == row or row - width <= max_gap:  # one range: the rows' pieces and the gaps between them
    def span(chunks):
      data = np.frombuffer(chunks[0], np.uint8)
      return np.lib.stride_tricks.as_strided(data, (rows, width), (row, 1)), rest
    return [(first, first + (rows - 1) * row + width)], span
  ranges = [(first + i * row, first + i * row + width) for i in range(rows)]
  return ranges, lambda chunks: (np.frombuffer(b"".join(chunks), np.uint8).reshape(rows, width), rest)


def gcs_object_store(path: str) -> Tuple[Dict[str, Any], str]:
  """(tensorstore kvstore spec, key) of the object `gs://bucket/key`. (Tests point it at a local folder.)"""
  bucket, _, key = path[len("gs://"):].partition("/")
  return {"driver": "gcs", "bucket": bucket}, key


class _RemoteSafetensors:
  """A gs:// safetensors file read by byte range, with safe_open's interface.

  The header is read once (two ranged reads: its length, then the JSON); a slice then fetches the byte
  ranges `plan_byte_ranges` picks for it (rows of PyTorch's `[out, in]`: a `mlp` or `heads` shard of
  `wi`, `q`, `k`, `v` is one contiguous range), so a host of a model-parallel mesh does not download the
  other hosts' weights. The file's size comes from its metadata (tf.io.gfile's stat)."""

  def __init__(self, path: str):
    self.path = path
    self._store, self._key = None, None
    size = _io._gcs("look up", path, lambda: int(_io._gfile().stat(path).length))
    header = None
    if size >= 8:
      n = int.from_bytes(self._fetch([(0, 8)])[0], "little")
      if n <= size - 8:
        header = self._fetch([(8, 8 + n)])[0]
    try:
      entries = json.loads(header) if header is not None else None
    except ValueError:
      entries = None
    if not isinstance(entries, dict):
      raise CheckpointError(f"{path} is not a readable safetensors file (its header is not there or not "
                            f"JSON): {DAMAGED}")
    self._data_start = 8 + len(header)
    self._entries = {}
    for name, info in entries.items():
      if name == "__metadata__":
        continue
      try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(n) for n in info["shape"]), info["data_offsets"]
        known = _SAFETENSORS_DTYPES.get(dtype)
        want = int(np.prod(shape, dtype=np.int64)) * np_dtype(known).itemsize if known else end - begin
        ok = 0 <= begin <= end <= size - self._data_start and end - begin == want
      except (KeyError, TypeError, ValueError):
        ok = False
      if not ok:
        raise CheckpointError(f"{path}: the header's entry for tensor {name!r} does not match the file "
                              f"({size} bytes): {DAMAGED}")
      self._entries[name] = (dtype, shape, self._data_start + begin)

  def _fetch(self, ranges: list, name: Optional[str] = None) -> list:
    """The bytes of each `(start, stop)` range of the file, all requested at once (tensorstore)."""
    if not ranges:
      return []

    def fetch():
      if self._store is None:
        import tensorstore as ts
        spec, self._key = gcs_object_store(self.path)
        self._store = ts.KvStore.open(spec).result()
      futures = [self._store.read(self._key, byte_range=slice(a, b)) for a, b in ranges]
      out = []
      for (a, b), future in zip(ranges, futures):
        try:
          result = future.result()
          data = result.value if result.state == "value" else None
        except ValueError as e:  # tensorstore's errors; past the end of the object: OUT_OF_RANGE
          data = e
        if not isinstance(data, bytes) or len(data) != b - a:
          self._short_read(name, max(b for _, b in ranges), data)
        out.append(data)
      return out
    return _io._gcs("read", self.path, fetch)

  def _short_read(self, name: Optional[str], needed: int, error: Any) -> None:
    """Raise the error of a range that did not come back whole: the file is shorter than its header
    says (copied over, truncated), gone, or the read failed."""
    try:
      size = int(_io._gfile().stat(self.path).length)
    except Exception:  # pylint: disable=broad-except  (gone since its header was read)
      size = None
    what = f"tensor {name!r}" if name else "its header"
    if size is None:
      raise CheckpointError(f"{self.path} no longer exists (reading {what}): {DAMAGED}")
    if size < needed:
      raise CheckpointError(f"{self.path}: {what} ends before its header says (the file has {size} bytes, "
                            f"the data runs to byte {needed}): {DAMAGED}")
    if isinstance(error, Exception):
      raise error
    raise CheckpointError(f"{self.path}: reading {what} gave {0 if error is None else len(error)} bytes "
                          f"where {needed} were asked for: {DAMAGED}")

  def keys(self):
    return self._entries.keys()

  def get_slice(self, name: str) -> "_RemoteSlice":
    return _RemoteSlice(self, name)

  def get_tensor(self, name: str) -> np.ndarray:
    return self.get_slice(name)[...]

  def read(self, name: str, index: Any) -> np.ndarray:
    from spot_jax.checkpoints.lazy import normalize_index
    stored, shape, offset = self._entries[name]
    dtype = np_dtype(_SAFETENSORS_DTYPES[stored]).newbyteorder("<")
    index = normalize_index(index, shape)
    ranges, assemble = plan_byte_ranges(offset, shape, dtype.itemsize, index, gcs_max_gap_bytes())
    data, rest = assemble(self._fetch(ranges, name))
    if not shape:
      return np.ascontiguousarray(data).view(dtype).reshape(())
    if rest:  # whole rows were read: index the other dimensions here
      arr = np.ascontiguousarray(data).view(dtype).reshape((data.shape[0],) + tuple(shape[1:]))
      return arr[(slice(None),) + rest]
    cols = index[1].stop - index[1].start if len(shape) > 1 else None
    return np.ascontiguousarray(data).view(dtype).reshape(
        (data.shape[0],) + ((cols,) + tuple(shape[2:]) if cols is not None else ()))


class _RemoteSlice:
  def __init__(self, f: _RemoteSafetensors, name: str):
    self._f, self._name = f, name

  def get_dtype(self) -> str:
    return self._f._entries[self._name][0]

  def get_shape(self):
    return list(self._f._entries[self._name][1])

  def __getitem__(self, index) -> np.ndarray:
    return self._f.read(self._name, index)


class _Tensors(hf_flax.TensorIndex):
  """Lazy access to the tensors of one or several safetensors files (shards listed by an index)."""

  def __init__(self, directory: str):
    self.directory = directory
    self._open: Dict[str, Any] = {}
    self._names: Dict[str, set] = {}
    self.index_path: Optional[str] = _io.join(directory, INDEX_FILE)
    if _io.exists(self.index_path):
      self.where = _read_index(self.index_path)
    else:
      self.index_path = None
      self.where = {name: WEIGHTS_FILE for name in self.names_in(WEIGHTS_FILE)}

  def _file(self, filename: str):
    if filename not in self._open:
      path = _io.join(self.directory, filename)
      if not _io.exists(path):
        raise CheckpointError(f"{path} does not exist (a HF checkpoint needs {WEIGHTS_FILE} or the shards its "
                              f"{INDEX_FILE} lists)")
      if _io.is_gcs(path):
        self._open[filename] = _RemoteSafetensors(path)
      else:
        try:
          from safetensors import safe_open
          self._open[filename] = safe_open(path, framework="np")
        except Exception as e:
          raise CheckpointError(f"{path} is not a readable safetensors file ({e}): {DAMAGED}") from e
    return self._open[filename]

  def names_in(self, filename: str) -> set:
    if filename not in self._names:
      self._names[filename] = set(self._file(filename).keys())
    return self._names[filename]

  def get(self, name: str) -> np.ndarray:
    filename = self.where[name]
    f = self._file(filename)
    if name not in self.names_in(filename):
      raise CheckpointError(self._not_in_shard(name, filename))
    path = _io.join(self.directory, filename)
    try:
      stored = f.get_slice(name).get_dtype()
      if stored not in _SAFETENSORS_DTYPES:
        raise CheckpointError(_unread_dtype(path, name, stored))
      return f.get_tensor(name)
    except CheckpointError:
      raise
    except Exception as e:  # safetensors' SafetensorError, an I/O error
      raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({e}): {DAMAGED}") from e

  def get_lazy(self, name: str, transpose: bool) -> Any:
    """Tensor `name` (transposed when `transpose`, as `read_hf` stores it) as a `lazy.LazyArray` that
    reads only the slices asked for (safetensors' `get_slice`): its dtype and shape are checked now,
    its data read when sliced (on gs://, by byte range: `_RemoteSafetensors`)."""
    filename = self.where[name]
    f = self._file(filename)
    if name not in self.names_in(filename):
      raise CheckpointError(self._not_in_shard(name, filename))
    from spot_jax.checkpoints.lazy import LazyArray
    path = _io.join(self.directory, filename)
    try:
      view = f.get_slice(name)
      stored, shape = view.get_dtype(), tuple(view.get_shape())
    except Exception as e:  # safetensors' SafetensorError
      raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({e}): {DAMAGED}") from e
    if stored not in _SAFETENSORS_DTYPES:
      raise CheckpointError(_unread_dtype(path, name, stored))
    if transpose and len(shape) != 2:
      raise CheckpointError(f"{path}: tensor {name!r} has shape {shape}, not the 2-D [out, in] of a PyTorch "
                            "linear weight")

    def read(index):
      try:
        if transpose:  # T5X's [in, out] slice is the transpose of PyTorch's [out, in] one
          return np.ascontiguousarray(view[index[1], index[0]].T)
        return view[index] if index else view[...]
      except Exception as e:  # an I/O error of a damaged file
        raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({e}): {DAMAGED}") from e
    return LazyArray(shape[::-1] if transpose else shape, np_dtype(_SAFETENSORS_DTYPES[stored]), read, name)

  def _not_in_shard(self, name: str, filename: str) -> str:
    holder = None
    for other in sorted(set(self.where.values()) - {filename}):
      try:
        if name in self.names_in(other):
          holder = other
          break
      except CheckpointError:  # a missing or damaged shard is reported when a tensor needs it
        continue
    where = f"; {holder} holds it" if holder else "; no other shard it lists holds it either"
    return (f"{self.index_path} maps tensor {name!r} to {filename}, which does not hold it{where}. The index and "
            "the shards come from different saves, or the index was edited: copy the whole folder again from "
            "one save_pretrained (or correct that weight_map entry)")


def _unread_dtype(source: str, name: str, dtype: str) -> str:
  return (f"{source}: tensor {name!r} has safetensors dtype {dtype}, which spot_jax does not read (it reads "
          f"{sorted(_SAFETENSORS_DTYPES)}); re-save it as float32 or bfloat16")


def _read_index(index_path: str) -> Dict[str, str]:
  """The weight_map of a `model.safetensors.index.json`: `{tensor name: shard file name}`."""
  return hf_flax.read_weight_map(index_path, "safetensors", ".safetensors",
                                 " (spot_jax reads safetensors or Flax msgpack, never PyTorch pickles)")


# transformers' T5ForConditionalGeneration drops this one without a word (_keys_to_ignore_on_load_unexpected).
_IGNORED_UNEXPECTED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def read_hf(path: str, config: Optional[T5Config] = None, lazy: bool = False) -> Tuple[T5Config, Dict[str, Any]]:
  """Read a HF T5 directory into (config from config.json, T5X-named numpy tree).

  `lazy`: tensors (local or gs://) are `lazy.LazyArray`s read slice by slice when placed (`get_lazy`);
  the copies of the embedding a file may hold are still compared whole, when there are any.

  Tensors the config leaves unused raise when they contradict it (an `lm_head.weight` other than the
  embedding under a tied config; embedding copies that differ) and warn otherwise (extra layers)."""
  config_path = _io.join(path, "config.json")
  if not _io.exists(config_path):
    raise CheckpointError(f"{config_path} does not exist: a Hugging Face checkpoint needs the config.json "
                          "save_pretrained writes beside its weights; copy it from where the weights came from")
  try:
    hf_config = json.loads(_io.read_bytes(config_path))
  except ValueError as e:
    raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
  from_file = config_from_hf(hf_config, config_path)  # also rejects unsupported architectures
  given = config is not None
  config = config if given else from_file
  # safetensors when the folder has them (read slice by slice); else Flax's msgpack (read whole)
  tensors = _Tensors(path) if has_safetensors(path) else hf_flax.FlaxTensors(path)
  shapes = expected_shapes(config)
  flat, used = {}, set()
  for ours, (theirs, transpose) in name_map(config).items():
    name = theirs
    if theirs == "shared.weight":
      name = next((n for n in _EMBEDDING_ALIASES if n in tensors), theirs)
    if name not in tensors:
      raise CheckpointError(f"{path}: missing tensor {_missing_label(tensors, theirs)} (spot_jax parameter {ours!r}) for "
                            f"{'gated-gelu' if config.gated else 'relu'}, "
                            f"{'tied' if config.tie_word_embeddings else 'untied'} T5 with "
                            f"{config.num_encoder_layers}+{config.num_decoder_layers} layers"
                            + ('; if the model\'s output layer is its embedding, set "tie_word_embeddings": true '
                               "in config.json" if theirs == "lm_head.weight" and not given else ""))
    want = shapes[ours][::-1] if transpose else shapes[ours]
    if lazy:
      arr = tensors.get_lazy(name, transpose)
      found = tuple(arr.shape)[::-1] if transpose else tuple(arr.shape)
    else:
      arr = tensors.get(name)
      found = tuple(arr.shape)
    if found != tuple(want):
      raise CheckpointError(f"{path}: tensor {tensors.label(name)!r} (spot_jax {ours!r}) has shape {found} "
                            f"but config.json implies {tuple(want)}"
                            + (" (PyTorch's [out, in] layout)" if transpose and tensors.label(name) != name else ""))
    flat[ours] = arr if lazy else np.ascontiguousarray(arr.T) if transpose else np.asarray(arr)
    used.add(name)
  if given:
    tied_by = f"the config passed in has tie_word_embeddings={config.tie_word_embeddings}"
  elif "tie_word_embeddings" in hf_config:
    tied_by = 'config.json says "tie_word_embeddings": true'
  else:
    tied_by = (f'config.json has no "tie_word_embeddings", and model_type {hf_config["model_type"]!r} defaults '
               "to tied (as in transformers)")
  used |= _check_copies_of_the_embedding(path, tensors, config, flat["token_embedder/embedding"], tied_by)
  _warn_unused(path, tensors, config, used)
  return config, unflatten(flat)


def _missing_label(tensors: Any, name: str) -> str:
  """How a missing tensor is named to the user: its Flax key too when the folder holds Flax weights."""
  if isinstance(tensors, hf_flax.FlaxTensors):
    key = name.rsplit(".", 1)[0].replace(".", "/")
    leaf = "embedding" if name in ("shared.weight",) or name.endswith("relative_attention_bias.weight") else (
        "weight" if "layer_norm" in name else "kernel")
    return f"{key}/{leaf!s} (PyTorch's {name})"
  return repr(name)


def _differ(a: np.ndarray, b: np.ndarray) -> Optional[str]:
  """None when `a` and `b` hold the same values, else how they differ."""
  if a.shape != b.shape:
    return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if np.array_equal(a, b, equal_nan=True):
    return None
  return f"max |difference| {float(np.nanmax(np.abs(a - b))):.3g}"


def _check_copies_of_the_embedding(path: str, tensors: Any, config: T5Config, embedding: np.ndarray,
                                   tied_by: str) -> set:
  """Copies of the embedding a HF file may hold beside the one read must equal it; returns their names.

  transformers shares one table among shared / encoder.embed_tokens / decoder.embed_tokens, and with
  tied embeddings makes lm_head.weight that table too: a file's lm_head.weight that differs is dropped
  without a word, although it almost always means config.json is wrong for the weights."""
  read = next(n for n in _EMBEDDING_ALIASES if n in tensors)
  checked = set()
  for name in _EMBEDDING_ALIASES[_EMBEDDING_ALIASES.index(read) + 1:]:
    if name in tensors:
      how = _differ(tensors.get(name), embedding)
      if how:
        raise CheckpointError(f"{path}: holds both {read} and {name}, which differ ({how}), but T5 has one "
                              f"embedding table for both stacks (spot_jax and transformers use one of them): "
                              "the weights were edited or come from different models; copy the model again")
      checked.add(name)
  if config.tie_word_embeddings and "lm_head.weight" in tensors:
    how = _differ(tensors.get("lm_head.weight"), embedding)
    if how:
      raise CheckpointError(
          f"{path}: {tied_by}, so the output layer is the embedding {read}; but "
          f"{tensors.file_of('lm_head.weight')} also holds an lm_head.weight that differs from it ({how}). "
          "transformers would drop that lm_head.weight without a word and compute other logits than the model "
          "was trained with. If the model has its own output layer (T5 1.1, LM-adapted and mT5 do), set "
          '"tie_word_embeddings": false in config.json; if it really is tied, remove lm_head.weight from the '
          "weights")
    checked.add("lm_head.weight")
  return checked


def _warn_unused(path: str, tensors: Any, config: T5Config, used: set) -> None:
  """Warn (as transformers does: "Some weights ... were not used") about tensors the config does not
  read, naming the layer-count field when the file holds more blocks than the config."""
  unused = sorted(n for n in tensors.names() if n not in used and n not in _IGNORED_UNEXPECTED)
  if not unused:
    return
  hints = []
  for stack, field, count in (("encoder", "num_layers", config.num_encoder_layers),
                              ("decoder", "num_decoder_layers", config.num_decoder_layers)):
    blocks = {int(m.group(1)) for n in unused for m in [re.match(rf"{stack}\.block\.(\d+)\.", n)] if m}
    extra = sorted(b for b in blocks if b >= count)
    if extra:
      held = f"block {extra[0]}" if len(extra) == 1 else f"blocks {extra[0]}..{extra[-1]}"
      hints.append(f"the weights hold {stack} {held} beyond the {count} that config.json's {field} says; "
                   f"if that field is wrong, set it to {extra[-1] + 1}")
  shown = ", ".join(tensors.label(n) for n in unused[:8]) + (f", ... ({len(unused)} in all)" if len(unused) > 8 else "")
  warnings.warn(f"{path}: {len(unused)} tensor(s) of the checkpoint are not used by the "
                f"{'gated-gelu' if config.gated else 'relu'}, "
                f"{'tied' if config.tie_word_embeddings else 'untied'} T5 with "
                f"{config.num_encoder_layers}+{config.num_decoder_layers} layers that its config describes "
                f"(transformers ignores them too): {shown}" + ("; " + "; ".join(hints) if hints else ""),
                UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- writing

def _temp_write(directory: str, name: str, write) -> str:
  """Writes a file through `write(tmp)` under a temporary name in `directory` (`.tmp-<name>...`, which no
  reader takes for a checkpoint file), synced to disk; returns that name (removed on failure)."""
  fd, tmp = tempfile.mkstemp(dir=directory or ".", prefix=".tmp-" + name)
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return tmp


def model_files(directory: str) -> list:
  """The files of `directory` that make it a Hugging Face model (what `write_hf` replaces): config.json
  and the weights in any format save_pretrained writes, by its names (`model*.safetensors` and their
  index, Flax msgpack, PyTorch pickles, TensorFlow h5, each with its shards). A PEFT adapter's files
  and other files (the tokenizer's, generation_config.json, a README, a user's `prompt.safetensors`)
  are not among them."""
  if not os.path.isdir(directory):
    return []
  out = []
  for name in sorted(os.listdir(directory)):
    if name.startswith((".", "adapter_")) or not os.path.isfile(os.path.join(directory, name)):
      continue
    if (name == "config.json"
        or (name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json")))
        or (name.startswith("flax_model") and name.endswith((".msgpack", ".msgpack.index.json")))
        or (name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json")))
        or (name.startswith("tf_model") and name.endswith((".h5", ".h5.index.json")))):
      out.append(name)
  return out


def write_hf(params: Mapping[str, Any], config: T5Config, directory: str, overwrite: bool = False) -> str:
  """Write `config.json` + `model.safetensors` that transformers' T5ForConditionalGeneration loads.

  A `directory` that already holds a model (`model_files`: config.json or weights of any format, one
  file or shards with their index) is refused, naming its files, unless `overwrite=True` (as
  `write_t5x` refuses an existing step): writing beside them would leave the earlier shards and index,
  which readers take over the new `model.safetensors`. With `overwrite=True` those files are replaced
  and none of them is left; the folder's other files (the tokenizer's, a README) stay. The new files
  are written to temporary names first, then config.json is removed (from then on the folder is no
  model: a crash cannot leave it reading as a mix of two), the earlier weights after it, and the new
  weights and last config.json renamed into place. Local directories only.
  """
  from safetensors.numpy import save_file
  if _io.is_gcs(directory):  # os calls would write a local directory named `gs:`
    raise CheckpointError("write_hf writes local directories only; copy the result with gsutil")
  earlier = model_files(directory)
  if earlier and not overwrite:
    shown = ", ".join(earlier[:6]) + (f", ... ({len(earlier)} files)" if len(earlier) > 6 else "")
    raise FileExistsError(
        f"{directory} already holds a model ({shown}): writing into it would leave the earlier files "
        f"beside the new {WEIGHTS_FILE} (an index or shards there are read instead of it). Pass "
        f"overwrite=True to replace that model (its config.json and weights; other files stay), or write "
        f"into a new directory")
  flat = flatten(params)
  tensors = {}
  for ours, (theirs, transpose) in name_map(config).items():
    if ours not in flat:
      raise CheckpointError(f"write_hf: parameter {ours!r} is missing from the tree")
    arr = np.asarray(flat[ours])
    tensors[theirs] = np.ascontiguousarray(arr.T if transpose else arr)
  os.makedirs(directory, exist_ok=True)

  def _json(tmp):
    with open(tmp, "w") as f:
      json.dump(config_to_hf(config), f, indent=2, sort_keys=True)
  weights = _temp_write(directory, WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
  try:
    config_tmp = _temp_write(directory, "config.json", _json)
  except BaseException:
    os.remove(weights)
    raise
  try:
    # config.json first: without it the folder is no model until the new one is in place.
    for name in sorted(model_files(directory), key=lambda n: n != "config.json"):
      if name != WEIGHTS_FILE:  # replaced by the rename below
        os.remove(os.path.join(directory, name))
    os.replace(weights, os.path.join(directory, WEIGHTS_FILE))
    os.replace(config_tmp, os.path.join(directory, "config.json"))
  except BaseException:
    for tmp in (weights, config_tmp):
      if os.path.exists(tmp):
        os.remove(tmp)
    raise
  return directory

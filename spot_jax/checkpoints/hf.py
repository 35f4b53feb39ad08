"""Hugging Face T5 checkpoints: `config.json` + `model.safetensors` (or shards + index).

PyTorch `nn.Linear` weights are `[out, in]`; T5X kernels are `[in, out]`, so every projection is
transposed, as is the relative-position table (`[buckets, heads]` in HF, `[heads, buckets]` in
T5X). HF keeps the relative bias only in block 0 of each stack, which is exactly T5X's one shared
table per stack. Read through `safetensors.numpy`: no torch, no pickle.
"""
from __future__ import annotations

import json
import numbers
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from spot_jax.checkpoints import t5x as _io
from spot_jax.checkpoints.infer_config import (CheckpointError, expected_shapes, flatten, np_dtype,
                                               unflatten)
from spot_jax.config import T5Config

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
_FEED_FORWARD = {"relu": "relu", "gated-gelu": "gated-gelu"}
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


def is_hf_dir(path: str) -> bool:
  return _io.exists(_io.join(path, "config.json")) and (
      _io.exists(_io.join(path, WEIGHTS_FILE)) or _io.exists(_io.join(path, INDEX_FILE)))


# ----------------------------------------------------------------------------- config.json

def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> T5Config:
  """T5Config from a transformers T5/mT5 config dict; unsupported architectures raise."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported; spot_jax reads T5 "
                          f"encoder-decoder checkpoints with model_type in {SUPPORTED_MODEL_TYPES}")
  archs = hf.get("architectures") or []
  if hf.get("is_decoder") or hf.get("is_encoder_decoder") is False or any("EncoderModel" in a for a in archs):
    raise CheckpointError(f"{source}: architecture {archs or model_type} (is_decoder="
                          f"{hf.get('is_decoder')}, is_encoder_decoder={hf.get('is_encoder_decoder')}) is "
                          "not an encoder-decoder; spot_jax needs the full T5ForConditionalGeneration weights")
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in _FEED_FORWARD:
    raise CheckpointError(f"{source}: feed_forward_proj {proj!r} is not supported; spot_jax supports "
                          f"{sorted(_FEED_FORWARD)} (T5 1.0 and T5 1.1/mT5)")
  num = lambda key, default=None, kind=int: _number(hf, key, default, kind, source)
  return T5Config(
      vocab_size=num("vocab_size"), d_model=num("d_model"), num_heads=num("num_heads"),
      head_dim=num("d_kv"), d_ff=num("d_ff"), num_encoder_layers=num("num_layers"),
      # transformers reads a null or absent num_decoder_layers as num_layers
      num_decoder_layers=num("num_decoder_layers") if hf.get("num_decoder_layers") is not None
      else num("num_layers"),
      feed_forward=_FEED_FORWARD[proj], tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
      relative_attention_num_buckets=num("relative_attention_num_buckets", 32),
      relative_attention_max_distance=num("relative_attention_max_distance", 128),
      layer_norm_epsilon=num("layer_norm_epsilon", 1e-6, float),
      dropout_rate=num("dropout_rate", 0.1, float))


def _number(hf: Mapping[str, Any], key: str, default: Any, kind: type, source: str):
  """`hf[key]` as a positive int (`kind=int`) or a finite float >= 0, else a CheckpointError naming
  the field and its value: `int(None)` from a hand-edited `"d_kv": null` says neither."""
  if key not in hf:
    if default is None:
      raise CheckpointError(f"{source}: missing field {key!r} required for a T5 config")
    return default
  value = hf[key]
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
  if kind is int:
    ok = ok and value == int(value) and value >= 1
    want = "a positive integer"
  else:
    ok = ok and value >= 0
    want = "a number >= 0"
  if not ok:
    raise CheckpointError(f"{source}: field {key!r} is {json.dumps(value, default=repr)}, not {want}; set it to the "
                          "model's value (as in the config.json the model was released with)")
  return kind(value)


def config_to_hf(config: T5Config) -> Dict[str, Any]:
  gated = config.gated
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
      "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.head_dim,
      "num_heads": config.num_heads, "d_ff": config.d_ff, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "feed_forward_proj": config.feed_forward, "dense_act_fn": "gelu_new" if gated else "relu",
      "is_gated_act": gated, "tie_word_embeddings": config.tie_word_embeddings,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.layer_norm_epsilon, "dropout_rate": config.dropout_rate,
      "initializer_factor": 1.0, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
      "use_cache": True,
  }


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
      raise CheckpointError(f"{source}: tensor {name!r} has safetensors dtype {info['dtype']}, which spot_jax "
                            f"does not read (it reads {sorted(_SAFETENSORS_DTYPES)}); re-save it as float32 "
                            "or bfloat16")
    out[name] = np.frombuffer(info["data"], dtype=np_dtype(dtype).newbyteorder("<")).reshape(info["shape"])
  return out


class _Tensors:
  """Lazy access to the tensors of one or several safetensors files."""

  def __init__(self, directory: str):
    self.directory = directory
    self._open: Dict[str, Any] = {}
    index_path = _io.join(directory, INDEX_FILE)
    if _io.exists(index_path):
      try:
        weight_map = json.loads(_io.read_bytes(index_path))["weight_map"]
      except (ValueError, KeyError) as e:
        raise CheckpointError(f"{index_path} is not a safetensors index (needs a 'weight_map'): {e}") from e
      self.where = dict(weight_map)
    else:
      self.where = {name: WEIGHTS_FILE for name in self._keys(WEIGHTS_FILE)}

  def _file(self, filename: str):
    if filename not in self._open:
      path = _io.join(self.directory, filename)
      if not _io.exists(path):
        raise CheckpointError(f"{path} does not exist (a HF checkpoint needs {WEIGHTS_FILE} or the shards its "
                              f"{INDEX_FILE} lists)")
      if _io.is_gcs(path):
        self._open[filename] = load_safetensors_bytes(_io.read_bytes(path), path)
      else:
        try:
          from safetensors import safe_open
          self._open[filename] = safe_open(path, framework="np")
        except Exception as e:
          raise CheckpointError(f"{path} is not a readable safetensors file ({e}): {DAMAGED}") from e
    return self._open[filename]

  def _keys(self, filename: str):
    f = self._file(filename)
    return list(f.keys())

  def __contains__(self, name: str) -> bool:
    return name in self.where

  def get(self, name: str) -> np.ndarray:
    f = self._file(self.where[name])
    return f[name] if isinstance(f, dict) else f.get_tensor(name)


def read_hf(path: str, config: Optional[T5Config] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """Read a HF T5 directory into (config from config.json, T5X-named numpy tree)."""
  config_path = _io.join(path, "config.json")
  try:
    hf_config = json.loads(_io.read_bytes(config_path))
  except ValueError as e:
    raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
  if config is None:
    config = config_from_hf(hf_config, config_path)
  else:
    config_from_hf(hf_config, config_path)  # still reject unsupported architectures
  tensors = _Tensors(path)
  shapes = expected_shapes(config)
  flat = {}
  for ours, (theirs, transpose) in name_map(config).items():
    name = theirs
    if theirs == "shared.weight":
      name = next((n for n in _EMBEDDING_ALIASES if n in tensors), theirs)
    if name not in tensors:
      raise CheckpointError(f"{path}: missing tensor {theirs!r} (spot_jax parameter {ours!r}) for "
                            f"{'gated-gelu' if config.gated else 'relu'}, "
                            f"{'tied' if config.tie_word_embeddings else 'untied'} T5 with "
                            f"{config.num_encoder_layers}+{config.num_decoder_layers} layers")
    arr = tensors.get(name)
    want = shapes[ours][::-1] if transpose else shapes[ours]
    if tuple(arr.shape) != tuple(want):
      raise CheckpointError(f"{path}: tensor {name!r} (spot_jax {ours!r}) has shape {tuple(arr.shape)} "
                            f"but config.json implies {tuple(want)}")
    flat[ours] = np.ascontiguousarray(arr.T) if transpose else np.asarray(arr)
  return config, unflatten(flat)


# ----------------------------------------------------------------------------- writing

def _atomic_write(path: str, write) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-" + os.path.basename(path))
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_hf(params: Mapping[str, Any], config: T5Config, directory: str) -> str:
  """Write `config.json` + `model.safetensors` that transformers' T5ForConditionalGeneration loads."""
  from safetensors.numpy import save_file
  if _io.is_gcs(directory):  # os calls would write a local directory named `gs:`
    raise CheckpointError("write_hf writes local directories only; copy the result with gsutil")
  flat = flatten(params)
  tensors = {}
  for ours, (theirs, transpose) in name_map(config).items():
    if ours not in flat:
      raise CheckpointError(f"write_hf: parameter {ours!r} is missing from the tree")
    arr = np.asarray(flat[ours])
    tensors[theirs] = np.ascontiguousarray(arr.T if transpose else arr)
  os.makedirs(directory, exist_ok=True)
  _atomic_write(os.path.join(directory, WEIGHTS_FILE),
                lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

  def _json(tmp):
    with open(tmp, "w") as f:
      json.dump(config_to_hf(config), f, indent=2, sort_keys=True)
  _atomic_write(os.path.join(directory, "config.json"), _json)
  return directory

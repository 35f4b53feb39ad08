"""A Hugging Face T5 `config.json` read as a `T5Config` (and written from one): transformers' defaults
per `model_type`, the variant its fields imply, and a clear error for each field of the wrong type."""
from __future__ import annotations

import json
import numbers
from typing import Any, Dict, Mapping

import numpy as np

from spot_jax.checkpoints.infer_config import CheckpointError
from spot_jax.config import T5Config

# transformers' defaults (T5Config, MT5Config) for the fields that choose the variant: a config.json
# that leaves them out means what it means to transformers. mT5 is gated-GELU and untied, T5 relu, tied.
_MODEL_TYPE_DEFAULTS = {"t5": {"feed_forward_proj": "relu", "tie_word_embeddings": True},
                        "mt5": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}}
SUPPORTED_MODEL_TYPES = tuple(_MODEL_TYPE_DEFAULTS)
_FEED_FORWARD = {"relu": "relu", "gated-gelu": "gated-gelu"}
# transformers applies `dense_act_fn` from config.json over the one feed_forward_proj implies; these
# are the activations spot_jax computes (the tanh-approximated GELU under its three names).
_ACTIVATIONS = {"relu": ("relu",), "gated-gelu": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")}
def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> T5Config:
  """T5Config from a transformers T5/mT5 config dict; unsupported architectures raise.

  Fields left out take transformers' defaults for the `model_type` (mT5: gated-gelu, untied)."""
  if not isinstance(hf, Mapping):
    raise CheckpointError(f"{source} holds a JSON {json_kind(hf)}, not an object: it is not a transformers "
                          "config.json; copy the model's config.json again (save_pretrained writes one)")
  model_type = hf.get("model_type")
  if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported; spot_jax reads T5 "
                          f"encoder-decoder checkpoints with model_type in {SUPPORTED_MODEL_TYPES}")
  defaults = _MODEL_TYPE_DEFAULTS[model_type]
  archs = hf.get("architectures") or []
  if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
    raise CheckpointError(f"{source}: field 'architectures' is {json.dumps(archs, default=repr)}, not a list of "
                          'class names; set it to ["T5ForConditionalGeneration"] (or remove it)')
  flag = lambda key, default: _flag(hf, key, default, source)
  if flag("is_decoder", False) or not flag("is_encoder_decoder", True) or \
      any("EncoderModel" in a for a in archs):
    raise CheckpointError(f"{source}: architecture {archs or model_type} (is_decoder="
                          f"{hf.get('is_decoder')}, is_encoder_decoder={hf.get('is_encoder_decoder')}) is "
                          "not an encoder-decoder; spot_jax needs the full T5ForConditionalGeneration weights")
  proj = hf.get("feed_forward_proj", defaults["feed_forward_proj"])
  if not isinstance(proj, str) or proj not in _FEED_FORWARD:
    raise CheckpointError(f"{source}: feed_forward_proj {proj!r} is not supported; spot_jax supports "
                          f"{sorted(_FEED_FORWARD)} (T5 1.0 and T5 1.1/mT5)")
  _check_activation(hf, proj, source)
  num = lambda key, default=None, kind=int: _number(hf, key, default, kind, source)
  return T5Config(
      vocab_size=num("vocab_size"), d_model=num("d_model"), num_heads=num("num_heads"),
      head_dim=num("d_kv"), d_ff=num("d_ff"), num_encoder_layers=num("num_layers"),
      # transformers reads a null or absent num_decoder_layers as num_layers
      num_decoder_layers=num("num_decoder_layers") if hf.get("num_decoder_layers") is not None
      else num("num_layers"),
      feed_forward=_FEED_FORWARD[proj],
      tie_word_embeddings=flag("tie_word_embeddings", defaults["tie_word_embeddings"]),
      relative_attention_num_buckets=num("relative_attention_num_buckets", 32),
      relative_attention_max_distance=num("relative_attention_max_distance", 128),
      layer_norm_epsilon=num("layer_norm_epsilon", 1e-6, float),
      dropout_rate=num("dropout_rate", 0.1, float))


def json_kind(value: Any) -> str:
  """A value's JSON type, as error messages name it."""
  return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _flag(hf: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
  """`hf[key]` as a JSON boolean; anything else (null, "false", 0) is an error naming the field, since
  transformers would read e.g. "false" as true."""
  value = hf.get(key, default)
  if not isinstance(value, bool):
    raise CheckpointError(f"{source}: field {key!r} is {json.dumps(value, default=repr)}, not true or false; set "
                          "it to the model's value (as in the config.json the model was released with)")
  return value


def _check_activation(hf: Mapping[str, Any], proj: str, source: str) -> None:
  """transformers builds the MLP from `is_gated_act` and `dense_act_fn` when config.json states them
  (over what feed_forward_proj implies): both must describe the MLP spot_jax computes."""
  gated = proj.startswith("gated-")
  if "is_gated_act" in hf and hf["is_gated_act"] is not gated:
    raise CheckpointError(f"{source}: is_gated_act is {json.dumps(hf['is_gated_act'], default=repr)} but "
                          f"feed_forward_proj {proj!r} is {'' if gated else 'not '}gated; transformers builds the "
                          f"MLP from is_gated_act: set it to {json.dumps(gated)} (or remove it) if the weights are "
                          f"{proj!r} ones")
  act = hf.get("dense_act_fn")
  if act is not None and act not in _ACTIVATIONS[proj]:
    raise CheckpointError(f"{source}: dense_act_fn {json.dumps(act, default=repr)} with feed_forward_proj "
                          f"{proj!r}: transformers would apply {act!r}, spot_jax computes "
                          f"{_ACTIVATIONS[proj][0]!r} (what T5 {'1.1 and mT5' if gated else '1.0'} use); set "
                          f'"dense_act_fn": "{_ACTIVATIONS[proj][0]}" (or remove it)')


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

"""The T5X parameter tree implied by a `T5Config`, and the config implied by a parameter tree.

Both checkpoint readers end here: a T5X checkpoint carries no config, so one is inferred from the
array shapes; a Hugging Face config.json states one, so the arrays are checked against it. Either
way a mismatch surfaces as a `CheckpointError` naming the parameter, the expected and found shapes.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from spot_jax.config import T5Config
from spot_jax.gin_flags import shell_binding


class CheckpointError(ValueError):
  """A checkpoint that cannot be read into a T5 parameter tree (message says why and what to do)."""


# Fields a checkpoint determines through its array shapes; the rest (max distance, eps, dropout,
# activation dtype) are free choices of the caller.
SHAPE_FIELDS = ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers",
                "num_decoder_layers", "feed_forward", "tie_word_embeddings",
                "relative_attention_num_buckets")
# The shape fields that say which T5 variant a checkpoint is, not how large.
VARIANT_FIELDS = ("feed_forward", "tie_word_embeddings")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """`{"a": {"b": x}}` -> `{"a/b": x}` (T5X names joined with '/')."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flatten(value, name))
    else:
      out[name] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Inverse of `flatten`."""
  tree: Dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _attention(prefix: str, d: int, inner: int) -> Dict[str, Tuple[int, ...]]:
  return {f"{prefix}/query/kernel": (d, inner), f"{prefix}/key/kernel": (d, inner),
          f"{prefix}/value/kernel": (d, inner), f"{prefix}/out/kernel": (inner, d)}


def _mlp(prefix: str, config: T5Config) -> Dict[str, Tuple[int, ...]]:
  d, f = config.d_model, config.d_ff
  if config.gated:
    return {f"{prefix}/wi_0/kernel": (d, f), f"{prefix}/wi_1/kernel": (d, f), f"{prefix}/wo/kernel": (f, d)}
  return {f"{prefix}/wi/kernel": (d, f), f"{prefix}/wo/kernel": (f, d)}


def expected_shapes(config: T5Config) -> Dict[str, Tuple[int, ...]]:
  """Flat `{t5x/name: shape}` of every parameter a model of `config` has (DESIGN.md §3)."""
  d, inner = config.d_model, config.num_heads * config.head_dim
  rel = (config.num_heads, config.relative_attention_num_buckets)
  shapes = {"token_embedder/embedding": (config.vocab_size, d),
            "encoder/encoder_norm/scale": (d,), "encoder/relpos_bias/rel_embedding": rel,
            "decoder/decoder_norm/scale": (d,), "decoder/relpos_bias/rel_embedding": rel}
  for i in range(config.num_encoder_layers):
    p = f"encoder/layers_{i}"
    shapes.update(_attention(f"{p}/attention", d, inner))
    shapes.update(_mlp(f"{p}/mlp", config))
    shapes[f"{p}/pre_attention_layer_norm/scale"] = (d,)
    shapes[f"{p}/pre_mlp_layer_norm/scale"] = (d,)
  for i in range(config.num_decoder_layers):
    p = f"decoder/layers_{i}"
    shapes.update(_attention(f"{p}/self_attention", d, inner))
    shapes.update(_attention(f"{p}/encoder_decoder_attention", d, inner))
    shapes.update(_mlp(f"{p}/mlp", config))
    for norm in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"):
      shapes[f"{p}/{norm}/scale"] = (d,)
  if not config.tie_word_embeddings:
    shapes["decoder/logits_dense/kernel"] = (d, config.vocab_size)
  return shapes


def _count_layers(flat: Mapping[str, Any], stack: str) -> int:
  n = 0
  while any(k.startswith(f"{stack}/layers_{n}/") for k in flat):
    n += 1
  return n


def _shape(flat: Mapping[str, Any], name: str, source: str) -> Tuple[int, ...]:
  if name not in flat:
    raise CheckpointError(f"{source}: missing array {name!r}; is this a T5 encoder-decoder checkpoint?")
  return tuple(flat[name].shape)


def infer_config(params: Mapping[str, Any], source: str = "checkpoint",
                 base: Optional[T5Config] = None) -> T5Config:
  """The shape fields of a T5Config read off a T5X-named parameter tree.

  Non-shape fields (max distance 128, eps, dropout, dtype) come from `base` (default `T5Config()`).
  """
  flat = flatten(params)
  vocab, d = _shape(flat, "token_embedder/embedding", source)
  heads, buckets = _shape(flat, "encoder/relpos_bias/rel_embedding", source)
  inner = _shape(flat, "encoder/layers_0/attention/query/kernel", source)[1]
  if inner % heads:
    raise CheckpointError(f"{source}: query kernel width {inner} is not a multiple of the {heads} heads "
                          f"given by encoder/relpos_bias/rel_embedding {(heads, buckets)}")
  gated = "encoder/layers_0/mlp/wi_0/kernel" in flat
  wi = "encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel"
  d_ff = _shape(flat, wi, source)[1]
  fields = dict(vocab_size=vocab, d_model=d, num_heads=heads, head_dim=inner // heads, d_ff=d_ff,
                num_encoder_layers=_count_layers(flat, "encoder"),
                num_decoder_layers=_count_layers(flat, "decoder"),
                feed_forward="gated-gelu" if gated else "relu",
                tie_word_embeddings="decoder/logits_dense/kernel" not in flat,
                relative_attention_num_buckets=buckets)
  if fields["num_decoder_layers"] == 0:
    raise CheckpointError(f"{source}: no decoder/layers_0 arrays; encoder-only checkpoints are not "
                          "supported (spot_jax needs the full T5 encoder-decoder)")
  return (base or T5Config()).replace(**fields)


# The variant files of gin/models/ by the kind of T5 they set, (feed_forward, tie_word_embeddings), and
# the vocabulary size that picks mT5's among the gated-GELU ones (tests/test_checkpoints_t5x.py checks
# these against the files).
VARIANT_GIN_FILES = {("gated-gelu", False): "models/t5_1_1.gin", ("relu", True): "models/t5_1_0.gin"}
MT5_GIN_FILE, MT5_VOCAB_SIZE = "models/mt5.gin", 250112
_SAME_ARCHITECTURE = {"models/t5_1_1.gin": " (or models/t5_1_1_lm_adapted.gin, the same architecture)"}


def variant_gin_file(config: T5Config) -> Optional[str]:
  """The `models/*.gin` variant file whose MLP and output embedding are `config`'s (mT5's for its
  vocabulary size), or None when no file has that combination (e.g. gated-GELU with tied embeddings)."""
  found = VARIANT_GIN_FILES.get((config.feed_forward, config.tie_word_embeddings))
  return MT5_GIN_FILE if found == "models/t5_1_1.gin" and config.vocab_size == MT5_VOCAB_SIZE else found


def check_agreement(given: T5Config, found: T5Config, source: str) -> None:
  """Raise naming every shape field where a caller's config contradicts the checkpoint, and the fix:
  the variant file that matches the checkpoint when its kind (MLP, tied output) differs, and
  models/sizes/from_checkpoint.gin only when a dimension differs (with that file in use, none does:
  the dimensions are the checkpoint's own, only the variant's kind is checked)."""
  bad = [f"{name}: config says {getattr(given, name)!r}, checkpoint has {getattr(found, name)!r}"
         for name in SHAPE_FIELDS if getattr(given, name) != getattr(found, name)]
  if not bad:
    return
  variant = [name for name in VARIANT_FIELDS if getattr(given, name) != getattr(found, name)]
  dimensions = [name for name in SHAPE_FIELDS if name not in VARIANT_FIELDS and getattr(given, name) !=
                getattr(found, name)]
  matching = variant_gin_file(found)
  fix = []
  if dimensions:
    fix.append("Pass the config (gin size) that the checkpoint was trained with, or take its dimensions from "
               "the checkpoint: models/sizes/from_checkpoint.gin in place of the size file, with the variant "
               "file (models/*.gin) that matches it" +
               (f": --gin_file={matching}{_SAME_ARCHITECTURE.get(matching, '')}." if matching and (
                   variant or (matching == MT5_GIN_FILE and "vocab_size" in dimensions)) else "."))
  elif variant and matching:
    fix.append(f"The checkpoint's MLP and output embedding are those of --gin_file={matching}: give it in place "
               f"of the variant file{_SAME_ARCHITECTURE.get(matching, '')}.")
  if variant and not matching:
    # No shipped variant file has every combination (e.g. gated-GELU with tied embeddings, which HF's
    # T5Config gives by default): the fields themselves can be bound.
    fix.append("A variant no models/*.gin file has can be bound field by field: " +
               " ".join(shell_binding(f"spot_jax.model_config.{name}", repr(getattr(found, name)))
                        for name in variant) + ".")
  raise CheckpointError(f"{source} does not match the given config:\n  " + "\n  ".join(bad) + "\n" +
                        " ".join(fix))


def nonfinite_error(name: str, values: np.ndarray, where: str = "") -> Optional[str]:
  """Why `values` (array `name`, or the slice `where` of it) cannot be a frozen weight, or None.

  A NaN or inf weight is never an error where it is read: it gives NaN logits, reported later as a
  diverged loss ("lower the learning rate") or as an accuracy of 0 from empty predictions."""
  if values.dtype.kind != "f" and values.dtype.name != "bfloat16":
    return None
  bad = int(values.size - np.count_nonzero(np.isfinite(values)))
  if not bad:
    return None
  return (f"array {name!r}{where} holds {bad} NaN/inf value(s) (of {values.size}): the checkpoint is damaged "
          "or was saved from a diverged run; copy it again, or use an earlier checkpoint of that run")


def check_params(config: T5Config, params: Mapping[str, Any], source: str = "checkpoint") -> Dict[str, Any]:
  """Check every expected array is present with its expected shape, and (when already read) finite;
  return only those arrays. A lazily read array checks each slice when it is read (`lazy.LazyArray`).

  Extra arrays (e.g. a prompt stored in a prompt-tuning checkpoint) are dropped: the frozen model
  does not use them.
  """
  flat = flatten(params)
  out = {}
  for name, shape in expected_shapes(config).items():
    if name not in flat:
      raise CheckpointError(f"{source}: missing array {name!r} (expected shape {shape}) for {_describe(config)}")
    found = tuple(flat[name].shape)
    if found != shape:
      raise CheckpointError(f"{source}: array {name!r} has shape {found} but the config "
                            f"({_describe(config)}) expects {shape}")
    if isinstance(flat[name], np.ndarray):
      why = nonfinite_error(name, flat[name])
      if why:
        raise CheckpointError(f"{source}: {why}")
    out[name] = flat[name]
  return unflatten(out)


def _describe(config: T5Config) -> str:
  return ", ".join(f"{f}={getattr(config, f)}" for f in SHAPE_FIELDS)


def cast_params(params: Mapping[str, Any], dtype: Any) -> Dict[str, Any]:
  """Cast every array to `dtype` ("float32", "bfloat16" or a numpy dtype); None keeps stored dtypes."""
  if dtype is None:
    return dict(params)
  target = np_dtype(dtype)
  # A lazily read array (checkpoints.lazy) stays lazy: its slices are converted as they are read.
  return unflatten({k: v.cast(target) if hasattr(v, "cast") else np.asarray(v).astype(target, copy=False)
                    for k, v in flatten(params).items()})


def np_dtype(dtype: Any) -> np.dtype:
  if isinstance(dtype, str) and dtype == "bfloat16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(dtype)


"""Read T5X and Hugging Face T5 checkpoints into one T5X-named parameter tree (DESIGN.md §4).

`read_params(path)` is the single entry point: it detects the format, infers or reads the config,
checks every array's shape against it, and returns `(T5Config, params)` where `params` is a nested
dict of numpy arrays named as in T5X, without a `params`/`target` wrapper.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from spot_jax.checkpoints import hf, t5x
from spot_jax.checkpoints.hf import read_hf, write_hf
from spot_jax.checkpoints.infer_config import (SHAPE_FIELDS, VARIANT_FIELDS, CheckpointError, cast_params,
                                               check_agreement, check_params, expected_shapes,
                                               infer_config)
from spot_jax.checkpoints.t5x import absolute_spec, read_t5x, write_t5x
from spot_jax.config import T5Config

__all__ = ["CheckpointError", "read_params", "detect_format", "read_t5x", "read_hf", "write_t5x",
           "write_hf", "infer_config", "check_params", "expected_shapes", "absolute_spec"]


def detect_format(path: str) -> str:
  """'t5x' or 'hf' for a checkpoint path; raises CheckpointError naming what was looked for."""
  path = str(path)
  if not t5x.exists(path):
    raise CheckpointError(f"checkpoint path {path} does not exist")
  if hf.is_hf_dir(path):
    return "hf"
  if t5x.find_checkpoint_dir(path) is not None:
    return "t5x"
  raise CheckpointError(
      f"{path} is neither a T5X checkpoint (a `checkpoint` msgpack file, or `checkpoint_<step>/` "
      "directories holding one) nor a Hugging Face T5 directory (config.json + model.safetensors, or "
      "sharded *.safetensors + model.safetensors.index.json)")


def read_params(path: str, config: Optional[T5Config] = None, dtype: Any = None,
                overrides: Optional[Mapping[str, Any]] = None,
                check_shape_overrides: bool = False) -> Tuple[T5Config, Dict[str, Any]]:
  """Read a T5X or HF T5 checkpoint (local or gs://) into `(config, params)`.

  - config: when given, its shape fields must agree with the checkpoint (else an error naming each
    mismatching field) and it is returned (its max distance, eps, dropout and dtype are kept).
    When None, a T5X config is inferred from the shapes (max distance 128) and a HF config is read
    from config.json.
  - overrides: T5Config fields applied last (e.g. `relative_attention_max_distance`, `dtype`). With
    `check_shape_overrides` (`models/sizes/from_checkpoint.gin`), its shape fields are not applied:
    `feed_forward` and `tie_word_embeddings` must agree with the checkpoint, dimensions are its own.
  - dtype: cast every parameter ("float32", "bfloat16"); None keeps the stored dtypes.
  """
  fmt = detect_format(path)
  if fmt == "t5x":
    ckpt_dir, params = read_t5x(path)
    source = f"T5X checkpoint {ckpt_dir}"
    found = infer_config(params, source, base=config)
  else:
    source = f"Hugging Face checkpoint {path}"
    found, params = read_hf(path)
  if config is not None:
    check_agreement(config, found, source)
    found = config
  if overrides and check_shape_overrides:
    # The variant's kind (MLP, tied output) must match; its dimensions (vocab_size, ...) are the
    # checkpoint's own.
    kind = {k: v for k, v in overrides.items() if k in VARIANT_FIELDS}
    check_agreement(found.replace(**kind), found, source)
    overrides = {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS}
  if overrides:
    found = found.replace(**dict(overrides))
  params = check_params(found, params, source)
  return found, cast_params(params, dtype)

"""`spot_jax.load_t5(path)`: a frozen T5 from any checkpoint, with numpy-in/numpy-out helpers."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spot_jax import prompt_io
from spot_jax.config import T5Config
from spot_jax.model import T5


class LoadedT5:
  """A frozen T5 and its parameters; methods take and return numpy arrays (id 0 = padding)."""

  def __init__(self, config: T5Config, params: Any):
    self.config = config
    self.params = params
    model = T5(config)
    self._encode = jax.jit(lambda p, ids, prompt: model.apply({"params": p}, ids, prompt=prompt,
                                                              method=T5.encode))
    self._logits = jax.jit(lambda p, ids, dec, prompt: model.apply({"params": p}, ids, dec,
                                                                   prompt=prompt))

  def _prompt(self, prompt):
    if prompt is None:
      return None
    arr = np.asarray(prompt)
    d = self.config.d_model
    if arr.ndim not in (2, 3) or arr.shape[-1] != d:
      raise ValueError(f"prompt has shape {arr.shape}; expected [P, {d}] or [B, P, {d}]")
    # The training-side check: a NaN/inf prompt would otherwise come back as all-NaN outputs.
    return prompt_io.validate_prompt(arr.reshape(-1, d), "prompt").reshape(arr.shape)

  def _ids(self, ids, name: str) -> np.ndarray:
    """`ids` as int32 `[batch, length]`, checked on the host: an id outside the embedding table is
    gathered by `jnp.take` as a row of NaN, i.e. all-NaN outputs with no error."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
      raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.ndim != 2:
      hint = "; wrap a single example as x[None]" if arr.ndim == 1 else ""
      raise ValueError(f"{name} must be [batch, length] token ids, got shape {arr.shape}{hint}")
    vocab = self.config.vocab_size
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0:
      raise ValueError(f"{name} holds negative token id {lo} (min {lo}, max {hi}); ids must be 0.."
                       f"{vocab - 1} (vocab_size={vocab}). Pad with 0, not with -100 (Hugging Face's "
                       "ignored-label value)")
    if hi >= vocab:
      raise ValueError(f"{name} holds token id {hi} (min {lo}, max {hi}), but this model's vocab_size is "
                       f"{vocab} (ids 0..{vocab - 1}): the text was probably tokenized with another model's "
                       "vocabulary; tokenize it with this checkpoint's SentencePiece model")
    return arr.astype(np.int32)

  def encode(self, input_ids, prompt=None) -> np.ndarray:
    """Encoder output `[B, P+L, d]`, prompt positions first."""
    return np.asarray(self._encode(self.params, self._ids(input_ids, "input_ids"), self._prompt(prompt)))

  def logits(self, input_ids, decoder_input_ids, prompt=None) -> np.ndarray:
    """Decoder logits `[B, T, vocab]` (float32) under teacher forcing."""
    ids, dec = self._ids(input_ids, "input_ids"), self._ids(decoder_input_ids, "decoder_input_ids")
    if ids.shape[0] != dec.shape[0]:
      raise ValueError(f"input_ids has batch size {ids.shape[0]} but decoder_input_ids has "
                       f"{dec.shape[0]}; pass one decoder row per input row")
    return np.asarray(self._logits(self.params, ids, dec, self._prompt(prompt)))

  def __repr__(self):
    return f"LoadedT5({self.config})"


def load_t5(path: str, dtype: str = "float32", **config_overrides) -> LoadedT5:
  """Auto-detects a T5X checkpoint dir, a Hugging Face T5 dir or a `gs://` path.

  `dtype` is the activation dtype; `config_overrides` replace any T5Config field (e.g.
  `relative_attention_max_distance`, which a checkpoint does not record).
  """
  from spot_jax import checkpoints
  overrides = dict(config_overrides)
  overrides.setdefault("dtype", dtype)
  overrides.setdefault("dropout_rate", 0.0)
  config, params = checkpoints.read_params(path, overrides=overrides)
  return LoadedT5(config, jax.tree.map(jnp.asarray, params))

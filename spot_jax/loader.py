"""`spot_jax.load_t5(path)`: a frozen T5 from any checkpoint, with numpy-in/numpy-out helpers."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
    prompt = np.asarray(prompt, np.float32)
    if prompt.ndim not in (2, 3) or prompt.shape[-1] != self.config.d_model:
      raise ValueError(f"prompt has shape {prompt.shape}; expected [P, {self.config.d_model}] or "
                       f"[B, P, {self.config.d_model}]")
    return prompt

  def encode(self, input_ids, prompt=None) -> np.ndarray:
    """Encoder output `[B, P+L, d]`, prompt positions first."""
    return np.asarray(self._encode(self.params, np.asarray(input_ids, np.int32), self._prompt(prompt)))

  def logits(self, input_ids, decoder_input_ids, prompt=None) -> np.ndarray:
    """Decoder logits `[B, T, vocab]` (float32) under teacher forcing."""
    return np.asarray(self._logits(self.params, np.asarray(input_ids, np.int32),
                                   np.asarray(decoder_input_ids, np.int32), self._prompt(prompt)))

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

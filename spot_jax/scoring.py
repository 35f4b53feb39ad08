"""Log-likelihood of given targets under the frozen T5 + prompt (seqio rank classification).

Rank classification scores every candidate answer of an example and picks the best, so the model
never has to generate the label string: this is T5X's `score_batch` (sum of target log-probs,
padding ignored) computed with teacher forcing in one forward pass.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from spot_jax.config import T5Config
from spot_jax.model import T5
from spot_jax.partitioning import to_host


def shift_right(targets, bos_id: int = 0):
  """Decoder inputs of unpacked targets: BOS (0) then the targets without their last position."""
  targets = np.asarray(targets)
  start = np.full(targets.shape[:-1] + (1,), bos_id, targets.dtype)
  return np.concatenate([start, targets[..., :-1]], axis=-1)


def _score(model: T5, params, prompt, encoder_input_tokens, decoder_input_tokens, targets):
  logits = model.apply({"params": params}, encoder_input_tokens, decoder_input_tokens, prompt=prompt)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(targets > 0, token, 0.0), axis=-1)


@functools.lru_cache(maxsize=32)
def score_fn(config: T5Config):
  """The jitted `fn(params, prompt, enc, dec_inputs, targets) -> [B]` (one compile per shape)."""
  cfg = config if config.dropout_rate == 0.0 else config.replace(dropout_rate=0.0)
  return jax.jit(functools.partial(_score, T5(cfg)))


def score(config: T5Config, params, prompt, encoder_input_tokens, decoder_target_tokens,
          decoder_input_tokens: Optional[np.ndarray] = None) -> np.ndarray:
  """Sum over non-pad targets of log p(target_t | inputs, targets_<t), float32 `[B]`.

  `decoder_input_tokens` defaults to the targets shifted right (right for unpacked examples, as
  seqio's EncDecFeatureConverter(pack=False) produces them).
  """
  enc = to_host(encoder_input_tokens).astype(np.int32)
  targets = to_host(decoder_target_tokens).astype(np.int32)
  if enc.ndim != 2 or targets.ndim != 2 or enc.shape[0] != targets.shape[0]:
    raise ValueError(f"expected [B, L] inputs and [B, T] targets, got {enc.shape} and {targets.shape}")
  dec = shift_right(targets) if decoder_input_tokens is None else to_host(decoder_input_tokens).astype(
      np.int32)
  if prompt is not None and isinstance(prompt, np.ndarray):
    prompt = jnp.asarray(prompt, jnp.float32)
  out = score_fn(config)(params, prompt, enc, dec, targets)
  return to_host(out).astype(np.float32)

"""Log-likelihood of given targets under the frozen T5 + prompt (seqio rank classification).

Rank classification scores every candidate answer of an example and picks the best, so the model
never has to generate the label string: this is T5X's `score_batch` (sum of target log-probs,
padding ignored) computed with teacher forcing in one forward pass. On a mesh the batch is split over `data` as in
`spot_jax.decode` (`place_on_mesh`): each device scores `B / data` rows.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from spot_jax.config import T5Config
from spot_jax.decode import MeshPlacement, batch_mesh, place_on_mesh
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
def score_fn(config: T5Config, placement: Optional[MeshPlacement] = None):
  """The jitted `fn(params, prompt, enc, dec_inputs, targets) -> [B]` (one compile per shape); with a
  `placement` (`spot_jax.decode.place_on_mesh`) it takes and returns the batch split over `data`."""
  cfg = config if config.dropout_rate == 0.0 else config.replace(dropout_rate=0.0)
  fn = functools.partial(_score, T5(cfg))
  if placement is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=placement.in_shardings(3), out_shardings=placement.batch)


def score(config: T5Config, params, prompt, encoder_input_tokens, decoder_target_tokens,
          decoder_input_tokens: Optional[np.ndarray] = None, mesh: Optional[Mesh] = None) -> np.ndarray:
  """Sum over non-pad targets of log p(target_t | inputs, targets_<t), float32 `[B]`.

  `decoder_input_tokens` defaults to the targets shifted right (right for unpacked examples, as
  seqio's EncDecFeatureConverter(pack=False) produces them). On a mesh (`mesh`, or a batch already
  split over a mesh's `data` axis) each device scores its `B / data` rows; the result is gathered to
  the host once (every process of a multi-process run must call this with the same batch).
  """
  enc_shape, tgt_shape = np.shape(encoder_input_tokens), np.shape(decoder_target_tokens)
  if len(enc_shape) != 2 or len(tgt_shape) != 2 or enc_shape[0] != tgt_shape[0]:
    raise ValueError(f"expected [B, L] inputs and [B, T] targets, got {enc_shape} and {tgt_shape}")
  mesh = batch_mesh(mesh, encoder_input_tokens, decoder_target_tokens, decoder_input_tokens)
  if decoder_input_tokens is None:
    decoder_target_tokens = to_host(decoder_target_tokens).astype(np.int32)
    decoder_input_tokens = shift_right(decoder_target_tokens)
  if mesh is None:
    enc, dec, targets = (to_host(a).astype(np.int32)
                         for a in (encoder_input_tokens, decoder_input_tokens, decoder_target_tokens))
    if prompt is not None and isinstance(prompt, np.ndarray):
      prompt = jnp.asarray(prompt, jnp.float32)
    return to_host(score_fn(config)(params, prompt, enc, dec, targets)).astype(np.float32)
  params, prompt, (enc, dec, targets), placement = place_on_mesh(
      mesh, params, prompt, (encoder_input_tokens, decoder_input_tokens, decoder_target_tokens))
  out = score_fn(config, placement)(params, prompt, enc, dec, targets)
  return to_host(out)[:enc_shape[0]].astype(np.float32)

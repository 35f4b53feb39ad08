"""Flax T5 encoder-decoder whose parameter tree mirrors T5X names: the encoder and decoder stacks,
the prompt's place in the encoder input, and parameter init/axes helpers. The layers they stack are
in `layers.py` (re-exported here, so `spot_jax.model.Attention` and the like keep working).

The soft prompt is an *input* of the model, not one of its parameters: a training step differentiates
the prompt argument while the frozen parameters are a separate pytree that is never updated. Every
parameter carries logical axis names so the trainer can shard it with logical-axis rules.
"""
from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spot_jax.config import T5Config
from spot_jax.layers import (MLP, Attention, DecoderLayer, Dense, EncoderLayer, RelativePositionBias,
                             RMSNorm, dropout, relative_position_buckets)
from spot_jax.matmul import activation_dtype, matmul_dtype, project

__all__ = [
    "NEG_INF", "T5", "Encoder", "Decoder", "encoder_mask", "broadcast_prompt", "init_params",
    "param_logical_axes", "param_shapes", "ffn_preactivations",
    # from layers.py
    "Dense", "RMSNorm", "RelativePositionBias", "Attention", "MLP", "EncoderLayer", "DecoderLayer",
    "dropout", "relative_position_buckets",
]

NEG_INF = -1e10  # additive mask value used by T5X (finite, so a fully masked row stays finite)


def encoder_mask(encoder_input_tokens, prompt_length: int):
  """`[B, P+L]` validity of encoder positions: prompt rows always, tokens where the id is not 0."""
  valid = encoder_input_tokens > 0
  if prompt_length:
    valid = jnp.concatenate(
        [jnp.ones(valid.shape[:1] + (prompt_length,), dtype=bool), valid], axis=1)
  return valid


def _key_bias(valid):
  """Additive `[B, 1, 1, K]` bias masking invalid keys (queries are never masked, as in HF)."""
  return jnp.where(valid, 0.0, NEG_INF).astype(jnp.float32)[:, None, None, :]


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded, valid, enable_dropout: bool):
    cfg = self.config
    x = dropout(cfg, enable_dropout)(embedded)
    length = x.shape[1]
    bias = RelativePositionBias(cfg, True, name="relpos_bias")(
        length, length, offsets=cfg.attention_impl == "pallas")
    lengths = None
    if cfg.attention_impl in ("fused", "pallas"):
      lengths = valid.sum(axis=-1, dtype=jnp.int32)  # right padding: valid = the first `lengths`
    else:
      bias = bias + _key_bias(valid)
    final_norm = RMSNorm(cfg.layer_norm_epsilon, activation_dtype(cfg), cfg.norm_tiling,
                         name="encoder_norm")
    if cfg.norm_impl == "pallas":
      pending = None
      for i in range(cfg.num_encoder_layers):
        x, pending = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, enable_dropout, lengths, pending)
      x = final_norm(x) if pending is None else final_norm(x, *pending, cfg.dropout_rate)[1]
      return dropout(cfg, enable_dropout, broadcast=False)(x)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, enable_dropout, lengths)
    x = final_norm(x)
    return dropout(cfg, enable_dropout, broadcast=False)(x)  # per element here in T5X too


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded, encoded, encoder_valid, enable_dropout: bool, decode: bool,
               cache_length: Optional[int] = None):
    cfg = self.config
    y = dropout(cfg, enable_dropout)(embedded)
    relpos = RelativePositionBias(cfg, False, name="relpos_bias")
    if decode and cache_length and not self.has_variable("cache", "position"):
      # First step creates a cache of `cache_length` positions (no full-length dummy pass).
      self.put_variable("cache", "position", jnp.array(0, jnp.int32))
      self.put_variable("cache", "max_length_marker", jnp.zeros((cache_length,), jnp.int8))
    if decode and self.has_variable("cache", "position"):
      # One step of incremental decoding against a cache of `max_length` positions.
      position = self.get_variable("cache", "position")
      max_length = self.get_variable("cache", "max_length_marker").shape[0]
      causal = jnp.arange(max_length) <= position
      self_bias = relpos(1, max_length, q_position=position) + jnp.where(
          causal, 0.0, NEG_INF)[None, None, None, :]
      self.put_variable("cache", "position", position + 1)
    else:
      length = y.shape[1]
      causal = np.tril(np.ones((length, length), dtype=bool))
      self_bias = relpos(length, length) + jnp.where(causal, 0.0, NEG_INF)[None, None]
      if decode:  # cache-creating pass: remember the maximum length and start at position 0
        self.put_variable("cache", "position", jnp.array(0, jnp.int32))
        self.put_variable("cache", "max_length_marker", jnp.zeros((length,), jnp.int8))
    cross_bias, encoder_lengths = _key_bias(encoder_valid), None
    if (cfg.attention_impl in ("fused", "pallas") and cfg.cross_attention_impl != "einsum"
        and not decode):  # decoding keeps its KV caches
      cross_bias, encoder_lengths = None, encoder_valid.sum(axis=-1, dtype=jnp.int32)
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, name=f"layers_{i}")(y, encoded, self_bias, cross_bias, enable_dropout,
                                                decode, cache_length, encoder_lengths)
    y = RMSNorm(cfg.layer_norm_epsilon, activation_dtype(cfg), name="decoder_norm")(y)
    y = dropout(cfg, enable_dropout)(y)
    if cfg.tie_word_embeddings:
      return y  # the caller projects with the shared embedding
    return Dense(cfg.vocab_size, ("embed", "vocab"), activation_dtype(cfg),
                 matmul_dtype=matmul_dtype(cfg), name="logits_dense")(y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_prompt(prompt, batch: int):
  """`[P, d]` -> `[batch, P, d]`, with a gradient that sums over the batch on the matrix unit.

  The plain broadcast's gradient is a reduce over the batch axis. XLA's GPU layout assignment makes
  a reduced axis minor, and from the prompt's gradient that choice spread over the encoder's whole
  residual stream: the compiled H200 step stored it batch-minor and transposed it around every
  layer (`bench/gpu_layout.py` shows it). A `[2, batch] x [batch, P*d]` product computes the same
  sum, in float32, and leaves layouts alone; a `[batch]` vector would be rewritten into the reduce.
  """
  return jnp.broadcast_to(prompt[None], (batch,) + prompt.shape)


def _broadcast_prompt_fwd(prompt, batch):
  return broadcast_prompt(prompt, batch), None


def _broadcast_prompt_bwd(batch, _, grad):
  ones = jnp.ones((2, batch), grad.dtype)
  total = jnp.einsum("kb,bpd->kpd", ones, grad, preferred_element_type=jnp.float32)[0]
  return (total.astype(grad.dtype),)


broadcast_prompt.defvjp(_broadcast_prompt_fwd, _broadcast_prompt_bwd)


class T5(nn.Module):
  """T5 encoder-decoder; `prompt` (`[P, d]` or `[B, P, d]`) is prepended to the encoder input."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=activation_dtype(cfg), param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def _embed(self, tokens):
    """The tokens' rows of the embedding table, in the activation dtype. A bfloat16 table under
    float32 activations is gathered as 16-bit integers: `nn.Embed`, and XLA's CPU gather given
    bfloat16, would first make a float32 copy of the whole table (66 MB for T5 1.1) on every call."""
    table, dtype = self.token_embedder.embedding, activation_dtype(self.config)
    if table.dtype == jnp.bfloat16 and dtype != jnp.bfloat16:
      rows = jnp.take(jax.lax.bitcast_convert_type(table, jnp.uint16), tokens, axis=0)
      return jax.lax.bitcast_convert_type(rows, jnp.bfloat16).astype(dtype)
    return jnp.take(table, tokens, axis=0).astype(dtype)

  def _embed_with_prompt(self, tokens, prompt):
    x = self._embed(tokens)
    if prompt is None:
      return x
    prompt = jnp.asarray(prompt).astype(x.dtype)
    if prompt.ndim == 2:
      prompt = broadcast_prompt(prompt, x.shape[0])
    if prompt.ndim != 3 or prompt.shape[0] != x.shape[0] or prompt.shape[2] != x.shape[2]:
      raise ValueError(f"prompt has shape {prompt.shape}; expected [P, {x.shape[2]}] or "
                       f"[{x.shape[0]}, P, {x.shape[2]}] (d_model={x.shape[2]}, batch={x.shape[0]})")
    return jnp.concatenate([prompt, x], axis=1)

  def encode(self, encoder_input_tokens, prompt=None, enable_dropout: bool = False):
    """Encoder output `[B, P+L, d]` (prompt positions first)."""
    prompt_length = 0 if prompt is None else prompt.shape[-2]
    embedded = self._embed_with_prompt(encoder_input_tokens, prompt)
    return self.encoder(embedded, encoder_mask(encoder_input_tokens, prompt_length), enable_dropout)

  def decode(self, encoded, encoder_valid, decoder_input_tokens, enable_dropout: bool = False,
             decode: bool = False, cache_length: Optional[int] = None):
    """Logits `[B, T, V]` in float32 given the encoder output and its `[B, P+L]` validity.

    Incremental decoding (`decode=True`, `mutable=["cache"]`): either create the cache with a
    full-length dummy input and then feed one token per call, or feed the first token with
    `cache_length=max_length`, which creates the cache and computes that step in one pass.
    """
    y = self.decoder(self._embed(decoder_input_tokens), encoded, encoder_valid,
                     enable_dropout, decode, cache_length)
    if self.config.tie_word_embeddings:
      y = y * (self.config.d_model ** -0.5)
      logits = project(y, self.token_embedder.embedding.T, y.dtype, matmul_dtype(self.config))
    else:
      logits = y
    return logits.astype(jnp.float32)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, prompt=None,
               enable_dropout: bool = False):
    prompt_length = 0 if prompt is None else prompt.shape[-2]
    encoded = self.encode(encoder_input_tokens, prompt, enable_dropout)
    valid = encoder_mask(encoder_input_tokens, prompt_length)
    return self.decode(encoded, valid, decoder_input_tokens, enable_dropout)


def _dummy_inputs():
  return jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)


def init_params(config: T5Config, rng) -> dict:
  """A fresh T5X-style initialization (plain arrays, no partitioning boxes)."""
  enc, dec = _dummy_inputs()
  # One compiled program instead of hundreds of eagerly dispatched initializer ops.
  init = jax.jit(lambda r: nn.unbox(T5(config).init(r, enc, dec)["params"]))
  return jax.device_get(init(rng))


def param_logical_axes(config: T5Config) -> dict:
  """The tree of logical axis names (`PartitionSpec`s) of every parameter, without allocating it."""
  enc, dec = _dummy_inputs()
  abstract = jax.eval_shape(lambda: T5(config).init(jax.random.PRNGKey(0), enc, dec)["params"])
  return nn.get_partition_spec(abstract)


def param_shapes(config: T5Config) -> dict:
  enc, dec = _dummy_inputs()
  abstract = jax.eval_shape(lambda: T5(config).init(jax.random.PRNGKey(0), enc, dec)["params"])
  return jax.tree.map(lambda x: tuple(x.shape), nn.unbox(abstract))


def ffn_preactivations(config: T5Config, params, input_ids, prompt) -> np.ndarray:
  """Encoder FFN first-layer pre-activations `[layers, B, P+L, d_ff]` driven by `prompt`.

  SPoT's ON similarity binarizes these (> 0) to compare which neurons two prompts activate.
  """
  model = T5(config.replace(dropout_rate=0.0))
  _, state = model.apply({"params": params}, jnp.asarray(input_ids), prompt=jnp.asarray(prompt),
                         method=T5.encode, mutable=["intermediates"])
  layers = state["intermediates"]["encoder"]
  acts = [layers[f"layers_{i}"]["mlp"]["ffn_preact"][0] for i in range(config.num_encoder_layers)]
  return np.asarray(jnp.stack(acts).astype(jnp.float32))

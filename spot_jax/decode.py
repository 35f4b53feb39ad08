"""Greedy decoding of the frozen T5 driven by a soft prompt, with a KV cache.

The whole loop (encode once, build the cache, then one decoder step per token) is a single jitted
program per (batch, input length, max decode length, prompt length): repeated calls with the same
shapes reuse the compiled program, so throughput benchmarks measure decoding, not compilation.
Parameters may be sharded over a mesh; jit propagates their shardings through the loop.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spot_jax.config import T5Config
from spot_jax.model import T5, encoder_mask
from spot_jax.partitioning import to_host


def _eval_config(config: T5Config) -> T5Config:
  return config if config.dropout_rate == 0.0 else config.replace(dropout_rate=0.0)


def _greedy(model: T5, max_decode_length: int, params, prompt, encoder_input_tokens, eos_id):
  """Traced body: returns `[B, max_decode_length]` int32 tokens, zeros after the first EOS."""
  batch = encoder_input_tokens.shape[0]
  prompt_length = 0 if prompt is None else prompt.shape[-2]
  encoded = model.apply({"params": params}, encoder_input_tokens, prompt=prompt, method=T5.encode)
  valid = encoder_mask(encoder_input_tokens, prompt_length)
  # The first step creates the cache (self-attention KV of max length, projected cross K/V) and
  # predicts token 0 in the same pass: no full-length dummy decoder pass.
  logits, state = model.apply({"params": params}, encoded, valid, jnp.zeros((batch, 1), jnp.int32),
                              decode=True, cache_length=max_decode_length, method=T5.decode,
                              mutable=["cache"])
  first = jnp.argmax(logits[:, 0, :], axis=-1).astype(jnp.int32)

  def cond(carry):
    t, _, _, _, done = carry
    return (t < max_decode_length) & ~jnp.all(done)

  def body(carry):
    t, cache, last, out, done = carry
    logits, new_state = model.apply({"params": params, "cache": cache}, encoded, valid, last[:, None],
                                    decode=True, method=T5.decode, mutable=["cache"])
    token = jnp.argmax(logits[:, 0, :], axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, t))
    return t + 1, new_state["cache"], token, out, done | (token == eos_id)

  out = jnp.zeros((batch, max_decode_length), jnp.int32).at[:, 0].set(first)
  init = (jnp.array(1, jnp.int32), state["cache"], first, out, first == eos_id)
  return jax.lax.while_loop(cond, body, init)[3]


@functools.lru_cache(maxsize=32)
def decode_fn(config: T5Config, max_decode_length: int):
  """The jitted `fn(params, prompt, encoder_input_tokens, eos_id) -> tokens` for one config and
  length. Cached so that every caller shares one jit cache (one compile per input shape); `eos_id`
  is a traced scalar, so changing it does not recompile.
  """
  if max_decode_length < 1:
    raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")
  model = T5(_eval_config(config))
  return jax.jit(functools.partial(_greedy, model, int(max_decode_length)))


def greedy_decode(config: T5Config, params, prompt, encoder_input_tokens, max_decode_length: int,
                  eos_id: int = 1) -> np.ndarray:
  """Greedy decode `[B, max_decode_length]` int32; the decoder starts from id 0 and every token after
  the first EOS is 0. `prompt` is `[P, d]`, `[B, P, d]` or None; dropout is always off."""
  tokens = to_host(encoder_input_tokens).astype(np.int32)
  if tokens.ndim != 2:
    raise ValueError(f"encoder_input_tokens must be [batch, length], got shape {tokens.shape}")
  if prompt is not None:
    prompt = jnp.asarray(prompt, jnp.float32) if isinstance(prompt, np.ndarray) else prompt
  out = decode_fn(config, int(max_decode_length))(params, prompt, tokens, np.int32(eos_id))
  return to_host(out)


def trim_after_eos(tokens, eos_id: int = 1) -> list:
  """One row of decoded ids as a list, cut after the first EOS (kept) and without trailing pads."""
  row = [int(t) for t in np.asarray(tokens).tolist()]
  if eos_id in row:
    return row[:row.index(eos_id) + 1]
  while row and row[-1] == 0:
    row.pop()
  return row

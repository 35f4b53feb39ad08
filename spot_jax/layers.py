"""T5's layers, each a Flax module named as T5X names it: projection, RMS norm, relative position
bias, attention, MLP, and one encoder or decoder layer. `model.py` stacks them into the T5.

Every parameter is created in float32 with its logical axis names (`_param`), so the trainer can
shard any of them by logical-axis rules.
"""
from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spot_jax import fused_norm, pallas_attention, target_platform
from spot_jax.config import T5Config
from spot_jax.dropout import Dropout, broadcast_dims, per_element_bits
from spot_jax.fused_attention import fused_attention
from spot_jax.matmul import activation_dtype, matmul_dtype, project


def _fan_in_normal(scale=1.0, distribution="normal"):
  return nn.initializers.variance_scaling(scale, "fan_in", distribution)


def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Dense(nn.Module):
  """A bias-free projection with a 2-D kernel `[in, out]` as stored by T5X; its output is in
  `dtype`, its inputs in `matmul_dtype` (default `dtype`)."""
  features: int
  axes: tuple
  dtype: jnp.dtype
  kernel_init: nn.initializers.Initializer = _fan_in_normal(1.0, "truncated_normal")
  matmul_dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x):
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.axes)
    return project(x, kernel, self.dtype, self.matmul_dtype or self.dtype)


def dropout(config: T5Config, enable_dropout: bool, broadcast: bool = True):
  """T5's dropout (rate, mask bits and sharing across positions from `config`) as a function of one
  tensor; each call makes a new `Dropout` submodule, so every site draws its own mask. `broadcast`
  False: per element whatever the config says (T5X's one such site, after the encoder's norm)."""
  dims = broadcast_dims(config) if broadcast else ()
  return lambda t: Dropout(config.dropout_rate, per_element_bits(config), dims)(
      t, deterministic=not enable_dropout)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, statistics in float32."""
  epsilon: float
  dtype: jnp.dtype
  tiling: tuple = ()  # the one-kernel form's (rows per program, warps); () = its default

  @nn.compact
  def __call__(self, x, added=None, key_words=None, rate: float = 0.0, copies: int = 1):
    """The norm of `x`; with `added`, `(x + dropout(added), its norm)` in one kernel
    (`fused_norm`: `key_words` from `Dropout.key_words`, None for no dropout; `copies` > 1: the
    norm as a tuple of that many, one per matmul reading it)."""
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    if added is not None:
      if key_words is None:
        key_words, rate = jnp.zeros((2,), jnp.uint32), 0.0
      return fused_norm.add_dropout_rmsnorm(x, added, scale, key_words, rate, self.epsilon,
                                            self.dtype, copies, self.tiling or None)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


@functools.lru_cache(maxsize=64)
def relative_position_buckets(q_len: int, k_len: int, bidirectional: bool, num_buckets: int,
                              max_distance: int, q_offset: int = 0) -> np.ndarray:
  """Bucket index `[q_len, k_len]` of each (query, key) pair, as Mesh TensorFlow / HF T5 compute it.

  Computed with numpy at trace time: positions are static, so the table is a constant of the program.
  """
  context = np.arange(q_offset, q_offset + q_len, dtype=np.int64)[:, None]
  memory = np.arange(k_len, dtype=np.int64)[None, :]
  relative = memory - context
  buckets = np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative > 0).astype(np.int64) * num_buckets
    n = np.abs(relative)
  else:
    n = -np.minimum(relative, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact)) /
              np.float32(np.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
  large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  buckets += np.where(is_small, n, large)
  return buckets.astype(np.int32)


class RelativePositionBias(nn.Module):
  """One `[heads, buckets]` table per stack, shared by all its layers (T5X `relpos_bias`)."""
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_position=None, offsets: bool = False):
    """`[1, H, q, k]`; with `offsets` (self-attention, `q_len == k_len`), `[H, 2L-1]` by offset
    instead: entry `j - i + L - 1` is the bias of query `i`, key `j` (`pallas_attention`)."""
    cfg = self.config
    table = _param(self, "rel_embedding", nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                   (cfg.num_heads, cfg.relative_attention_num_buckets), ("heads", "relpos_buckets"))
    if offsets:
      buckets = relative_position_buckets(1, 2 * k_len - 1, self.bidirectional,
                                          cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance, q_offset=k_len - 1)
      return jnp.take(table, jnp.asarray(buckets[0]), axis=1)  # [H, 2L-1]
    if q_position is None:
      buckets = relative_position_buckets(q_len, k_len, self.bidirectional,
                                          cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance)
      return jnp.take(table, jnp.asarray(buckets), axis=1)[None]  # [1, H, q, k]
    # Incremental decoding: one query row at a dynamic position.
    full = relative_position_buckets(k_len, k_len, self.bidirectional,
                                     cfg.relative_attention_num_buckets,
                                     cfg.relative_attention_max_distance)
    row = jax.lax.dynamic_slice_in_dim(jnp.asarray(full), q_position, 1, axis=0)
    return jnp.take(table, row, axis=1)[None]  # [1, H, 1, k]


class Attention(nn.Module):
  """Multi-head dot-product attention without the 1/sqrt(head_dim) factor (folded into `query`)."""
  config: T5Config
  cached_kv: str = ""  # "self": append to a KV cache; "cross": project the memory once and keep it

  @nn.compact
  def __call__(self, x, memory, bias, enable_dropout: bool, decode: bool = False,
               cache_length: Optional[int] = None, lengths=None, value_input=None):
    """`bias` is additive `[B|1, H, Q, K]`. `lengths` (`[B]` valid positions of the right-padded
    memory rows) selects the fused form: then `bias` carries the relative positions alone (or is
    None), every query row is computed, and no attention probability is dropped. `value_input`
    (default `memory`) is what the values are projected from: the same array as `memory` given
    separately so that its gradient comes back separately (`fused_norm`'s copies)."""
    value_input = memory if value_input is None else value_input
    cfg = self.config
    dtype, mm = activation_dtype(cfg), matmul_dtype(cfg)
    inner = cfg.num_heads * cfg.head_dim
    depth_scaling = float(np.sqrt(cfg.head_dim))

    def query_init(key, shape, dtype=jnp.float32):
      return _fan_in_normal()(key, shape, dtype) / depth_scaling

    proj = functools.partial(Dense, features=inner, axes=("embed", "joined_kv"), dtype=dtype,
                             kernel_init=_fan_in_normal(), matmul_dtype=mm)
    out_proj = lambda t: Dense(cfg.d_model, ("joined_kv", "embed"), dtype, _fan_in_normal(), mm,
                               name="out")(t.reshape(x.shape[:2] + (inner,)))
    if lengths is not None:
      # [B, L, H, Dh] is the layout `dot_product_attention` takes: no transposes at all.
      heads = lambda t: t.reshape(t.shape[:2] + (cfg.num_heads, cfg.head_dim))
      q, k, v = (heads(proj(name=n, **({"kernel_init": query_init} if n == "query" else {}))(t))
                 for n, t in (("query", x), ("key", memory), ("value", value_input)))
      if cfg.attention_impl == "pallas" and not self.cached_kv:  # the encoder's self-attention
        return out_proj(pallas_attention.t5_flash_attention(
            q, k, v, bias.astype(dtype), lengths, *cfg.pallas_attention_launch,
            backward=cfg.pallas_attention_backward))
      if cfg.cross_attention_impl == "pallas" and self.cached_kv == "cross":  # every row valid
        return out_proj(pallas_attention.flash_attention(q, k, v, None, None, lengths,
                                                         *pallas_attention.CROSS_LAUNCH))
      q_lengths = (jnp.full(lengths.shape, x.shape[1], jnp.int32) if self.cached_kv == "cross"
                   else lengths)  # decoder rows are all computed; the loss weights mask them
      return out_proj(fused_attention(q, k, v, None if bias is None else bias.astype(dtype),
                                      q_lengths, lengths))
    # Heads-major [B, H, L, Dh]: the layout XLA's batched dot wants, kept in the KV caches too so
    # an incremental step never transposes the cached keys/values.
    split = lambda t: t.reshape(t.shape[:2] + (cfg.num_heads, cfg.head_dim)).transpose(0, 2, 1, 3)
    q = split(proj(name="query", kernel_init=query_init)(x))

    if decode and self.cached_kv == "cross" and self.has_variable("cache", "cross_key"):
      k = self.get_variable("cache", "cross_key")
      v = self.get_variable("cache", "cross_value")
    else:
      k = split(proj(name="key")(memory))
      v = split(proj(name="value")(value_input))
      if decode and self.cached_kv == "cross":
        self.put_variable("cache", "cross_key", k)
        self.put_variable("cache", "cross_value", v)

    if decode and self.cached_kv == "self":
      # The cache is created either by a pass over a full-length dummy input, or (cache_length set)
      # by the first real step, which then also writes its own key/value at position 0.
      initialized = self.has_variable("cache", "cached_key")
      shape = k.shape[:2] + (cache_length or k.shape[2], k.shape[3])
      cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
      index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if initialized or cache_length:
        i = index.value
        k = jax.lax.dynamic_update_slice(cached_key.value, k, (0, 0, i, 0))
        v = jax.lax.dynamic_update_slice(cached_value.value, v, (0, 0, i, 0))
        cached_key.value, cached_value.value = k, v
        index.value = i + x.shape[1]

    logits_dtype = jnp.float32 if cfg.float32_attention_logits else dtype
    # The attention products stay in the activation dtype: XLA's CPU dot has no batched bfloat16
    # product summed in float32 outside its fused kernels ("Unsupported element type for DotThunk").
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(logits_dtype) + bias.astype(logits_dtype)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    weights = dropout(cfg, enable_dropout)(weights)
    return out_proj(jnp.einsum("bhqk,bhkd->bqhd", weights, v))


class MLP(nn.Module):
  """ReLU (`wi`, T5 1.0) or gated-GELU (`wi_0`, `wi_1`, T5 1.1) feed-forward block."""
  config: T5Config

  @nn.compact
  def __call__(self, x, enable_dropout: bool, linear_input=None):
    """`linear_input` (default `x`): the input of the gated form's `wi_1`, the same array as `x`
    given separately so that its gradient comes back separately (`fused_norm`'s copies)."""
    cfg = self.config
    dtype = activation_dtype(cfg)
    dense = functools.partial(Dense, axes=("embed", "mlp"), dtype=dtype, matmul_dtype=matmul_dtype(cfg))
    drop = Dropout(cfg.dropout_rate, per_element_bits(cfg), broadcast_dims(cfg))
    if cfg.gated:
      linear_input = x if linear_input is None else linear_input
      pre, linear = dense(cfg.d_ff, name="wi_0")(x), dense(cfg.d_ff, name="wi_1")(linear_input)
      recompute = (target_platform.platform() != "cpu" if cfg.mlp_backward == "auto"
                   else cfg.mlp_backward == "recompute")
      if recompute:
        h = drop.recomputed(_gated_gelu, pre, linear, deterministic=not enable_dropout)
      else:
        h = drop(_gated_gelu(pre, linear), deterministic=not enable_dropout)
    else:
      pre = dense(cfg.d_ff, name="wi")(x)
      h = drop(jax.nn.relu(pre), deterministic=not enable_dropout)
    # Stored only when the caller makes "intermediates" mutable (SPoT's ON similarity).
    self.sow("intermediates", "ffn_preact", pre)
    return Dense(cfg.d_model, ("mlp", "embed"), dtype, matmul_dtype=matmul_dtype(cfg), name="wo")(h)


def _gated_gelu(pre, linear):
  return jax.nn.gelu(pre, approximate=True) * linear


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, enable_dropout: bool, lengths=None, pending=None):
    """The layer's output; with `norm_impl="pallas"`, `(x, pending)` instead: the MLP's output and
    its dropout key, added to `x` by the next norm's kernel (`pending` here: this layer's)."""
    cfg = self.config
    dtype = activation_dtype(cfg)
    norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, dtype, cfg.norm_tiling, name=name)
    if cfg.norm_impl == "pallas":
      # The same submodules and dropout keys as below, with each add moved into the next norm.
      # Each norm hands one copy of its output to each matmul that reads it (`copies`).
      key = lambda: Dropout(cfg.dropout_rate, True).key_words(deterministic=not enable_dropout)
      if pending is None:
        h = norm("pre_attention_layer_norm")(x)
        q_in = k_in = v_in = h
      else:
        x, (q_in, k_in, v_in) = norm("pre_attention_layer_norm")(x, *pending, cfg.dropout_rate, 3)
      attended = Attention(cfg, name="attention")(q_in, k_in, bias, enable_dropout, lengths=lengths,
                                                  value_input=v_in)
      x, h = norm("pre_mlp_layer_norm")(x, attended, key(), cfg.dropout_rate, 2 if cfg.gated else 1)
      gate_in, linear_in = h if cfg.gated else (h, None)
      return x, (MLP(cfg, name="mlp")(gate_in, enable_dropout, linear_input=linear_in), key())
    drop = dropout(cfg, enable_dropout)
    h = norm("pre_attention_layer_norm")(x)
    x = x + drop(Attention(cfg, name="attention")(h, h, bias, enable_dropout, lengths=lengths))
    h = norm("pre_mlp_layer_norm")(x)
    return x + drop(MLP(cfg, name="mlp")(h, enable_dropout))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, y, encoded, self_bias, cross_bias, enable_dropout: bool, decode: bool,
               cache_length: Optional[int] = None, encoder_lengths=None):
    cfg = self.config
    dtype = activation_dtype(cfg)
    drop = dropout(cfg, enable_dropout)
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(y)
    y = y + drop(Attention(cfg, "self", name="self_attention")(h, h, self_bias, enable_dropout, decode,
                                                               cache_length))
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(y)
    y = y + drop(Attention(cfg, "cross", name="encoder_decoder_attention")(
        h, encoded, cross_bias, enable_dropout, decode, lengths=encoder_lengths))
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(y)
    return y + drop(MLP(cfg, name="mlp")(h, enable_dropout))

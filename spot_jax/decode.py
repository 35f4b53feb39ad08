"""Greedy decoding of the frozen T5 driven by a soft prompt, with a KV cache.

The whole loop (encode once, build the cache, then one decoder step per token) is a single jitted
program per (batch, input length, max decode length, prompt length): repeated calls with the same
shapes reuse the compiled program, so throughput benchmarks measure decoding, not compilation.
Parameters may be sharded over a mesh; jit propagates their shardings through the loop. Given a mesh
(`mesh=`, or a batch already split over its `data` axis), the batch is split over `data` and the
program is compiled with those input and output shardings (`MeshPlacement`, shared with
`spot_jax.scoring`): each device decodes `B / data` rows, the frozen parameters stay as placed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spot_jax.config import T5Config
from spot_jax.model import T5, encoder_mask
from spot_jax.partitioning import to_host


@dataclasses.dataclass(frozen=True)
class MeshPlacement:
  """Shardings of an eval program's inputs and output on a mesh (hashable: part of the jit cache key).

  The batch (and a `[B, P, d]` prompt) is split over `data`; a `[P, d]` prompt and scalars are
  replicated; each frozen parameter keeps the sharding it was placed with (`params`, one per leaf)."""
  params_tree: Any
  params: Tuple[NamedSharding, ...]
  prompt: NamedSharding
  batch: NamedSharding

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.batch.mesh, PartitionSpec())

  def in_shardings(self, num_batch: int, num_scalars: int = 0) -> tuple:
    params = jax.tree_util.tree_unflatten(self.params_tree, self.params)
    return (params, self.prompt) + (self.batch,) * num_batch + (self.replicated,) * num_scalars


def batch_mesh(mesh: Optional[Mesh], *arrays) -> Optional[Mesh]:
  """`mesh`, else the mesh of an array of `arrays` already split over its `data` axis, else None."""
  if mesh is not None:
    return mesh
  for array in arrays:
    sharding = getattr(array, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.spec and sharding.spec[0] == "data":
      return sharding.mesh
  return None


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  if array.shape[0] == rows:
    return array
  return np.concatenate([array, np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)])


def _put(array, sharding: NamedSharding, dtype, rows: Optional[int] = None):
  """`array` (numpy or jax) as a global array of `dtype` with `sharding`, zero rows added up to `rows`.
  An array already so placed is passed as it is; another is brought to the host first (`to_host`: a
  collective when it spans other processes) and put from there, each process putting the same rows."""
  if (isinstance(array, jax.Array) and array.dtype == dtype and (rows is None or array.shape[0] == rows)
      and array.sharding.is_equivalent_to(sharding, array.ndim)):
    return array
  host = to_host(array).astype(dtype)
  return jax.device_put(host if rows is None else _pad_rows(host, rows), sharding)


def place_on_mesh(mesh: Mesh, params, prompt, batch: Sequence, dtype=np.int32):
  """`(params, prompt, batch, placement)` for a program on `mesh`: the batch arrays (`[B, ...]`, and a
  `[B, P, d]` prompt) split over `data`, their rows padded with zeros to a multiple of the `data` size
  (`B` rows of the result are the real ones); a `[P, d]` prompt replicated; parameters on the mesh's
  devices keep their shardings, others (a host or one-device copy) are replicated over the mesh."""
  data_sharding = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  num_data = mesh.shape["data"]
  rows = -(-batch[0].shape[0] // num_data) * num_data
  batch = tuple(_put(b, data_sharding, dtype, rows) for b in batch)
  devices = set(mesh.devices.flat)
  leaves, tree = jax.tree_util.tree_flatten(params)
  placed, shardings = [], []
  for leaf in leaves:
    if isinstance(leaf, jax.Array) and leaf.sharding.device_set == devices:
      placed.append(leaf)
      shardings.append(leaf.sharding)
    else:
      placed.append(jax.device_put(leaf, replicated))
      shardings.append(replicated)
  params = jax.tree_util.tree_unflatten(tree, placed)
  prompt_sharding = data_sharding if prompt is not None and np.ndim(prompt) == 3 else replicated
  if prompt is not None:
    dtype = prompt.dtype if isinstance(prompt, jax.Array) else np.float32
    prompt = _put(prompt, prompt_sharding, dtype, rows if np.ndim(prompt) == 3 else None)
  return params, prompt, batch, MeshPlacement(tree, tuple(shardings), prompt_sharding, data_sharding)


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
def decode_fn(config: T5Config, max_decode_length: int, placement: Optional[MeshPlacement] = None):
  """The jitted `fn(params, prompt, encoder_input_tokens, eos_id) -> tokens` for one config and
  length. Cached so that every caller shares one jit cache (one compile per input shape); `eos_id`
  is a traced scalar, so changing it does not recompile. With a `placement` (`place_on_mesh`) the
  program takes and returns the batch split over the mesh's `data` axis.
  """
  if max_decode_length < 1:
    raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")
  model = T5(_eval_config(config))
  fn = functools.partial(_greedy, model, int(max_decode_length))
  if placement is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=placement.in_shardings(1, 1), out_shardings=placement.batch)


def greedy_decode(config: T5Config, params, prompt, encoder_input_tokens, max_decode_length: int,
                  eos_id: int = 1, mesh: Optional[Mesh] = None) -> np.ndarray:
  """Greedy decode `[B, max_decode_length]` int32; the decoder starts from id 0 and every token after
  the first EOS is 0. `prompt` is `[P, d]`, `[B, P, d]` or None; dropout is always off.

  On a mesh (`mesh`, or tokens already split over a mesh's `data` axis) each device decodes its
  `B / data` rows (B padded to a multiple of `data`); the result is gathered to the host once (from
  every process in a multi-process run, where every process must call this with the same batch)."""
  if np.ndim(encoder_input_tokens) != 2:
    raise ValueError(f"encoder_input_tokens must be [batch, length], got shape "
                     f"{np.shape(encoder_input_tokens)}")
  mesh = batch_mesh(mesh, encoder_input_tokens)
  if mesh is None:
    tokens = to_host(encoder_input_tokens).astype(np.int32)
    if prompt is not None:
      prompt = jnp.asarray(prompt, jnp.float32) if isinstance(prompt, np.ndarray) else prompt
    return to_host(decode_fn(config, int(max_decode_length))(params, prompt, tokens, np.int32(eos_id)))
  rows = np.shape(encoder_input_tokens)[0]
  params, prompt, (tokens,), placement = place_on_mesh(mesh, params, prompt, (encoder_input_tokens,))
  out = decode_fn(config, int(max_decode_length), placement)(params, prompt, tokens, np.int32(eos_id))
  return to_host(out)[:rows]


def trim_after_eos(tokens, eos_id: int = 1) -> list:
  """One row of decoded ids as a list, cut after the first EOS (kept) and without trailing pads."""
  row = [int(t) for t in np.asarray(tokens).tolist()]
  if eos_id in row:
    return row[:row.index(eos_id) + 1]
  while row and row[-1] == 0:
    row.pop()
  return row

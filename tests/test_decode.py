"""Greedy decoding with the KV cache: agrees with the full forward, stops at EOS, compiles once."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import decode as D
from spot_jax import model as M
from spot_jax.config import size_config
from mesh_setup import rows_per_device, spy_programs

CFG = size_config("tiny", vocab_size=64, dropout_rate=0.0, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
V10 = CFG.replace(feed_forward="relu", tie_word_embeddings=True)
ENC = np.array([[5, 6, 7, 8, 9, 0], [9, 10, 0, 0, 0, 0], [3, 4, 5, 0, 0, 0]], np.int32)


def _teacher_forced_argmax(cfg, params, prompt, enc, length):
  """Re-run the full (cache-free) forward on the decoder's own outputs; argmax at each position."""
  tokens = D.greedy_decode(cfg, params, prompt, enc, length, eos_id=-1)  # never stops early
  dec_in = np.concatenate([np.zeros((enc.shape[0], 1), np.int32), tokens[:, :-1]], axis=1)
  logits = jax.jit(lambda p: M.T5(cfg).apply({"params": p}, enc, dec_in, prompt=prompt))(params)
  return tokens, np.asarray(jnp.argmax(logits, axis=-1))


@pytest.mark.parametrize("cfg", [CFG, V10, CFG.replace(attention_impl="fused")],
                         ids=["t5_1_1", "t5_1_0", "fused"])
def test_greedy_matches_full_forward_argmax(cfg):
  """(fused: the cached decoder's einsum cross-attention agrees with the training pass's fused one)"""
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  prompt = np.random.RandomState(0).normal(size=(3, cfg.d_model)).astype(np.float32)
  tokens, argmax = _teacher_forced_argmax(cfg, params, prompt, ENC, 6)
  np.testing.assert_array_equal(tokens, argmax)
  assert len(np.unique(tokens)) > 1  # a degenerate constant output would make the check weak


def test_stops_at_eos_and_zeroes_after():
  params = M.init_params(CFG, jax.random.PRNGKey(1))
  free = D.greedy_decode(CFG, params, None, ENC, 6, eos_id=-1)
  eos = int(free[0, 2])  # pretend the third token of row 0 is EOS
  out = D.greedy_decode(CFG, params, None, ENC, 6, eos_id=eos)
  for row_free, row in zip(free, out):
    hits = np.flatnonzero(row_free == eos)
    stop = hits[0] + 1 if len(hits) else len(row)
    np.testing.assert_array_equal(row[:stop], row_free[:stop])
    assert (row[stop:] == 0).all()
  assert out[0, 2] == eos and (out[0, 3:] == 0).all()
  assert D.trim_after_eos(out[0], eos) == [int(t) for t in out[0, :3]]
  assert D.trim_after_eos([4, 5, 0, 0], 1) == [4, 5]


def test_batched_prompt_and_no_recompile():
  params = M.init_params(CFG, jax.random.PRNGKey(2))
  prompt = np.random.RandomState(1).normal(size=(3, CFG.d_model)).astype(np.float32)
  fn = D.decode_fn(CFG, 6)
  a = D.greedy_decode(CFG, params, prompt, ENC, 6)
  size = fn._cache_size()
  D.greedy_decode(CFG, params, prompt + 1.0, ENC + 1, 6, eos_id=7)  # new values, same shapes
  assert fn._cache_size() == size  # no recompilation for new values or another EOS id
  b = D.greedy_decode(CFG, params, np.repeat(prompt[None], 3, axis=0), ENC, 6)
  np.testing.assert_array_equal(a, b)  # a [B, P, d] prompt equal per row gives the same tokens
  assert fn._cache_size() == size + 1  # the [B, P, d] shape is one new program
  # Each row decodes independently of its batch neighbours.
  single = D.greedy_decode(CFG, params, prompt, ENC[1:2], 6)
  np.testing.assert_array_equal(single[0], a[1])


def test_sharded_params_on_a_mesh():
  from spot_jax import partitioning
  if len(jax.devices()) < 2:
    pytest.skip("needs forced CPU devices")
  mesh = partitioning.make_mesh(num_partitions=2, devices=jax.devices()[:2])
  params = M.init_params(CFG, jax.random.PRNGKey(3))
  shardings = partitioning.tree_shardings(M.param_logical_axes(CFG), mesh)
  sharded = jax.device_put(params, shardings)
  np.testing.assert_array_equal(D.greedy_decode(CFG, sharded, None, ENC, 6),
                                D.greedy_decode(CFG, params, None, ENC, 6))


@pytest.mark.parametrize("num_partitions", [1, 2], ids=["8x1", "4x2"])
def test_a_mesh_splits_the_batch_over_data(monkeypatch, num_partitions):
  """On 8 devices (data 8 x model 1, data 4 x model 2) each device decodes B / data rows, from `mesh=`
  or from a batch already split over `data` (as eval placed it); the tokens equal one device's. A
  batch that does not divide is padded (3 rows: 1 per device on 8x1)."""
  from spot_jax import partitioning
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 forced CPU devices")
  mesh = partitioning.make_mesh(num_partitions)
  params = M.init_params(CFG, jax.random.PRNGKey(4))
  sharded = jax.device_put(params, partitioning.tree_shardings(M.param_logical_axes(CFG), mesh))
  prompt = np.random.RandomState(2).normal(size=(3, CFG.d_model)).astype(np.float32)
  enc = np.random.RandomState(3).randint(2, CFG.vocab_size, (16, 8)).astype(np.int32)
  want = D.greedy_decode(CFG, params, prompt, enc, 6, eos_id=-1)
  calls = spy_programs(monkeypatch, D, "decode_fn")
  placed = jax.device_put(enc, partitioning.batch_sharding(mesh))
  for got in (D.greedy_decode(CFG, sharded, prompt, enc, 6, eos_id=-1, mesh=mesh),
              D.greedy_decode(CFG, sharded, prompt, placed, 6, eos_id=-1)):
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)
  rows = 16 // mesh.shape["data"]
  for fn, args in calls:
    assert rows_per_device(fn, args, 2, CFG.d_model, 3 + 8) == (rows, rows, {rows})
    assert all(p.sharding == s.sharding for p, s in zip(jax.tree_util.tree_leaves(args[0]),
                                                          jax.tree_util.tree_leaves(sharded)))
  np.testing.assert_array_equal(D.greedy_decode(CFG, sharded, prompt, enc[:3], 6, eos_id=-1, mesh=mesh),
                                want[:3])
  fn, args = calls[-1]
  assert args[2].shape[0] == mesh.shape["data"] and rows_per_device(fn, args, 2, CFG.d_model, 11)[:2] == (1, 1)

"""Target log-likelihood scores: equal the manual log-softmax sum, ignore padding."""
import jax
import numpy as np
import pytest

from spot_jax import model as M
from spot_jax import scoring as S
from spot_jax.config import size_config
from mesh_setup import rows_per_device, spy_programs

CFG = size_config("tiny", vocab_size=64, dropout_rate=0.1, relative_attention_num_buckets=8,
                  num_encoder_layers=1, num_decoder_layers=1,
                  relative_attention_max_distance=16)
ENC = np.array([[5, 6, 7, 8, 0], [9, 10, 0, 0, 0]], np.int32)
TGT = np.array([[3, 4, 1, 0], [6, 1, 0, 0]], np.int32)


def test_shift_right():
  np.testing.assert_array_equal(S.shift_right(TGT), [[0, 3, 4, 1], [0, 6, 1, 0]])


def test_score_equals_manual_log_softmax_sum():
  params = M.init_params(CFG, jax.random.PRNGKey(0))
  prompt = np.random.RandomState(0).normal(size=(3, CFG.d_model)).astype(np.float32)
  got = S.score(CFG, params, prompt, ENC, TGT)
  # Dropout must be off when scoring, whatever the config says.
  logits = np.asarray(M.T5(CFG.replace(dropout_rate=0.0)).apply(
      {"params": params}, ENC, S.shift_right(TGT), prompt=prompt), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  want = [sum(logp[b, t, TGT[b, t]] for t in range(TGT.shape[1]) if TGT[b, t] > 0) for b in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got.shape == (2,) and got.dtype == np.float32 and (got < 0).all()


def test_padding_positions_do_not_count():
  params = M.init_params(CFG, jax.random.PRNGKey(1))
  short = S.score(CFG, params, None, ENC, TGT)
  longer = S.score(CFG, params, None, ENC, np.pad(TGT, ((0, 0), (0, 3))))
  np.testing.assert_allclose(short, longer, rtol=1e-5)
  other = TGT.copy()
  other[1, 0] = 7
  changed = S.score(CFG, params, None, ENC, other)
  assert changed[0] == short[0] and changed[1] != short[1]


@pytest.mark.parametrize("num_partitions", [1, 2], ids=["8x1", "4x2"])
def test_a_mesh_splits_the_batch_over_data(monkeypatch, num_partitions):
  """On 8 devices (data 8 x model 1, data 4 x model 2) each device scores B / data rows, from `mesh=`
  or from a batch already split over `data` (as eval placed it); the scores equal one device's. A
  batch that does not divide is padded (3 rows: 1 per device on 8x1)."""
  from spot_jax import partitioning
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 forced CPU devices")
  mesh = partitioning.make_mesh(num_partitions)
  params = M.init_params(CFG, jax.random.PRNGKey(2))
  sharded = jax.device_put(params, partitioning.tree_shardings(M.param_logical_axes(CFG), mesh))
  prompt = np.random.RandomState(2).normal(size=(3, CFG.d_model)).astype(np.float32)
  rng = np.random.RandomState(3)
  enc = rng.randint(2, CFG.vocab_size, (16, 8)).astype(np.int32)
  tgt = np.where(np.arange(5) < rng.randint(1, 6, (16, 1)), rng.randint(2, CFG.vocab_size, (16, 5)), 0)
  want = S.score(CFG, params, prompt, enc, tgt)
  calls = spy_programs(monkeypatch, S, "score_fn")
  put = lambda a: jax.device_put(a, partitioning.batch_sharding(mesh))
  for got in (S.score(CFG, sharded, prompt, enc, tgt, mesh=mesh),
              S.score(CFG, sharded, prompt, put(enc), put(tgt), put(S.shift_right(tgt)))):
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
  rows = 16 // mesh.shape["data"]
  for fn, args in calls:
    assert rows_per_device(fn, args, 2, CFG.d_model, 3 + 8) == (rows, rows, {rows})
    assert all(p.sharding == s.sharding for p, s in zip(jax.tree_util.tree_leaves(args[0]),
                                                          jax.tree_util.tree_leaves(sharded)))
  three = S.score(CFG, params, None, enc[:3], tgt[:3])
  np.testing.assert_allclose(S.score(CFG, sharded, None, enc[:3], tgt[:3], mesh=mesh), three, rtol=1e-5)
  fn, args = calls[-1]
  assert args[2].shape[0] == mesh.shape["data"] and rows_per_device(fn, args, 2, CFG.d_model, 8)[:2] == (1, 1)

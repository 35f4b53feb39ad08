"""Target log-likelihood scores: equal the manual log-softmax sum, ignore padding."""
import jax
import numpy as np

from spot_jax import model as M
from spot_jax import scoring as S
from spot_jax.config import size_config

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

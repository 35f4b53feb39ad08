"""What the Hugging Face checkpoint tests share (test_checkpoints_hf, test_checkpoints_hf_config): two
tiny T5 variants and random parameters of their shapes, written and read back by each test."""
import numpy as np

from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten
from spot_jax.config import T5Config

V11 = T5Config(vocab_size=16, d_model=8, num_heads=2, head_dim=4, d_ff=12, num_encoder_layers=2,
               num_decoder_layers=1, relative_attention_num_buckets=4, relative_attention_max_distance=20,
               dropout_rate=0.0)
V10 = V11.replace(feed_forward="relu", tie_word_embeddings=True)


def _params(config, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return unflatten({n: rng.standard_normal(s).astype(dtype) for n, s in expected_shapes(config).items()})


def _assert_same(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)

"""Task → host batches: shapes, per-process shards, deterministic resume by skipping."""
import numpy as np
import pytest

from spot_jax import input_pipeline

TASK, LENGTHS = "spot_bundled_topic", {"inputs": 32, "targets": 4}


def _take(n, **kw):
  it = input_pipeline.get_batches(TASK, LENGTHS, "train", 8, seed=3, **kw)
  return [next(it) for _ in range(n)]


def test_batches_have_the_encoder_decoder_features():
  (b,) = _take(1)
  assert set(b) == set(input_pipeline.FEATURES)
  assert b["encoder_input_tokens"].shape == (8, 32) and b["decoder_target_tokens"].shape == (8, 4)
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
  assert (b["decoder_input_tokens"][:, 0] == 0).all()


def test_skip_resumes_the_same_stream():
  full = _take(4)
  resumed = _take(2, skip_batches=2)
  for a, b in zip(full[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_process_shards_are_half_batches_of_disjoint_examples():
  shard0 = _take(1, shard_index=0, num_shards=2)[0]["encoder_input_tokens"]
  shard1 = _take(1, shard_index=1, num_shards=2)[0]["encoder_input_tokens"]
  assert shard0.shape == shard1.shape == (4, 32)
  assert not {r.tobytes() for r in shard0} & {r.tobytes() for r in shard1}
  with pytest.raises(ValueError, match="BATCH_SIZE=8 must divide over 3 processes"):
    _take(1, shard_index=0, num_shards=3)


def test_unknown_split_and_task_are_named():
  with pytest.raises(ValueError, match="has no split 'dev'"):
    next(input_pipeline.get_batches(TASK, LENGTHS, "dev", 8))
  with pytest.raises(ValueError, match="Did you mean spot_bundled_topic"):
    input_pipeline.get_task("spot_bundled_topik")

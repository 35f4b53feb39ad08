"""The demo backbone: span corruption, pretraining lowers the loss, the T5X cache round-trips."""
import dataclasses
import json
import os
import random

import numpy as np
import pytest

from spot_jax import backbone as bb

TINY = bb.BackboneConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
                         num_decoder_layers=1, steps=30, batch_size=16, warmup_steps=5)


def test_span_corruption_round_trips_the_text():
  tok = bb._Tokenizer(bb.default_data_dir())
  ids = tok.encode("we had dinner there on friday and honestly the service was fantastic")
  inputs, targets = bb.span_corrupt(ids, random.Random(0), tok, 0.15, 3.0)
  assert inputs[-1] == bb.EOS and targets[-1] == bb.EOS
  sentinels = [t for t in inputs if t >= tok.base]
  assert sentinels and sentinels == [tok.sentinel(k) for k in range(len(sentinels))]
  # Filling each sentinel with its target span gives back the original ids.
  spans, cur = {}, None
  for t in targets[:-1]:
    if t >= tok.base:
      cur = t
      spans[cur] = []
    else:
      spans[cur].append(t)
  rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t >= tok.base else [t])]
  assert rebuilt == ids


def test_batches_hold_out_the_target_and_mark_the_prefixes():
  batches = bb.make_batches(dataclasses.replace(TINY, steps=4))
  assert batches["encoder_input_tokens"].shape == (4, 16, TINY.input_length)
  assert batches["decoder_target_tokens"].shape == (4, 16, TINY.target_length)
  np.testing.assert_array_equal(batches["decoder_input_tokens"][..., 1:],
                                batches["decoder_target_tokens"][..., :-1])
  tok = bb._Tokenizer(bb.default_data_dir())
  sup = bb.supervised_examples(TINY, bb.default_data_dir(), tok)
  texts = {tok.sp.decode([i for i in inp if i < tok.base]) for inp, _ in sup}
  assert not any(t.startswith(bb.TASK_PREFIXES["restaurant"]) for t in texts)
  assert any(t.startswith(bb.TASK_PREFIXES["movie"]) for t in texts)


def test_pretraining_lowers_the_loss():
  config, params, losses = bb.pretrain(dataclasses.replace(TINY, steps=40))
  assert config.d_model == 32 and len(losses) == 40
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 32)


def test_cache_round_trips_is_reused_and_invalidated(tmp_path):
  config = dataclasses.replace(TINY, steps=6)
  logs = []
  first = bb.load_or_pretrain(config, cache_dir=str(tmp_path), log=logs.append)
  assert not first.reused and os.path.isdir(first.checkpoint)
  assert os.path.basename(first.checkpoint) == f"checkpoint_{config.steps}"
  meta = os.path.join(os.path.dirname(first.checkpoint), bb.BACKBONE_JSON)
  with open(meta) as f:
    info = json.load(f)
  assert info["key"] == bb.cache_key(config) and info["config"]["steps"] == 6

  second = bb.load_or_pretrain(config, cache_dir=str(tmp_path), log=logs.append)
  assert second.reused and second.checkpoint == first.checkpoint
  assert second.config == first.config
  for a, b in zip(jax_leaves(first.params), jax_leaves(second.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any("reusing" in l for l in logs)

  changed = dataclasses.replace(config, seed=1)  # any config change is a new key
  assert bb.cache_key(changed) != bb.cache_key(config)
  third = bb.load_or_pretrain(changed, cache_dir=str(tmp_path), log=logs.append)
  assert not third.reused and third.checkpoint != first.checkpoint

  os.remove(meta)  # an entry without backbone.json is incomplete: pretrained again
  again = bb.load_or_pretrain(config, cache_dir=str(tmp_path), log=logs.append)
  assert not again.reused and os.path.exists(meta)


def test_unknown_task_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown bundled task"):
    bb.make_batches(dataclasses.replace(TINY, tasks=("movie", "poetry")))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_prefixed_accuracy_takes_the_short_or_the_seqio_name():
  """docs/demo.md's `prefixed_accuracy(..., task, ...)` with the seqio name raised FileNotFoundError on
  tasks/data/spot_bundled_movie/validation.tsv."""
  import jax
  from spot_jax.model import init_params
  config = TINY.t5_config()  # a fresh backbone: the name is the point, not what it learned
  params = init_params(config, jax.random.PRNGKey(0))
  short = bb.prefixed_accuracy(config, params, "movie", limit=16)
  assert bb.prefixed_accuracy(config, params, "spot_bundled_movie", limit=16) == short
  assert 0 <= short <= 100 and (short * 16 / 100).is_integer()  # a share of the 16 examples read
  with pytest.raises(ValueError, match=r"'spot_bundled_poetry' is not a bundled task: use one of \[.*'movie'"):
    bb.prefixed_accuracy(config, params, "spot_bundled_poetry")

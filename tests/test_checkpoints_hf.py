"""Hugging Face T5 directories: config.json mapping, single and sharded safetensors, errors."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spot_jax.checkpoints import CheckpointError, detect_format, read_hf, read_params, write_hf
from spot_jax.checkpoints.hf import config_from_hf, name_map
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten
from spot_jax.config import T5Config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf_parity")
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


@pytest.mark.parametrize("config", [V10, V11], ids=["t5_1_0", "t5_1_1"])
def test_round_trip(config, tmp_path):
  params = _params(config)
  write_hf(params, config, str(tmp_path))
  assert detect_format(str(tmp_path)) == "hf"
  got_config, got = read_params(str(tmp_path))
  assert got_config == config
  _assert_same(params, got)
  tensors = load_file(str(tmp_path / "model.safetensors"))
  assert ("lm_head.weight" in tensors) == (not config.tie_word_embeddings)
  # PyTorch layout: [out, in] projections and a [buckets, heads] relative table.
  q = tensors["encoder.block.0.layer.0.SelfAttention.q.weight"]
  np.testing.assert_array_equal(q.T, params["encoder"]["layers_0"]["attention"]["query"]["kernel"])
  rel = tensors["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
  assert rel.shape == (4, 2)
  assert "decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in tensors


def test_bfloat16_round_trip(tmp_path):
  params = _params(V11, dtype=ml_dtypes.bfloat16)
  write_hf(params, V11, str(tmp_path))
  _, got = read_params(str(tmp_path))
  _assert_same(params, got)
  _, as_f32 = read_params(str(tmp_path), dtype="float32")
  assert all(v.dtype == np.float32 for v in flatten(as_f32).values())


def test_sharded_checkpoint_with_index(tmp_path):
  params = _params(V11, seed=3)
  write_hf(params, V11, str(tmp_path / "one"))
  tensors = load_file(str(tmp_path / "one" / "model.safetensors"))
  shard_dir = tmp_path / "sharded"
  shard_dir.mkdir()
  shutil.copy(tmp_path / "one" / "config.json", shard_dir / "config.json")
  names = sorted(tensors)
  weight_map = {}
  for i, part in enumerate((names[::2], names[1::2])):
    fname = f"model-{i + 1:05d}-of-00002.safetensors"
    save_file({n: tensors[n] for n in part}, str(shard_dir / fname))
    weight_map.update({n: fname for n in part})
  (shard_dir / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
  config, got = read_params(str(shard_dir))
  assert config == V11
  _assert_same(params, got)


def test_tied_embedding_stored_under_an_alias(tmp_path):
  params = _params(V10)
  write_hf(params, V10, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["encoder.embed_tokens.weight"] = tensors.pop("shared.weight")
  save_file(tensors, str(tmp_path / "model.safetensors"))
  _, got = read_params(str(tmp_path))
  _assert_same(params, got)


def test_parity_fixture_configs():
  config, params = read_hf(os.path.join(FIXTURES, "t5_1_1"))
  assert config.gated and not config.tie_word_embeddings and config.vocab_size == 128
  assert params["decoder"]["logits_dense"]["kernel"].shape == (32, 128)
  config, params = read_hf(os.path.join(FIXTURES, "t5_1_0"))
  assert config.feed_forward == "relu" and config.tie_word_embeddings
  assert "logits_dense" not in params["decoder"]


def _hf_json(**changes):
  from spot_jax.checkpoints.hf import config_to_hf
  d = config_to_hf(V11)
  d.update(changes)
  return d


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="bart"), "model_type 'bart' is not supported"),
    (dict(is_decoder=True), "not an encoder-decoder"),
    (dict(architectures=["T5EncoderModel"]), "not an encoder-decoder"),
    (dict(is_encoder_decoder=False), "not an encoder-decoder"),
    (dict(feed_forward_proj="gated-silu"), "feed_forward_proj 'gated-silu' is not supported"),
])
def test_unsupported_architectures(changes, match):
  with pytest.raises(CheckpointError, match=match):
    config_from_hf(_hf_json(**changes))


def test_config_json_defaults_follow_transformers():
  d = _hf_json()
  for k in ("tie_word_embeddings", "num_decoder_layers", "relative_attention_max_distance"):
    del d[k]
  config = config_from_hf(d)
  assert config.tie_word_embeddings and config.num_decoder_layers == V11.num_encoder_layers
  assert config.relative_attention_max_distance == 128


def test_missing_tensor_is_named(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  del tensors["decoder.block.0.layer.2.DenseReluDense.wi_1.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"missing tensor 'decoder\.block\.0\.layer\.2\.DenseReluDense"
                                            r"\.wi_1\.weight' \(spot_jax parameter 'decoder/layers_0/mlp/wi_1/kernel'\)"):
    read_params(str(tmp_path))


def test_shape_contradicting_config_json(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  d = json.loads((tmp_path / "config.json").read_text())
  d["d_ff"] = 16
  (tmp_path / "config.json").write_text(json.dumps(d))
  with pytest.raises(CheckpointError, match=r"'encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight'.*"
                                            r"has shape \(12, 8\) but config\.json implies \(16, 8\)"):
    read_params(str(tmp_path))


def test_given_config_must_agree(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  with pytest.raises(CheckpointError, match="vocab_size: config says 32, checkpoint has 16"):
    read_params(str(tmp_path), config=V11.replace(vocab_size=32))


def test_missing_weights_file_is_neither_format(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(CheckpointError, match="nor a Hugging Face T5 directory"):
    read_params(str(tmp_path))


def test_name_map_covers_every_parameter():
  for config in (V10, V11):
    m = name_map(config)
    assert set(m) == set(expected_shapes(config))
    assert len({hf for hf, _ in m.values()}) == len(m)

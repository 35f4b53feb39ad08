"""Hugging Face T5 directories: config.json mapping, single and sharded safetensors, errors."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spot_jax.checkpoints import CheckpointError, detect_format, read_hf, read_params, write_hf
from spot_jax.checkpoints.hf import config_from_hf, name_map
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten
from spot_jax.config import T5Config

from gfile_stub import LocalGfile

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


@pytest.mark.parametrize("changes,match", [
    (dict(d_kv=None), r"field 'd_kv' is null, not a positive integer"),
    (dict(d_model="512"), r"field 'd_model' is \"512\", not a positive integer"),
    (dict(num_heads=2.5), r"field 'num_heads' is 2.5, not a positive integer"),
    (dict(num_layers=0), r"field 'num_layers' is 0, not a positive integer"),
    (dict(relative_attention_num_buckets=None), r"field 'relative_attention_num_buckets' is null, not a positive integer"),
    (dict(layer_norm_epsilon=None), r"field 'layer_norm_epsilon' is null, not a number >= 0"),
])
def test_config_json_field_of_the_wrong_type_is_named(changes, match):
  """A hand-edited field (`"d_kv": null`) used to surface as `TypeError: int() argument ...`."""
  with pytest.raises(CheckpointError, match=rf"config.json: {match}; set it to the model's value"):
    config_from_hf(_hf_json(**changes))


def test_config_json_null_num_decoder_layers_means_num_layers():
  assert config_from_hf(_hf_json(num_decoder_layers=None)).num_decoder_layers == V11.num_encoder_layers


def test_read_hf_names_the_config_file_and_field(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  d = json.loads((tmp_path / "config.json").read_text())
  d["d_kv"] = None
  (tmp_path / "config.json").write_text(json.dumps(d))
  with pytest.raises(CheckpointError, match=r"config\.json: field 'd_kv' is null"):
    read_params(str(tmp_path))


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
  # Gated-GELU with tied embeddings (HF's T5Config default): no variant file has it, the hint binds it.
  tied = V11.replace(tie_word_embeddings=True)
  write_hf(_params(tied), tied, str(tmp_path / "tied"))
  with pytest.raises(CheckpointError, match=r"(?s)tie_word_embeddings: config says False, checkpoint has True.*"
                                            r"--gin\.spot_jax\.model_config\.tie_word_embeddings=True\.$"):
    read_params(str(tmp_path / "tied"), config=V11)
  with pytest.raises(CheckpointError) as shape_only:
    read_params(str(tmp_path), config=V11.replace(vocab_size=32))
  assert "field by field" not in str(shape_only.value)  # a size mismatch is not bound away


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


# ----------------------------------------------------------------------------- what users bring

FORMATS = os.path.join(os.path.dirname(__file__), "fixtures", "hf_formats")  # make_hf_formats.py


def test_transformers_written_mt5_bf16_shards_match_transformers():
  """mT5 as `save_pretrained(max_shard_size=...)` writes it in bfloat16: shards + index, BF16 tensors."""
  import spot_jax
  path = os.path.join(FORMATS, "mt5_bf16_sharded")
  ref = np.load(os.path.join(path, "outputs.npz"))
  model = spot_jax.load_t5(path)
  assert model.config.vocab_size == 64 and model.config.num_decoder_layers == 3
  assert (model.config.relative_attention_num_buckets, model.config.relative_attention_max_distance) == (8, 20)
  assert {str(v.dtype) for v in flatten(model.params).values()} == {"bfloat16"}
  ids, dec = ref["input_ids"], ref["decoder_input_ids"]
  assert np.abs(model.logits(ids, dec) - ref["logits"]).max() <= 1e-4
  assert np.abs(model.logits(ids, dec, prompt=ref["prompt"]) - ref["logits_prompt"]).max() <= 1e-4


def test_bfloat16_checkpoint_on_gcs(monkeypatch):
  """A gs:// HF folder is read as bytes: BF16 tensors must decode there too (not a KeyError 'BF16')."""
  from spot_jax.checkpoints import t5x
  monkeypatch.setattr(t5x, "_gfile", lambda: LocalGfile(FORMATS, bucket="gs://bkt"))
  config, params = read_params("gs://bkt/mt5_bf16_sharded")
  _, local = read_params(os.path.join(FORMATS, "mt5_bf16_sharded"))
  assert config.vocab_size == 64
  _assert_same(local, params)


def test_truncated_safetensors_names_the_fix(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  data = (tmp_path / "model.safetensors").read_bytes()
  (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file .*"
                                            r"truncated or damaged: download or copy it again"):
    read_params(str(tmp_path))


def test_pytorch_pickle_weights_name_the_conversion(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path / "src"))
  for name, files in (("single", ["pytorch_model.bin"]),
                      ("sharded", ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                                   "pytorch_model.bin.index.json"])):
    d = tmp_path / name
    d.mkdir()
    shutil.copy(tmp_path / "src" / "config.json", d / "config.json")
    for f in files:
      (d / f).write_bytes(b"not read")  # never unpickled: the name is enough
    with pytest.raises(CheckpointError) as e:
      read_params(str(d))
    msg = str(e.value)
    assert "PyTorch pickle weights (pytorch_model" in msg and "safetensors only" in msg
    assert f"M.from_pretrained('{d}').save_pretrained('{d}_safetensors', safe_serialization=True)" in msg


def test_weights_without_config_json(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  os.remove(tmp_path / "config.json")
  with pytest.raises(CheckpointError, match=r"holds weights \(model\.safetensors\) but no config\.json.*"
                                            r"Copy it from where the weights came from"):
    read_params(str(tmp_path))


def test_shards_without_their_index(tmp_path):
  shutil.copytree(os.path.join(FORMATS, "mt5_bf16_sharded"), tmp_path / "m")
  os.remove(tmp_path / "m" / "model.safetensors.index.json")
  with pytest.raises(CheckpointError, match=r"has config\.json and model-00001-of-00002\.safetensors.* but "
                                            r"neither model\.safetensors nor model\.safetensors\.index\.json"):
    read_params(str(tmp_path / "m"))


def test_a_file_of_the_folder_reads_the_folder(tmp_path):
  params = _params(V11)
  write_hf(params, V11, str(tmp_path))
  for name in ("config.json", "model.safetensors"):
    config, got = read_params(str(tmp_path / name))
    assert config == V11
    _assert_same(params, got)


def test_hub_model_id_and_hub_cache(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cache = tmp_path / "hub"
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  with pytest.raises(CheckpointError, match=r"If 'google/t5-v1_1-small' is a Hugging Face Hub model id: "
                                            r"spot_jax reads local folders and downloads nothing.*"
                                            r"huggingface-cli download google/t5-v1_1-small --local-dir DIR"):
    read_params("google/t5-v1_1-small")
  repo = cache / "models--google--t5-v1_1-small"
  snapshot = repo / "snapshots" / "0123abc"
  write_hf(_params(V11), V11, str(snapshot))
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0123abc")
  with pytest.raises(CheckpointError, match=f"transformers' cache already holds it: {snapshot}"):
    read_params("google/t5-v1_1-small")
  with pytest.raises(CheckpointError, match=r"is a Hugging Face hub cache entry, not a model folder: pass its "
                                            f"snapshot folder {snapshot}"):
    read_params(str(repo))
  assert read_params(str(snapshot))[0] == V11


# ----------------------------------------------------------------------------- found by an HF/PEFT audit

def _edit_config(folder, drop=(), **changes):
  d = json.loads((folder / "config.json").read_text())
  for k in drop:
    d.pop(k, None)
  d.update(changes)
  (folder / "config.json").write_text(json.dumps(d))


def test_variant_defaults_follow_the_model_type_as_in_transformers(tmp_path):
  """MT5Config defaults to untied gated-gelu (T5Config to tied relu): an mT5 config.json without those
  fields was read as tied, silently dropping lm_head.weight (logits off by up to 10.7)."""
  params = _params(V11)
  write_hf(params, V11, str(tmp_path))
  _edit_config(tmp_path, drop=("tie_word_embeddings",), model_type="mt5",
               architectures=["MT5ForConditionalGeneration"])
  config, got = read_params(str(tmp_path))
  assert config == V11 and not config.tie_word_embeddings and config.gated
  _assert_same(params, got)
  for model_type, tied, ff in (("t5", True, "relu"), ("mt5", False, "gated-gelu")):
    d = {k: v for k, v in _hf_json(model_type=model_type).items()
         if k not in ("tie_word_embeddings", "feed_forward_proj", "dense_act_fn", "is_gated_act")}
    config = config_from_hf(d)
    assert (config.tie_word_embeddings, config.feed_forward) == (tied, ff), model_type


@pytest.mark.parametrize("drop_field", [False, True], ids=["says_tied", "t5_default_tied"])
def test_tied_config_over_a_different_lm_head_is_an_error(tmp_path, drop_field):
  write_hf(_params(V11), V11, str(tmp_path))  # untied: lm_head.weight differs from shared.weight
  if drop_field:
    _edit_config(tmp_path, drop=("tie_word_embeddings",))
    said = r"config\.json has no \"tie_word_embeddings\", and model_type 't5' defaults to tied"
  else:
    _edit_config(tmp_path, tie_word_embeddings=True)
    said = r"config\.json says \"tie_word_embeddings\": true"
  with pytest.raises(CheckpointError, match=rf"(?s){said}.*model\.safetensors also holds an lm_head\.weight that "
                                            r"differs from it \(max \|difference\| .*set \"tie_word_embeddings\": "
                                            r"false in config\.json"):
    read_params(str(tmp_path))


def test_tied_config_with_an_equal_lm_head_reads_without_a_word(tmp_path):
  params = _params(V10)
  write_hf(params, V10, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["lm_head.weight"] = tensors["shared.weight"].copy()  # older saves keep every tied copy
  tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"].copy()
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, got = read_params(str(tmp_path))
  _assert_same(params, got)


def test_copies_of_the_embedding_that_differ_are_an_error(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"] + 1
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"holds both shared\.weight and encoder\.embed_tokens\.weight, "
                                            r"which differ \(max \|difference\| 1\)"):
    read_params(str(tmp_path))


def test_tensors_the_config_does_not_use_are_named_in_a_warning(tmp_path):
  """transformers warns "Some weights ... were not used"; spot_jax read a 3-layer decoder as 2 silently."""
  deeper = V11.replace(num_decoder_layers=3)
  write_hf(_params(deeper), deeper, str(tmp_path))
  _edit_config(tmp_path, num_decoder_layers=2)
  with pytest.warns(UserWarning, match=r"14 tensor\(s\) of the checkpoint are not used .* 2\+2 layers.*"
                                       r"decoder\.block\.2\.layer\.0\.SelfAttention\.k\.weight.*the weights hold "
                                       r"decoder block 2 beyond the 2 that config\.json's num_decoder_layers says; "
                                       r"if that field is wrong, set it to 3"):
    config, _ = read_params(str(tmp_path))
  assert config.num_decoder_layers == 2


def test_checkpoints_as_transformers_writes_them_read_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for name in ("t5_1_0", "t5_1_1", "t5_1_1_b8"):
      read_hf(os.path.join(FIXTURES, name))
    read_params(os.path.join(FORMATS, "mt5_bf16_sharded"))


def test_bfloat16_folder_reads_in_a_fresh_process():
  """safetensors' numpy reader needs numpy to know 'bfloat16' (ml_dtypes): `TypeError: data type
  'bfloat16' not understood` unless jax or ml_dtypes had been imported first."""
  code = ("import sys\nfrom spot_jax.checkpoints import read_params\n"
          "assert 'jax' not in sys.modules\n"
          f"config, params = read_params({os.path.join(FORMATS, 'mt5_bf16_sharded')!r})\n"
          "print(params['token_embedder']['embedding'].dtype)\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": root})
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "bfloat16"


def _sharded(tmp_path, params):
  write_hf(params, V11, str(tmp_path / "one"))
  tensors = load_file(str(tmp_path / "one" / "model.safetensors"))
  shard_dir = tmp_path / "sharded"
  shard_dir.mkdir()
  shutil.copy(tmp_path / "one" / "config.json", shard_dir / "config.json")
  weight_map = {}
  for i, part in enumerate((["shared.weight"], sorted(set(tensors) - {"shared.weight"}))):
    fname = f"model-{i + 1:05d}-of-00002.safetensors"
    save_file({n: tensors[n] for n in part}, str(shard_dir / fname))
    weight_map.update({n: fname for n in part})
  return shard_dir, weight_map


def _write_index(folder, index):
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_index_naming_the_wrong_shard(tmp_path):
  """Was safetensors' bare `SafetensorError: File does not contain tensor shared.weight`."""
  shard_dir, weight_map = _sharded(tmp_path, _params(V11))
  name = "encoder.final_layer_norm.weight"
  _write_index(shard_dir, {"weight_map": {**weight_map, name: "model-00001-of-00002.safetensors"}})
  with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json maps tensor 'encoder\.final_layer_norm"
                                            r"\.weight' to model-00001-of-00002\.safetensors, which does not hold "
                                            r"it; model-00002-of-00002\.safetensors holds it.*copy the whole folder "
                                            r"again"):
    read_params(str(shard_dir))


@pytest.mark.parametrize("index,match", [
    (["weight_map"], r"it holds a JSON list"),
    ({"weight_map": ["shared.weight"]}, r"its 'weight_map' is a JSON list"),
    ({"metadata": {}}, r"it has no 'weight_map'"),
    ({"weight_map": {"shared.weight": 3}}, r"weight_map maps 'shared\.weight' to 3, not the name of a "
                                           r"\.safetensors shard"),
    ({"weight_map": {"shared.weight": "pytorch_model-00001-of-00002.bin"}},
     r"maps 'shared\.weight' to \"pytorch_model-00001-of-00002\.bin\", not the name of a \.safetensors shard"),
])
def test_index_that_is_not_a_safetensors_index(tmp_path, index, match):
  shard_dir, _ = _sharded(tmp_path, _params(V11))
  _write_index(shard_dir, index)
  with pytest.raises(CheckpointError, match=rf"model\.safetensors\.index\.json.*{match}"):
    read_params(str(shard_dir))


def test_shard_that_is_not_safetensors(tmp_path):
  shard_dir, weight_map = _sharded(tmp_path, _params(V11))
  _write_index(shard_dir, {"weight_map": weight_map})
  (shard_dir / "model-00002-of-00002.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
  with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors is not a readable safetensors file"):
    read_params(str(shard_dir))


@pytest.mark.parametrize("content,kind", [("[1, 2]", "list"), ('"t5"', "string"), ("null", "null")])
def test_config_json_that_is_not_an_object(tmp_path, content, kind):
  """A JSON list used to give `AttributeError: 'list' object has no attribute 'get'`."""
  write_hf(_params(V11), V11, str(tmp_path))
  (tmp_path / "config.json").write_text(content)
  with pytest.raises(CheckpointError, match=rf"config\.json holds a JSON {kind}, not an object"):
    read_params(str(tmp_path))


@pytest.mark.parametrize("changes,match", [
    # bool("false") is True: a quoted flag silently tied the output layer.
    (dict(tie_word_embeddings="false"), r"field 'tie_word_embeddings' is \"false\", not true or false"),
    (dict(tie_word_embeddings=None), r"field 'tie_word_embeddings' is null, not true or false"),
    (dict(is_encoder_decoder="yes"), r"field 'is_encoder_decoder' is \"yes\", not true or false"),
    (dict(feed_forward_proj=["gated-gelu"]), r"feed_forward_proj \['gated-gelu'\] is not supported"),
    (dict(architectures="T5ForConditionalGeneration"), r"field 'architectures' is \"T5ForConditionalGeneration\", "
                                                       r"not a list of class names"),
    (dict(architectures=[5]), r"field 'architectures' is \[5\], not a list"),
    (dict(model_type=["t5"]), r"model_type \['t5'\] is not supported"),
    # transformers builds the MLP from these two when config.json states them
    (dict(dense_act_fn="gelu"), r"dense_act_fn \"gelu\" with feed_forward_proj 'gated-gelu': transformers would "
                                r"apply 'gelu', spot_jax computes 'gelu_new'"),
    (dict(is_gated_act=False), r"is_gated_act is false but feed_forward_proj 'gated-gelu' is gated"),
])
def test_config_json_fields_of_the_wrong_type_or_meaning(changes, match):
  with pytest.raises(CheckpointError, match=rf"config\.json: {match}"):
    config_from_hf(_hf_json(**changes))


def test_tanh_gelu_under_its_other_names_is_accepted():
  for act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    assert config_from_hf(_hf_json(dense_act_fn=act)).feed_forward == "gated-gelu"


def test_read_hf_without_config_json(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  os.remove(tmp_path / "config.json")
  with pytest.raises(CheckpointError, match=r"config\.json does not exist: a Hugging Face checkpoint needs"):
    read_hf(str(tmp_path))


def test_unsupported_dtype_in_a_local_file_is_named(tmp_path):
  """The gs:// reader refused float8 with a message; the local one returned float8 arrays."""
  write_hf(_params(V11), V11, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  header, blobs, offset = {}, [], 0
  for name, arr in sorted(tensors.items()):
    dtype, data = "F32", arr.astype("<f4").tobytes()
    if name == "encoder.final_layer_norm.weight":
      dtype, data = "F8_E4M3", arr.astype(ml_dtypes.float8_e4m3fn).tobytes()
    header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  head = json.dumps(header).encode()
  head += b" " * (-len(head) % 8)
  (tmp_path / "model.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
  with pytest.raises(CheckpointError, match=r"tensor 'encoder\.final_layer_norm\.weight' has safetensors dtype "
                                            r"F8_E4M3, which spot_jax does not read"):
    read_params(str(tmp_path))

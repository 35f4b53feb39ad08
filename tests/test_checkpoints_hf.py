"""Hugging Face T5 directories: single and sharded safetensors (and their index), tied and aliased
embeddings, folders as users bring them, and the errors that name their fix. config.json itself is
tested in test_checkpoints_hf_config.py."""
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
from spot_jax.checkpoints.hf import name_map
from spot_jax.checkpoints.infer_config import expected_shapes, flatten

from gfile_stub import LocalGfile, serve_bucket
from hf_checkpoint_setup import V10, V11, _assert_same, _params

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf_parity")


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


def test_missing_tensor_is_named(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  del tensors["decoder.block.0.layer.2.DenseReluDense.wi_1.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"missing tensor 'decoder\.block\.0\.layer\.2\.DenseReluDense"
                                            r"\.wi_1\.weight' \(spot_jax parameter 'decoder/layers_0/mlp/wi_1/kernel'\)"):
    read_params(str(tmp_path))


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
  serve_bucket(monkeypatch, FORMATS, bucket="gs://bkt")
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
    assert "PyTorch pickle weights (pytorch_model" in msg and "safetensors and Flax msgpack" in msg
    assert f"M.from_pretrained('{d}').save_pretrained('{d}_safetensors', safe_serialization=True)" in msg


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

def test_copies_of_the_embedding_that_differ_are_an_error(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"] + 1
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"holds both shared\.weight and encoder\.embed_tokens\.weight, "
                                            r"which differ \(max \|difference\| 1\)"):
    read_params(str(tmp_path))


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


@pytest.mark.parametrize("lazy", [False, True])
def test_a_nan_or_inf_weight_is_refused_naming_the_array(tmp_path, lazy):
  """Before: load_t5 returned NaN logits, eval reported accuracy 0 and train blamed the learning rate."""
  folder = tmp_path / "hf"
  shutil.copytree(os.path.join(FIXTURES, "t5_1_1"), folder)
  tensors = load_file(str(folder / "model.safetensors"))
  wo = tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"].copy()
  wo[3, 5], wo[7, 4] = np.nan, np.inf  # rows 5 and 4 of the T5X [mlp, embed] kernel
  tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = wo
  save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  # eager: spot_jax's name; lazy: the file's own name, when the whole array is read
  name = r"'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight'" if lazy else r"'encoder/layers_1/mlp/wo/kernel'"
  with pytest.raises(CheckpointError, match=name + r" holds 2 NaN/inf value\(s\) \(of 2048\): the checkpoint is "
                                                  r"damaged or was saved from a diverged run"):
    _, params = read_params(str(folder), lazy=lazy)
    if lazy:  # read when placed: a slice, then the whole array
      kernel = params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]
      kernel[0:2, :]  # rows 0-1 of the [mlp, embed] kernel: finite  # pylint: disable=pointless-statement
      np.asarray(kernel)


# ----------------------------------------------------------------------------- writing over a model

def test_write_hf_refuses_a_folder_holding_a_model_and_overwrite_leaves_no_stale_shard(tmp_path, monkeypatch):
  """write_hf into a folder holding a sharded model replaced config.json but left the shards and
  model.safetensors.index.json; read_params then read the stale index and failed with a shape error
  naming neither. Now it is refused, naming the files and the fix (as write_t5x refuses a step);
  overwrite=True replaces the model and leaves none of its files (the tokenizer's stay), and a crash
  midway leaves the earlier model whole or no model, never a folder that reads as a mix of two."""
  shard_dir, weight_map = _sharded(tmp_path, _params(V11))
  _write_index(shard_dir, {"metadata": {}, "weight_map": weight_map})
  (shard_dir / "spiece.model").write_bytes(b"tokenizer")
  (shard_dir / "prompt.safetensors").write_bytes(b"a user's own file")  # not a model file: kept
  before = {p.name: p.read_bytes() for p in shard_dir.iterdir()}
  bigger = V11.replace(d_ff=2 * V11.d_ff)
  new = _params(bigger, seed=5)
  with pytest.raises(FileExistsError) as e:
    write_hf(new, bigger, str(shard_dir))
  assert str(e.value) == (
      f"{shard_dir} already holds a model (config.json, model-00001-of-00002.safetensors, "
      f"model-00002-of-00002.safetensors, model.safetensors.index.json): writing into it would leave the "
      f"earlier files beside the new model.safetensors (an index or shards there are read instead of it). "
      f"Pass overwrite=True to replace that model (its config.json and weights; other files stay), or write "
      f"into a new directory")
  assert {p.name: p.read_bytes() for p in shard_dir.iterdir()} == before
  # A crash while the new weights are written: the earlier model stays whole, nothing else is left.
  from spot_jax.checkpoints import hf as hf_lib
  import safetensors.numpy

  def dies(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(safetensors.numpy, "save_file", dies)
  with pytest.raises(KeyboardInterrupt):
    write_hf(new, bigger, str(shard_dir), overwrite=True)
  monkeypatch.undo()
  assert {p.name: p.read_bytes() for p in shard_dir.iterdir()} == before
  assert read_params(str(shard_dir))[0] == V11
  # A crash after the earlier model's files are gone, before the new config.json is in place: no model.
  replace = os.replace
  monkeypatch.setattr(hf_lib.os, "replace", lambda a, b: replace(a, b) if not b.endswith("config.json")
                      else dies())
  with pytest.raises(KeyboardInterrupt):
    write_hf(new, bigger, str(shard_dir), overwrite=True)
  monkeypatch.undo()
  assert sorted(p.name for p in shard_dir.iterdir()) == ["model.safetensors", "prompt.safetensors",
                                                         "spiece.model"]
  with pytest.raises(CheckpointError,
                     match=r"holds weights \(model\.safetensors, prompt\.safetensors\) but no config\.json.*"
                           r"if a write_hf\(\.\.\., overwrite=True\) into it was interrupted, write the model again"):
    read_params(str(shard_dir))
  # overwrite=True: the new model alone, the tokenizer kept.
  write_hf(new, bigger, str(shard_dir), overwrite=True)
  assert sorted(p.name for p in shard_dir.iterdir()) == ["config.json", "model.safetensors",
                                                         "prompt.safetensors", "spiece.model"]
  assert (shard_dir / "prompt.safetensors").read_bytes() == b"a user's own file"
  assert (shard_dir / "spiece.model").read_bytes() == b"tokenizer"
  config, got = read_params(str(shard_dir))
  assert config == bigger
  _assert_same(new, got)
  # Over a single-file model too; a folder without a model (only other files) is written as before.
  with pytest.raises(FileExistsError, match=r"already holds a model \(config\.json, model\.safetensors\)"):
    write_hf(_params(V11), V11, str(shard_dir))
  other = tmp_path / "tokenizer_only"
  other.mkdir()
  (other / "spiece.model").write_bytes(b"tokenizer")
  write_hf(_params(V11), V11, str(other))
  assert read_params(str(other))[0] == V11

"""spot_jax/checkpoints/hf_flax.py: Hugging Face Flax weights (`flax_model.msgpack`, one file or shards
+ index) as transformers' `FlaxT5ForConditionalGeneration.save_pretrained` writes them
(tests/fixtures/hf_flax/, made by tests/fixtures/make_hf_flax.py from hf_parity's models)."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import spot_jax
from spot_jax.checkpoints import CheckpointError, detect_format, read_params

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FLAX = os.path.join(FIXTURES, "hf_flax")
SAME_WEIGHTS = {"t5_1_0": "t5_1_0", "t5_1_1_sharded": "t5_1_1"}  # the hf_parity model each was converted from


def _copy(name, tmp_path):
  dst = tmp_path / name
  shutil.copytree(os.path.join(FLAX, name), dst)
  return dst


@pytest.mark.parametrize("name", SAME_WEIGHTS)
def test_logits_match_transformers_flax_t5_on_the_same_file(name):
  """Reference: transformers' own Flax T5 on the saved file (fixture), float32, tolerance 1e-4."""
  ref = np.load(os.path.join(FLAX, name, "outputs.npz"))
  # the weights file stands for its folder, as model.safetensors does
  path = os.path.join(FLAX, name, "flax_model.msgpack") if name == "t5_1_0" else os.path.join(FLAX, name)
  model = spot_jax.load_t5(path)
  logits = model.logits(ref["input_ids"], ref["decoder_input_ids"])
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SAME_WEIGHTS)
@pytest.mark.parametrize("lazy", [False, True])
def test_parameters_and_config_equal_the_safetensors_of_the_same_model(name, lazy):
  """Every kernel transposed back, the relative tables put [heads, buckets], tied and untied output
  layers: bit-equal to reading the safetensors folder the Flax file was converted from."""
  assert detect_format(os.path.join(FLAX, name)) == "hf"
  want_config, want = read_params(os.path.join(FIXTURES, "hf_parity", SAME_WEIGHTS[name]))
  config, got = read_params(os.path.join(FLAX, name), lazy=lazy)
  assert config == want_config
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    assert np.asarray(a).dtype == b.dtype and np.array_equal(np.asarray(a), b), jax.tree_util.keystr(path)


def test_safetensors_are_read_when_a_folder_holds_both(tmp_path):
  """The safetensors are read slice by slice; the Flax file is not read at all (here: damaged)."""
  folder = tmp_path / "both"
  shutil.copytree(os.path.join(FIXTURES, "hf_parity", "t5_1_1"), folder)
  (folder / "flax_model.msgpack").write_bytes(b"\x00not msgpack")
  _, params = read_params(str(folder))
  _, want = read_params(os.path.join(FIXTURES, "hf_parity", "t5_1_1"))
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], want["decoder"]["logits_dense"]["kernel"])


def test_damaged_files_are_errors_naming_the_file_and_the_fix(tmp_path):
  folder = _copy("t5_1_0", tmp_path)
  weights = folder / "flax_model.msgpack"
  data = weights.read_bytes()
  weights.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"flax_model\.msgpack is not a readable Flax msgpack file .*"
                                            r"truncated or damaged: download or copy it again"):
    read_params(str(folder))
  weights.write_bytes(b"version " + b"https:" + b"//git-lfs.github.com/spec/v1\noid sha256:abc\nsize 184559\n")
  with pytest.raises(CheckpointError, match=r"Git LFS pointer .* git lfs pull"):
    spot_jax.load_t5(str(folder))


def test_shards_and_index_that_disagree_are_errors(tmp_path):
  folder = _copy("t5_1_1_sharded", tmp_path)
  os.remove(folder / "flax_model-00002-of-00003.msgpack")
  with pytest.raises(CheckpointError, match=r"flax_model-00002-of-00003\.msgpack does not exist .*copy the whole "
                                            r"folder again"):
    read_params(str(folder))
  folder = _copy("t5_1_1_sharded", tmp_path / "b")
  index = json.loads((folder / "flax_model.msgpack.index.json").read_text())
  index["weight_map"]["lm_head/kernel"] = "flax_model-00001-of-00003.msgpack"
  index["weight_map"]["encoder/extra/kernel"] = "flax_model-00001-of-00003.msgpack"
  (folder / "flax_model.msgpack.index.json").write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match=r"lists \['encoder/extra/kernel'\] in shards that do not hold them"):
    read_params(str(folder))
  os.remove(folder / "flax_model.msgpack.index.json")
  with pytest.raises(CheckpointError, match=r"has config\.json and flax_model-00001-of-00003\.msgpack.* neither "
                                            r"flax_model\.msgpack nor flax_model\.msgpack\.index\.json"):
    read_params(str(folder))


def test_a_missing_tensor_or_a_wrong_config_names_the_flax_key(tmp_path):
  folder = _copy("t5_1_1_sharded", tmp_path)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps(dict(config, num_layers=3)))
  with pytest.raises(CheckpointError, match=r"missing tensor encoder/block/2/layer/0/SelfAttention/q/kernel "
                                            r"\(PyTorch's encoder\.block\.2\.layer\.0\.SelfAttention\.q\.weight\)"):
    read_params(str(folder))
  (folder / "config.json").write_text(json.dumps(dict(config, d_ff=48)))
  with pytest.raises(CheckpointError, match=r"encoder/block/0/layer/1/DenseReluDense/wi_0/kernel \(PyTorch's "
                                            r".*has shape \(64, 32\) but config\.json implies \(48, 32\)"):
    read_params(str(folder))


def test_weights_without_config_json_and_tensorflow_weights_say_what_to_do(tmp_path):
  folder = _copy("t5_1_0", tmp_path)
  os.remove(folder / "config.json")
  with pytest.raises(CheckpointError, match=r"holds weights \(flax_model\.msgpack\) but no config\.json"):
    read_params(str(folder))
  tf_only = tmp_path / "tf"
  tf_only.mkdir()
  (tf_only / "config.json").write_text("{}")
  (tf_only / "tf_model.h5").write_bytes(b"\x89HDF")
  with pytest.raises(CheckpointError, match=r"(?s)holds TensorFlow weights \(tf_model\.h5\).*torch, tensorflow and transformers.*from_tf=True"):
    read_params(str(tf_only))


def test_a_sharded_flax_folder_on_gs_is_read_through_gfile(tmp_path, monkeypatch):
  """gs:// through tf.io.gfile (a local stand-in here; tests/test_gcs_emulator.py runs TF's real GCS
  client on safetensors): the same parameters as the local read."""
  import sys
  sys.path.insert(0, os.path.dirname(__file__))
  from gfile_stub import LocalGfile  # pylint: disable=g-import-not-at-top
  from spot_jax.checkpoints import t5x
  root = tmp_path / "bucket"
  shutil.copytree(os.path.join(FLAX, "t5_1_1_sharded"), root / "t5")
  stub = LocalGfile(root)
  monkeypatch.setattr(t5x, "_gfile", lambda: stub)
  monkeypatch.setattr(t5x, "probe_gcs", lambda path: None)
  config, got = read_params("gs://bucket/t5", lazy=True)
  want_config, want = read_params(os.path.join(FLAX, "t5_1_1_sharded"))
  assert config == want_config and "GFile" in stub.used
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), b)

"""A Hugging Face folder placed on a model-parallel mesh is read shard by shard (safetensors'
`get_slice`; PyTorch's [out, in] weights sliced as the transpose of T5X's shard), and the placed weights
equal, bit for bit, those of a whole read."""
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from spot_jax import frozen_model as frozen_lib
from spot_jax import partitioning
from spot_jax.checkpoints import CheckpointError, hf, read_params, write_hf
from spot_jax.checkpoints.infer_config import flatten
from spot_jax.checkpoints.lazy import LazyArray

from hf_checkpoint_setup import V10, V11, _params

MT5 = os.path.join(os.path.dirname(__file__), "fixtures", "hf_formats", "mt5_bf16_sharded")


@pytest.fixture
def reads(monkeypatch):
  """`{tensor name: [T5X-layout index, ...]}` of every slice read lazily."""
  seen = {}
  get_lazy = hf._Tensors.get_lazy

  def spy(self, name, transpose):
    arr = get_lazy(self, name, transpose)
    if isinstance(arr, LazyArray):
      read = arr._read
      arr._read = lambda index: seen.setdefault(name, []).append(index) or read(index)
    return arr
  monkeypatch.setattr(hf._Tensors, "get_lazy", spy)
  return seen


def _bits(x):
  x = np.asarray(x)
  return x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x.view(np.uint32)


@pytest.mark.parametrize("source, mesh_shape, frozen_dtype", [
    ("mt5", (2, 4), "float32"), ("mt5", (2, 4), "bfloat16"), ("v10", (4, 2), "bfloat16")])
def test_each_tensor_is_read_as_its_shards(source, mesh_shape, frozen_dtype, tmp_path, reads):
  path = MT5
  if source == "v10":  # tied embeddings, ReLU, float32 as write_hf writes it
    path = str(tmp_path)
    write_hf(_params(V10), V10, path)
  mesh = partitioning.make_mesh(mesh_shape[1], devices=jax.devices()[:mesh_shape[0] * mesh_shape[1]])
  config, lazy = frozen_lib.load_frozen(path, None, 0)
  assert reads == {}
  placed, shardings = frozen_lib.place_frozen(lazy, config, mesh, frozen_dtype)
  flat_placed, flat_shardings, flat_lazy = flatten(placed), flatten(shardings), flatten(lazy)
  assert len(reads) == len(flat_lazy)
  split = 0
  for ours, arr in flat_lazy.items():
    shards = {tuple((s.start or 0, arr.shape[d] if s.stop is None else s.stop) for d, s in enumerate(idx))
              for idx in flat_shardings[ours].addressable_devices_indices_map(arr.shape).values()}
    got = [tuple((s.start, s.stop) for s in idx) for idx in reads[arr.name]]
    assert sorted(got) == sorted(shards), ours  # each distinct shard once, never the whole of a split one
    split += len(shards) > 1
  assert split == sum(a.ndim == 2 for a in flat_lazy.values())  # every 2-D tensor, relpos tables too
  _, eager = read_params(path)
  want, _ = frozen_lib.place_frozen(eager, config, mesh, frozen_dtype)
  for name, w in flatten(want).items():
    assert flat_placed[name].dtype == w.dtype and flat_placed[name].sharding == w.sharding, name
    np.testing.assert_array_equal(_bits(flat_placed[name]), _bits(w), err_msg=name)


def test_a_shape_error_comes_at_load_and_slices_read_as_whole_reads(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  _, lazy = read_params(str(tmp_path), lazy=True)
  config_json = tmp_path / "config.json"
  good = config_json.read_text()
  config_json.write_text(good.replace('"vocab_size": 16', '"vocab_size": 32'))
  with pytest.raises(CheckpointError, match=r"tensor 'shared.weight' \(spot_jax 'token_embedder/embedding'\) has "
                     r"shape \(16, 8\) but config.json implies \(32, 8\)"):
    read_params(str(tmp_path), lazy=True)
  config_json.write_text(good)
  _, eager = read_params(str(tmp_path))
  assert frozen_lib.frozen_fingerprint(lazy) == frozen_lib.frozen_fingerprint(eager)
  q = flatten(lazy)["encoder/layers_0/attention/query/kernel"]
  np.testing.assert_array_equal(q[2:6, 4:], flatten(eager)["encoder/layers_0/attention/query/kernel"][2:6, 4:])

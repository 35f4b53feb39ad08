"""A Hugging Face folder placed on a model-parallel mesh is read shard by shard (safetensors'
`get_slice`; PyTorch's [out, in] weights sliced as the transpose of T5X's shard), and the placed weights
equal, bit for bit, those of a whole read."""
import json
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


class _CountingGfile:
  """tf.io.gfile over a local folder (tests/gfile_stub.py) that records each read: (file, offset, bytes)."""

  def __init__(self, root, bucket):
    from gfile_stub import LocalGfile
    self._local, self.reads = LocalGfile(root, bucket=bucket), []

  def __getattr__(self, name):
    return getattr(self._local, name)

  def GFile(self, path, mode):  # noqa: N802 (tf's name)
    f, reads = self._local.GFile(path, mode), self.reads

    class Counted:
      def __enter__(self):
        return self

      def __exit__(self, *exc):
        f.close()

      def seek(self, *a):
        return f.seek(*a)

      def tell(self):
        return f.tell()

      def read(self, n=-1):
        at = f.tell()
        data = f.read(n)
        reads.append((os.path.basename(path), at, len(data)))
        return data
    return Counted()


@pytest.fixture
def gcs_mt5(monkeypatch):
  from spot_jax.checkpoints import t5x
  gfile = _CountingGfile(os.path.dirname(MT5), "gs://bkt")
  monkeypatch.setattr(t5x, "_gfile", lambda: gfile)
  monkeypatch.setattr(t5x, "probe_gcs", lambda path: None)
  return gfile


def test_a_gs_folder_is_read_by_byte_range(gcs_mt5):
  """gs:// tensors were downloaded whole on every host; now a slice reads only the rows holding it."""
  config, lazy = read_params("gs://bkt/mt5_bf16_sharded", lazy=True)
  _, local = read_params(MT5)
  tensor_files = [r for r in gcs_mt5.reads if r[0].endswith(".safetensors")]
  assert tensor_files and all(r[1] == 0 and r[2] == 8 or r[1] == 8 for r in tensor_files)  # headers only
  wi = flatten(lazy)["encoder/layers_0/mlp/wi_0/kernel"]  # T5X [embed, mlp] = PyTorch [mlp, embed] rows
  want = flatten(local)["encoder/layers_0/mlp/wi_0/kernel"]
  gcs_mt5.reads.clear()
  np.testing.assert_array_equal(_bits(wi[:, 4:12]), _bits(want[:, 4:12]))
  assert [r[2] for r in gcs_mt5.reads] == [8 * wi.shape[0] * 2]  # 8 rows of bfloat16, nothing else
  mesh = partitioning.make_mesh(4, devices=jax.devices()[:8])
  placed, _ = frozen_lib.place_frozen(lazy, config, mesh, "float32")
  want_placed, _ = frozen_lib.place_frozen(local, config, mesh, "float32")
  for name, w in flatten(want_placed).items():
    np.testing.assert_array_equal(_bits(flatten(placed)[name]), _bits(w), err_msg=name)


@pytest.mark.parametrize("damage, match", [
    ("truncate", r"the header's entry for tensor '[^']+' does not match the file \(\d+ bytes\): the file is truncated"),
    ("truncated later", r"tensor '[^']+' ends before its header says \(\d+ of \d+ bytes read\): the file is truncated"),
    ("header", r"is not a readable safetensors file \(its header is not there or not JSON\)"),
    ("offsets", r"the header's entry for tensor 'shared.weight' does not match the file")])
def test_a_damaged_gs_file_names_the_tensor_and_the_fix(damage, match, tmp_path, monkeypatch):
  from spot_jax.checkpoints import t5x
  write_hf(_params(V11), V11, str(tmp_path / "m"))
  f = tmp_path / "m" / "model.safetensors"
  data = f.read_bytes()
  n = int.from_bytes(data[:8], "little")
  if damage == "truncate":  # the header is whole: the last tensor's rows are not all there
    f.write_bytes(data[:len(data) - 3])
  elif damage == "truncated later":  # after the header was read (a copy over it, say)
    damage_now = lambda: f.write_bytes(data[:len(data) - 3])
  elif damage == "header":
    f.write_bytes(data[:8] + b"#" + data[9:])
  else:
    header = json.loads(data[8:8 + n])
    header["shared.weight"]["data_offsets"][1] += 4
    edited = json.dumps(header, separators=(",", ":")).encode()
    assert len(edited) <= n
    f.write_bytes(data[:8] + edited.ljust(n) + data[8 + n:])
  monkeypatch.setattr(t5x, "_gfile", lambda: _CountingGfile(tmp_path, "gs://bkt"))
  monkeypatch.setattr(t5x, "probe_gcs", lambda path: None)
  with pytest.raises(CheckpointError, match=match):
    _, params = read_params("gs://bkt/m", lazy=True)
    if damage == "truncated later":
      damage_now()
    for arr in flatten(params).values():
      np.asarray(arr)

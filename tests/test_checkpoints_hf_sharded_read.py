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


@pytest.fixture
def fetched(monkeypatch):
  """`[(file name, start, stop), ...]`: every byte range fetched from gs:// (one ranged GET each)."""
  seen = []
  fetch = hf._RemoteSafetensors._fetch

  def spy(self, ranges, name=None):
    seen.extend((os.path.basename(self.path), a, b) for a, b in ranges)
    return fetch(self, ranges, name)
  monkeypatch.setattr(hf._RemoteSafetensors, "_fetch", spy)
  return seen


def _gs_bucket(monkeypatch, root):
  """gs://bkt/ is the local folder `root`, for tf.io.gfile and for tensorstore's byte-range reads."""
  from spot_jax.checkpoints import t5x
  from gfile_stub import LocalGfile, serve_bucket
  monkeypatch.setattr(t5x, "_gfile", lambda: LocalGfile(root, bucket="gs://bkt"))
  monkeypatch.setattr(t5x, "probe_gcs", lambda path: None)
  serve_bucket(monkeypatch, root, bucket="gs://bkt")


@pytest.fixture
def gcs_mt5(monkeypatch, fetched):
  _gs_bucket(monkeypatch, os.path.dirname(MT5))
  return fetched


def test_a_gs_folder_is_read_by_byte_range(gcs_mt5):
  """gs:// tensors were downloaded whole on every host; now a slice reads only the rows holding it."""
  config, lazy = read_params("gs://bkt/mt5_bf16_sharded", lazy=True)
  _, local = read_params(MT5)
  assert {f for f, _, _ in gcs_mt5} == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
  assert len(gcs_mt5) == 4 and all((a, b) == (0, 8) or a == 8 for _, a, b in gcs_mt5)  # the headers only
  wi = flatten(lazy)["encoder/layers_0/mlp/wi_0/kernel"]  # T5X [embed, mlp] = PyTorch [mlp, embed] rows
  want = flatten(local)["encoder/layers_0/mlp/wi_0/kernel"]
  gcs_mt5.clear()
  np.testing.assert_array_equal(_bits(wi[:, 4:12]), _bits(want[:, 4:12]))
  assert [b - a for _, a, b in gcs_mt5] == [8 * wi.shape[0] * 2]  # 8 rows of bfloat16, nothing else
  mesh = partitioning.make_mesh(4, devices=jax.devices()[:8])
  placed, _ = frozen_lib.place_frozen(lazy, config, mesh, "float32")
  want_placed, _ = frozen_lib.place_frozen(local, config, mesh, "float32")
  for name, w in flatten(want_placed).items():
    np.testing.assert_array_equal(_bits(flatten(placed)[name]), _bits(w), err_msg=name)


_WO = "encoder/layers_0/mlp/wo/kernel"  # T5X [mlp, embed]; HF's [embed, mlp] = [16, 24] bfloat16 rows of 48 bytes


@pytest.mark.parametrize("max_gap", ["0", None])
def test_a_column_slice_on_gs_reads_its_columns(max_gap, gcs_mt5, monkeypatch):
  """A `mlp` shard of `wo` is a slice across HF's rows: it was read as the whole tensor. With gaps
  above SPOT_JAX_GCS_MAX_GAP_BYTES it is one range per row, each the shard's columns and nothing else;
  with the default (1 MiB: rows of 48 bytes) one range from its first byte to its last."""
  if max_gap is None:
    monkeypatch.delenv(hf.GCS_MAX_GAP_ENV, raising=False)
  else:
    monkeypatch.setenv(hf.GCS_MAX_GAP_ENV, max_gap)
  _, lazy = read_params("gs://bkt/mt5_bf16_sharded", lazy=True)
  _, local = read_params(MT5)
  wo, want = flatten(lazy)[_WO], flatten(local)[_WO]
  rows, row = wo.shape[1], wo.shape[0] * 2  # HF rows: d_model of them, each d_ff bfloat16 values
  gcs_mt5.clear()
  np.testing.assert_array_equal(_bits(wo[6:12]), _bits(want[6:12]))  # columns 6..12 of each HF row
  got = [b - a for _, a, b in gcs_mt5]
  if max_gap == "0":
    assert got == [6 * 2] * rows  # 16 ranges of 12 bytes: 192 of the tensor's 768
    starts = [a for _, a, _ in gcs_mt5]
    assert [b - a for a, b in zip(starts, starts[1:])] == [row] * (rows - 1)
  else:
    assert got == [(rows - 1) * row + 6 * 2]  # one range, without the first row's head and the last's tail
  assert sum(got) < rows * row
  gcs_mt5.clear()
  np.testing.assert_array_equal(_bits(np.asarray(wo)), _bits(want))  # a whole read: one range
  assert [b - a for _, a, b in gcs_mt5] == [rows * row]


def test_a_model_parallel_mesh_reads_each_column_shard_of_gs_once(gcs_mt5, monkeypatch):
  """On a 2x4 mesh with SPOT_JAX_GCS_MAX_GAP_BYTES=0, each column-split tensor (`wo`, attention `out`, the
  relative bias) is read as its 4 shards' columns, one range per HF row, once each; a row split as one
  range per shard. Every byte is read once, and the placed weights equal an eager read's bit for bit."""
  monkeypatch.setenv(hf.GCS_MAX_GAP_ENV, "0")
  config, lazy = read_params("gs://bkt/mt5_bf16_sharded", lazy=True)
  _, local = read_params(MT5)
  mesh = partitioning.make_mesh(4, devices=jax.devices()[:8])
  gcs_mt5.clear()
  placed, shardings = frozen_lib.place_frozen(lazy, config, mesh, "bfloat16")
  want, _ = frozen_lib.place_frozen(local, config, mesh, "bfloat16")
  for name, w in flatten(want).items():
    np.testing.assert_array_equal(_bits(flatten(placed)[name]), _bits(w), err_msg=name)
  flat_lazy = flatten(lazy)
  assert sum(b - a for _, a, b in gcs_mt5) == sum(a.size * 2 for a in flat_lazy.values())  # each byte once
  requests, column_split = 0, 0
  for ours, arr in flat_lazy.items():
    transposed = hf.name_map(config)[ours][1]
    hf_shape = arr.shape[::-1] if transposed else arr.shape
    for idx in {tuple((s.start or 0, s.stop or n) for s, n in zip(i, arr.shape))
                for i in flatten(shardings)[ours].addressable_devices_indices_map(arr.shape).values()}:
      (r0, r1), *cols = idx[::-1] if transposed else idx
      split_across_rows = bool(cols) and cols[0] != (0, hf_shape[1])
      requests += r1 - r0 if split_across_rows else 1
      column_split += split_across_rows
  assert len(gcs_mt5) == requests
  assert column_split == 4 * (2 * 2 + 3 * 3 + 2)  # 4 shards of wo and out in 2+3 layers (cross-attention too), 2 relpos


def test_the_gap_rule_at_t5_sizes():
  """XXL's float32 `wo` ([4096, 10240] in HF), 8 ways: the default reads one span (4096 requests of
  5 KiB would cost more than 140 MB of gaps); 0 reads the 4096 pieces. Rows of 2 MiB split 4 ways
  leave gaps of 1.5 MiB: one range per row by default."""
  shape, cols = (4096, 10240), (slice(0, 4096), slice(1280, 2560))
  ranges, _ = hf.plan_byte_ranges(100, shape, 4, cols, hf.GCS_MAX_GAP_DEFAULT)
  assert ranges == [(100 + 1280 * 4, 100 + 4095 * 40960 + 2560 * 4)]
  ranges, _ = hf.plan_byte_ranges(100, shape, 4, cols, 0)
  assert len(ranges) == 4096 and {b - a for a, b in ranges} == {1280 * 4}
  ranges, _ = hf.plan_byte_ranges(0, (4, 1 << 19), 4, (slice(0, 4), slice(0, 1 << 17)), hf.GCS_MAX_GAP_DEFAULT)
  assert ranges == [(i << 21, (i << 21) + (1 << 19)) for i in range(4)]
  ranges, _ = hf.plan_byte_ranges(0, (64, 8), 2, (slice(8, 24), slice(0, 8)), 0)
  assert ranges == [(8 * 16, 24 * 16)]  # a row split: one contiguous range whatever the gap setting


@pytest.mark.parametrize("value", ["-1", "1MB"])
def test_a_bad_max_gap_is_refused(value, gcs_mt5, monkeypatch):
  _, lazy = read_params("gs://bkt/mt5_bf16_sharded", lazy=True)
  monkeypatch.setenv(hf.GCS_MAX_GAP_ENV, value)
  with pytest.raises(CheckpointError, match=rf"SPOT_JAX_GCS_MAX_GAP_BYTES='{value}' is not a number of bytes"):
    flatten(lazy)[_WO][0:6]


@pytest.mark.parametrize("damage, match", [
    ("truncate", r"the header's entry for tensor '[^']+' does not match the file \(\d+ bytes\): the file is truncated"),
    ("truncated later", r"tensor '[^']+' ends before its header says \(the file has \d+ bytes, the data runs to "
                        r"byte \d+\): the file is truncated"),
    ("header", r"is not a readable safetensors file \(its header is not there or not JSON\)"),
    ("offsets", r"the header's entry for tensor 'shared.weight' does not match the file")])
def test_a_damaged_gs_file_names_the_tensor_and_the_fix(damage, match, tmp_path, monkeypatch):
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
  _gs_bucket(monkeypatch, tmp_path)
  with pytest.raises(CheckpointError, match=match):
    _, params = read_params("gs://bkt/m", lazy=True)
    if damage == "truncated later":
      damage_now()
    for arr in flatten(params).values():
      np.asarray(arr)

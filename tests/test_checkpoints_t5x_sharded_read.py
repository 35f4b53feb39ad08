"""A T5X checkpoint placed on a model-parallel mesh is read shard by shard: `load_frozen` opens its
TensorStore arrays without reading them, `place_frozen` reads each distinct shard a process's devices
hold once (cast to the frozen dtype slice by slice), never a whole split array; the placed weights
equal, bit for bit, those of a whole read."""
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import ml_dtypes
import numpy as np
import pytest

from spot_jax import frozen_model as frozen_lib
from spot_jax import partitioning
from spot_jax.checkpoints import CheckpointError, read_params, t5x, write_t5x
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten
from spot_jax.checkpoints.lazy import LazyArray
from spot_jax.config import T5Config

# Every dimension the rules split over `model` (vocab, heads, joined_kv, mlp) divides by 4.
CONFIG = T5Config(vocab_size=32, d_model=8, num_heads=4, head_dim=2, d_ff=12, num_encoder_layers=2,
                  num_decoder_layers=1, relative_attention_num_buckets=4)
N_ZARR = 27  # its 2-D kernels: 2 + 2 x 7 encoder + 11 decoder


@pytest.fixture
def ckpt(tmp_path):
  rng = np.random.default_rng(0)
  flat = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in expected_shapes(CONFIG).items()}
  flat["token_embedder/embedding"] = flat["token_embedder/embedding"].astype(ml_dtypes.bfloat16)
  return write_t5x(unflatten(flat), str(tmp_path), step=7)


@pytest.fixture
def reads(monkeypatch):
  """Every slice read from TensorStore: `(array name, index)` (`()`: the whole array)."""
  seen = []
  real = t5x.read_slice

  def spy(store, index):
    seen.append((store.kvstore.path.rstrip("/").rsplit("/", 1)[-1], index))
    return real(store, index)
  monkeypatch.setattr(t5x, "read_slice", spy)
  return seen


def _mesh(data, model):
  return partitioning.make_mesh(model, devices=jax.devices()[:data * model])


def _bits(x):
  x = np.asarray(x)
  return x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x.view(np.uint32)


def _assert_placed_equal(got, want):
  fg, fw = flatten(got), flatten(want)
  assert sorted(fg) == sorted(fw)
  for name in fw:
    assert fg[name].dtype == fw[name].dtype and fg[name].sharding == fw[name].sharding, name
    np.testing.assert_array_equal(_bits(fg[name]), _bits(fw[name]), err_msg=name)


def _zarr_name(name):
  return "target." + name.replace("/", ".")


def _assert_read_by_shards(reads, placed, shardings, config):
  """Each TensorStore array was read as the distinct slices this process's devices hold, each once."""
  by_array = {}
  for array, index in reads:
    by_array.setdefault(array, []).append(index)
  flat_placed, flat_shardings = flatten(placed), flatten(shardings)
  split = 0
  for name, arr in flat_placed.items():
    got = by_array.pop(_zarr_name(name), None)
    if got is None:
      continue  # inline in the msgpack file (layer-norm scales, relpos tables): nothing to read
    shape = arr.shape
    shards = {tuple((s.start or 0, shape[d] if s.stop is None else s.stop) for d, s in enumerate(idx))
              for idx in flat_shardings[name].addressable_devices_indices_map(shape).values()}
    requested = [tuple((s.start, s.stop) for s in idx) for idx in got]
    assert sorted(requested) == sorted(shards), name  # each distinct shard once, nothing else
    whole = tuple((0, n) for n in shape)
    if len(shards) > 1:
      split += 1
      assert whole not in requested, f"{name} is split but was read whole"
    read_elements = sum(int(np.prod([b - a for a, b in r])) for r in requested)
    assert read_elements == int(np.prod(shape)), name  # the distinct shards tile the array: its size once
  assert not by_array, f"arrays read that were not placed: {sorted(by_array)}"
  return split


@pytest.mark.parametrize("frozen_dtype", ["float32", "bfloat16"])
def test_a_2x4_mesh_reads_each_shard_once_and_places_what_a_whole_read_places(ckpt, reads, frozen_dtype):
  mesh = _mesh(2, 4)
  config, lazy = frozen_lib.load_frozen(ckpt, None, 0)
  assert reads == []  # opened (metadata), nothing read
  zarr = {k: v for k, v in flatten(lazy).items() if isinstance(v, LazyArray)}
  # Every 2-D kernel is a TensorStore array (layer-norm scales and relpos tables stay inline).
  assert sorted(zarr) == sorted(n for n, s in expected_shapes(CONFIG).items()
                                if t5x.default_external(n, np.zeros(s))) and len(zarr) == N_ZARR
  placed, shardings = frozen_lib.place_frozen(lazy, config, mesh, frozen_dtype)
  split = _assert_read_by_shards(reads, placed, shardings, config)
  assert split == len(zarr)  # every TensorStore array of T5 is split over `model`
  # Bytes: each split array once (4 shards of a quarter), not once per device (8 x the whole).
  assert sum(int(np.prod([s.stop - s.start for s in i])) for _, i in reads) == sum(a.size for a in zarr.values())
  # The old path: every array read whole, cast whole, then sliced.
  _, eager = read_params(ckpt)
  want, want_shardings = frozen_lib.place_frozen(eager, config, mesh, frozen_dtype)
  assert want_shardings == shardings
  _assert_placed_equal(placed, want)


def test_the_real_t5x_checkpoint_on_a_4x2_mesh(shared_fixtures, monkeypatch):
  seen = []
  real = t5x.read_slice
  monkeypatch.setattr(t5x, "read_slice", lambda store, index: seen.append(
      (store.kvstore.path.rstrip("/").rsplit("/", 1)[-1], index)) or real(store, index))
  path = str(shared_fixtures / "t5x_tiny_checkpoint" / "checkpoint_3")
  mesh = _mesh(4, 2)
  config, lazy = frozen_lib.load_frozen(path, None, 0)
  placed, shardings = frozen_lib.place_frozen(lazy, config, mesh, "bfloat16")
  assert _assert_read_by_shards(seen, placed, shardings, config) == 38  # T5X wrote 38 arrays, all split
  assert len(seen) == 2 * 38  # 2 model shards each; the 4 data replicas share them
  _, eager = read_params(path)
  _assert_placed_equal(placed, frozen_lib.place_frozen(eager, config, mesh, "bfloat16")[0])


def test_one_device_and_host_arrays_keep_the_plain_path(ckpt, reads):
  """On one device each array is one shard: read whole once. Host (numpy) params still place as before."""
  config, lazy = frozen_lib.load_frozen(ckpt, None, 0)
  placed, _ = frozen_lib.place_frozen(lazy, config, _mesh(1, 1), "float32")
  assert all(index == tuple(slice(0, n) for n in flatten(lazy)[name].shape)
             for name, index in ((n.removeprefix("target.").replace(".", "/"), i) for n, i in reads))
  assert len(reads) == N_ZARR
  config, eager = frozen_lib.load_frozen(ckpt, None, 0, lazy=False)
  assert not any(isinstance(v, LazyArray) for v in flatten(eager).values())
  _assert_placed_equal(placed, frozen_lib.place_frozen(eager, config, _mesh(1, 1), "float32")[0])


def test_lazy_arrays_read_like_eager_ones_and_fingerprint_alike(ckpt, reads):
  _, eager = read_params(ckpt)
  assert len(reads) == N_ZARR and all(i == () for _, i in reads)  # the eager read: each array whole
  reads.clear()
  _, lazy = read_params(ckpt, lazy=True)
  emb = flatten(lazy)["token_embedder/embedding"]
  assert emb.shape == (32, 8) and emb.dtype == ml_dtypes.bfloat16 and reads == []
  assert frozen_lib.frozen_fingerprint(lazy) == frozen_lib.frozen_fingerprint(eager)
  # The fingerprint reads the leading rows that hold each array's first 1024 values (of these tiny
  # arrays, all rows), as a slice.
  assert len(reads) == N_ZARR and all(i and i[0].start == 0 for _, i in reads)
  big = LazyArray((1000, 10), np.float32, lambda idx: np.arange(10000, dtype=np.float32).reshape(1000, 10)[idx])
  asked = []
  big._read = lambda idx, read=big._read: asked.append(idx) or read(idx)
  np.testing.assert_array_equal(big.head(1024), np.arange(1024, dtype=np.float32))
  assert asked == [(slice(0, 103), slice(0, 10))]  # 103 of 1000 rows
  np.testing.assert_array_equal(_bits(np.asarray(emb)), _bits(flatten(eager)["token_embedder/embedding"]))
  np.testing.assert_array_equal(_bits(emb[2:5, 4:]), _bits(flatten(eager)["token_embedder/embedding"][2:5, 4:]))
  as_f32 = read_params(ckpt, lazy=True, dtype="float32")[1]
  assert flatten(as_f32)["token_embedder/embedding"].dtype == np.float32
  np.testing.assert_array_equal(flatten(as_f32)["token_embedder/embedding"][8:16],
                                flatten(eager)["token_embedder/embedding"][8:16].astype(np.float32))


def test_a_damaged_chunk_is_named_when_its_shard_is_read(ckpt):
  """A missing or invalid array fails at load; a damaged chunk when placing reads it, as clearly as a
  whole read says it."""
  name = "target.encoder.layers_0.mlp.wo.kernel"
  chunk = os.path.join(ckpt, name, "0.0")
  with open(chunk, "wb") as f:
    f.write(b"not gzip")
  with pytest.raises(CheckpointError, match=r"cannot read the array of parameter 'encoder/layers_0/mlp/wo/kernel' "
                     r"at .*wo\.kernel \(a chunk file missing or damaged\).*Fix: copy the checkpoint again"):
    read_params(ckpt)
  config, lazy = frozen_lib.load_frozen(ckpt, None, 0)
  with pytest.raises(CheckpointError, match=r"cannot read the array of parameter 'encoder/layers_0/mlp/wo/kernel' "
                     r"at .*wo\.kernel \(a chunk file missing or damaged\).*Fix: copy the checkpoint again"):
    frozen_lib.place_frozen(lazy, config, _mesh(2, 4), "float32")
  os.remove(chunk)
  with pytest.raises(CheckpointError, match=r"'encoder/layers_0/mlp/wo/kernel'.*a chunk file missing or damaged"):
    frozen_lib.place_frozen(lazy, config, _mesh(2, 4), "float32")
  shutil.rmtree(os.path.join(ckpt, name))
  with pytest.raises(CheckpointError, match=r"cannot open the array of parameter 'encoder/layers_0/mlp/wo/kernel'.*"
                     r"\.zarray metadata is missing or invalid"):
    frozen_lib.load_frozen(ckpt, None, 0)


def test_a_shape_mismatch_is_found_before_anything_is_read(ckpt, reads):
  with pytest.raises(CheckpointError, match="checkpoint has 4"):
    frozen_lib.load_frozen(ckpt, CONFIG.replace(num_heads=2, head_dim=4), 0)
  assert reads == []


_TWO_PROCESSES = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    port, pid, ckpt, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    import numpy as np
    from spot_jax import frozen_model, partitioning
    from spot_jax.checkpoints import t5x
    from spot_jax.checkpoints.infer_config import flatten
    seen, real = [], t5x.read_slice
    t5x.read_slice = lambda s, i: seen.append([s.kvstore.path.rstrip("/").rsplit("/", 1)[-1],
                                               [[x.start, x.stop] for x in i]]) or real(s, i)
    config, lazy = frozen_model.load_frozen(ckpt, None, 0)
    placed, _ = frozen_model.place_frozen(lazy, config, partitioning.make_mesh(4), "float32")
    local = {n: [[[x.start, x.stop] for x in s.index], np.asarray(s.data).tolist()]
             for n, a in flatten(placed).items() for s in a.addressable_shards[:1]}
    json.dump({"reads": seen, "local": local}, open(out, "w"))
""")


def run_two_processes(ckpt, tmp_path):
  """`_TWO_PROCESSES` in two processes over the checkpoint `ckpt`: what each read and placed (JSON)."""
  import json
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo}
  outs = [str(tmp_path / f"p{pid}.json") for pid in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, str(port), str(pid), ckpt, outs[pid]],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
  try:
    errs = [p.communicate(timeout=240)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errs)
  return [json.load(open(o)) for o in outs]


def test_two_processes_each_read_only_their_devices_shards(ckpt, tmp_path):
  """A `(1, 4)` mesh over 2 processes of 2 devices: each process reads the half of every array its
  devices hold, and none reads the other half."""
  results = run_two_processes(ckpt, tmp_path)
  _, eager = read_params(ckpt)
  eager = flatten(eager)
  halves = []
  for result in results:
    rows = {}
    for array, index in result["reads"]:
      rows.setdefault(array, []).append(tuple(map(tuple, index)))
    assert len(rows) == N_ZARR and all(len(v) == 2 for v in rows.values())  # its 2 devices' shards, once each
    halves.append(rows)
    for name, (index, data) in result["local"].items():  # what it placed is the checkpoint's slice
      want = np.asarray(eager[name], np.float32)[tuple(slice(a, b) for a, b in index)]
      np.testing.assert_array_equal(np.asarray(data, np.float32), want, err_msg=name)
  for array in halves[0]:  # the two processes read disjoint halves that make up the whole array
    assert not set(halves[0][array]) & set(halves[1][array]), array
    name = array.removeprefix("target.").replace(".", "/")
    shape = eager[name].shape
    elements = sum(int(np.prod([b - a for a, b in idx])) for h in halves for idx in h[array])
    assert elements == int(np.prod(shape)), array

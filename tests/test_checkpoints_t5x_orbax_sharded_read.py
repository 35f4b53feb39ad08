"""A T5X checkpoint written with Orbax is read shard by shard, as a native one is
(tests/test_checkpoints_t5x_sharded_read.py): `read_params(..., lazy=True)` / `load_frozen` open each
`target` array with TensorStore without reading it, `place_frozen` reads each distinct shard a
process's devices hold once, never a split array whole, and the placed weights equal, bit for bit, those
of orbax's own whole restore (`lazy=False`).

The checkpoints are written by orbax itself in T5X's layout (`test_checkpoints_t5x_orbax.write_t5x_orbax`):
one zarr array per parameter (`use_ocdbt=False`) or an OCDBT store, zarr or zarr3, the parameters saved as
numpy arrays or, as T5X saves them, as jax.Arrays sharded over 4 model partitions (a zarr chunk per shard).
"""
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

ocp = pytest.importorskip("orbax.checkpoint")

import test_checkpoints_t5x_sharded_read as sharded  # noqa: E402
from spot_jax import frozen_model as frozen_lib  # noqa: E402
from spot_jax import partitioning  # noqa: E402
from spot_jax.checkpoints import CheckpointError, read_params, read_t5x_orbax, t5x_orbax  # noqa: E402
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten  # noqa: E402
from spot_jax.checkpoints.lazy import LazyArray  # noqa: E402
from spot_jax.model import param_logical_axes  # noqa: E402
from test_checkpoints_t5x_orbax import write_legacy_t5x_orbax, write_t5x_orbax  # noqa: E402

# The native test's config with a larger vocabulary: the embedding (4 KiB as bfloat16) and the logits
# kernel (8 KiB) are values in the OCDBT store's data files, not inline in its b-tree (values up to 1 KiB
# are), so that a missing data file is found when a shard is read.
CONFIG = sharded.CONFIG.replace(vocab_size=256)
BF16 = ("token_embedder/embedding", "encoder/layers_1/attention/out/kernel", "decoder/decoder_norm/scale")
# Arrays with a dimension split over `model` (vocab, heads, mlp, joined_kv): every 2-D kernel and the
# two relative-position tables (heads); the layer-norm scales are replicated.
N_SPLIT = sharded.N_ZARR + 2
LAYOUTS = {  # name: (use_ocdbt, use_zarr3, saved as jax.Arrays sharded over 4 model partitions)
    "zarr": (False, False, False),
    "zarr-sharded": (False, False, True),
    "zarr3": (False, True, False),
    "ocdbt": (True, False, False),
    "ocdbt-zarr3-sharded": (True, True, True),
}
reads = sharded.reads  # the fixture: every `t5x.read_slice` as (array name, index)


def _params():
  rng = np.random.default_rng(0)
  flat = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in expected_shapes(CONFIG).items()}
  for name in BF16:
    flat[name] = flat[name].astype(ml_dtypes.bfloat16)
  return unflatten(flat)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """(params, {layout: checkpoint_<step> directory}): each layout written once (tests that damage one
  copy it first)."""
  params = _params()
  shardings = partitioning.tree_shardings(param_logical_axes(CONFIG), sharded._mesh(1, 4))
  on_devices = jax.tree.map(jax.device_put, params, shardings)
  root = tmp_path_factory.mktemp("orbax_layouts")
  ckpts = {name: write_t5x_orbax(on_devices if on_mesh else params, root / name, step=7, use_ocdbt=ocdbt,
                                 use_zarr3=zarr3)
           for name, (ocdbt, zarr3, on_mesh) in LAYOUTS.items()}
  # As T5X writes them: a split array's chunks are its shards.
  emb = os.path.join(ckpts["zarr-sharded"], "state", "target.token_embedder.embedding")
  assert sorted(os.listdir(emb)) == [".zarray", "0.0", "1.0", "2.0", "3.0"]
  assert os.path.isfile(os.path.join(ckpts["zarr3"], "state", "target.token_embedder.embedding", "zarr.json"))
  assert os.path.isfile(os.path.join(ckpts["ocdbt"], "state", "manifest.ocdbt"))
  return params, ckpts


# Items older orbax wrote without `_METADATA` (`write_legacy_t5x_orbax`): zarr, or OCDBT (orbax 0.4.0-0.4.2).
LEGACY = {"zarr": False, "ocdbt": True}
AGGREGATED = ("target.decoder.decoder_norm.scale", "state.step")  # values in the msgpack, no array of their own


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
  """(params, {layout: checkpoint_<step>}): T5X's sharded jax.Arrays (a zarr chunk per shard) written as
  orbax older than 0.4.3 wrote them."""
  params = _params()
  shardings = partitioning.tree_shardings(param_logical_axes(CONFIG), sharded._mesh(1, 4))
  on_devices = jax.tree.map(jax.device_put, params, shardings)
  root = tmp_path_factory.mktemp("orbax_legacy")
  return params, {name: write_legacy_t5x_orbax(on_devices, root / name, step=7, use_ocdbt=ocdbt, aggregated=AGGREGATED)
                  for name, ocdbt in LEGACY.items()}


def _file_bytes_read():
  """TensorStore's count of bytes read from local files so far (all of this process's kvstores)."""
  import tensorstore as ts
  metrics = ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read")
  return sum(v["value"] for m in metrics for v in m["values"])


@pytest.mark.parametrize("layout", LEGACY)
def test_an_item_without_metadata_is_read_by_slices(legacy, layout, reads, orbax_reads, monkeypatch):
  """An item with no `_METADATA`, its tree in older orbax's msgpack `checkpoint`, could not be read at all:
  orbax 0.12.8's `metadata()` needs `_METADATA` (and its partial restore too), so `read_params` stopped
  with "cannot read the Orbax tree metadata". orbax still restores the item whole, optimizer state included:
  the reference. Now the tree comes from the msgpack and each placeholder's array is opened with
  TensorStore, read by slices as with `_METADATA`, and never through orbax."""
  from etils import epath
  params, ckpts = legacy
  item = os.path.join(ckpts[layout], "state")
  assert not os.path.exists(os.path.join(item, "_METADATA")) and os.path.isfile(os.path.join(item, "checkpoint"))
  tree = ocp.aggregate_handlers.MsgpackHandler().deserialize(epath.Path(item) / "checkpoint")
  assert tree["target"]["encoder"]["layers_1"]["attention"]["out"]["kernel"] == (
      "PLACEHOLDER://target.encoder.layers_1.attention.out.kernel")
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(epath.Path(item))  # orbax's own reading of the item: everything, whole
  want = flatten(params)
  assert int(restored["state"]["step"]) == 7 and len(orbax_reads) > len(want)  # optimizer arrays too
  for name, arr in flatten(restored["target"]).items():
    np.testing.assert_array_equal(sharded._bits(arr), sharded._bits(want[name]), err_msg=name)
  del orbax_reads[:]
  _never_restored(monkeypatch)
  config, lazy = read_params(ckpts[layout], lazy=True)
  assert reads == [] and orbax_reads == []  # opened, nothing read
  flat = flatten(lazy)
  assert {n for n, v in flat.items() if not isinstance(v, LazyArray)} == {"decoder/decoder_norm/scale"}
  assert {n: (v.shape, v.dtype) for n, v in flat.items()} == {n: (a.shape, a.dtype) for n, a in want.items()}
  assert config == CONFIG.replace(dropout_rate=config.dropout_rate)
  # A slice reads that slice: of the logits kernel split 4 ways over vocab (a chunk per shard, each 2 KiB,
  # so that with OCDBT it lies in a data file, not inline in the b-tree read at open), one chunk's bytes.
  name = "decoder/logits_dense/kernel"
  before = _file_bytes_read()
  np.testing.assert_array_equal(sharded._bits(flat[name][:, 64:128]), sharded._bits(want[name][:, 64:128]))
  one_shard = _file_bytes_read() - before
  assert reads == [("target.decoder.logits_dense.kernel", (slice(0, CONFIG.d_model), slice(64, 128)))]
  if layout == "zarr":
    assert one_shard == os.path.getsize(os.path.join(item, "target.decoder.logits_dense.kernel", "0.1"))
  before = _file_bytes_read()
  np.testing.assert_array_equal(sharded._bits(np.asarray(flat[name])), sharded._bits(want[name]))
  assert 0 < one_shard < (_file_bytes_read() - before) / 2  # the whole array: 4 chunks
  # Placed on a 2x4 mesh: each distinct shard once, never a split array whole, as orbax's restore has it.
  del reads[:]
  mesh = sharded._mesh(2, 4)
  placed, shardings = frozen_lib.place_frozen(lazy, config, mesh, "float32")
  assert sharded._assert_read_by_shards(reads, placed, shardings, config) == N_SPLIT
  want_placed, _ = frozen_lib.place_frozen(restored["target"], config, mesh, "float32")
  sharded._assert_placed_equal(placed, want_placed)
  # Read whole (lazy=False): the `target` arrays each once, whole, through TensorStore; no optimizer array.
  del reads[:]
  _, eager = read_params(ckpts[layout])
  assert sorted(reads) == sorted((sharded._zarr_name(n), ()) for n in want if n != "decoder/decoder_norm/scale")
  assert orbax_reads == []
  for name, arr in flatten(eager).items():
    assert arr.dtype == want[name].dtype, name
    np.testing.assert_array_equal(sharded._bits(arr), sharded._bits(want[name]), err_msg=name)
  # `select` opens the chosen array only.
  del reads[:]
  pick = "encoder/layers_1/attention/out/kernel"
  step_dir, got = read_t5x_orbax(item, select=lambda n: n == pick, lazy=True)
  assert step_dir == ckpts[layout] and list(flatten(got)) == [pick] and reads == []
  assert t5x_orbax.target_names(item) == (ckpts[layout], sorted(want))


def _copy(ckpt, tmp_path):
  return shutil.copytree(ckpt, tmp_path / os.path.basename(ckpt))


def _never_restored(monkeypatch):
  def restore(item, target):
    raise AssertionError(f"orbax restored {sorted(flatten(target))} whole")
  monkeypatch.setattr(t5x_orbax, "_restore_target", restore)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_lazy_read_opens_every_array_and_reads_none(written, layout, reads, monkeypatch):
  params, ckpts = written
  _never_restored(monkeypatch)  # nothing goes through orbax's whole restore
  config, lazy = read_params(ckpts[layout], lazy=True)
  assert reads == []
  flat, want = flatten(lazy), flatten(params)
  assert all(isinstance(v, LazyArray) for v in flat.values())
  # Shapes and stored dtypes from the arrays' metadata: bfloat16 stays bfloat16.
  assert {n: (v.shape, v.dtype) for n, v in flat.items()} == {n: (a.shape, a.dtype) for n, a in want.items()}
  assert config == CONFIG.replace(dropout_rate=config.dropout_rate)  # inferred from the shapes alone
  # `select` opens only the chosen array.
  name = "encoder/layers_1/attention/out/kernel"
  step_dir, got = read_t5x_orbax(os.path.join(ckpts[layout], "state"), select=lambda n: n == name, lazy=True)
  assert step_dir == ckpts[layout] and list(flatten(got)) == [name] and reads == []
  np.testing.assert_array_equal(sharded._bits(flatten(got)[name][2:6]), sharded._bits(want[name][2:6]))
  assert reads == [("target.encoder.layers_1.attention.out.kernel", (slice(2, 6), slice(0, 8)))]


@pytest.mark.parametrize("data,model,frozen_dtype", [(2, 4, "float32"), (4, 2, "bfloat16")])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_shard_is_read_once_and_placed_as_a_whole_read_places_it(written, layout, data, model,
                                                                      frozen_dtype, reads):
  params, ckpts = written
  mesh = sharded._mesh(data, model)
  config, lazy = frozen_lib.load_frozen(ckpts[layout], None, 0)
  assert reads == []  # opened (metadata), nothing read
  placed, shardings = frozen_lib.place_frozen(lazy, config, mesh, frozen_dtype)
  # Each array read as the distinct slices this process's devices hold, each once; a split one never whole.
  split = sharded._assert_read_by_shards(reads, placed, shardings, config)
  assert split == N_SPLIT
  assert {array for array, _ in reads} == {sharded._zarr_name(n) for n in flatten(placed)}  # none inline
  read_elements = sum(int(np.prod([s.stop - s.start for s in index])) for _, index in reads)
  assert read_elements == sum(a.size for a in flatten(lazy).values())  # each array's size once, not per device
  # The eager read (orbax's own restore, whole): the same weights, bit for bit, and those written.
  _, eager = read_params(ckpts[layout])
  for name, arr in flatten(params).items():
    np.testing.assert_array_equal(sharded._bits(flatten(eager)[name]), sharded._bits(arr), err_msg=name)
  want, want_shardings = frozen_lib.place_frozen(eager, config, mesh, frozen_dtype)
  assert want_shardings == shardings
  sharded._assert_placed_equal(placed, want)


def test_two_processes_each_read_only_their_devices_shards(written, tmp_path):
  """A `(1, 4)` mesh over 2 processes of 2 devices, each opening the same OCDBT database: each reads the
  half of every split array its devices hold, the other process the other half; a replicated array
  (layer-norm scale) is read whole once by each. What each placed is the checkpoint's slice."""
  params, ckpts = written
  results = sharded.run_two_processes(ckpts["ocdbt"], tmp_path)
  want = flatten(params)
  reads_of = []
  for result in results:
    rows = {}
    for array, index in result["reads"]:
      rows.setdefault(array, []).append(tuple(map(tuple, index)))
    reads_of.append(rows)
    for name, (index, data) in result["local"].items():
      np.testing.assert_array_equal(np.asarray(data, np.float32),
                                    want[name].astype(np.float32)[tuple(slice(a, b) for a, b in index)], err_msg=name)
  assert sorted(reads_of[0]) == sorted(reads_of[1]) == sorted(sharded._zarr_name(n) for n in want)
  split = 0
  for array, mine in reads_of[0].items():
    theirs, shape = reads_of[1][array], want[array.removeprefix("target.").replace(".", "/")].shape
    if len(mine) == 1 and mine == theirs:  # replicated: one whole read each
      assert mine == [tuple((0, n) for n in shape)], array
      continue
    split += 1
    assert len(mine) == len(theirs) == 2 and not set(mine) & set(theirs), array  # its 2 devices' shards, once
    elements = sum(int(np.prod([b - a for a, b in idx])) for idx in mine + theirs)
    assert elements == int(np.prod(shape)), array  # the two halves make up the array
  assert split == N_SPLIT


@pytest.mark.parametrize("layout", ["zarr", "zarr3"])
def test_a_damaged_chunk_or_missing_array_is_named(written, layout, tmp_path):
  """A damaged chunk fails when placing reads its shard, a missing array directory when it is opened;
  both name the parameter, where it lies and the fix."""
  ckpt = _copy(written[1][layout], tmp_path)
  array = os.path.join(ckpt, "state", "target.encoder.layers_0.mlp.wo.kernel")
  chunk = os.path.join(array, "c", "0", "0") if layout == "zarr3" else os.path.join(array, "0.0")
  config, lazy = frozen_lib.load_frozen(ckpt, None, 0)
  with open(chunk, "wb") as f:
    f.write(b"not zstd")
  where = rf"the Orbax checkpoint item {ckpt}/state at {array}"
  with pytest.raises(CheckpointError, match=rf"cannot read the array of parameter 'encoder/layers_0/mlp/wo/kernel' "
                                            rf"of {where} \(a chunk missing or damaged\).*Fix: an incomplete or "
                                            r"damaged copy: copy the whole checkpoint_<step>/ directory again"):
    frozen_lib.place_frozen(lazy, config, sharded._mesh(2, 4), "float32")
  os.remove(chunk)
  with pytest.raises(CheckpointError, match=r"parameter 'encoder/layers_0/mlp/wo/kernel'.*a chunk missing or damaged"):
    frozen_lib.place_frozen(lazy, config, sharded._mesh(2, 4), "float32")
  shutil.rmtree(array)
  metadata = "zarr.json" if layout == "zarr3" else ".zarray"
  with pytest.raises(CheckpointError, match=rf"cannot open the array of parameter 'encoder/layers_0/mlp/wo/kernel' "
                                            rf"of {where} \(its {metadata} metadata or the array itself is missing "
                                            r"or invalid\).*Fix: an incomplete or damaged copy"):
    frozen_lib.load_frozen(ckpt, None, 0)


def test_a_missing_ocdbt_data_file_is_named(written, tmp_path):
  """The OCDBT store: a process's missing data files (an incomplete copy) fail when placing reads a
  value that lay in them, the b-tree's when the arrays are opened; both name a parameter and the fix."""
  ckpt = _copy(written[1]["ocdbt"], tmp_path)
  item = os.path.join(ckpt, "state")
  config, lazy = frozen_lib.load_frozen(ckpt, None, 0)
  shutil.rmtree(os.path.join(item, "ocdbt.process_0", "d"))
  with pytest.raises(CheckpointError, match=rf"cannot read the array of parameter '(token_embedder/embedding|"
                                            rf"decoder/logits_dense/kernel)' of the Orbax checkpoint item {item} at "
                                            r"key target\.\S+/ of the OCDBT store .*\(a chunk missing or damaged\).*"
                                            r"copy the whole checkpoint_<step>/ directory again"):
    frozen_lib.place_frozen(lazy, config, sharded._mesh(2, 4), "float32")
  shutil.rmtree(os.path.join(item, "d"))
  with pytest.raises(CheckpointError, match=rf"cannot open the array of parameter '[\w/]+' of the Orbax checkpoint "
                                            rf"item {item} at key target\.[\w.]+/ of the OCDBT store {item} .*Fix: "
                                            r"an incomplete or damaged copy"):
    frozen_lib.load_frozen(ckpt, None, 0)


def test_leaves_that_are_not_arrays_are_restored_by_orbax(tmp_path, reads):
  """Only orbax's array leaves are opened lazily; another leaf (a scalar) is restored whole by orbax."""
  with ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
                             item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=False)}) as mgr:
    mgr.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave(
        {"target": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": 3}, "state": {"step": 1}})))
    mgr.wait_until_finished()
  _, got = read_t5x_orbax(str(tmp_path), lazy=True)
  assert isinstance(got["w"], LazyArray) and isinstance(got["n"], np.ndarray) and int(got["n"]) == 3
  assert reads == []
  np.testing.assert_array_equal(got["w"][1:], [[3, 4, 5]])


@pytest.mark.parametrize("use_ocdbt,use_zarr3", [(False, False), (True, False), (False, True), (True, True)])
def test_the_gcs_spec_is_the_one_orbax_reads(use_ocdbt, use_zarr3):
  """For gs:// (not reachable here) the spec is orbax's own read spec: the same driver and the same
  gcs bucket, paths and OCDBT key."""
  import tensorstore as ts
  ts_utils = pytest.importorskip("orbax.checkpoint._src.serialization.tensorstore_utils")
  item, param = "gs://some-bucket/run/checkpoint_7/state", "target.encoder.layers_0.mlp.wo.kernel"
  ours = t5x_orbax.array_spec(item, param, use_ocdbt, use_zarr3)
  theirs = ts_utils.ArrayReadSpec(item, param, use_zarr3, use_ocdbt=use_ocdbt).json

  def essentials(spec):
    spec = ts.Spec(spec).to_json()
    kv = spec["kvstore"]
    keep = ("driver", "bucket", "path")
    return (spec["driver"], {k: kv[k] for k in keep if k in kv},
            {k: kv["base"][k] for k in keep} if "base" in kv else None)
  assert essentials(ours) == essentials(theirs)
  driver, kvstore, base = essentials(ours)
  assert driver == ("zarr3" if use_zarr3 else "zarr")
  if use_ocdbt:
    assert kvstore == {"driver": "ocdbt", "path": param + "/"}
    assert base == {"driver": "gcs", "bucket": "some-bucket", "path": "run/checkpoint_7/state/"}
  else:
    assert kvstore == {"driver": "gcs", "bucket": "some-bucket", "path": f"run/checkpoint_7/state/{param}/"}

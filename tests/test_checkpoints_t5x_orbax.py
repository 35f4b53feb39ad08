"""T5X checkpoints written with Orbax: the parameters are read, the optimizer state is not.

The checkpoints are written here by orbax itself in the layout of T5X's
`t5x/checkpoints.py::OrbaxCheckpointManagerInterface.save` (`train.use_orbax=True`): an orbax
`CheckpointManager` over MODEL_DIR with `step_prefix='checkpoint'`, one `PyTreeCheckpointHandler`
item named `state` (T5X's `_STATE_KEY`, `use_ocdbt=False`; OCDBT is also tried), holding
`train_state.state_dict()` = `{"target": params, "state": {"step", "param_states"}}`.
"""
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

ocp = pytest.importorskip("orbax.checkpoint")

from spot_jax.checkpoints import (CheckpointError, detect_format, read_params, read_t5x_orbax,  # noqa: E402
                                  t5x_orbax, write_t5x)
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten  # noqa: E402
from spot_jax.config import T5Config  # noqa: E402
from test_checkpoints_t5x import _assert_same  # noqa: E402  (the same equality, stored dtype included)

TINY = T5Config(vocab_size=16, d_model=8, num_heads=2, head_dim=4, d_ff=12, num_encoder_layers=2,
                num_decoder_layers=1, relative_attention_num_buckets=4)


def _params(seed=0, bf16=("token_embedder/embedding", "decoder/logits_dense/kernel")):
  rng = np.random.default_rng(seed)
  flat = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in expected_shapes(TINY).items()}
  for name in bf16:
    flat[name] = flat[name].astype(ml_dtypes.bfloat16)
  return unflatten(flat)


def _param_states(params):
  """Adafactor-like slots beside every parameter (T5X's `state/param_states`)."""
  def slots(arr):
    if arr.ndim == 2:
      return {"v_row": np.full(arr.shape[:1], 7.0, np.float32), "v_col": np.full(arr.shape[1:], 7.0, np.float32)}
    return {"v": np.full(arr.shape, 7.0, np.float32)}
  return unflatten({name: slots(arr) for name, arr in flatten(params).items()})


def write_t5x_orbax(params, model_dir, step, use_ocdbt=False, use_zarr3=False):
  """What T5X's Orbax checkpoint manager writes: MODEL_DIR/checkpoint_<step>/state/. `params` may be
  numpy arrays or (as T5X saves them) sharded jax.Arrays."""
  state_dict = {"target": params,
                "state": {"step": np.asarray(step, np.int32), "param_states": _param_states(params)}}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", cleanup_tmp_directories=True)
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt, use_zarr3=use_zarr3)
  with ocp.CheckpointManager(str(model_dir), options=options, item_handlers={"state": handler}) as mgr:
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state_dict)))
    mgr.wait_until_finished()
  return os.path.join(str(model_dir), f"checkpoint_{step}")


def write_legacy_t5x_orbax(params, model_dir, step, use_ocdbt=False, aggregated=()):
  """What T5X's Orbax checkpoint manager wrote with orbax older than 0.4.3, which turned its JSON tree
  metadata on by default: the step without `_CHECKPOINT_METADATA` (orbax 0.5.11 added it), the `state`
  item without `_METADATA`, its tree in the msgpack file `checkpoint`, which PyTreeCheckpointHandler
  wrote until 0.5.16: each array leaf the string `PLACEHOLDER://<name>`, `<name>` the tree path joined
  with "."; each leaf in `aggregated` (saved with `SaveArgs(aggregate=True)`, as T5X saved the leaves
  without mesh axes) its value, with no array of its own.

  Orbax 0.12.8 no longer writes that file, but still has the writer that wrote it
  (`aggregate_handlers.MsgpackHandler`: flax's msgpack serialization) and still restores such an item
  (the tests check that it does). The arrays are the ones orbax writes today under the same names: zarr
  v2 directories (each `.zarray` names its compressor), or an OCDBT store (the default since orbax
  0.4.0; an aggregated leaf's array stays in it, unreferenced)."""
  import asyncio

  import jax
  from etils import epath
  from orbax.checkpoint import aggregate_handlers, utils as ocp_utils

  ckpt = write_t5x_orbax(params, model_dir, step, use_ocdbt=use_ocdbt)
  item = os.path.join(ckpt, "state")
  state_dict = {"target": params,
                "state": {"step": np.asarray(step, np.int32), "param_states": _param_states(params)}}

  def leaf(path, value):
    name = ".".join(k.key for k in path)
    if name not in aggregated:
      return ocp_utils.leaf_placeholder(name)
    if not use_ocdbt:
      shutil.rmtree(os.path.join(item, name))
    return np.asarray(value)
  tree = jax.tree_util.tree_map_with_path(leaf, state_dict)
  os.remove(os.path.join(item, "_METADATA"))
  os.remove(os.path.join(ckpt, "_CHECKPOINT_METADATA"))

  async def write():
    (await aggregate_handlers.MsgpackHandler().serialize(epath.Path(item) / "checkpoint", tree)).result()
  asyncio.run(write())
  return ckpt


@pytest.mark.parametrize("use_ocdbt", [False, True])
def test_params_and_logits_equal_the_written_ones_bf16_kept(tmp_path, use_ocdbt):
  params = _params()
  ckpt = write_t5x_orbax(params, tmp_path, step=5, use_ocdbt=use_ocdbt)
  # T5X's Orbax layout: step metadata, the `state` item with tree metadata, arrays named by tree path.
  assert os.path.isfile(os.path.join(ckpt, "_CHECKPOINT_METADATA"))
  assert os.path.isfile(os.path.join(ckpt, "state", "_METADATA"))
  assert not os.path.exists(os.path.join(ckpt, "checkpoint"))  # no native msgpack file
  if not use_ocdbt:
    assert os.path.isdir(os.path.join(ckpt, "state", "target.token_embedder.embedding"))
    assert os.path.isdir(os.path.join(ckpt, "state", "state.param_states.encoder.encoder_norm.scale.v"))
  assert detect_format(str(tmp_path)) == "t5x_orbax"

  config, got = read_params(str(tmp_path))
  _assert_same(params, got)  # exactly the parameters: no `state`, no optimizer slots, no wrapper
  assert got["token_embedder"]["embedding"].dtype == ml_dtypes.bfloat16
  assert got["encoder"]["encoder_norm"]["scale"].dtype == np.float32
  assert all(isinstance(v, np.ndarray) for v in flatten(got).values())
  assert config == TINY.replace(dropout_rate=config.dropout_rate)  # inferred as for native T5X

  from spot_jax.loader import LoadedT5, load_t5
  model = load_t5(str(tmp_path))
  ids, dec = np.array([[3, 4, 5, 1]]), np.array([[0, 3, 4]])
  want = LoadedT5(model.config, params).logits(ids, dec)
  np.testing.assert_array_equal(model.logits(ids, dec), want)
  native = load_t5(write_t5x(params, str(tmp_path / "native"), step=5))  # same weights, native layout
  np.testing.assert_array_equal(native.logits(ids, dec), want)
  prompt = np.random.default_rng(1).uniform(-0.5, 0.5, (3, TINY.d_model)).astype(np.float32)
  np.testing.assert_array_equal(model.logits(ids, dec, prompt=prompt), native.logits(ids, dec, prompt=prompt))


def test_an_item_without_metadata_is_read_and_its_damage_named(tmp_path):
  """Older orbax's layout (no `_METADATA`, the tree in the msgpack `checkpoint`; read by slices in
  test_checkpoints_t5x_orbax_sharded_read.py): every path form finds it, the parameters come back as
  written (bfloat16 kept), and a missing array or a damaged msgpack names the path and the fix."""
  params = _params()
  ckpt = write_legacy_t5x_orbax(params, tmp_path, step=4)
  item = os.path.join(ckpt, "state")
  tree_file = os.path.join(item, "checkpoint")
  assert {detect_format(p) for p in (str(tmp_path), ckpt, item, tree_file)} == {"t5x_orbax"}
  for path in (str(tmp_path), ckpt, item, tree_file):
    _assert_same(params, read_params(path)[1])
  shutil.rmtree(os.path.join(item, "target.encoder.layers_1.mlp.wo.kernel"))
  with pytest.raises(CheckpointError, match=rf"cannot open the array of parameter 'encoder/layers_1/mlp/wo/kernel' of "
                                            rf"the Orbax checkpoint item {item} at {item}/target.encoder.layers_1.mlp"
                                            r".wo.kernel .*copy the whole checkpoint_<step>/ directory again"):
    read_params(ckpt)
  with open(os.path.join(item, "checkpoint"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(CheckpointError, match=rf"{item}/checkpoint is not a valid msgpack checkpoint file .*copy it again"):
    read_params(ckpt)


def test_optimizer_state_is_not_read(tmp_path):
  params = _params()
  ckpt = write_t5x_orbax(params, tmp_path, step=3)
  for name in os.listdir(os.path.join(ckpt, "state")):
    if name.startswith("state."):  # every optimizer array (step, param_states) gone
      shutil.rmtree(os.path.join(ckpt, "state", name))
  _, got = read_params(ckpt)
  _assert_same(params, got)


def test_parent_dir_vs_step_dir_vs_state_item(tmp_path, monkeypatch):
  old, new = _params(seed=1), _params(seed=2)
  write_t5x_orbax(old, tmp_path, step=2)
  write_t5x_orbax(new, tmp_path, step=9)
  _assert_same(new, read_params(str(tmp_path))[1])  # the parent: its newest step
  step_dir, got = read_t5x_orbax(str(tmp_path))
  assert step_dir == os.path.join(str(tmp_path), "checkpoint_9")
  _assert_same(new, got)
  _assert_same(old, read_params(str(tmp_path / "checkpoint_2"))[1])
  _assert_same(old, read_params(str(tmp_path / "checkpoint_2") + "/")[1])
  _assert_same(old, read_params(str(tmp_path / "checkpoint_2" / "state"))[1])  # the item stands for its step
  assert detect_format(str(tmp_path / "checkpoint_2")) == "t5x_orbax"
  monkeypatch.chdir(tmp_path)
  _assert_same(old, read_params("checkpoint_2")[1])  # relative paths too (orbax itself refuses them)
  _assert_same(new, read_params(".")[1])
  with pytest.raises(CheckpointError, match=r"checkpoint_4 does not exist; .* its checkpoints are steps \[2, 9\]"):
    read_params(str(tmp_path / "checkpoint_4"))
  # An unfinished orbax save (tmp directory) is not a step.
  (tmp_path / "checkpoint_12.orbax-checkpoint-tmp-99").mkdir()
  _assert_same(new, read_params(str(tmp_path))[1])


def test_newest_step_wins_across_native_and_orbax_steps(tmp_path):
  a, b, c = _params(seed=1), _params(seed=2), _params(seed=3)
  write_t5x(a, str(tmp_path), step=3)
  write_t5x_orbax(b, tmp_path, step=9)
  assert detect_format(str(tmp_path)) == "t5x_orbax"
  _assert_same(b, read_params(str(tmp_path))[1])
  write_t5x(c, str(tmp_path), step=12)
  assert detect_format(str(tmp_path)) == "t5x"
  _assert_same(c, read_params(str(tmp_path))[1])


def test_missing_state_item_names_the_path_and_the_fix(tmp_path):
  ckpt = write_t5x_orbax(_params(), tmp_path, step=4)
  shutil.rmtree(os.path.join(ckpt, "state"))
  for path in (ckpt, str(tmp_path)):
    with pytest.raises(CheckpointError, match=rf"{ckpt} is an Orbax checkpoint step without its `state` item "
                                              rf"directory .*{ckpt}/state: .*copy the whole checkpoint_<step>/ "
                                              r"directory again"):
      read_params(path)


def test_damaged_item_names_the_path_and_the_fix(tmp_path):
  ckpt = write_t5x_orbax(_params(), tmp_path, step=4)
  item = os.path.join(ckpt, "state")
  shutil.rmtree(os.path.join(item, "target.encoder.layers_1.mlp.wo.kernel"))
  with pytest.raises(CheckpointError, match=rf"cannot restore the parameters \(`target`\) of the Orbax checkpoint "
                                            rf"item {item} .*copy the whole checkpoint_<step>/ directory again"):
    read_params(ckpt)
  with open(os.path.join(item, "_METADATA"), "w") as f:
    f.write("{ not json")
  with pytest.raises(CheckpointError, match=rf"cannot read the Orbax tree metadata of {item} .*copy the whole"):
    read_params(ckpt)


def test_orbax_tree_without_target_is_not_a_t5x_train_state(tmp_path):
  with ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
                             item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=False)}) as mgr:
    mgr.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave({"params": {"w": np.ones((2, 2), np.float32)}})))
    mgr.wait_until_finished()
  with pytest.raises(CheckpointError, match=r"holds no `target` parameters \(top-level keys: \['params'\]\)"):
    read_params(str(tmp_path))


def test_a_bare_orbax_pytree_is_not_taken_for_a_t5x_step(tmp_path):
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "ckpt"), {"params": {"w": np.ones((2, 2), np.float32)}})
  assert (tmp_path / "ckpt" / "_METADATA").exists()
  with pytest.raises(CheckpointError, match=r"looks like an Orbax checkpoint .* but not one T5X wrote: .*"
                                            r"checkpoint_<step>/state/"):
    read_params(str(tmp_path / "ckpt"))


def test_selected_parameters_are_restored_alone(tmp_path, orbax_reads):
  """`select` narrows the partial restore to some parameters (a prompt without its frozen T5); the
  names come from the tree metadata without opening an array."""
  params = _params()
  ckpt = write_t5x_orbax(params, tmp_path, step=6)
  read = orbax_reads
  step_dir, names = t5x_orbax.target_names(str(tmp_path))
  assert step_dir == ckpt and names == sorted(flatten(params)) and read == []
  want = "encoder/layers_1/mlp/wo/kernel"
  step_dir, got = read_t5x_orbax(os.path.join(ckpt, "state"), select=lambda name: name == want)
  assert step_dir == ckpt and list(flatten(got)) == [want] and read == ["target.encoder.layers_1.mlp.wo.kernel"]
  np.testing.assert_array_equal(flatten(got)[want], flatten(params)[want])
  assert read_t5x_orbax(ckpt, select=lambda name: False) == (ckpt, {})
  assert read == ["target.encoder.layers_1.mlp.wo.kernel"]

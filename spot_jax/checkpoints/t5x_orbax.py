"""T5X checkpoints written with Orbax (`train.use_orbax=True`): read the model parameters only.

Layout (T5X `t5x/checkpoints.py`, `OrbaxCheckpointManagerInterface`: an Orbax `CheckpointManager`
with `step_prefix='checkpoint'` and one `PyTreeCheckpointHandler` item named `state`):

    MODEL_DIR/checkpoint_<step>/_CHECKPOINT_METADATA      Orbax step metadata (JSON)
    MODEL_DIR/checkpoint_<step>/state/_METADATA           tree metadata of the train state (JSON)
    MODEL_DIR/checkpoint_<step>/state/target.<dotted>     one zarr array per parameter (use_ocdbt=False),
                                                           or an OCDBT store (manifest.ocdbt, d/, ocdbt.process_*)
    MODEL_DIR/checkpoint_<step>/state/state.step, state.param_states.<dotted>...   optimizer state
    MODEL_DIR/checkpoint_<step>/dataset/                   the tf.data iterator (optional item)

The saved tree is T5X's `train_state.state_dict()`: `{"target": params, "state": {"step", "param_states"},
["flax_mutables"]}` with T5X parameter names under `target` (no `optimizer` wrapper, unlike the
native msgpack layout). Only `target` is restored, with orbax's partial restore, as numpy arrays in
their stored dtype; the optimizer state is never read. `read_t5x_orbax(path, select=...)` narrows that
to chosen parameters (a prompt-tuning run's prompt without its frozen T5), and `target_names` lists
the parameters from the tree metadata alone, opening no array.

`read_t5x_orbax(path, lazy=True)` (what `read_params(..., lazy=True)` and so `frozen_model.load_frozen`
ask for) opens each parameter's array with TensorStore itself, metadata only, and returns
`lazy.LazyArray`s that read the slices asked for (`frozen_model.place_frozen`: each device's shard), as
for the native layout. The TensorStore spec is built as orbax builds its read spec (its
`ts_utils.build_array_read_spec`), from what `_METADATA` records (`use_ocdbt`, `use_zarr3`,
`store_array_data_equal_to_fill_value`):

    use_ocdbt=False:  {"driver": "zarr"|"zarr3", "kvstore": <item>/<name>}   (file, or gcs for gs://)
    use_ocdbt=True:   {"driver": "zarr"|"zarr3", "kvstore": {"driver": "ocdbt", "base": <item>/, "path": <name>}}

where <name> is orbax's parameter name, the tree path joined with "." (`target.encoder.layers_0...`);
the same spec for leaves orbax saved as numpy arrays and as `jax.Array`s. Leaves whose `value_type` is
not an array (scalars, strings) or that orbax marks `skip_deserialize` are restored whole through orbax.

An item without `_METADATA` is one orbax older than 0.4.3 wrote (it turned the JSON tree metadata on
by default in 0.4.3; until 0.5.16 it also wrote the msgpack below). Its tree is the msgpack file
`checkpoint` in the item (flax's serialization, orbax's "aggregate" file): the saved tree, each leaf
either its value (a leaf saved with `SaveArgs(aggregate=True)`: T5X aggregates those without mesh axes)
or the string `PLACEHOLDER://<name>` for an array saved with TensorStore under orbax's parameter name, as
above: a zarr directory `<item>/<name>`, or, when the item holds `manifest.ocdbt` (orbax 0.4.0 made
OCDBT the default), the key `<name>/` of that OCDBT store; zarr v2 (zarr3 came after `_METADATA`). Orbax
0.12.8 still restores such an item (a whole restore only: its partial restore needs `_METADATA`, and
`metadata()` refuses the item), so it is read here without orbax, from that msgpack: the placeholders'
arrays opened with TensorStore as above (lazily, or read whole, all in flight at once, when not
`lazy`), the values taken from the msgpack.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from spot_jax import fileio
from spot_jax.checkpoints import t5x
from spot_jax.checkpoints.infer_config import CheckpointError, flatten, unflatten

STATE_ITEM = "state"  # T5X's `_STATE_KEY`: the train-state item of each step
STEP_METADATA = "_CHECKPOINT_METADATA"  # written by orbax's CheckpointManager in each step directory
TREE_METADATA = "_METADATA"  # written by PyTreeCheckpointHandler in the item directory
_LEGACY_AGGREGATE = "checkpoint"  # older orbax: msgpack of the tree with PLACEHOLDER:// leaves
_PLACEHOLDERS = ("PLACEHOLDER://", "AGGREGATED://")  # orbax's `utils.leaf_is_placeholder` prefixes
OCDBT_MANIFEST = "manifest.ocdbt"  # an OCDBT item's (merged) manifest; orbax's test for OCDBT when
                                   # `_METADATA` does not say
_ARRAY_VALUE_TYPES = ("np.ndarray", "jax.Array")  # orbax's numpy and jax.Array handlers: one zarr array each
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")

_COPY_AGAIN = ("an incomplete or damaged copy: copy the whole checkpoint_<step>/ directory again "
               "(e.g. `gsutil -m cp -r`)")


def _item_dir(step_dir: str) -> str:
  return t5x.join(step_dir, STATE_ITEM)


def is_orbax_step_dir(path: str) -> bool:
  """Whether `path` is an Orbax-written T5X step directory (even one whose `state` item is missing)."""
  if not t5x.isdir(path):
    return False
  item = _item_dir(path)
  if t5x.isdir(item) and (t5x.exists(t5x.join(item, TREE_METADATA)) or
                          t5x.exists(t5x.join(item, _LEGACY_AGGREGATE))):
    return True
  # A step whose item is missing still has the manager's step metadata; a bare orbax PyTree directory
  # (its own `_METADATA` at the top) is not a T5X step.
  return t5x.exists(t5x.join(path, STEP_METADATA)) and not t5x.exists(t5x.join(path, TREE_METADATA))


def orbax_steps(directory: str) -> List[int]:
  """Steps of the Orbax `checkpoint_<step>/` directories under a model directory, ascending
  (orbax's `checkpoint_<step>.orbax-checkpoint-tmp-*` leftovers of unfinished saves are not steps)."""
  if not t5x.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(_STEP_DIR.match, t5x.listdir(directory))
                if m and is_orbax_step_dir(t5x.join(directory, m.group(0))))


def step_dir_of_item(path: str) -> Optional[str]:
  """`checkpoint_<step>` for a path naming its `state` item directory, else None."""
  stripped = str(path).rstrip("/")
  parent, _, base = stripped.rpartition("/")
  if base == STATE_ITEM and parent and _STEP_DIR.match(parent.rpartition("/")[2]) and is_orbax_step_dir(parent):
    return parent
  return None


def _read_tree_metadata(item: str) -> Optional[Any]:
  """The item's `_METADATA` JSON, None when there is none (the older msgpack layout)."""
  import json
  path = t5x.join(item, TREE_METADATA)
  if not t5x.exists(path):
    return None
  return json.loads(t5x.read_bytes(path))  # ValueError on a damaged file: reported by the caller


def _read_legacy_tree(item: str) -> Optional[Dict[str, Any]]:
  """The saved tree from older orbax's msgpack `checkpoint` file (leaves: values, or
  `PLACEHOLDER://<name>` for arrays saved with TensorStore); None when the item has no such file."""
  path = t5x.join(item, _LEGACY_AGGREGATE)
  if not t5x.exists(path):
    return None
  return t5x.decode_msgpack(t5x.read_bytes(path), path)


def _is_placeholder(leaf: Any) -> bool:
  return isinstance(leaf, str) and leaf.startswith(_PLACEHOLDERS)


def _tree_structure(meta: Optional[Any]) -> Optional[Dict[str, Any]]:
  """The saved tree's dict structure (leaves 0, as jax drops None leaves) from the item's `_METADATA`
  JSON (`tree_metadata`: one entry per leaf with its `key_metadata` path), without opening any array;
  None when the file is not in that form (orbax's own `metadata()` is used then)."""
  if meta is None:
    return None
  leaves = meta.get("tree_metadata") if isinstance(meta, dict) else None
  if not isinstance(leaves, dict):
    return None
  tree: Dict[str, Any] = {}
  for entry in leaves.values():
    keys = [k.get("key") for k in (entry or {}).get("key_metadata") or []]
    if not keys or not all(isinstance(k, str) for k in keys):
      return None  # sequence indices or an unknown form: let orbax read it
    node = tree
    for key in keys[:-1]:
      node = node.setdefault(key, {})
      if not isinstance(node, dict):
        return None
    node[keys[-1]] = 0
  return tree


def _quiet_absl():
  """Silences absl's warnings while orbax reads an item (it warns about step metadata an item
  directory never has); returns the level to restore."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  return level


def _local_abspath(item: str) -> str:
  return item if t5x.is_gcs(item) else os.path.abspath(item)  # orbax refuses relative paths


def _target_structure(item: str) -> Dict[str, Any]:
  """The `target` subtree's structure (dicts down to placeholder leaves), from the item's metadata."""
  return _target_and_metadata(item)[0]


def _target_and_metadata(item: str) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], bool]:
  """(`_target_structure`, the item's `_METADATA` JSON when the structure came from it, else None,
  whether the structure came from older orbax's msgpack `checkpoint`: then its leaves are that file's,
  values or `PLACEHOLDER://` strings)."""
  import orbax.checkpoint as ocp
  from etils import epath

  level = _quiet_absl()
  meta, legacy = None, False
  try:
    try:
      meta = _read_tree_metadata(item)
      tree = _tree_structure(meta)
      if tree is None and meta is None:  # no _METADATA: older orbax, whose tree is the msgpack file
        tree = _read_legacy_tree(item)
        legacy = tree is not None
      if tree is None:  # not the JSON layout: ask orbax (it opens every array's metadata, optimizer's too)
        meta = None
        tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(_local_abspath(item)))
        tree = getattr(tree, "tree", tree)
    except CheckpointError:
      raise
    except Exception as e:  # missing or unparsable _METADATA: orbax raises several types
      raise CheckpointError(f"cannot read the Orbax tree metadata of {item} ({type(e).__name__}: "
                            f"{t5x._one_line(e)}): {_COPY_AGAIN}") from e
  finally:
    logging.getLogger("absl").setLevel(level)
  if not isinstance(tree, dict) or not isinstance(tree.get("target"), dict):
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise CheckpointError(f"{item} holds no `target` parameters (top-level keys: {keys}): not a T5X train "
                          "state written by T5X's Orbax checkpoint manager")
  return tree["target"], meta, legacy


def _leaf_names(tree: Any, prefix: str = "") -> List[str]:
  """Slash-joined names of a nested dict's leaves (orbax metadata leaves are not dicts)."""
  if not isinstance(tree, dict):
    return [prefix]
  out = []
  for key, value in tree.items():
    out.extend(_leaf_names(value, f"{prefix}/{key}" if prefix else str(key)))
  return out


def _leaf(tree: Dict[str, Any], name: str) -> Any:
  for key in name.split("/"):
    tree = tree[key]
  return tree


def _subtree(tree: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
  """The part of `tree` holding only the leaves `names` (slash-joined), structure kept."""
  out: Dict[str, Any] = {}
  for name in names:
    src, dst = tree, out
    keys = name.split("/")
    for key in keys[:-1]:
      src = src[key]
      dst = dst.setdefault(key, {})
    dst[keys[-1]] = src[keys[-1]]
  return out


def _restore_target(item: str, target: Dict[str, Any]) -> Dict[str, Any]:
  """Restore the leaves of `target` (a part of the saved `target` subtree's structure) as numpy arrays;
  orbax's partial restore opens no other array of the item."""
  import jax
  import orbax.checkpoint as ocp
  from etils import epath

  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  level = _quiet_absl()
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(epath.Path(_local_abspath(item)), args=ocp.args.PyTreeRestore(
          item={"target": target}, restore_args={"target": restore_args}, partial_restore=True))
  except Exception as e:  # a missing/damaged array directory, chunk or OCDBT file
    raise CheckpointError(f"cannot restore the parameters (`target`) of the Orbax checkpoint item {item} "
                          f"({type(e).__name__}: {t5x._one_line(e)}): {_COPY_AGAIN}") from e
  finally:
    logging.getLogger("absl").setLevel(level)
  return restored["target"]


class _Layout:
  """How the item stores its arrays, as its `_METADATA` records it (orbax reads it the same way)."""

  def __init__(self, item: str, meta: Dict[str, Any]):
    use_ocdbt = meta.get("use_ocdbt")
    self.use_ocdbt = bool(t5x.exists(t5x.join(item, OCDBT_MANIFEST)) if use_ocdbt is None else use_ocdbt)
    self.use_zarr3 = bool(meta.get("use_zarr3", False))
    # Orbax now writes every chunk, fill-valued ones too (a missing chunk is then damage); older
    # versions left chunks equal to the fill value out (read as fills).
    self.fill_missing = not meta.get("store_array_data_equal_to_fill_value", False)
    # slash-joined name under `target` -> orbax's parameter name (the key path joined with ".")
    self.arrays: Dict[str, str] = {}
    for entry in meta["tree_metadata"].values():
      keys = [k["key"] for k in entry["key_metadata"]]
      value = entry.get("value_metadata")
      if len(keys) > 1 and keys[0] == "target" and isinstance(value, dict) and \
          value.get("value_type") in _ARRAY_VALUE_TYPES and not value.get("skip_deserialize"):
        self.arrays["/".join(keys[1:])] = ".".join(keys)

  @classmethod
  def legacy(cls, item: str, target: Dict[str, Any]) -> "_Layout":
    """The layout of an item older orbax wrote without `_METADATA` (the module docstring): zarr v2,
    OCDBT when the item holds its manifest (orbax's own test), chunks equal to the fill value left out;
    the arrays are the `target` leaves its msgpack holds as placeholders."""
    layout = cls.__new__(cls)
    layout.use_ocdbt = bool(t5x.exists(t5x.join(item, OCDBT_MANIFEST)))
    layout.use_zarr3, layout.fill_missing = False, True
    layout.arrays = {}
    for name in _leaf_names(target):
      leaf = _leaf(target, name)
      if _is_placeholder(leaf):
        layout.arrays[name] = leaf.split("://", 1)[1]
    return layout

  @property
  def metadata_file(self) -> str:
    return "zarr.json" if self.use_zarr3 else ".zarray"

  def where(self, item: str, param: str) -> str:
    """Where the array of orbax parameter `param` lies, for messages."""
    return f"key {param}/ of the OCDBT store {item}" if self.use_ocdbt else t5x.join(item, param)


def _kvstore(path: str) -> Dict[str, Any]:
  """The TensorStore kvstore of a local directory (absolute: `file`) or of gs://bucket/dir (`gcs`)."""
  if not t5x.is_gcs(path):
    return {"driver": "file", "path": os.path.abspath(path)}
  m = re.fullmatch(r"gs://([^/]+)/(.+)", str(path).rstrip("/"), re.DOTALL)
  if m is None:
    raise CheckpointError(f"malformed gs:// path {path!r}; expected gs://bucket/dir")
  return {"driver": "gcs", "bucket": m.group(1), "path": m.group(2)}


def array_spec(item: str, param: str, use_ocdbt: bool, use_zarr3: bool = False,
               fill_missing: bool = False) -> Dict[str, Any]:
  """The TensorStore spec that opens the array orbax saved as parameter `param` (`target.encoder...`)
  in the item directory `item` (local or gs://): a zarr (zarr3) directory `item/param`, or, with
  OCDBT, the key prefix `param/` of the OCDBT database whose manifest is `item/manifest.ocdbt`."""
  if use_ocdbt:
    base = _kvstore(item)
    base["path"] = base["path"].rstrip("/") + "/"  # a directory: the database's files are under it
    kvstore = {"driver": "ocdbt", "base": base, "path": param + "/"}
  else:
    kvstore = _kvstore(t5x.join(item, param))
  # Checkpoint files never change: what is cached is not checked again.
  return {"driver": "zarr3" if use_zarr3 else "zarr", "kvstore": kvstore, "recheck_cached_data": False,
          "recheck_cached_metadata": False, "fill_missing_data_reads": bool(fill_missing)}


def _open_lazy(item: str, names: List[str], layout: _Layout, whole: bool = False) -> Dict[str, Any]:
  """`LazyArray`s of the parameters `names` (slash-joined, under `target`): every array opened now
  (its metadata read and checked), none read; a slice is read when asked for, through `t5x.read_slice`.
  `whole`: numpy arrays instead, each read whole, all reads in flight at once."""
  import tensorstore as ts
  from spot_jax.checkpoints.lazy import LazyArray

  # One context for all: OCDBT's manifest and b-tree nodes are read once, and a chunk holding several of
  # this process's shards is decoded once (as for the native layout).
  context = ts.Context({"cache_pool": {"total_bytes_limit": t5x._LAZY_CACHE_BYTES}})
  params = {name: layout.arrays[name] for name in names}
  specs = {name: array_spec(item, param, layout.use_ocdbt, layout.use_zarr3, layout.fill_missing)
           for name, param in params.items()}
  opening = {name: ts.open(spec, open=True, read=True, context=context) for name, spec in specs.items()}
  stores = {}
  for name, future in opening.items():
    try:
      stores[name] = future.result()
    except Exception as e:  # `from None`: the chained TensorStore error repeats the whole spec
      raise CheckpointError(
          f"cannot open the array of parameter {name!r} of the Orbax checkpoint item {item} at "
          f"{layout.where(item, params[name])} (its {layout.metadata_file} metadata or the array itself is "
          f"missing or invalid): {fileio.short_error(e)}. Fix: {_COPY_AGAIN}") from None

  def finish(name, future):
    try:
      return np.asarray(future.result())
    except Exception as e:
      raise CheckpointError(
          f"cannot read the array of parameter {name!r} of the Orbax checkpoint item {item} at "
          f"{layout.where(item, params[name])} (a chunk missing or damaged): {fileio.short_error(e)}. "
          f"Fix: {_COPY_AGAIN}") from None

  if whole:
    reading = {name: t5x.read_slice(store, ()) for name, store in stores.items()}
    return {name: finish(name, future) for name, future in reading.items()}

  def reader(name):
    store = stores[name]
    return lambda index: finish(name, t5x.read_slice(store, index))
  return {name: LazyArray(store.domain.shape, np.dtype(store.dtype.numpy_dtype), reader(name), name)
          for name, store in stores.items()}


def _read_legacy(item: str, target: Dict[str, Any], lazy: bool) -> Dict[str, Any]:
  """The `target` leaves of an item older orbax wrote (the module docstring): placeholders' arrays opened
  with TensorStore (lazily, or read whole), values as its msgpack holds them."""
  layout = _Layout.legacy(item, target)
  names = _leaf_names(target)
  flat = _open_lazy(item, [name for name in names if name in layout.arrays], layout, whole=not lazy)
  for name in names:
    if name in layout.arrays:
      continue
    value = _leaf(target, name)
    if not isinstance(value, (np.ndarray, np.generic, int, float, bool)) or _is_placeholder(value):
      raise CheckpointError(f"the Orbax checkpoint item {item} holds {value!r} for parameter {name!r} in its "
                            f"msgpack `{_LEGACY_AGGREGATE}` file, neither an array nor a placeholder of one: "
                            f"{_COPY_AGAIN}")
    flat[name] = np.asarray(value)
  return unflatten(flat)


def _step_item(path: str) -> Tuple[str, str]:
  """(step directory, its `state` item) for a step directory, its item or a model directory (newest
  Orbax step)."""
  step_dir = step_dir_of_item(path) or str(path).rstrip("/")
  if not is_orbax_step_dir(step_dir):
    steps = orbax_steps(step_dir)
    if not steps:
      raise CheckpointError(f"{path} holds no Orbax T5X checkpoint_<step>/ directory")
    step_dir = t5x.join(step_dir, f"checkpoint_{steps[-1]}")
  item = _item_dir(step_dir)
  if not t5x.isdir(item):
    found = ", ".join(sorted(t5x.listdir(step_dir))[:8])
    raise CheckpointError(f"{step_dir} is an Orbax checkpoint step without its `{STATE_ITEM}` item directory "
                          f"(it holds: {found}); T5X writes the model parameters to {item}: {_COPY_AGAIN}")
  return step_dir, item


def target_names(path: str) -> Tuple[str, List[str]]:
  """(step directory, sorted slash-joined names of its `target` parameters), read from the tree
  metadata only: no array is opened. `path` as for `read_t5x_orbax`."""
  step_dir, item = _step_item(path)
  return step_dir, sorted(_leaf_names(_target_structure(item)))


def read_t5x_orbax(path: str, select: Optional[Callable[[str], bool]] = None,
                   lazy: bool = False) -> Tuple[str, Dict[str, Any]]:
  """Read the parameters (`state` item, `target` subtree) of an Orbax-written T5X checkpoint.

  `path` is a `checkpoint_<step>` directory, its `state` item directory, or a model directory (the
  newest Orbax step is read). Returns the step directory read and the T5X-named parameter tree of
  numpy arrays, dtypes as stored. `select(name)` (slash-joined name under `target`) keeps only some
  parameters, and only those are restored from disk: a prompt out of an XXL run's checkpoint without
  reading its frozen weights. Selecting nothing returns an empty tree and opens no array.

  `lazy`: each array is opened with TensorStore (its metadata read: a missing or invalid array fails
  here, naming the parameter) but not read; it comes back as a `lazy.LazyArray` of the stored dtype that
  reads the slices asked for (`frozen_model.place_frozen` reads each device's shard only), a damaged
  chunk failing when read. Only the layouts the module docstring describes are opened so; a leaf that
  is not an array is restored whole by orbax, as without `lazy`. An item older orbax wrote without
  `_METADATA` is read without orbax, from its msgpack tree (the module docstring), lazily or not.
  """
  step_dir, item = _step_item(path)
  target, meta, legacy = _target_and_metadata(item)
  if select is not None:
    target = _subtree(target, [name for name in _leaf_names(target) if select(name)])
    if not target:
      return step_dir, {}
  if legacy:  # older orbax: no _METADATA, the tree from its msgpack; orbax cannot restore a part of it
    return step_dir, _read_legacy(item, target, lazy)
  opened: Dict[str, Any] = {}
  if lazy and meta is not None:
    layout = _Layout(item, meta)
    names = _leaf_names(target)
    opened = _open_lazy(item, [name for name in names if name in layout.arrays], layout)
    rest = [name for name in names if name not in opened]
    target = _subtree(target, rest) if rest else {}
  params = _restore_target(item, target) if target else {}
  flat = flatten(params)
  odd = sorted(name for name, value in flat.items() if not isinstance(value, np.ndarray))
  if odd:
    raise CheckpointError(f"the Orbax checkpoint item {item} restored no array for {odd[:5]}: {_COPY_AGAIN}")
  flat.update(opened)
  return step_dir, unflatten(flat)

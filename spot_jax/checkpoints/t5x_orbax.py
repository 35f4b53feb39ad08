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
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from spot_jax.checkpoints import t5x
from spot_jax.checkpoints.infer_config import CheckpointError, flatten, unflatten

STATE_ITEM = "state"  # T5X's `_STATE_KEY`: the train-state item of each step
STEP_METADATA = "_CHECKPOINT_METADATA"  # written by orbax's CheckpointManager in each step directory
TREE_METADATA = "_METADATA"  # written by PyTreeCheckpointHandler in the item directory
_LEGACY_AGGREGATE = "checkpoint"  # older orbax: msgpack of the tree with PLACEHOLDER:// leaves
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


def _tree_structure(item: str) -> Optional[Dict[str, Any]]:
  """The saved tree's dict structure (leaves 0, as jax drops None leaves) from the item's `_METADATA`
  JSON (`tree_metadata`: one entry per leaf with its `key_metadata` path), without opening any array;
  None when the file is not in that form (orbax's own `metadata()` is used then)."""
  import json
  path = t5x.join(item, TREE_METADATA)
  if not t5x.exists(path):
    return None
  meta = json.loads(t5x.read_bytes(path))  # ValueError on a damaged file: reported by the caller
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
  import orbax.checkpoint as ocp
  from etils import epath

  level = _quiet_absl()
  try:
    try:
      tree = _tree_structure(item)
      if tree is None:  # not the JSON layout: ask orbax (it opens every array's metadata, optimizer's too)
        tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(_local_abspath(item)))
        tree = getattr(tree, "tree", tree)
    except Exception as e:  # missing or unparsable _METADATA: orbax raises several types
      raise CheckpointError(f"cannot read the Orbax tree metadata of {item} ({type(e).__name__}: "
                            f"{t5x._one_line(e)}): {_COPY_AGAIN}") from e
  finally:
    logging.getLogger("absl").setLevel(level)
  if not isinstance(tree, dict) or not isinstance(tree.get("target"), dict):
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise CheckpointError(f"{item} holds no `target` parameters (top-level keys: {keys}): not a T5X train "
                          "state written by T5X's Orbax checkpoint manager")
  return tree["target"]


def _leaf_names(tree: Any, prefix: str = "") -> List[str]:
  """Slash-joined names of a nested dict's leaves (orbax metadata leaves are not dicts)."""
  if not isinstance(tree, dict):
    return [prefix]
  out = []
  for key, value in tree.items():
    out.extend(_leaf_names(value, f"{prefix}/{key}" if prefix else str(key)))
  return out


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


def read_t5x_orbax(path: str, select: Optional[Callable[[str], bool]] = None) -> Tuple[str, Dict[str, Any]]:
  """Read the parameters (`state` item, `target` subtree) of an Orbax-written T5X checkpoint.

  `path` is a `checkpoint_<step>` directory, its `state` item directory, or a model directory (the
  newest Orbax step is read). Returns the step directory read and the T5X-named parameter tree of
  numpy arrays, dtypes as stored. `select(name)` (slash-joined name under `target`) keeps only some
  parameters, and only those are restored from disk: a prompt out of an XXL run's checkpoint without
  reading its frozen weights. Selecting nothing returns an empty tree and opens no array.
  """
  step_dir, item = _step_item(path)
  target = _target_structure(item)
  if select is not None:
    target = _subtree(target, [name for name in _leaf_names(target) if select(name)])
    if not target:
      return step_dir, {}
  params = _restore_target(item, target)
  flat = flatten(params)
  odd = sorted(name for name, value in flat.items() if not isinstance(value, np.ndarray))
  if odd:
    raise CheckpointError(f"the Orbax checkpoint item {item} restored no array for {odd[:5]}: {_COPY_AGAIN}")
  return step_dir, unflatten(flat)

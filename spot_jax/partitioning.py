"""Device mesh `(data, model)` and the logical-axis rules that place parameters, prompt and batch.

Frozen weights are split over `model` by their logical axes (T5X rules); the prompt is replicated;
batches are split over `data`. The same code serves 1 CPU, forced CPU devices, GPUs and TPU pods.
"""
from __future__ import annotations

import functools
from typing import Tuple

import gin
import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DEFAULT_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("embed", None),
    ("kv", None),
    ("relpos_buckets", None),
    ("prompt", None),
    ("prompt_embed", None),
    ("length", None),
)


@gin.configurable
def make_mesh(num_partitions: int = 1, devices=None) -> Mesh:
  """A `(data, model)` mesh over all devices with `num_partitions` devices per model replica."""
  devices = list(devices if devices is not None else jax.devices())
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f"NUM_PARTITIONS={num_partitions} must divide the {len(devices)} devices: set "
                     f"--gin.NUM_PARTITIONS to a divisor of {len(devices)}")
  shape = (len(devices) // num_partitions, num_partitions)
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # pylint: disable=broad-except  (non-TPU topologies without physical layout)
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, ("data", "model"))


@gin.configurable
def logical_rules(rules=DEFAULT_RULES):
  return tuple(tuple(r) for r in rules)


def tree_shardings(logical_specs, mesh: Mesh, rules=None):
  """NamedShardings for a tree of logical PartitionSpecs."""
  rules = logical_rules() if rules is None else rules
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_divisible(shapes, logical_specs, mesh: Mesh, rules=None):
  """Raise a readable error when a sharded dimension does not divide by its mesh axis."""
  rules = dict(logical_rules() if rules is None else rules)
  is_spec = lambda x: isinstance(x, P)
  for (path, spec), shape in zip(jax.tree_util.tree_leaves_with_path(logical_specs, is_leaf=is_spec),
                                 jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))):
    for name, dim in zip(spec, shape):
      axis = rules.get(name)
      if axis and dim % mesh.shape[axis]:
        raise ValueError(f"parameter {jax.tree_util.keystr(path)} dimension '{name}'={dim} does not divide "
                         f"over mesh axis '{axis}' of size {mesh.shape[axis]}; use fewer model partitions")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def layout_of(process_grid: np.ndarray, process_index: int) -> Tuple[int, int]:
  """`(shard index, number of shards)` of one process's input, from the process index of each device
  of a `[data, model]` mesh.

  A process feeds the batch rows its devices hold: the rows of its `data` indices. When a model
  replica spans processes (more model partitions than devices per host), those processes hold the same
  rows and must read the same shard (T5X's data layout); sharding by process index would feed the two
  halves of one replica different examples.
  """
  rows = {}
  for i, row in enumerate(np.asarray(process_grid)):
    for p in row:
      rows.setdefault(int(p), set()).add(i)
  blocks = sorted({tuple(sorted(r)) for r in rows.values()})
  size = len(blocks[0])
  if any(b != tuple(range(k * size, (k + 1) * size)) for k, b in enumerate(blocks)):
    raise ValueError(f"the mesh gives processes overlapping or uneven blocks of the data axis ({blocks}); "
                     "use a NUM_PARTITIONS that divides the devices of one process, or a multiple of them")
  return blocks.index(tuple(sorted(rows[process_index]))), len(blocks)


@functools.lru_cache(maxsize=8)
def data_layout(mesh: Mesh) -> Tuple[int, int]:
  """This process's `(shard index, number of shards)` of the training input (see `layout_of`)."""
  grid = np.vectorize(lambda d: d.process_index)(mesh.devices)
  return layout_of(grid, jax.process_index())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assemble each process's numpy batch (its `data_layout` shard) into global arrays sharded over
  `data`; processes of one shard pass the same rows."""
  sharding = batch_sharding(mesh)
  num_shards = data_layout(mesh)[1]
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(v), (np.shape(v)[0] * num_shards,) + np.shape(v)[1:])
          for k, v in local_batch.items()}


def to_host(array) -> np.ndarray:
  """A whole array on this host: a global array spanning other processes' devices (a batch or result
  of a multi-process run) is gathered from them first; `np.asarray` refuses it ("spans
  non-addressable devices"). Every process must call it for the same array (a collective)."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(jax.device_get(array))

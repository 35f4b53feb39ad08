"""Device mesh `(data, model)` and the logical-axis rules that place parameters, prompt and batch.

Frozen weights are split over `model` by their logical axes (T5X rules); the prompt is replicated;
batches are split over `data`. The same code serves 1 CPU, forced CPU devices, GPUs and TPU pods.
"""
from __future__ import annotations

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
    raise ValueError(f"num_partitions={num_partitions} must divide the {len(devices)} devices; "
                     f"set partitioning.make_mesh.num_partitions (gin) to a divisor")
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


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assemble each process's numpy batch into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}

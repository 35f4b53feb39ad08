"""Device mesh `(data, model)` and the logical-axis rules that place parameters, prompt and batch.

Frozen weights are split over `model` by their logical axes (T5X rules); the prompt is replicated;
batches are split over `data`. The same code serves 1 CPU, forced CPU devices, GPUs and TPU pods.
"""
from __future__ import annotations

import functools
import logging
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


def divisors(n: int) -> list:
  return [d for d in range(1, n + 1) if n % d == 0]


def num_partitions_error(num_partitions, num_devices=None) -> str:
  """Why `num_partitions` cannot make a mesh of `num_devices` devices (None: not known yet), or ''.
  The same words in every job and at start-up (`gin_utils`), each naming values that work."""
  fits = f" ({', '.join(map(str, divisors(num_devices)))})" if num_devices else ""
  if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
    example = (num_partitions.strip() if isinstance(num_partitions, str) and num_partitions.strip().isdigit()
               else "2")
    return (f"NUM_PARTITIONS must be an integer, got {num_partitions!r} ({type(num_partitions).__name__}): "
            f"e.g. --gin.NUM_PARTITIONS={example} (no quotes), or --gin_file=partitioning/model_parallel_2.gin"
            + (f"; it must divide the {num_devices} devices{fits}" if num_devices else ""))
  if num_partitions < 1:
    return (f"NUM_PARTITIONS must be 1 or more, got {num_partitions}"
            + (f": set --gin.NUM_PARTITIONS to a divisor of the {num_devices} devices{fits}" if num_devices
               else " (1: data parallel; N: the frozen weights split over N devices)"))
  if num_devices and num_devices % num_partitions:
    return (f"NUM_PARTITIONS={num_partitions} must divide the {num_devices} devices: set --gin.NUM_PARTITIONS "
            f"to a divisor of {num_devices}{fits}")
  return ""


_LOGGED_MESHES = set()


@gin.configurable
def make_mesh(num_partitions: int = 1, devices=None) -> Mesh:
  """A `(data, model)` mesh over all devices with `num_partitions` devices per model replica.

  The first mesh of each shape is logged (`mesh: data=4 x model=2 over 8 devices`): what a run's
  NUM_PARTITIONS ended as."""
  devices = list(devices if devices is not None else jax.devices())
  error = num_partitions_error(num_partitions, len(devices))
  if error:
    raise ValueError(error)
  shape = (len(devices) // num_partitions, num_partitions)
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # pylint: disable=broad-except  (non-TPU topologies without physical layout)
    grid = np.asarray(devices).reshape(shape)
  key = (shape, tuple(d.id for d in devices))
  if key not in _LOGGED_MESHES:
    _LOGGED_MESHES.add(key)
    logging.getLogger("spot_jax.partitioning").info(
        "mesh: data=%d x model=%d over %d devices (NUM_PARTITIONS=%d)", shape[0], shape[1], len(devices),
        num_partitions)
  return Mesh(grid, ("data", "model"))


@gin.configurable
def logical_rules(rules=DEFAULT_RULES):
  """The logical-axis rules `(logical name, mesh axis or None)`; gin: `spot_jax.partitioning.logical_rules.rules`
  (T5X's `PjitPartitioner.logical_axis_rules`). They place the frozen weights; batches always go over
  `data` (`batch_sharding`), so a `batch` rule naming anything else is refused."""
  rules = tuple(tuple(r) for r in rules)
  check_batch_rule(rules)
  return rules


def check_batch_rule(rules):
  """Refuse a `batch` rule other than `data`: spot_jax splits every batch over the `data` axis, as T5X's
  PjitPartitioner does (its `data_partition_spec` does not read the logical rules, whose `batch` entry
  only places activations there); a rule saying otherwise would be silently ignored."""
  batch = [axis for name, axis in rules if name == "batch"]
  if batch and batch[0] not in ("data", ("data",)):
    raise ValueError(
        f"logical rule ('batch', {batch[0]!r}) in spot_jax.partitioning.logical_rules.rules: spot_jax splits "
        "every batch over the mesh's 'data' axis, as T5X's PjitPartitioner does; keep ('batch', 'data'). The "
        "number of devices a batch is split over is set by NUM_PARTITIONS (mesh: data = devices / "
        "NUM_PARTITIONS, model = NUM_PARTITIONS)")


def tree_shardings(logical_specs, mesh: Mesh, rules=None):
  """NamedShardings for a tree of logical PartitionSpecs."""
  rules = logical_rules() if rules is None else rules
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_divisible(shapes, logical_specs, mesh: Mesh, rules=None):
  """Raise a readable error when a sharded dimension does not divide by its mesh axis, naming the
  NUM_PARTITIONS values for which every dimension divides on these devices.

  Each dimension's mesh axes are resolved by Flax's own rule matching (`nn.logical_to_mesh_axes`), so
  a logical name with several rules (T5X's 2-D rule sets list `('embed', 'model')` before
  `('embed', None)`) is checked against the rule Flax will place it by: the first whose mesh axes are
  still free in that array."""
  rules = tuple(logical_rules() if rules is None else rules)
  is_spec = lambda x: isinstance(x, P)
  leaves = [((path, spec, tuple(nn.logical_to_mesh_axes(tuple(spec), rules))), shape)
            for (path, spec), shape in zip(jax.tree_util.tree_leaves_with_path(logical_specs, is_leaf=is_spec),
                                           jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))]

  def axes_size(axes, sizes):
    return int(np.prod([sizes[a] for a in ((axes,) if isinstance(axes, str) else axes)]))

  def first_misfit(sizes):
    for (path, spec, mesh_axes), shape in leaves:
      for name, axes, dim in zip(spec, mesh_axes, shape):
        if axes and dim % axes_size(axes, sizes):
          return path, name, dim, axes, axes_size(axes, sizes)
    return None

  misfit = first_misfit(dict(mesh.shape))
  if misfit is None:
    return
  path, name, dim, axes, size = misfit
  n = mesh.devices.size
  fits = [p for p in divisors(n) if first_misfit({"data": n // p, "model": p}) is None]
  where = f"mesh axis '{axes}'" if isinstance(axes, str) else f"mesh axes {tuple(axes)}"
  raise ValueError(
      f"parameter {jax.tree_util.keystr(path)} dimension '{name}'={dim} does not divide over {where} of size "
      f"{size} (mesh data={mesh.shape['data']} x model={mesh.shape['model']}); "
      + (f"NUM_PARTITIONS values that fit this model on {n} devices: {', '.join(map(str, fits))}" if fits else
         f"no NUM_PARTITIONS fits this model on {n} devices (its dimensions or the logical rules)"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch rows split over `data`, replicated over `model`. The logical rules are read only to refuse a
  `batch` rule other than `data` (`check_batch_rule`)."""
  logical_rules()
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


def process_0s(flag: bool) -> bool:
  """Process 0's `flag`, on every process: a decision read from files (a record, a log) that every
  process must take alike, even if one host's copy differs (collective: call it at the same point on
  every process)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))

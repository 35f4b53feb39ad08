"""T5X native checkpoints: read and write `checkpoint_<step>/` directories.

Layout (what T5X's `Checkpointer` writes, DESIGN.md §4): a msgpack file `checkpoint` holding
`{"version": 3, "optimizer": {"target": params, "state": {...}}}` in flax serialization (numpy
arrays inline as msgpack ExtType 1 = packed `(shape, dtype name, raw bytes)`), where each
partitioned array is replaced by a TensorStore spec pointing at a zarr v2 directory (gzip chunks)
named by the dotted parameter path, relative to the checkpoint directory. A checkpoint written on
GCS carries the dummy bucket `t5x-dummy-bucket`; the real location is always the directory the
checkpoint is read from, so every spec is rewritten against it (`absolute_spec`).

No pickle anywhere: msgpack, zarr and raw little-endian bytes only.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import msgpack
import numpy as np

from spot_jax import fileio
from spot_jax.checkpoints.infer_config import CheckpointError, flatten, unflatten

VERSION = 3
DUMMY_BUCKET = "t5x-dummy-bucket"
_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's target zarr chunk size
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


# ----------------------------------------------------------------------------- file access

def is_gcs(path: str) -> bool:
  return str(path).startswith("gs://")


def _gfile():
  try:
    import tensorflow as tf  # only for gs:// paths: importing TF costs seconds
  except ImportError as e:  # pragma: no cover - TF is a project requirement
    raise CheckpointError("reading gs:// paths needs tensorflow (tf.io.gfile); pip install tensorflow") from e
  return tf.io.gfile


GCS_TIMEOUT_ENV = fileio.GCS_TIMEOUT_ENV
gcs_help = fileio.gcs_help


def probe_gcs(path: str, gfile: Any = None, timeout: Optional[float] = None, fix: Optional[str] = None) -> None:
  """`fileio.probe_gcs` (fail fast, naming the fix, when a bucket does not answer) as a CheckpointError."""
  try:
    fileio.probe_gcs(path, gfile if gfile is not None else _gfile(), timeout, fix)
  except fileio.GcsUnreachable as e:
    raise CheckpointError(str(e)) from e.__cause__


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())[:500]


def _gcs(op: str, path: str, fn: Callable[[], Any]) -> Any:
  """Run a tf.io.gfile call on a gs:// path: the bucket is probed first, errors name the fix."""
  probe_gcs(path)
  try:
    return fn()
  except CheckpointError:
    raise
  except Exception as e:  # tf.errors.* and friends
    if type(e).__name__ == "NotFoundError":
      raise CheckpointError(f"{path} does not exist ({_one_line(e)})") from e
    raise CheckpointError(f"cannot {op} {path}: {type(e).__name__}: {_one_line(e)}. {gcs_help(path)}") from e


def exists(path: str) -> bool:
  if is_gcs(path):
    return _gcs("look up", path, lambda: _gfile().exists(path))
  return os.path.exists(path)


def isdir(path: str) -> bool:
  if is_gcs(path):
    return _gcs("look up", path, lambda: _gfile().isdir(path))
  return os.path.isdir(path)


def listdir(path: str) -> List[str]:
  if is_gcs(path):
    return [p.rstrip("/") for p in _gcs("list", path, lambda: _gfile().listdir(path))]
  return os.listdir(path)


def read_bytes(path: str) -> bytes:
  if is_gcs(path):
    def _read():
      with _gfile().GFile(path, "rb") as f:
        return f.read()
    return _gcs("read", path, _read)
  with open(path, "rb") as f:
    return f.read()


def join(base: str, *parts: str) -> str:
  if is_gcs(base):
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


# ----------------------------------------------------------------------------- locating

def checkpoint_steps(directory: str) -> List[int]:
  """Steps of the `checkpoint_<step>/checkpoint` files under a model directory, ascending."""
  if not isdir(directory):
    return []
  steps = []
  for name in listdir(directory):
    m = _STEP_DIR.match(name)
    if m and exists(join(directory, name, "checkpoint")):
      steps.append(int(m.group(1)))
  return sorted(steps)


def find_checkpoint_dir(path: str) -> Optional[str]:
  """`path` itself when it holds a `checkpoint` file, else its newest `checkpoint_<step>`, else None."""
  path = str(path).rstrip("/") if is_gcs(str(path)) else str(path)
  if exists(join(path, "checkpoint")) and not isdir(join(path, "checkpoint")):
    return path
  steps = checkpoint_steps(path)
  return join(path, f"checkpoint_{steps[-1]}") if steps else None


# ----------------------------------------------------------------------------- msgpack

def _dtype_from_name(name: Any) -> np.dtype:
  name = name.decode() if isinstance(name, bytes) else name
  if name == "bfloat16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _ndarray_from_ext(data: bytes) -> np.ndarray:
  shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
  return np.frombuffer(buffer, dtype=_dtype_from_name(dtype_name)).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
  if code == _EXT_NDARRAY:
    return _ndarray_from_ext(data)
  if code == _EXT_NPSCALAR:
    return _ndarray_from_ext(data)[()]
  if code == _EXT_COMPLEX:
    real, imag = msgpack.unpackb(data)
    return complex(real, imag)
  return msgpack.ExtType(code, data)


def _unchunk(node: Any) -> Any:
  """Undo flax's splitting of >1 GiB inline arrays into `__msgpack_chunked_array__` dicts."""
  if not isinstance(node, dict):
    return node
  if "__msgpack_chunked_array__" in node:
    shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
    chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    return np.concatenate(chunks).reshape(shape)
  return {k: _unchunk(v) for k, v in node.items()}


def decode_msgpack(raw: bytes, source: str = "checkpoint") -> Dict[str, Any]:
  """Decode a flax-serialized msgpack state dict (no flax import needed)."""
  try:
    state = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
  except Exception as e:  # msgpack raises several unrelated types on bad input
    raise CheckpointError(f"{source} is not a valid msgpack checkpoint file ({type(e).__name__}: {e}); "
                          "the file is corrupt or truncated, copy it again") from e
  if not isinstance(state, dict):
    raise CheckpointError(f"{source} is not a T5X checkpoint: its msgpack holds a "
                          f"{type(state).__name__}, not a state dict")
  return _unchunk(state)


def _ext_default(x: Any) -> Any:
  if isinstance(x, np.ndarray):
    arr = np.asarray(x, order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d
    return msgpack.ExtType(_EXT_NDARRAY, msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")),
                                                       use_bin_type=True))
  if isinstance(x, np.generic):
    arr = np.asarray(x)
    return msgpack.ExtType(_EXT_NPSCALAR, msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")),
                                                        use_bin_type=True))
  raise TypeError(f"cannot serialize {type(x).__name__} into a T5X checkpoint")


def encode_msgpack(state: Mapping[str, Any]) -> bytes:
  return msgpack.packb(state, default=_ext_default, use_bin_type=True, strict_types=False)


# ----------------------------------------------------------------------------- tensorstore specs

def is_ts_spec(node: Any) -> bool:
  return isinstance(node, dict) and "driver" in node and ("kvstore" in node or "path" in node)


def absolute_spec(spec: Mapping[str, Any], checkpoint_dir: str) -> Dict[str, Any]:
  """Rewrite a stored spec (relative path; driver gfile/file/gcs, maybe the dummy bucket) to read
  from `checkpoint_dir`: the `file` driver with an absolute path locally, or the `gcs` driver with
  the real bucket for `gs://bucket/dir`. Handles the pre-0.1.14 layout with `path` beside `kvstore`.
  """
  spec = copy.deepcopy(dict(spec))
  kvstore = dict(spec.get("kvstore") or {})
  driver = kvstore.get("driver", "file")
  if driver not in ("file", "gfile", "gcs"):
    raise CheckpointError(f"unsupported TensorStore kvstore driver {driver!r} in spec {spec}; "
                          "T5X checkpoints use 'gfile', 'file' or 'gcs'")
  if "path" in kvstore:
    rel = kvstore["path"]
  elif "path" in spec:
    rel = spec.pop("path")
  else:
    raise CheckpointError(f"TensorStore spec has no 'path' (neither in 'kvstore' nor beside it): {spec}")
  if is_gcs(checkpoint_dir):
    m = re.fullmatch(r"gs://([^/]+)/?(.*)", checkpoint_dir.rstrip("/"), re.DOTALL)
    if m is None:
      raise CheckpointError(f"malformed gs:// path {checkpoint_dir!r}; expected gs://bucket/dir")
    bucket, prefix = m.group(1), m.group(2)
    path = rel if rel.startswith("/") else "/".join(p for p in (prefix, rel) if p)
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": path.lstrip("/")}
  else:
    spec["kvstore"] = {"driver": "file", "path": os.path.join(os.path.abspath(checkpoint_dir), rel)}
  return spec


def _ts_location(spec: Mapping[str, Any]) -> str:
  kv = spec.get("kvstore") or {}
  return f"gs://{kv['bucket']}/{kv.get('path', '')}" if "bucket" in kv else str(kv.get("path"))


_COPY_AGAIN = "copy the checkpoint again (the copy is incomplete or damaged)"


# Read shard by shard, a chunk that holds several of a process's shards (a checkpoint written with fewer
# partitions than the mesh has: T5X chunks each array by the shards it was written with) would be
# decompressed once per shard; a small cache of decoded chunks, shared by the arrays of one read, makes
# it once. Bounded, and used by lazy reads only (a whole-array read reads each chunk once anyway).
_LAZY_CACHE_BYTES = 2 * _CHUNK_BYTES


def _open_stores(specs: Mapping[str, Dict[str, Any]], cache_bytes: int = 0) -> Dict[str, Any]:
  """Open every array's TensorStore (metadata only): a missing directory or invalid .zarray fails here."""
  import tensorstore as ts
  context = ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}}) if cache_bytes else None
  # T5X writes arrays without a fill value, so every chunk is on disk: a missing chunk file is damage,
  # not zeros. (An array that declares a fill value may omit chunks equal to it; read those as fills.)
  opened = {name: ts.open({**spec, "fill_missing_data_reads": False}, open=True, read=True, context=context)
            for name, spec in specs.items()}
  stores = {}
  for name, future in opened.items():
    try:
      stores[name] = future.result()
    except Exception as e:  # `from None`: the chained TensorStore error repeats the whole spec
      raise CheckpointError(f"cannot open the array of parameter {name!r} at {_ts_location(specs[name])} "
                            f"(its directory or .zarray metadata is missing or invalid): {fileio.short_error(e)}. "
                            f"Fix: {_COPY_AGAIN}") from None
  return stores


def _finish_read(name: str, spec: Mapping[str, Any], store: Any, future: Any, version: int,
                 index: Optional[tuple] = None) -> np.ndarray:
  """The result of `future` (a read of `store`, or of its slice `index`) as numpy, errors named."""
  try:
    try:
      arr = np.asarray(future.result())
    except ValueError as e:
      if "NOT_FOUND" not in str(e) or store.fill_value is None:
        raise
      import tensorstore as ts
      filled = ts.open({**spec, "fill_missing_data_reads": True}, open=True, read=True).result()
      arr = np.asarray((filled[index] if index else filled).read().result())
  except Exception as e:
    raise CheckpointError(f"cannot read the array of parameter {name!r} at {_ts_location(spec)} "
                          f"(a chunk file missing or damaged): {fileio.short_error(e)}. "
                          f"Fix: {_COPY_AGAIN}") from None
  if version < 3 and arr.dtype == np.uint16:  # version 2 stored bfloat16 as raw uint16
    import ml_dtypes
    arr = arr.view(ml_dtypes.bfloat16)
  return arr


def read_slice(store: Any, index: tuple) -> Any:
  """Start reading the slice `index` (one `slice` per dimension) of an open TensorStore: only the
  chunks it touches are read. (Tests spy on this to see what a lazy read asks for.)"""
  return store[index].read() if index else store.read()


def _stored_dtype(store: Any, version: int) -> np.dtype:
  dtype = np.dtype(store.dtype.numpy_dtype)
  if version < 3 and dtype == np.uint16:
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  return dtype


def _read_specs(specs: Mapping[str, Dict[str, Any]], version: int, lazy: bool = False) -> Dict[str, Any]:
  """Read every spec's array (all reads in flight at once); with `lazy`, open them only and return
  `LazyArray`s that read the slices asked for (`lazy.py`), with the same errors at read time."""
  if not specs:
    return {}
  stores = _open_stores(specs, _LAZY_CACHE_BYTES if lazy else 0)
  if lazy:
    from spot_jax.checkpoints.lazy import LazyArray

    def reader(name):
      store, spec = stores[name], specs[name]
      return lambda index: _finish_read(name, spec, store, read_slice(store, index), version, index)
    return {name: LazyArray(store.domain.shape, _stored_dtype(store, version), reader(name), name)
            for name, store in stores.items()}
  reads = {name: read_slice(store, ()) for name, store in stores.items()}
  return {name: _finish_read(name, specs[name], stores[name], future, version) for name, future in reads.items()}


# ----------------------------------------------------------------------------- reading

def read_t5x(path: str, select: Optional[Callable[[str], bool]] = None,
             lazy: bool = False) -> Tuple[str, Dict[str, Any]]:
  """Read `optimizer/target` of a T5X checkpoint as a nested dict of numpy arrays.

  `path` is a `checkpoint_<step>` directory or a model directory (newest step). Returns the
  checkpoint directory actually read and the parameter tree; optimizer state is never read.
  `select(name)` (slash-joined name) keeps only some parameters, and only those are read from disk:
  a prompt out of an XXL checkpoint without reading its 11B frozen weights.
  `lazy`: TensorStore arrays are opened (their metadata checked) but not read; they come back as
  `lazy.LazyArray`s that read a slice when indexed (`frozen_model.place_frozen` reads each device's
  shard only). Arrays inline in the msgpack file are numpy arrays either way.
  """
  ckpt_dir = find_checkpoint_dir(path)
  if ckpt_dir is None:
    raise CheckpointError(f"{path} holds neither a T5X `checkpoint` file nor `checkpoint_<step>/` directories")
  source = join(ckpt_dir, "checkpoint")
  state = decode_msgpack(read_bytes(source), source)
  target = state.get("optimizer", {}).get("target") if isinstance(state.get("optimizer"), dict) else None
  if not isinstance(target, dict):
    raise CheckpointError(f"{source} has no optimizer/target parameters (top-level keys: "
                          f"{sorted(state)}); it is not a T5X train-state checkpoint")
  version = int(state.get("version", 0) or 0)
  inline, specs = {}, {}
  for name, leaf in _flatten_target(target).items():
    if select is not None and not select(name):
      continue
    if is_ts_spec(leaf):
      specs[name] = absolute_spec(leaf, ckpt_dir)
    elif isinstance(leaf, np.ndarray):
      inline[name] = leaf
    elif isinstance(leaf, str) and leaf.startswith("PLACEHOLDER://"):
      raise CheckpointError(f"{source} belongs to an Orbax-format checkpoint (array {name!r} is a placeholder) "
                            "that this reader of T5X's msgpack layout cannot follow; pass the checkpoint_<step> "
                            "directory above its `state/` item (read with orbax), or re-save the checkpoint")
    # Other leaves (None, scalars) are not parameters.
  inline.update(_read_specs(specs, version, lazy))
  return ckpt_dir, unflatten(inline)


def _flatten_target(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """Flatten down to arrays and TensorStore specs (a spec is a dict, so plain `flatten` won't do)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict) and not is_ts_spec(value):
      out.update(_flatten_target(value, name))
    else:
      out[name] = value
  return out


# ----------------------------------------------------------------------------- writing

def choose_chunk_shape(shape: Sequence[int], target_elements: int) -> List[int]:
  """Largest chunk shape that divides `shape` with at most `target_elements` elements: shrink
  the currently largest dimension to its next smaller divisor until it fits (as T5X does)."""
  divisors = [[k for k in range(1, n + 1) if n % k == 0] or [1] for n in shape]
  while int(np.prod([d[-1] for d in divisors])) > max(1, target_elements):
    largest = max(range(len(shape)), key=lambda i: divisors[i][-1])
    divisors[largest].pop()
  return [d[-1] for d in divisors]


def _zarr_dtype(dtype: np.dtype) -> str:
  return "bfloat16" if dtype.name == "bfloat16" else dtype.str


def default_external(name: str, arr: np.ndarray) -> bool:
  """Which arrays T5X puts in TensorStore: the partitioned ones, i.e. every 2-D+ parameter but
  the small relative-position tables (the layout of the reference checkpoint T5X wrote)."""
  return arr.ndim >= 2 and not name.endswith("relpos_bias/rel_embedding")


def write_t5x(params: Mapping[str, Any], directory: str, step: int,
              external: Callable[[str, np.ndarray], bool] = default_external,
              overwrite: bool = False) -> str:
  """Write `params` (T5X-named tree) as `directory/checkpoint_<step>/` in T5X's layout.

  External arrays become zarr v2 (gzip level 1) TensorStore directories `target.<dotted.name>`
  referenced by relative `gfile` specs; the rest are inline. `optimizer/state` holds only the step
  (no optimizer slots: the backbone is frozen). Written into a temporary directory and renamed,
  so a crash never leaves a half checkpoint. Returns the checkpoint directory. Local paths only.
  """
  import tensorstore as ts
  if is_gcs(directory):
    raise CheckpointError("write_t5x writes local directories only; copy the result with gsutil")
  final = os.path.join(directory, f"checkpoint_{int(step)}")
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
  os.makedirs(directory, exist_ok=True)
  tmp = f"{final}.tmp-{os.getpid()}-{time.time_ns()}"
  os.makedirs(tmp)
  try:
    target = {}
    writes = []
    for name, value in flatten(params).items():
      arr = np.asarray(value)
      if not external(name, arr):
        target[name] = arr
        continue
      dotted = "target." + name.replace("/", ".")
      metadata = {"chunks": choose_chunk_shape(arr.shape, _CHUNK_BYTES // arr.dtype.itemsize),
                  "compressor": {"id": "gzip", "level": 1}, "dtype": _zarr_dtype(arr.dtype),
                  "shape": list(arr.shape)}
      store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(tmp, dotted)},
                       "metadata": metadata}, create=True, delete_existing=True).result()
      writes.append(store.write(arr))
      target[name] = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": dotted},
                      "metadata": metadata}
    for w in writes:
      w.result()
    state = {"version": VERSION,
             "optimizer": {"state": {"param_states": {}, "step": np.asarray(int(step), np.int32)},
                           "target": unflatten(target)}}
    with open(os.path.join(tmp, "checkpoint"), "wb") as f:
      f.write(encode_msgpack(state))
    if os.path.exists(final):
      shutil.rmtree(final)
    os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


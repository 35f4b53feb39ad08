"""Checkpoint arrays read on demand, slice by slice: `x[index]` reads only that slice from disk.

`read_params(path, lazy=True)` (what `frozen_model.load_frozen` asks for) returns the TensorStore
arrays of a T5X checkpoint (and the tensors of a local Hugging Face folder, through safetensors'
`get_slice`) as `LazyArray`s: the shape and dtype are known from the array's metadata,
nothing is read until a slice is asked for. `frozen_model.place_frozen` then reads, per array, only
the slices this process's devices hold (one read per distinct shard, cast to the frozen dtype slice by
slice): on a model-parallel mesh a host never holds, nor reads, the weights of other hosts.
`np.asarray(x)` reads the whole array (the same values an eager read gives).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

Index = Tuple[slice, ...]


def normalize_index(index: Any, shape: Tuple[int, ...]) -> Index:
  """`index` (basic slices with step 1, as `jax.make_array_from_callback` passes them; `()` or
  `Ellipsis` for all) as one `slice(start, stop)` per dimension."""
  if index is Ellipsis or index is None:
    index = ()
  if not isinstance(index, tuple):
    index = (index,)
  if len(index) > len(shape) or not all(isinstance(s, slice) for s in index):
    raise IndexError(f"a lazily read checkpoint array takes one slice per dimension, not {index!r}")
  out = []
  for s, n in zip(index + (slice(None),) * (len(shape) - len(index)), shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise IndexError(f"a lazily read checkpoint array takes slices with step 1, not {s!r}")
    out.append(slice(start, max(start, stop)))
  return tuple(out)


def is_whole(index: Index, shape: Tuple[int, ...]) -> bool:
  return all(s.start == 0 and s.stop == n for s, n in zip(index, shape))


class LazyArray:
  """An array of a checkpoint file, read slice by slice on demand.

  `read(index)` returns the slice `index` (one `slice(start, stop)` per dimension) as a numpy array of
  the stored dtype; `cast(dtype)` gives the same array converted to `dtype` slice by slice (the values
  a whole-array `astype` gives, bit for bit: the conversion is element-wise)."""

  def __init__(self, shape, dtype, read: Callable[[Index], np.ndarray], name: str = "",
               cast_to: Optional[np.dtype] = None):
    self.shape = tuple(int(n) for n in shape)
    self.stored_dtype = np.dtype(dtype)
    self.dtype = np.dtype(cast_to) if cast_to is not None else self.stored_dtype
    self.name = name
    self._read = read

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    return self.size * self.dtype.itemsize

  def cast(self, dtype) -> "LazyArray":
    return LazyArray(self.shape, self.stored_dtype, self._read, self.name, np.dtype(dtype))

  def __getitem__(self, index) -> np.ndarray:
    index = normalize_index(index, self.shape)
    arr = np.asarray(self._read(index))
    want = tuple(s.stop - s.start for s in index)
    if arr.shape != want:  # the reader's contract; a wrong slice would place wrong weights silently
      raise ValueError(f"reading {self.name or 'a checkpoint array'}{list(index)} gave shape {arr.shape}, "
                       f"not {want}")
    from spot_jax.checkpoints.infer_config import CheckpointError, nonfinite_error  # pylint: disable=g-import-not-at-top
    why = nonfinite_error(self.name or "a checkpoint array", arr,
                          "" if is_whole(index, self.shape) else f" (slice {[(s.start, s.stop) for s in index]})")
    if why:
      raise CheckpointError(why)
    return arr.astype(self.dtype, copy=False)

  def head(self, n: int) -> np.ndarray:
    """The first `n` values of the flattened array, reading only the leading rows that hold them."""
    if not self.shape:
      return self[()].reshape(-1)[:n]
    row = int(np.prod(self.shape[1:], dtype=np.int64)) or 1
    rows = min(self.shape[0], -(-n // row))
    return self[(slice(0, rows),)].reshape(-1)[:n]

  def __array__(self, dtype=None, copy=None):
    arr = self[()]
    return arr if dtype is None else arr.astype(dtype, copy=False)

  def __len__(self) -> int:
    if not self.shape:
      raise TypeError("len() of a 0-d array")
    return self.shape[0]

  def __repr__(self) -> str:
    return f"LazyArray({self.name!r}, shape={self.shape}, dtype={self.dtype.name})"


def is_lazy(x: Any) -> bool:
  return isinstance(x, LazyArray)

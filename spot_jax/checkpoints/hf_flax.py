"""Hugging Face Flax T5 weights: `flax_model.msgpack`, or shards listed by `flax_model.msgpack.index.json`.

Google's own T5 1.1 folders on the Hub (`google/t5-v1_1-*`) ship `flax_model.msgpack` and a PyTorch
pickle but no safetensors: reading the Flax file (with flax's own msgpack reader) lets their users
start without torch. The tensors are presented under PyTorch's names and in PyTorch's `[out, in]`
orientation (transposed views, no copy), so `hf.read_hf` maps, checks and transposes them exactly as
it does safetensors. A msgpack file cannot be read in parts: each file is read whole, once.
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

import numpy as np

from spot_jax.checkpoints import t5x as _io
from spot_jax.checkpoints.infer_config import CheckpointError
from spot_jax.checkpoints.hf_config import json_kind

WEIGHTS_FILE = "flax_model.msgpack"
INDEX_FILE = "flax_model.msgpack.index.json"
DAMAGED = "the file is truncated or damaged: download or copy it again"
# Float dtypes a frozen T5 is read in; anything else (an integer tensor) is refused, as for safetensors.
_READ_DTYPES = ("float32", "bfloat16", "float16", "float64")


def has_weights(path: str) -> bool:
  return _io.exists(_io.join(path, WEIGHTS_FILE)) or _io.exists(_io.join(path, INDEX_FILE))


def torch_name(flax_key: str) -> Tuple[str, bool]:
  """`(PyTorch name, transposed)` of a Flax key: a `Dense` kernel `[in, out]` is PyTorch's `weight`
  `[out, in]` transposed; an `Embed` table (`shared`, `relative_attention_bias`) and a layer norm's
  `weight` keep their layout."""
  *path, leaf = flax_key.split("/")
  if leaf == "kernel":
    return ".".join(path + ["weight"]), True
  if leaf == "embedding":
    return ".".join(path + ["weight"]), False
  return ".".join(path + [leaf]), False


def _restore(path: str) -> Dict[str, np.ndarray]:
  """`{flax key "a/b/c": array}` of one msgpack file."""
  from flax import serialization, traverse_util  # pylint: disable=g-import-not-at-top
  data = _io.read_bytes(path)
  if data.startswith(b"version https://git-lfs"):
    raise CheckpointError(f"{path} is a Git LFS pointer ({len(data)} bytes), not the weights: the repository was "
                          "cloned without git-lfs. Run `git lfs install && git lfs pull` in it, or download the "
                          "folder with `huggingface-cli download ID --local-dir DIR`")
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack's ExtraData / UnpackValueError, a truncated array's ValueError
    raise CheckpointError(f"{path} is not a readable Flax msgpack file ({type(e).__name__}: {e}): {DAMAGED}") from e
  if not isinstance(tree, dict):
    raise CheckpointError(f"{path} holds a msgpack {type(tree).__name__}, not the parameter tree that "
                          f"save_pretrained writes: {DAMAGED}")
  if set(tree) == {"params"} and isinstance(tree["params"], dict):  # a tree saved with its collection
    tree = tree["params"]
  return {k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def read_weight_map(index_path: str, kind: str, suffix: str, note: str = "") -> Dict[str, str]:
  """The weight_map of a Hugging Face index (`model.safetensors.index.json`, `flax_model.msgpack.index.json`):
  `{tensor name: shard file name}`, each shard a `suffix` file. `kind` names the index in messages."""
  fix = "copy it again with its shards from the model's folder (save_pretrained writes it beside them)"
  try:
    index = json.loads(_io.read_bytes(index_path))
  except ValueError as e:
    raise CheckpointError(f"{index_path} is not valid JSON ({e}): {fix}") from e
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    found = (f"its 'weight_map' is a JSON {json_kind(weight_map)}" if isinstance(index, dict) and "weight_map" in index
             else "it has no 'weight_map'" if isinstance(index, dict) else f"it holds a JSON {json_kind(index)}")
    raise CheckpointError(f"{index_path} is not a {kind} index (it needs an object 'weight_map' mapping each "
                          f"tensor name to its shard file; {found}): {fix}")
  for name, shard in weight_map.items():
    if not isinstance(shard, str) or not shard.endswith(suffix):
      raise CheckpointError(f"{index_path}: weight_map maps {name!r} to {json.dumps(shard, default=repr)}, not the "
                            f"name of a {suffix} shard in this folder{note}: {fix}")
  return dict(weight_map)


class TensorIndex:
  """What `hf.read_hf` asks of a folder's tensors besides reading them: `where` maps each (PyTorch)
  name to the file that holds it, in `directory`."""
  directory: str
  where: Dict[str, str]

  def __contains__(self, name: str) -> bool:
    return name in self.where

  def names(self):
    return list(self.where)

  def file_of(self, name: str) -> str:
    return _io.join(self.directory, self.where[name])

  def label(self, name: str) -> str:
    """The tensor's name in messages."""
    return name


class FlaxTensors(TensorIndex):
  """The tensors of a Flax weights folder, with `hf._Tensors`' interface (PyTorch names and layout)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.index_path: Optional[str] = _io.join(directory, INDEX_FILE)
    if _io.exists(self.index_path):
      files = read_weight_map(self.index_path, "Flax weights", ".msgpack")
    else:
      self.index_path = None
      files = None
    self._arrays: Dict[str, np.ndarray] = {}  # PyTorch name -> array in the Flax layout
    self._transposed: Dict[str, bool] = {}
    self._flax_key: Dict[str, str] = {}
    self.where: Dict[str, str] = {}
    for filename in sorted(set(files.values())) if files is not None else [WEIGHTS_FILE]:
      path = _io.join(directory, filename)
      if not _io.exists(path):
        raise CheckpointError(f"{path} does not exist (a Flax checkpoint needs {WEIGHTS_FILE} or the shards its "
                              f"{INDEX_FILE} lists): copy the whole folder again")
      for key, arr in _restore(path).items():  # as transformers: every shard's tensors, whatever the map says
        name, transposed = torch_name(key)
        self._arrays[name], self._transposed[name], self._flax_key[name] = np.asarray(arr), transposed, key
        self.where[name] = filename
    if files is not None:
      missing = sorted(set(files) - set(self._flax_key.values()))
      if missing:
        raise CheckpointError(f"{self.index_path} lists {missing[:3]}{' ...' if len(missing) > 3 else ''} in shards "
                              "that do not hold them: copy the whole folder again from one save_pretrained")

  def label(self, name: str) -> str:
    return f"{self._flax_key[name]} (PyTorch's {name})" if name in self._flax_key else name

  def get(self, name: str) -> np.ndarray:
    """Tensor `name` in PyTorch's layout (a transposed view of a Flax kernel)."""
    arr = self._arrays[name]
    if arr.dtype.name not in _READ_DTYPES:
      raise CheckpointError(f"{self.file_of(name)}: {self._flax_key[name]!r} has dtype {arr.dtype}, which spot_jax "
                            f"does not read as a T5 weight (it reads {list(_READ_DTYPES)}): re-save it as float32")
    if self._transposed[name] and arr.ndim != 2:
      raise CheckpointError(f"{self.file_of(name)}: {self._flax_key[name]!r} has shape {tuple(arr.shape)}, not "
                            "the 2-D [in, out] of a Dense kernel: the file is not a T5's")
    return arr.T if self._transposed[name] else arr

  def get_lazy(self, name: str, transpose: bool) -> np.ndarray:
    """The whole tensor (a msgpack file is read whole anyway), as `read_hf` stores it."""
    arr = self.get(name)
    return np.ascontiguousarray(arr.T) if transpose else arr

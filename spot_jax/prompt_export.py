"""Writing soft prompts in the formats users already have (DESIGN.md §6): `.npy`, the T5X
prompt-tuning numpy export (also the trainer's `MODEL_DIR/numpy_checkpoints/`), and PEFT adapters.

Every write is atomic (a temporary name, then a rename), so a crash leaves either the old export or
the new one, never a partial one. Reading them back, with every other format, is `prompt_io`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Any, Optional

import numpy as np

from spot_jax import fileio
from spot_jax.prompt_io import (CHECKPOINT_RE, EXPORT_INFO, NUMPY_CHECKPOINTS_DIR, PEFT_CONFIG, PEFT_TENSOR,
                                PEFT_WEIGHTS, PROMPT_NPY, T5X_PROMPT_FILENAME, absolute_local_path,
                                checkpoint_export_dir, validate_prompt)


def npy_bytes(arr: np.ndarray) -> bytes:
  """`np.save` to a file handle: exactly the bytes prompt-tuning writes."""
  buf = io.BytesIO()
  np.save(buf, arr, allow_pickle=False)
  return buf.getvalue()


@contextlib.contextmanager
def _no_new_dirs_on_failure(path: str):
  """Removes the (empty) parent directories of `path` that a failed write created: a failed export
  leaves nothing behind, not even the folders it made for its output. Local paths only."""
  path = str(path).rstrip("/")
  created = []
  if not fileio.is_remote(path):
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
      created.append(parent)
      parent = os.path.dirname(parent)
  try:
    yield
  except BaseException:
    for d in created:  # deepest first
      try:
        os.rmdir(d)
      except OSError:  # not empty (another writer's files), or already gone
        break
    raise


def check_npy_path(path: str) -> None:
  """Refuses a .npy output path that names a directory: one that exists, or one with a trailing "/"
  (which would otherwise end in a rename error naming a temporary file)."""
  path = str(path)
  if path.endswith("/") or path.endswith(os.sep):
    raise IsADirectoryError(f"{path} ends in '/', a directory, but a .npy prompt is one file: name a file "
                            f"path, e.g. {path.rstrip('/' + os.sep) or '.'}/prompt.npy")
  if fileio.isdir(path):
    raise IsADirectoryError(f"{path} is a directory, but a .npy prompt is one file: name a file path, e.g. "
                            f"{path}/prompt.npy")


def save_npy(prompt: Any, path: str) -> str:
  """Writes `prompt` as a float32 `.npy` file atomically; returns the path. A path that names a
  directory is refused (`check_npy_path`); a failed write leaves no file nor new directory."""
  arr = validate_prompt(prompt, str(path))
  check_npy_path(path)
  with _no_new_dirs_on_failure(path):
    fileio.atomic_write_bytes(str(path), npy_bytes(arr))
  return str(path)


def write_t5x_prompt_dir(prompt: Any, directory: str, info: Optional[dict] = None) -> str:
  """Writes a T5X-layout export directory atomically: `encoder.prompt.prompt.prompt`, `prompt.npy`
  (identical bytes) and `export.json` (shape, creation time, plus `info`). Replaces an existing one."""
  arr = validate_prompt(prompt, str(directory))
  data = npy_bytes(arr)
  meta = {"shape": list(arr.shape), "created": time.time(), **(info or {})}
  meta_bytes = json.dumps(meta, indent=2, sort_keys=True, default=fileio.json_default).encode()
  with _no_new_dirs_on_failure(directory):
    fileio.atomic_write_dir(str(directory), {T5X_PROMPT_FILENAME: data, PROMPT_NPY: data,
                                             EXPORT_INFO: meta_bytes})
  return str(directory)


def export_numpy_checkpoint(prompt: Any, model_dir: str, step: int, name: Optional[str] = None,
                            metrics: Optional[dict] = None, frozen_model: Optional[str] = None,
                            task: Optional[str] = None) -> str:
  """Writes `MODEL_DIR/numpy_checkpoints/<name or checkpoint_<step>>/` atomically; returns the dir.

  `name` is `"best"` or `"task_embedding"` for those exports. Call from process 0 only. `metrics`
  (e.g. the validation metrics of a best export) are kept in `export.json` for the prompt library;
  `frozen_model`, the frozen checkpoint's path, for a PEFT export's `base_model_name_or_path`: recorded
  absolute when it is a local path (INITIAL_CHECKPOINT_PATH as typed may be relative to the training
  directory), unchanged for gs:// paths and Hub ids. `task`, the run's MIXTURE_OR_TASK_NAME, tells
  whose results the export is (a fresh start over them names it).
  """
  if name is None:
    directory = checkpoint_export_dir(model_dir, step)
  else:
    if "/" in name or name.startswith(".") or CHECKPOINT_RE.match(name) and name != f"checkpoint_{step}":
      raise ValueError(f"export name {name!r} is not a plain directory name consistent with step {step}")
    directory = fileio.join(model_dir, NUMPY_CHECKPOINTS_DIR, name)
  info = {"step": int(step)}
  if metrics:
    info["metrics"] = metrics
  if frozen_model:
    info["frozen_model"] = absolute_local_path(str(frozen_model))
  if task:
    info["task"] = str(task)
  return write_t5x_prompt_dir(prompt, directory, info)


def peft_adapter_config(prompt_length: int, d_model: int, base_model_name_or_path: Optional[str] = None,
                        num_attention_heads: Optional[int] = None,
                        num_layers: Optional[int] = None) -> dict:
  """The adapter_config.json of a PEFT PromptTuningConfig (PEFT ignores keys it does not know)."""
  return {
      "peft_type": "PROMPT_TUNING",
      "task_type": "SEQ_2_SEQ_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "revision": None,
      "inference_mode": True,
      "auto_mapping": None,
      "num_virtual_tokens": int(prompt_length),
      "token_dim": int(d_model),
      "num_transformer_submodules": 1,
      "num_attention_heads": num_attention_heads,
      "num_layers": num_layers,
      "prompt_tuning_init": "RANDOM",
      "prompt_tuning_init_text": None,
      "tokenizer_name_or_path": None,
      "tokenizer_kwargs": None,
  }


def export_peft(prompt: Any, directory: str, base_model_name_or_path: Optional[str] = None,
                num_attention_heads: Optional[int] = None, num_layers: Optional[int] = None) -> str:
  """Writes a PEFT prompt-tuning adapter directory atomically (replacing an existing one).

  `num_transformer_submodules` is 1: the prompt goes to the encoder only, as in T5X prompt tuning, so
  PEFT's `PeftModel.from_pretrained(t5, directory)` gets exactly our [P, d] prompt.
  `base_model_name_or_path` is written as given (`export_numpy_checkpoint` and `prompt_io.read_export_info`
  already make the recorded ones absolute).
  """
  from safetensors.numpy import save as st_save  # pylint: disable=g-import-not-at-top
  arr = validate_prompt(prompt, str(directory))
  config = peft_adapter_config(arr.shape[0], arr.shape[1], base_model_name_or_path,
                               num_attention_heads, num_layers)
  files = {
      PEFT_CONFIG: json.dumps(config, indent=2, sort_keys=True).encode(),
      PEFT_WEIGHTS: st_save({PEFT_TENSOR: np.ascontiguousarray(arr)}, metadata={"format": "pt"}),
  }
  with _no_new_dirs_on_failure(directory):
    fileio.atomic_write_dir(str(directory), files)
  return str(directory)


EXPORT_FORMATS = ("npy", "t5x", "peft")


# What each export format writes: an existing output may be replaced (with overwrite) only when it
# holds nothing else, so that a mistyped OUT never deletes a user's files.
_EXPORT_FILES = {"t5x": {T5X_PROMPT_FILENAME, PROMPT_NPY, EXPORT_INFO}, "peft": {PEFT_CONFIG, PEFT_WEIGHTS}}


def check_export_target(out: str, fmt: str, overwrite: bool = False) -> None:
  """Refuses an `out` that exists, unless `overwrite` and it is an export of the same format."""
  if fmt not in EXPORT_FORMATS:
    raise ValueError(f"unknown export format {fmt!r}; use one of {EXPORT_FORMATS}")
  if fmt == "npy" and (out.endswith("/") or out.endswith(os.sep)):
    raise IsADirectoryError(f"{out} ends in '/', a directory, but an npy export is one file: name a .npy "
                            f"path, e.g. {out.rstrip('/' + os.sep) or '.'}/prompt.npy")
  if not fileio.exists(out):
    return
  if fmt == "npy":
    if fileio.isdir(out):
      raise IsADirectoryError(f"{out} is a directory, but an npy export is one file: name a .npy path")
  elif not fileio.isdir(out):
    raise NotADirectoryError(f"{out} is a file, but a {fmt} export is a directory: name a new directory")
  else:
    entries = fileio.listdir(out)
    others = sorted(e.rstrip("/") for e in entries if e.rstrip("/") not in _EXPORT_FILES[fmt])
    if others:
      raise FileExistsError(f"{out} exists and holds files that are not a {fmt} export "
                            f"({', '.join(others[:5])}): choose another output path")
    if not entries:
      return
  if not overwrite:
    raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or choose another path")


def export_prompt(prompt: Any, out: str, fmt: str, overwrite: bool = False, **peft_kwargs) -> str:
  """One entry point for `spot-jax export`: fmt "npy" (a file), "t5x" (a directory holding
  encoder.prompt.prompt.prompt) or "peft" (an adapter directory). An existing `out` is replaced only
  with `overwrite`, and only when it is an export of that format (`check_export_target`)."""
  check_export_target(out, fmt, overwrite)
  if fmt == "npy":
    return save_npy(prompt, out)
  if fmt == "t5x":
    return write_t5x_prompt_dir(prompt, out)
  if fmt == "peft":
    return export_peft(prompt, out, **peft_kwargs)
  raise ValueError(f"unknown export format {fmt!r}; use one of {EXPORT_FORMATS}")

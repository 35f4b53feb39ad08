"""Where a training MODEL_DIR's prompt exports lie, and what they record: the layout the trainer
writes (`numpy_checkpoints/checkpoint_<step>/`, `best/`, `task_embedding/`, each with `export.json`)
and the readers find (`prompt_io`, the library). Names only, no arrays: `prompt_io` re-exports them.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Optional

from spot_jax import fileio
from spot_jax.fileio import read_json_object

NUMPY_CHECKPOINTS_DIR = "numpy_checkpoints"
T5X_PROMPT_FILENAME = "encoder.prompt.prompt.prompt"
# The prompt in prompt-tuning's model: PromptEncoderDecoder.encoder -> PromptEncoder.prompt (train
# Prompt) -> .prompt (prompts.Prompt) -> param "prompt"; its Checkpointer names the numpy file by this
# path with dots, and T5X stores it under optimizer/target/.
T5X_PROMPT_PARAM = "encoder/prompt/prompt/prompt"
T5X_CHECKPOINT_FILE = "checkpoint"
T5X_ORBAX_CHECKPOINT = "t5x_orbax_checkpoint"  # PromptSource.format of an Orbax-written T5X checkpoint_<step>/
PROMPT_NPY = "prompt.npy"
EXPORT_INFO = "export.json"  # {"step": int, "shape": [P, d], "metrics": {...}, "created": float}
BEST_EXPORT = "best"
TASK_EMBEDDING_EXPORT = "task_embedding"
# A Hugging Face PEFT prompt adapter's files and tensor (`prompt_peft` reads them, `prompt_export` writes
# them; the checkpoint readers name them when an adapter is given as the model).
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_TENSOR = "prompt_embeddings"

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")


# ----------------------------------------------------------------------------------------------------
# Layout of MODEL_DIR exports (shared with the trainer).

def numpy_checkpoints_dir(model_dir: str) -> str:
  return fileio.join(model_dir, NUMPY_CHECKPOINTS_DIR)


def checkpoint_export_dir(model_dir: str, step: int) -> str:
  return fileio.join(model_dir, NUMPY_CHECKPOINTS_DIR, f"checkpoint_{int(step)}")


def best_export_dir(model_dir: str) -> str:
  return fileio.join(model_dir, NUMPY_CHECKPOINTS_DIR, BEST_EXPORT)


def task_embedding_export_dir(model_dir: str) -> str:
  return fileio.join(model_dir, NUMPY_CHECKPOINTS_DIR, TASK_EMBEDDING_EXPORT)


@dataclasses.dataclass
class ModelDirExports:
  """What a MODEL_DIR holds: `checkpoints` is [(step, dir)] sorted by step; others are dirs or None."""
  checkpoints: list
  best: Optional[str]
  task_embedding: Optional[str]

  @property
  def latest(self) -> Optional[str]:
    return self.checkpoints[-1][1] if self.checkpoints else None


def list_numpy_checkpoints(numpy_dir: str) -> list:
  """[(step, dir)] of the complete `checkpoint_<step>` exports in `numpy_dir`, oldest first.

  Temporary (`.tmp-*`) and backup directories left by an interrupted write are ignored.
  """
  if not fileio.isdir(numpy_dir):
    return []
  out = []
  for name in fileio.listdir(numpy_dir):
    m = CHECKPOINT_RE.match(name.rstrip("/"))
    if m and export_file(fileio.join(numpy_dir, name.rstrip("/"))):
      out.append((int(m.group(1)), fileio.join(numpy_dir, name.rstrip("/"))))
  return sorted(out)


def _export_or_its_backup(numpy_dir: str, name: str) -> Optional[str]:
  """`numpy_dir/name` when it is a complete export; else the `name.old-<id>` backup a write killed
  between its two renames left (`fileio.atomic_write_dir`), with a warning; else None. Without this a
  reader silently fell back to another export (`which="auto"`: the latest instead of the best)."""
  path = fileio.join(numpy_dir, name)
  if fileio.isdir(path) and export_file(path):
    return path
  if not fileio.isdir(numpy_dir):
    return None
  backups = sorted(fileio.join(numpy_dir, n.rstrip("/")) for n in fileio.listdir(numpy_dir)
                   if n.rstrip("/").startswith(f"{name}.old-"))
  backups = [b for b in backups if export_file(b)]
  if not backups:
    return None
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("spot_jax").warning(
      "%s is missing but %s is there (an export replaced by a run that was killed between its two renames): "
      "reading it; the run's next export of %s replaces it", path, backups[-1], name)
  return backups[-1]


def find_exports(model_dir: str) -> ModelDirExports:
  """The numpy exports of a training MODEL_DIR (or of its numpy_checkpoints directory)."""
  numpy_dir = model_dir if fileio.basename(model_dir) == NUMPY_CHECKPOINTS_DIR else numpy_checkpoints_dir(
      model_dir)
  return ModelDirExports(
      checkpoints=list_numpy_checkpoints(numpy_dir),
      best=_export_or_its_backup(numpy_dir, BEST_EXPORT),
      task_embedding=_export_or_its_backup(numpy_dir, TASK_EMBEDDING_EXPORT))


def read_export_info(export_dir: str) -> dict:
  """The `export.json` beside an export (step, metrics), or {} when absent or unreadable.

  Only metadata: the prompt beside it is intact, so a damaged one is a warning, not an error. A PEFT
  adapter directory has no export.json: its `base_model_name_or_path` is given as `frozen_model`
  (absolute when it is a local path), so that a PEFT -> PEFT export carries the base model over.
  """
  path = fileio.join(export_dir, EXPORT_INFO)
  if not fileio.exists(path) and fileio.exists(fileio.join(export_dir, PEFT_CONFIG)):
    try:
      base = read_json_object(fileio.join(export_dir, PEFT_CONFIG)).get("base_model_name_or_path")
    except (OSError, ValueError):
      return {}
    return {"frozen_model": absolute_local_path(base)} if isinstance(base, str) and base else {}
  if not fileio.exists(path):
    m = CHECKPOINT_RE.match(fileio.basename(export_dir))
    return {"step": int(m.group(1))} if m else {}
  try:
    return read_json_object(path)
  except (OSError, ValueError) as e:
    warnings.warn(f"{e}; ignoring it: the export's step and metrics are unknown (export it again to "
                  "restore them)")
    return {}


def absolute_local_path(path: Optional[str]) -> Optional[str]:
  """`path` made absolute when it is a local path (one that exists here, or starts with ./ ../ ~ or /),
  so that a record of it (export.json's frozen_model, PEFT's base_model_name_or_path) still names it
  from another working directory. gs:// paths and Hugging Face Hub ids (`google/t5-v1_1-base`) are
  returned unchanged, as is None."""
  if not path or fileio.is_remote(path):
    return path
  if os.path.isabs(str(path)):
    return str(path)  # as recorded, trailing "/" included
  expanded = os.path.expanduser(str(path))
  if os.path.isabs(expanded) or os.path.exists(expanded) or expanded in (".", "..") or \
      expanded.startswith(("./", "../", "." + os.sep, ".." + os.sep)):
    return os.path.abspath(expanded)
  return str(path)


# spot_jax's own training checkpoints (orbax; `checkpointing.CHECKPOINTS_SUBDIR`): MODEL_DIR/checkpoints/<step>/
# {state,meta}/, the run's identity in meta/metadata (JSON).
TRAINING_CHECKPOINTS_DIR = "checkpoints"


def training_run_of(path: str) -> Optional[str]:
  """The spot_jax training MODEL_DIR that `path` is, or lies in (`checkpoints/[<step>/[<item>]]`,
  `numpy_checkpoints/[<export>/[<file>]]`), else None. A MODEL_DIR holds numpy_checkpoints/, or
  checkpoints/ with orbax's numbered step directories."""
  parts = str(path).rstrip("/").split("/")
  for depth in range(min(4, len(parts))):  # `path` is MODEL_DIR itself, or lies `depth` levels below it
    if depth:
      top, below = parts[-depth], parts[len(parts) - depth + 1:]
      if not (top == NUMPY_CHECKPOINTS_DIR or
              (top == TRAINING_CHECKPOINTS_DIR and (not below or below[0].isdigit()))):
        continue
    model_dir = "/".join(parts[:len(parts) - depth]) or "/"
    if _is_training_run(model_dir):
      return model_dir
  return None


def _is_training_run(model_dir: str) -> bool:
  if fileio.isdir(numpy_checkpoints_dir(model_dir)):
    return True
  ckpts = fileio.join(model_dir, TRAINING_CHECKPOINTS_DIR)
  return fileio.isdir(ckpts) and any(n.rstrip("/").isdigit() for n in fileio.listdir(ckpts))


def recorded_frozen_model(model_dir: str) -> Optional[tuple]:
  """(frozen model, the file recording it) of a training MODEL_DIR: `frozen_model` of its exports'
  export.json (best, task_embedding, then the newest step first), else of its newest orbax
  checkpoint's metadata (`{"path": ..., "seed": ...}`; no path: "a fresh initialization (seed N)").
  None when no record names one."""
  ex = find_exports(model_dir)
  exports = [d for d in (ex.best, ex.task_embedding) if d] + [d for _, d in reversed(ex.checkpoints)]
  for d in exports:
    f = fileio.join(d, EXPORT_INFO)
    try:
      frozen = read_json_object(f).get("frozen_model") if fileio.exists(f) else None
    except (OSError, ValueError):
      continue
    if isinstance(frozen, str) and frozen:
      return frozen, f
  ckpts = fileio.join(model_dir, TRAINING_CHECKPOINTS_DIR)
  steps = sorted(int(n.rstrip("/")) for n in fileio.listdir(ckpts) if n.rstrip("/").isdigit()) \
      if fileio.isdir(ckpts) else []
  for step in reversed(steps):
    f = fileio.join(ckpts, str(step), "meta", "metadata")
    try:
      frozen = read_json_object(f).get("frozen_model") if fileio.exists(f) else None
    except (OSError, ValueError):
      continue
    if isinstance(frozen, dict):
      if isinstance(frozen.get("path"), str) and frozen["path"]:
        return frozen["path"], f
      if frozen.get("seed") is not None:
        return f"a fresh random initialization (seed {frozen['seed']}; no checkpoint)", f
  return None


# A prompt library entry (spot_jax.spot.library_entry): prompt.npy beside these two.
LIBRARY_RECORD, LIBRARY_TASK_EMBEDDING = "record.json", "task_embedding.npy"


def library_entry_record(path: str) -> Optional[dict]:
  """The record.json of a prompt library entry directory, else None."""
  record = fileio.join(path, LIBRARY_RECORD)
  if not (fileio.exists(record) and fileio.exists(fileio.join(path, PROMPT_NPY))):
    return None
  try:
    out = fileio.read_json_object(record)
  except ValueError:
    return None
  return out if "task" in out and "d_model" in out else None


# ----------------------------------------------------------------------------------------------------
# Helpers.

def step_of(directory: str) -> Optional[int]:
  m = CHECKPOINT_RE.match(fileio.basename(directory))
  return int(m.group(1)) if m else None


def export_file(directory: str) -> Optional[str]:
  for name in (T5X_PROMPT_FILENAME, PROMPT_NPY):
    if fileio.exists(fileio.join(directory, name)):
      return fileio.join(directory, name)
  return None

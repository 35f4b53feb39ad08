"""Reading soft prompts in every format users already have (DESIGN.md §6); `prompt_export` writes them.

Formats read by `load_prompt` (auto-detected):
  * a `.npy` file (any file in numpy's `.npy` format, whatever its suffix);
  * the T5X prompt-tuning numpy export: a file named `encoder.prompt.prompt.prompt` written with
    `np.save` to a file handle (so no `.npy` suffix), its `checkpoint_<step>` directory, or a
    `numpy_checkpoints` directory (newest step);
  * a T5X checkpoint of a prompt-tuning run (`checkpoint_<step>/`, its `checkpoint` file, or a
    MODEL_DIR holding only those): the parameter `target/encoder/prompt/prompt/prompt`, read alone;
    also when T5X wrote it with Orbax (`train.use_orbax=True`: `checkpoint_<step>/state/`, or that
    `state/` item), restored alone with orbax's partial restore;
  * a PEFT prompt-tuning (or P-tuning) adapter directory (`adapter_config.json` +
    `adapter_model.safetensors` holding `prompt_embeddings`), or the `.safetensors` file itself, read
    with the `adapter_config.json` beside it (without one, only an odd row count is unambiguous);
    its metadata is checked (peft_type, task_type SEQ_2_SEQ_LM, token_dim, num_virtual_tokens x
    num_transformer_submodules rows) and of PEFT's 2P seq2seq rows the first P, the encoder's, are taken
    (`prompt_peft` reads it and checks the metadata; its names are re-exported here);
  * a training `MODEL_DIR` (its `numpy_checkpoints/best` export if present, else the newest step),
    ours or prompt-tuning's.

prompt-tuning's other prompt modules (multi-task shared + per-task prompts, a decoder-only model's
prompt) are refused with the files found and what to pass instead: they are not one encoder prompt.

Layout of a training MODEL_DIR's exports (`export_layout`; the trainer writes them through `prompt_export.export_numpy_checkpoint`):
  MODEL_DIR/numpy_checkpoints/checkpoint_<step>/{encoder.prompt.prompt.prompt, prompt.npy, export.json}
  MODEL_DIR/numpy_checkpoints/best/...            best-on-validation export
  MODEL_DIR/numpy_checkpoints/task_embedding/...  early export used as the SPoT task embedding

Every write is atomic: files go to a temporary name and are renamed into place, so a crash leaves either
the old export or the new one, never a partial one. `gs://` paths go through `tf.io.gfile` (TensorFlow
is imported only then).
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Optional

import numpy as np

from spot_jax import fileio, prompt_peft
# Re-exported: callers import them from here.
from spot_jax.export_layout import (BEST_EXPORT, CHECKPOINT_RE, EXPORT_INFO, LIBRARY_RECORD,
                                    LIBRARY_TASK_EMBEDDING, NUMPY_CHECKPOINTS_DIR, PROMPT_NPY,
                                    T5X_CHECKPOINT_FILE, T5X_ORBAX_CHECKPOINT, T5X_PROMPT_FILENAME,
                                    T5X_PROMPT_PARAM, TASK_EMBEDDING_EXPORT, ModelDirExports,
                                    absolute_local_path, best_export_dir, checkpoint_export_dir, export_file,
                                    find_exports, library_entry_record, list_numpy_checkpoints,
                                    numpy_checkpoints_dir, read_export_info, step_of, task_embedding_export_dir)
from spot_jax.fileio import read_json_object
from spot_jax.prompt_peft import PEFT_CONFIG, PEFT_TENSOR, PEFT_WEIGHTS

__all__ = [
    "NUMPY_CHECKPOINTS_DIR", "T5X_PROMPT_FILENAME", "T5X_PROMPT_PARAM", "T5X_CHECKPOINT_FILE",
    "T5X_ORBAX_CHECKPOINT", "PROMPT_NPY", "EXPORT_INFO", "BEST_EXPORT", "TASK_EMBEDDING_EXPORT",
    "ACCEPTED_FORMATS", "numpy_checkpoints_dir", "checkpoint_export_dir", "best_export_dir",
    "task_embedding_export_dir", "ModelDirExports", "list_numpy_checkpoints", "find_exports",
    "read_export_info", "absolute_local_path", "validate_prompt", "check_prompt_shape", "PromptSource",
    "resolve_prompt", "load_prompt", "load_prompt_with_source", "LIBRARY_RECORD", "LIBRARY_TASK_EMBEDDING",
    "library_entry_record", "export_file", "step_of", "CHECKPOINT_RE",
    # from prompt_peft.py and fileio.py
    "PEFT_CONFIG", "PEFT_WEIGHTS", "PEFT_TENSOR", "read_json_object",
]

_NPY_MAGIC = b"\x93NUMPY"

ACCEPTED_FORMATS = (
    "a .npy file; a T5X prompt-tuning numpy export file (encoder.prompt.prompt.prompt), its "
    "checkpoint_<step> directory or a numpy_checkpoints directory; a T5X checkpoint_<step> directory of a "
    "prompt-tuning run (target/encoder/prompt/prompt/prompt; msgpack or Orbax-written); a PEFT adapter directory "
    "(PROMPT_TUNING or P_TUNING: adapter_config.json + adapter_model.safetensors) or its .safetensors file "
    "with the adapter_config.json beside it; a training MODEL_DIR "
    "containing numpy_checkpoints/ (or prompt-tuning's T5X checkpoint_<step>/ directories)")


# ----------------------------------------------------------------------------------------------------
# Validation.

def prompt_sha256(prompt: Any, extra: bytes = b"") -> str:
  """sha256 of a prompt's shape and float32 bytes (the same prompt in any format or folder), then of
  `extra`: what an evaluation record and a SPoT run's init are compared by."""
  import hashlib  # pylint: disable=g-import-not-at-top
  arr = np.ascontiguousarray(np.asarray(prompt, np.float32))
  return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes() + extra).hexdigest()


def validate_prompt(prompt: Any, source: str = "prompt") -> np.ndarray:
  """Returns `prompt` as a float32 [P, d] array; raises ValueError naming `source` otherwise."""
  arr = np.asarray(prompt)
  if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:  # bfloat16 saved without ml_dtypes registered
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    arr = arr.view(ml_dtypes.bfloat16)
  if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
    raise ValueError(f"{source}: a prompt must hold numbers, got dtype {arr.dtype}")
  if arr.ndim != 2:
    hint = " (a batch of prompts? pass one [P, d] prompt)" if arr.ndim == 3 else ""
    raise ValueError(f"{source}: a prompt must have rank 2 [prompt_length, d_model], got shape "
                     f"{tuple(arr.shape)}{hint}")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{source}: empty prompt of shape {tuple(arr.shape)}")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    bad = int(np.sum(~np.isfinite(arr)))
    raise ValueError(f"{source}: the prompt holds {bad} NaN/inf value(s) of {arr.size}; the run that "
                     "wrote it probably diverged — use an earlier checkpoint")
  return arr


def check_prompt_shape(prompt: np.ndarray, prompt_length: Optional[int], d_model: Optional[int],
                       source: str = "prompt") -> np.ndarray:
  """Raises a ValueError stating both shapes when `prompt` is not [prompt_length, d_model].

  Either expected size may be None (not checked).
  """
  arr = validate_prompt(prompt, source)
  p, d = arr.shape
  if (prompt_length is not None and p != prompt_length) or (d_model is not None and d != d_model):
    want = (prompt_length if prompt_length is not None else "any",
            d_model if d_model is not None else "any")
    hint = ""
    if d_model is not None and d != d_model:
      hint = " The d_model differs: this prompt was trained for another model size."
    elif prompt_length is not None:
      hint = f" Set PROMPT_LENGTH={p} to use it as is."
    raise ValueError(f"{source}: prompt shape {(p, d)} does not match the expected "
                     f"[prompt_length, d_model] = {want}.{hint}")
  return arr


# ----------------------------------------------------------------------------------------------------
# Loading.

@dataclasses.dataclass
class PromptSource:
  """Where `load_prompt` found a prompt: the file, its format, and the export directory/step if any."""
  file: str
  # "npy" | "t5x" (numpy export) | "t5x_checkpoint" (file = the checkpoint_<step> dir) |
  # "t5x_orbax_checkpoint" (the same, written with Orbax) | "peft"
  format: str
  export_dir: Optional[str] = None
  step: Optional[int] = None


def resolve_prompt(path: str, which: str = "auto") -> PromptSource:
  """Finds the prompt file behind `path` (see the module docstring for what `path` may be).

  `which` picks among a MODEL_DIR's exports: "auto" (best if present, else latest), "best", "latest",
  or "task_embedding". It is ignored for a single file or export directory.
  """
  if which not in ("auto", "best", "latest", "task_embedding"):
    raise ValueError(f"which={which!r}: use 'auto', 'best', 'latest' or 'task_embedding'")
  path = str(path)
  if fileio.is_remote(path):  # fail fast, naming the fix, where GCS does not answer (no network)
    fileio.probe_gcs(path, fileio.gfile())
  if not fileio.exists(path):
    raise FileNotFoundError(f"no prompt at {path}: the path does not exist. Accepted: {ACCEPTED_FORMATS}")
  if not fileio.isdir(path):
    if path.endswith(".safetensors"):  # read with the adapter_config.json beside it, as the directory is
      model = _model_checkpoint_of(path) if prompt_peft.adapter_dir_of(path) is None else None
      if model is not None:
        raise ValueError(f"{path} looks like {model}, not a prompt: {_SWAPPED}")
      return PromptSource(path, "peft", export_dir=prompt_peft.adapter_dir_of(path))
    if fileio.basename(path) == T5X_CHECKPOINT_FILE and _is_t5x_checkpoint_dir(os.path.dirname(path.rstrip("/"))):
      return resolve_prompt(os.path.dirname(path.rstrip("/")))
    fmt = "t5x" if fileio.basename(path) == T5X_PROMPT_FILENAME else "npy"
    parent = os.path.dirname(path.rstrip("/"))
    step = step_of(parent) if fmt == "t5x" or fileio.basename(path) == PROMPT_NPY else None
    return PromptSource(path, fmt, export_dir=parent if step is not None else None, step=step)
  weights = prompt_peft.adapter_weights(path)
  if weights is not None:
    return PromptSource(weights, "peft", export_dir=path)
  entry = library_entry_record(path)
  if entry is not None and which == "task_embedding":  # its prompt.npy is the final prompt
    if not fileio.exists(fileio.join(path, LIBRARY_TASK_EMBEDDING)):
      raise FileNotFoundError(f"{path} is a prompt library entry without a task embedding")
    return PromptSource(fileio.join(path, LIBRARY_TASK_EMBEDDING), "npy", step=entry.get("task_embedding_step"))
  f = export_file(path)
  if f is not None:  # an export directory (checkpoint_<step>, best, task_embedding)
    info = read_export_info(path)
    step = info.get("step", step_of(path))
    return PromptSource(f, "t5x" if fileio.basename(f) == T5X_PROMPT_FILENAME else "npy", path, step)
  from spot_jax.checkpoints import t5x_orbax  # pylint: disable=g-import-not-at-top
  step_dir = t5x_orbax.step_dir_of_item(path)  # its `state/` item stands for the step (before
  # the msgpack test: an older orbax writes a `checkpoint` file into that item)
  if step_dir is None and step_of(path) is not None and t5x_orbax.is_orbax_step_dir(path):
    step_dir = path.rstrip("/")  # T5X names its Orbax steps checkpoint_<step> (spot_jax's own are <step>)
  if step_dir is not None:
    return PromptSource(step_dir, T5X_ORBAX_CHECKPOINT, step_dir, step_of(step_dir))
  if _is_t5x_checkpoint_dir(path):
    return PromptSource(path, "t5x_checkpoint", path, step_of(path))
  other = _other_prompt_files(path)
  if other:
    raise ValueError(_not_one_encoder_prompt(path, other))
  if fileio.basename(path) == NUMPY_CHECKPOINTS_DIR or fileio.isdir(numpy_checkpoints_dir(path)) or \
      list_numpy_checkpoints(path):
    ex = find_exports(path)
    if which == "task_embedding":
      chosen = ex.task_embedding
    elif which == "best":
      chosen = ex.best
    elif which == "latest":
      chosen = ex.latest
    else:
      chosen = ex.best or ex.latest
      if fileio.basename(path) == NUMPY_CHECKPOINTS_DIR and ex.latest:
        chosen = ex.latest  # a numpy_checkpoints directory means "the newest step"
    if chosen is None and which in ("auto", "latest") and _t5x_checkpoint_steps(path):
      return resolve_prompt(fileio.join(path, f"checkpoint_{_t5x_checkpoint_steps(path)[-1]}"))
    if chosen is None:
      newest = _newest_step_dir(
          path if fileio.basename(path) == NUMPY_CHECKPOINTS_DIR else numpy_checkpoints_dir(path))
      other = _other_prompt_files(newest)
      if other:
        raise ValueError(_not_one_encoder_prompt(newest, other))
      raise FileNotFoundError(
          f"{path} has no {which if which != 'auto' else 'prompt'} numpy export under "
          f"{NUMPY_CHECKPOINTS_DIR}/ (found steps {[s for s, _ in ex.checkpoints]}, best="
          f"{ex.best is not None}, task_embedding={ex.task_embedding is not None}). "
          + (_WHEN_TASK_EMBEDDING if which == "task_embedding" else _WHEN_EXPORTED))
    return resolve_prompt(chosen)
  t5x_steps = _t5x_checkpoint_steps(path)
  if t5x_steps:  # a prompt-tuning MODEL_DIR without its numpy exports: the newest T5X checkpoint
    if which not in ("auto", "latest"):
      raise FileNotFoundError(f"{path} holds T5X checkpoints (steps {t5x_steps}) but no {which} export: "
                              f"prompt-tuning writes none; pass which='latest' or a checkpoint_<step>/ directory")
    return resolve_prompt(fileio.join(path, f"checkpoint_{t5x_steps[-1]}"))
  if fileio.isdir(fileio.join(path, "checkpoints")):
    raise FileNotFoundError(f"{path} is a MODEL_DIR with training checkpoints but no numpy export yet. "
                            f"{_WHEN_EXPORTED}")
  prompt_peft.check_not_named_adapters(path)
  own = _training_checkpoint_of(path)
  if own is not None:
    model_dir, step = own
    export = checkpoint_export_dir(model_dir, step) if step is not None else model_dir
    loads = what_model_dir_loads(model_dir)
    raise ValueError(f"{path} is spot_jax's training checkpoint (orbax: the prompt with its optimizer state), "
                     f"not a prompt export: load {export}"
                     + (f" (the prompt of step {step}); {model_dir} itself loads {loads}" if step is not None
                        else f", which loads {loads}"))
  model = _model_checkpoint_of(path)
  if model is not None:
    raise ValueError(f"{path} looks like {model}, not a prompt: {_SWAPPED}")
  raise ValueError(f"unknown prompt format at {path}. Accepted: {ACCEPTED_FORMATS}")


_SWAPPED = ("were CHECKPOINT_PATH (INITIAL_CHECKPOINT_PATH when training; load_t5's path) and PROMPT_FILE "
            "swapped? The frozen T5 goes to CHECKPOINT_PATH, the trained prompt (a .npy, a numpy export, a "
            "training MODEL_DIR or a PEFT adapter) to PROMPT_FILE")


def what_model_dir_loads(model_dir: str) -> str:
  """Which export `load_prompt(model_dir)` (which="auto") reads, in words: the best export when the
  run wrote one, else the newest step's; PROMPT_FILE=MODEL_DIR is read the same way."""
  ex = find_exports(model_dir)
  if ex.best is not None:
    step = read_export_info(ex.best).get("step")
    newest = ex.checkpoints[-1][0] if ex.checkpoints else None
    return (f"its best-on-validation export {ex.best}" + (f" (step {step})" if step is not None else "")
            + (f", not its newest (step {newest})" if newest is not None and newest != step else ""))
  if ex.checkpoints:
    return f"its newest export (step {ex.checkpoints[-1][0]}), as it has no best/ export"
  return "its best export when it has one (best/, written when EVAL_PERIOD is set), else its newest step's"


def export_taken(path: str, src: PromptSource, which: str = "auto") -> Optional[str]:
  """Which of its prompts `path` gave (`src`, as `resolve_prompt(path, which)` found it), in words, when
  `path` is a MODEL_DIR (or its numpy_checkpoints/) and an export was picked from it: the step and why
  that one, e.g. "step 10 of run1, its best-on-validation export (numpy_checkpoints/best), not its
  newest step 30: --which latest takes that one". None when `path` names the prompt itself (a file, one
  export, a PEFT adapter): nothing was picked."""
  if not src.export_dir or not fileio.isdir(path):
    return None
  here, taken = path.rstrip("/"), src.export_dir.rstrip("/")
  if taken == here or not taken.startswith(here + "/"):
    return None
  name = fileio.basename(taken)
  step = src.step if src.step is not None else read_export_info(taken).get("step")
  ex = find_exports(path)
  newest = ex.checkpoints[-1][0] if ex.checkpoints else None
  asked = f", --which {which}" if which != "auto" else ""
  if name.startswith(BEST_EXPORT):
    why = f"its best-on-validation export ({NUMPY_CHECKPOINTS_DIR}/{BEST_EXPORT}{asked})"
    if newest is not None and step is not None and newest != step:
      why += f", not its newest step {newest}" + ("" if asked else ": --which latest takes that one")
    elif newest is not None and newest == step:
      why += ", also its newest step"
  elif name.startswith(TASK_EMBEDDING_EXPORT):
    why = f"its task-embedding export ({NUMPY_CHECKPOINTS_DIR}/{TASK_EMBEDDING_EXPORT}{asked})"
  elif src.format in ("t5x_checkpoint", T5X_ORBAX_CHECKPOINT):
    why = f"its newest T5X checkpoint, as it has no {NUMPY_CHECKPOINTS_DIR}/ export"
  elif which == "auto" and fileio.basename(here) != NUMPY_CHECKPOINTS_DIR:
    why = (f"its newest export, as it has no {NUMPY_CHECKPOINTS_DIR}/{BEST_EXPORT} (training writes one "
           f"when it evaluates: EVAL_PERIOD)")
  else:
    why = f"its newest export{' (' + asked[2:] + ')' if asked else ''}"
  return (f"step {step} of {path}, " if step is not None else f"the prompt of {path}, ") + why


_HF_WEIGHTS = (".safetensors", ".safetensors.index.json", ".msgpack", ".msgpack.index.json", ".bin",
               ".bin.index.json", ".h5")


def _model_checkpoint_of(path: str) -> Optional[str]:
  """What kind of model checkpoint `path` is ("a Hugging Face model folder (...)"), when it is a Hugging
  Face model folder or one of its files (config.json beside weights, no adapter_config.json); else None.
  T5X checkpoints are named where their prompt is looked for (`_no_encoder_prompt`)."""
  folder = path.rstrip("/") if fileio.isdir(path) else os.path.dirname(path.rstrip("/"))
  if not folder or not fileio.isdir(folder):
    return None
  names = [n.rstrip("/") for n in fileio.listdir(folder)]
  if "config.json" not in names or PEFT_CONFIG in names:
    return None
  weights = sorted(n for n in names if n.endswith(_HF_WEIGHTS))
  if not weights:
    return None
  where = ("a Hugging Face model folder" if folder == path.rstrip("/") else
           f"a file of the Hugging Face model folder {folder}")
  return f"{where} (config.json + {', '.join(weights[:3])}): a model checkpoint"


def _training_checkpoint_of(path: str) -> Optional[tuple]:
  """(MODEL_DIR, step or None) when `path` is MODEL_DIR/checkpoints[/<step>[/<item>]] of a MODEL_DIR
  with numpy exports."""
  parts = path.rstrip("/").split("/")
  for depth in (1, 2, 3):
    if len(parts) > depth and parts[-depth] == "checkpoints" and (depth == 1 or parts[-depth + 1].isdigit()):
      model_dir = "/".join(parts[:-depth]) or "/"
      if fileio.isdir(numpy_checkpoints_dir(model_dir)):
        return model_dir, int(parts[-depth + 1]) if depth > 1 else None
  return None


_WHEN_EXPORTED = ("Training writes them: numpy_checkpoints/checkpoint_<step>/ with every SAVE_PERIOD "
                  "checkpoint, best/ when EVAL_PERIOD is set, task_embedding/ at TASK_EMBEDDING_STEP; "
                  "run the same train command again to resume the run until it writes one")
_WHEN_TASK_EMBEDDING = ("Training writes task_embedding/ at TASK_EMBEDDING_STEP: set it (a run resumed "
                        "past that step takes it from that step's numpy export, when it was saved) and run "
                        "the train command again")


def load_prompt(path: str, which: str = "auto") -> np.ndarray:
  """Loads a prompt from any supported format as float32 [P, d]; see `resolve_prompt`."""
  return load_prompt_with_source(path, which)[0]


def load_prompt_with_source(path: str, which: str = "auto"):
  """(prompt, PromptSource) — the source tells where the prompt came from (file, format, step)."""
  src = resolve_prompt(path, which)
  if src.format == "peft":
    arr = prompt_peft.read_peft_prompt(src.file, src.export_dir)
  elif src.format == "t5x_checkpoint":
    arr = _load_t5x_checkpoint(src.file)
  elif src.format == T5X_ORBAX_CHECKPOINT:
    arr = _load_t5x_orbax_checkpoint(src.file)
  else:
    with fileio.open_file(src.file, "rb") as f:
      head = f.read(len(_NPY_MAGIC))
      if head != _NPY_MAGIC:
        model = _model_checkpoint_of(src.file)
        if model is not None:
          raise ValueError(f"{src.file} looks like {model}, not a prompt: {_SWAPPED}")
        raise ValueError(f"unknown prompt format at {src.file}: not a numpy .npy file (no numpy header)."
                         f" Accepted: {ACCEPTED_FORMATS}")
      f.seek(0)
      data = f.read()
    try:
      arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError) as e:  # numpy's own words name no file ("EOF: reading array header")
      raise ValueError(f"{src.file} is not a readable numeric .npy (truncated, or written with pickle): "
                       f"{e}. Export or copy it again") from e
  return validate_prompt(arr, src.file), src


def _is_t5x_checkpoint_dir(directory: str) -> bool:
  """A T5X `checkpoint_<step>/` (msgpack `checkpoint` file; the zarr arrays beside it)."""
  f = fileio.join(directory, T5X_CHECKPOINT_FILE)
  return fileio.exists(f) and not fileio.isdir(f)


def _t5x_checkpoint_steps(model_dir: str) -> list:
  """Steps of the T5X `checkpoint_<step>/` directories in `model_dir`, msgpack or Orbax-written."""
  if not fileio.isdir(model_dir):
    return []
  from spot_jax.checkpoints import t5x_orbax  # pylint: disable=g-import-not-at-top
  steps = [int(m.group(1)) for m in (CHECKPOINT_RE.match(n.rstrip("/")) for n in fileio.listdir(model_dir))
           if m and (_is_t5x_checkpoint_dir(fileio.join(model_dir, m.group(0))) or
                     t5x_orbax.is_orbax_step_dir(fileio.join(model_dir, m.group(0))))]
  return sorted(set(steps))


def _newest_step_dir(numpy_dir: str) -> Optional[str]:
  """The newest `checkpoint_<step>` directory in `numpy_dir`, whatever it holds."""
  if not fileio.isdir(numpy_dir):
    return None
  steps = sorted((int(m.group(1)), m.group(0)) for m in
                 (CHECKPOINT_RE.match(n.rstrip("/")) for n in fileio.listdir(numpy_dir)) if m)
  return fileio.join(numpy_dir, steps[-1][1]) if steps else None


def _other_prompt_files(directory: str) -> list:
  """Files of a prompt-tuning numpy export named after prompt parameters (`<path with dots>`) other
  than the plain encoder prompt: multi-task, decoder-only or per-layer prompts."""
  if not directory or not fileio.isdir(directory):
    return []
  names = [n.rstrip("/") for n in fileio.listdir(directory)]
  return sorted(n for n in names if "prompt" in n.split(".")[:-1] and
                n not in (T5X_PROMPT_FILENAME, PROMPT_NPY, EXPORT_INFO))


def _not_one_encoder_prompt(where: str, names: list, sep: str = ".") -> str:
  """Why a prompt-tuning export or checkpoint with other prompt parameters is not one prompt, and the fix."""
  listed = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
  if any(n.endswith(f"{sep}shared_prompt") or f"{sep}task_prompts" in n for n in names):
    kind = ("a multi-task prompt of prompt-tuning's extended configs: a shared prompt plus per-task prompts, "
            "combined (added, concatenated or projected) in a way the files do not record")
    fix = ("spot_jax trains one [P, d] prompt per task: combine the shared prompt with one task's prompt "
           "yourself and save the result with numpy.save, then pass that .npy")
  elif any(n.split(sep)[1 if n.startswith(f"target{sep}") else 0] == "decoder" for n in names):
    kind = "a decoder-side prompt (prompt-tuning's decoder-only or decoder-prompt models)"
    fix = ("spot_jax's T5 prompts the encoder; if you mean to use this [P, d] array as an encoder prompt, "
           "pass its numpy file itself")
  else:
    kind = "prompt parameters other than the plain encoder prompt (per-layer or custom prompt modules)"
    fix = "Pass the numpy file of one [P, d] encoder prompt itself"
  plain = T5X_PROMPT_FILENAME if sep == "." else f"target/{T5X_PROMPT_PARAM}"
  return f"{where} holds {listed}, not {plain}: {kind}. {fix}"


def _load_t5x_checkpoint(ckpt_dir: str) -> np.ndarray:
  """The prompt of a prompt-tuning run's T5X checkpoint; only prompt parameters are read from disk."""
  from spot_jax.checkpoints import t5x  # pylint: disable=g-import-not-at-top
  from spot_jax.checkpoints.infer_config import flatten  # pylint: disable=g-import-not-at-top
  _, tree = t5x.read_t5x(ckpt_dir, select=_is_prompt_param)
  flat = flatten(tree)
  if T5X_PROMPT_PARAM in flat:
    return flat[T5X_PROMPT_PARAM]
  raise ValueError(_no_encoder_prompt(ckpt_dir, sorted(flat)))


def _load_t5x_orbax_checkpoint(step_dir: str) -> np.ndarray:
  """The prompt of a prompt-tuning run's T5X checkpoint written with Orbax: the parameter names come
  from the tree metadata, and the prompt alone is restored (no frozen weight, no optimizer slot)."""
  from spot_jax.checkpoints import t5x_orbax  # pylint: disable=g-import-not-at-top
  from spot_jax.checkpoints.infer_config import flatten  # pylint: disable=g-import-not-at-top
  step_dir, names = t5x_orbax.target_names(step_dir)
  if T5X_PROMPT_PARAM not in names:
    raise ValueError(_no_encoder_prompt(step_dir, [n for n in names if _is_prompt_param(n)], " (Orbax-written)"))
  _, tree = t5x_orbax.read_t5x_orbax(step_dir, select=lambda name: name == T5X_PROMPT_PARAM)
  return flatten(tree)[T5X_PROMPT_PARAM]


def _is_prompt_param(name: str) -> bool:
  """Whether a slash-joined parameter name belongs to a prompt module (any of prompt-tuning's)."""
  return "prompt" in name.split("/")


def _no_encoder_prompt(ckpt_dir: str, prompt_names: list, kind: str = "") -> str:
  """Why a T5X checkpoint without target/encoder/prompt/prompt/prompt is not a prompt, and the fix."""
  if prompt_names:
    return _not_one_encoder_prompt(ckpt_dir, sorted(f"target/{n}" for n in prompt_names), "/")
  return (f"{ckpt_dir} is a T5X checkpoint{kind} without a prompt (no target/{T5X_PROMPT_PARAM}): it looks "
          "like a frozen model's checkpoint, not one written by a prompt-tuning run. Pass the run's "
          f"MODEL_DIR, its numpy_checkpoints/ export or a checkpoint_<step>/ the run wrote; {_SWAPPED}")



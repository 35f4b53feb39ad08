"""Read T5X and Hugging Face T5 checkpoints into one T5X-named parameter tree (DESIGN.md §4).

`read_params(path)` is the single entry point: it detects the format, infers or reads the config,
checks every array's shape against it, and returns `(T5Config, params)` where `params` is a nested
dict of numpy arrays named as in T5X, without a `params`/`target` wrapper.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from spot_jax.checkpoints import hf, hf_flax, t5x, t5x_orbax
from spot_jax.checkpoints.hf import read_hf, write_hf
from spot_jax.checkpoints.infer_config import (SHAPE_FIELDS, VARIANT_FIELDS, CheckpointError, cast_params,
                                               check_agreement, check_params, expected_shapes,
                                               infer_config)
from spot_jax.checkpoints.t5x import absolute_spec, read_t5x, write_t5x
from spot_jax.checkpoints.t5x_orbax import read_t5x_orbax
from spot_jax.config import T5Config

__all__ = ["CheckpointError", "read_params", "detect_format", "resolve_checkpoint_path", "read_t5x", "read_t5x_orbax",
           "read_hf", "write_t5x", "write_hf", "infer_config", "check_params", "expected_shapes", "absolute_spec"]


# Files that name a checkpoint by its directory: a T5X `checkpoint` msgpack file, or a HF folder's files.
_FILES_OF_A_CHECKPOINT_DIR = ("checkpoint", "config.json", hf.WEIGHTS_FILE, hf.INDEX_FILE, hf_flax.WEIGHTS_FILE,
                              hf_flax.INDEX_FILE)


def resolve_checkpoint_path(path: str) -> str:
  """The checkpoint directory behind `path`: `path` itself, or the directory of a file that belongs
  to one (T5X's `checkpoint_<step>/checkpoint`, a HF folder's config.json or weights file), or
  the `checkpoint_<step>` of an Orbax-written T5X checkpoint's `state` item directory (or of the msgpack
  `checkpoint` file older orbax wrote in it)."""
  path = str(path)
  step_dir = t5x_orbax.step_dir_of_item(path)
  if step_dir is not None:
    return step_dir
  base = path.rstrip("/").rsplit("/", 1)[-1]
  if base in _FILES_OF_A_CHECKPOINT_DIR and t5x.exists(path) and not t5x.isdir(path):
    parent = path.rstrip("/").rsplit("/", 1)[0] if t5x.is_gcs(path) else os.path.dirname(os.path.abspath(path))
    step_dir = t5x_orbax.step_dir_of_item(parent) if base == "checkpoint" else None
    if step_dir is not None:  # older orbax's msgpack tree of a `state` item: the step
      return step_dir
    if base != "checkpoint" or t5x.find_checkpoint_dir(parent) == parent:
      return parent
  return path


def detect_format(path: str) -> str:
  """'t5x', 't5x_orbax' (T5X written with Orbax) or 'hf' for a checkpoint path; raises CheckpointError
  saying what was found and the fix. In a model directory the newest step wins, whichever its format."""
  path = resolve_checkpoint_path(path)
  if not t5x.exists(path):
    raise CheckpointError(_missing_path(path))
  if hf.is_hf_dir(path):
    return "hf"
  native = t5x.find_checkpoint_dir(path)
  if native == path:
    return "t5x"
  orbax_steps = t5x_orbax.orbax_steps(path)
  # Before the Orbax test (spot_jax's own checkpoints/<step> is one): a spot_jax training MODEL_DIR, or
  # a folder in it, holds a prompt only. A prompt-tuning (T5X) MODEL_DIR also holds numpy_checkpoints/,
  # but its checkpoint_<step>/ are T5X checkpoints with the frozen model's weights: loaded as before.
  prompt = _a_prompt_not_a_model(path) if native is None and not orbax_steps else None
  if prompt is not None:
    raise CheckpointError(prompt)
  if t5x_orbax.is_orbax_step_dir(path):
    return "t5x_orbax"
  if native is not None and not (orbax_steps and orbax_steps[-1] > t5x.checkpoint_steps(path)[-1]):
    return "t5x"
  if orbax_steps:
    return "t5x_orbax"
  raise CheckpointError(_not_a_checkpoint(path))


_T5X_DIR = "a T5X checkpoint (a `checkpoint` msgpack file, or `checkpoint_<step>/` directories holding one)"
_HF_DIR = ("a Hugging Face T5 directory (config.json + model.safetensors, or sharded *.safetensors + "
           "model.safetensors.index.json, or Flax's flax_model.msgpack)")
_CONVERT = ("python -c \"from transformers import AutoModelForSeq2SeqLM as M; "
            "M.from_pretrained('{src}'{kw}).save_pretrained('{dst}', safe_serialization=True)\"")
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "_sharding")


def _hf_cache_root() -> str:
  cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
  if cache:
    return cache
  home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
  return os.path.join(home, "hub")


def _snapshots(repo_cache: str):
  snap = os.path.join(repo_cache, "snapshots")
  return sorted(os.path.join(snap, d) for d in os.listdir(snap)) if os.path.isdir(snap) else []


def _missing_path(path: str) -> str:
  """Why `path` (which does not exist) was probably given, and what to pass instead."""
  msg = f"checkpoint path {path} does not exist"
  stripped = path.rstrip("/")
  parent, _, base = stripped.rpartition("/")
  if re.fullmatch(r"checkpoint_\d+", base) and parent and t5x.isdir(parent):
    steps = sorted(set(t5x.checkpoint_steps(parent)) | set(t5x_orbax.orbax_steps(parent)))
    found = f"its checkpoints are steps {steps}" if steps else "it holds no checkpoint_<step>/ directory"
    return f"{msg}; {parent} exists and {found}"
  if not t5x.is_gcs(path) and not os.path.isabs(path) and not path.startswith(".") and \
      re.fullmatch(r"[\w.-]+(/[\w.-]+)?", stripped):
    msg += (f". If {path!r} is a Hugging Face Hub model id: spot_jax reads local folders and downloads "
            f"nothing; download it once (`huggingface-cli download {stripped} --local-dir DIR`, or "
            "huggingface_hub.snapshot_download) and pass DIR")
    cached = _snapshots(os.path.join(_hf_cache_root(), "models--" + stripped.replace("/", "--")))
    if cached:
      msg += f"; transformers' cache already holds it: {cached[-1]}"
  return msg


_AS_PROMPT = ("PROMPT_FILE in eval/infer, from_file's path in training, or prompt=prompt_io.load_prompt(path) "
              "with load_t5")


def _a_prompt_not_a_model(path: str) -> Optional[str]:
  """Why `path` is a trained prompt, not a frozen model, and what to pass where: a PEFT adapter (its
  folder or weights file), or a spot_jax training MODEL_DIR (or a folder in it). None otherwise."""
  from spot_jax import export_layout  # pylint: disable=g-import-not-at-top
  folder = path.rstrip("/") if t5x.isdir(path) else path.rstrip("/").rpartition("/")[0] or "."
  config_file = t5x.join(folder, export_layout.PEFT_CONFIG)
  if t5x.exists(config_file):
    return _peft_adapter(folder, config_file)
  run = export_layout.training_run_of(path)
  if run is None:
    return None
  held = [d + "/" for d in (export_layout.NUMPY_CHECKPOINTS_DIR, export_layout.TRAINING_CHECKPOINTS_DIR)
          if t5x.isdir(t5x.join(run, d))]
  what = (f"{path} is a spot_jax prompt-tuning run's folder: it" if run == path.rstrip("/") else
          f"{path} lies in a spot_jax prompt-tuning run's folder, {run}, which")
  recorded = export_layout.recorded_frozen_model(run)
  if recorded is not None:
    frozen = f"{recorded[0]} (recorded in {recorded[1]})"
  else:
    frozen = "the checkpoint its train command's INITIAL_CHECKPOINT_PATH named (its records do not name it)"
  return (f"{what} holds {' and '.join(held)} of a trained prompt, not a T5 model. Pass the run's folder "
          f"as the prompt ({_AS_PROMPT}; it gives the run's best export, else its newest; or one export of "
          f"{export_layout.NUMPY_CHECKPOINTS_DIR}/), and as the frozen model (CHECKPOINT_PATH, "
          f"INITIAL_CHECKPOINT_PATH, load_t5's path) the model that run was trained on: {frozen}")


def _peft_adapter(folder: str, config_file: str) -> str:
  """Why a PEFT adapter folder is not a model, naming its base model (base_model_name_or_path)."""
  from spot_jax import export_layout  # pylint: disable=g-import-not-at-top
  try:
    config = json.loads(t5x.read_bytes(config_file))
  except (OSError, ValueError):
    config = {}
  config = config if isinstance(config, dict) else {}
  kind = config.get("peft_type") or "PROMPT_TUNING"
  base = config.get("base_model_name_or_path")
  base = (f"{base} (adapter_config.json's base_model_name_or_path)" if isinstance(base, str) and base else
          "its base model, the T5 it was trained on (adapter_config.json's base_model_name_or_path names none)")
  files = f"{export_layout.PEFT_CONFIG} + {export_layout.PEFT_WEIGHTS}"
  if kind in ("PROMPT_TUNING", "P_TUNING"):
    return (f"{folder} is a PEFT prompt adapter ({kind}: {files}), a trained soft prompt, not a model "
            f"checkpoint: pass it as the prompt ({_AS_PROMPT}), and as the frozen model (CHECKPOINT_PATH, "
            f"INITIAL_CHECKPOINT_PATH, load_t5's path) its base model: {base}")
  return (f"{folder} is a PEFT {kind} adapter ({files}), not a model checkpoint, and not a soft prompt either: "
          f"spot_jax keeps the model frozen and reads no {kind} weights. Load its base model: {base}")


def _not_a_checkpoint(path: str) -> str:
  """What `path` (which exists) holds instead of a checkpoint, and the fix."""
  if not t5x.isdir(path):
    return f"{path} is a file, not a checkpoint: pass the directory of {_T5X_DIR} or of {_HF_DIR}"
  names = set(t5x.listdir(path))
  found = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "")
  safetensors = sorted(n for n in names if n.endswith(".safetensors") or n == hf.INDEX_FILE)
  pickles = sorted(n for n in names if n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json")))
  flax = sorted(n for n in names if n.startswith("flax_model") and n.endswith((".msgpack", ".msgpack.index.json")))
  other = sorted(n for n in names if n == "tf_model.h5")
  if not names:
    return f"{path} is an empty directory: neither {_T5X_DIR} nor {_HF_DIR}"
  if (safetensors or flax or pickles or other) and "config.json" not in names:
    return (f"{path} holds weights ({', '.join((safetensors + flax + pickles + other)[:4])}) but no config.json: a "
            "Hugging Face checkpoint needs the config.json that save_pretrained writes beside them (it gives "
            "the layer counts, feed_forward_proj and tie_word_embeddings). Copy it from where the weights "
            "came from (the model's Hub repository); if a write_hf(..., overwrite=True) into it was "
            "interrupted, write the model again")
  if safetensors and "config.json" in names:
    return (f"{path} has config.json and {', '.join(safetensors[:3])} but neither {hf.WEIGHTS_FILE} nor "
            f"{hf.INDEX_FILE} (sharded weights need the index save_pretrained writes): copy the missing file")
  if flax and "config.json" in names:
    return (f"{path} has config.json and {', '.join(flax[:3])} but neither {hf_flax.WEIGHTS_FILE} nor "
            f"{hf_flax.INDEX_FILE} (sharded weights need the index save_pretrained writes): copy the missing file")
  if pickles or other:
    kind = "PyTorch pickle" if pickles else "TensorFlow"
    kw = "" if pickles else ", from_tf=True"
    dst = path.rstrip("/") + "_safetensors"
    return (f"{path} holds {kind} weights ({', '.join((pickles + other)[:3])}), which spot_jax does not read "
            f"(it reads safetensors and Flax msgpack{'; unpickling can run code' if pickles else ''}). Convert them once, "
            f"in a Python with torch{'' if pickles else ', tensorflow'} and transformers:\n  {_CONVERT.format(src=path, kw=kw, dst=dst)}\n"
            f"and pass {dst}")
  if "snapshots" in names and "refs" in names:
    snaps = t5x.listdir(t5x.join(path, "snapshots"))
    which = t5x.join(path, "snapshots", snaps[0]) if len(snaps) == 1 else t5x.join(path, "snapshots", "<revision>")
    return (f"{path} is a Hugging Face hub cache entry, not a model folder: pass its snapshot folder {which}"
            + (f" (revisions: {', '.join(sorted(snaps))})" if len(snaps) > 1 else ""))
  if any(m in names for m in _ORBAX_MARKERS) or (t5x.isdir(t5x.join(path, "checkpoint"))):
    return (f"{path} looks like an Orbax checkpoint ({found}) but not one T5X wrote: spot_jax reads T5X's "
            "msgpack + TensorStore checkpoints (a `checkpoint` file in each checkpoint_<step>/), T5X's Orbax "
            f"checkpoints (checkpoint_<step>/{t5x_orbax.STATE_ITEM}/ holding the train state, parameters under "
            "`target`) and Hugging Face folders. Pass the checkpoint_<step> directory of such a checkpoint, or "
            "convert it to one of those first")
  steps = sorted(n for n in names if re.fullmatch(r"checkpoint_\d+", n))
  if steps:
    return (f"{path} has {', '.join(steps[:5])} but no `checkpoint` msgpack file in any of them: an incomplete "
            "copy (copy it again, e.g. `gsutil -m cp -r`): a T5X step holds a `checkpoint` msgpack file, or, "
            f"written with Orbax, `_CHECKPOINT_METADATA` and a `{t5x_orbax.STATE_ITEM}/` item directory")
  if "config.json" in names:
    return (f"{path} has a config.json but no weights: neither {_T5X_DIR} nor {_HF_DIR}; it holds: {found}. "
            "Copy the weights beside config.json")
  return f"{path} is neither {_T5X_DIR} nor {_HF_DIR}; it holds: {found}"


def read_params(path: str, config: Optional[T5Config] = None, dtype: Any = None,
                overrides: Optional[Mapping[str, Any]] = None,
                check_shape_overrides: bool = False, lazy: bool = False) -> Tuple[T5Config, Dict[str, Any]]:
  """Read a T5X or HF T5 checkpoint (local or gs://) into `(config, params)`.

  - config: when given, its shape fields must agree with the checkpoint (else an error naming each
    mismatching field) and it is returned (its max distance, eps, dropout and dtype are kept).
    When None, a T5X config is inferred from the shapes (max distance 128) and a HF config is read
    from config.json.
  - overrides: T5Config fields applied last (e.g. `relative_attention_max_distance`, `dtype`). With
    `check_shape_overrides` (`models/sizes/from_checkpoint.gin`), its shape fields are not applied:
    `feed_forward` and `tie_word_embeddings` must agree with the checkpoint, dimensions are its own.
  - dtype: cast every parameter ("float32", "bfloat16"); None keeps the stored dtypes.
  - lazy: a T5X checkpoint's TensorStore arrays (native, or written with Orbax: zarr/zarr3 arrays,
    OCDBT or not) are opened (metadata checked: a missing or invalid array fails here) but not read;
    they are `lazy.LazyArray`s that read only the slices asked for (`frozen_model.place_frozen`: each
    device's shard), and a damaged chunk fails when read. So are a Hugging Face folder's tensors
    (safetensors' `get_slice` locally, on gs:// the byte ranges `hf.plan_byte_ranges` picks for a
    slice; dtypes, names and shapes checked now). Orbax leaves that are not arrays are read whole
    either way.
  """
  path = resolve_checkpoint_path(path)
  fmt = detect_format(path)
  if fmt in ("t5x", "t5x_orbax"):
    ckpt_dir, params = read_t5x(path, lazy=lazy) if fmt == "t5x" else read_t5x_orbax(path, lazy=lazy)
    source = f"T5X checkpoint {ckpt_dir}" if fmt == "t5x" else f"T5X Orbax checkpoint {ckpt_dir}"
    found = infer_config(params, source, base=config)
  else:
    source = f"Hugging Face checkpoint {path}"
    found, params = read_hf(path, lazy=lazy)
  if config is not None:
    check_agreement(config, found, source)
    found = config
  if overrides and check_shape_overrides:
    # The variant's kind (MLP, tied output) must match; its dimensions (vocab_size, ...) are the
    # checkpoint's own.
    kind = {k: v for k, v in overrides.items() if k in VARIANT_FIELDS}
    check_agreement(found.replace(**kind), found, source)
    overrides = {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS}
  if overrides:
    found = found.replace(**dict(overrides))
  params = check_params(found, params, source)
  return found, cast_params(params, dtype)

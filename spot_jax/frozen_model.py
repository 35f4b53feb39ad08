"""The frozen T5 a run drives its prompt through: loaded (or freshly initialized), placed on the mesh,
and identified. Training records that identity with each checkpoint, so that a resume on another task
or frozen model is refused, and counts Adafactor's decay from the initial checkpoint's step as T5X
does. eval, infer and the SPoT pipeline load their frozen model here too, without the trainer."""
from __future__ import annotations

import hashlib
import logging
import re
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from spot_jax import partitioning
from spot_jax.checkpoints.lazy import is_lazy, normalize_index
from spot_jax.config import T5Config
from spot_jax.model import init_params, param_logical_axes, param_shapes

# Its own logger: train, eval, infer and the SPoT pipeline load the frozen model through here (under
# spot_jax.train, an eval's "CHECKPOINT_PATH is unset" warning read as the trainer's).
log = logging.getLogger("spot_jax.frozen_model")


def load_frozen(initial_checkpoint_path: Optional[str], model_config: Optional[T5Config], seed: int,
                macro: str = "INITIAL_CHECKPOINT_PATH", lazy: bool = True):
  """(config, params) from a T5X/HF checkpoint, or a fresh initialization of `model_config`.
  `macro` is the gin macro that holds the path in the caller's run file (for messages).

  `lazy` (default): a T5X checkpoint's TensorStore arrays, native or Orbax-written (a local HF folder's
  tensors), are opened, not read (`checkpoints.lazy.LazyArray`); `place_frozen` reads only the shards this process's
  devices hold.
  `np.asarray` of one reads it whole. `lazy=False` reads every array into host memory now (a caller
  that uses the numpy arrays themselves, not `place_frozen`)."""
  from spot_jax.config import FromCheckpoint
  if initial_checkpoint_path:
    from spot_jax import checkpoints
    if isinstance(model_config, FromCheckpoint):  # dimensions from the checkpoint, the rest from gin
      return checkpoints.read_params(initial_checkpoint_path, overrides=dict(model_config.overrides),
                                     check_shape_overrides=True, lazy=lazy)
    # With a gin model config, read_params checks every structural field against the checkpoint
    # and keeps the config's run-time fields (dropout, dtype, max distance).
    return checkpoints.read_params(initial_checkpoint_path, config=model_config, lazy=lazy)
  if isinstance(model_config, FromCheckpoint):
    raise ValueError(f"models/sizes/from_checkpoint.gin takes the model's dimensions from the checkpoint: "
                     f"set {macro}, or use a size file (models/sizes/*.gin) for a fresh initialization")
  if model_config is None:
    raise ValueError(f"set {macro} to a T5X or Hugging Face checkpoint, or give a model config "
                     "(models/sizes/*.gin) to use a fresh initialization")
  log.warning("%s is unset: the frozen model is a fresh random initialization", macro)
  return model_config, init_params(model_config, jax.random.PRNGKey(seed))


_CHECKPOINT_STEP_DIR = re.compile(r"checkpoint_(\d+)/*$")


def checkpoint_step(initial_checkpoint_path: Optional[str]) -> int:
  """The step T5X restores from INITIAL_CHECKPOINT_PATH: N of the `checkpoint_N` it names (of a T5X
  model directory, its newest checkpoint's, the one read). 0 for none: a Hugging Face folder, a fresh
  initialization, a directory not named `checkpoint_N` (set INITIAL_CHECKPOINT_STEP there)."""
  if not initial_checkpoint_path:
    return 0
  from spot_jax import checkpoints
  from spot_jax.checkpoints import t5x, t5x_orbax
  try:
    resolved = checkpoints.resolve_checkpoint_path(initial_checkpoint_path)
    m = _CHECKPOINT_STEP_DIR.search(resolved)
    if m:
      return int(m.group(1))
    if checkpoints.detect_format(resolved) == "hf":
      return 0
    steps = t5x.checkpoint_steps(resolved) + t5x_orbax.orbax_steps(resolved)
    return max(steps) if steps else 0
  except Exception:  # pylint: disable=broad-except  (the reader has already named a bad path)
    return 0


def optimizer_initial_step(model_dir: str, meta: Optional[Mapping], explicit: Optional[int], derived: int,
                           path: Optional[str]) -> int:
  """The global step Adafactor's second-moment decay counts from (T5X's step restored from the initial
  checkpoint): INITIAL_CHECKPOINT_STEP when set, else `derived` (the checkpoint's step). A resumed run
  keeps the value its checkpoints recorded; one set to another value is refused (the decay of the
  remaining steps would not be the run's). `meta`: the latest checkpoint's metadata (None: a fresh run)."""
  if meta is None:
    step = derived if explicit is None else explicit
    where = (f"INITIAL_CHECKPOINT_STEP={explicit}" if explicit is not None else
             f"the step of {path}" if derived else
             f"{path or 'a fresh initialization'} names no T5X checkpoint_<step>; set INITIAL_CHECKPOINT_STEP "
             f"(1100000 for an HF copy of T5 1.1 LM-adapted) to count as prompt-tuning does")
    log.info("Adafactor's second-moment decay counts from global step %d (%s)", step, where)
    return step
  if "initial_checkpoint_step" not in meta:  # written before it was recorded: the decay counted from 0
    if explicit not in (None, 0):
      log.warning("%s's checkpoints do not record INITIAL_CHECKPOINT_STEP (written before it existed; their "
                  "Adafactor decay counted from 0); this run continues from step %d", model_dir, explicit)
      return explicit
    if derived:
      log.warning("%s's checkpoints were written before INITIAL_CHECKPOINT_STEP existed, with Adafactor's "
                  "decay counted from 0: the resumed run keeps 0 (not %d, the step of %s); set "
                  "INITIAL_CHECKPOINT_STEP to change it", model_dir, derived, path)
    return 0
  was = int(meta["initial_checkpoint_step"])
  if explicit is not None and explicit != was:
    raise ValueError(f"{model_dir} was trained with Adafactor's second-moment decay counting from global "
                     f"step {was} (INITIAL_CHECKPOINT_STEP), but this run sets INITIAL_CHECKPOINT_STEP="
                     f"{explicit}: set --gin.INITIAL_CHECKPOINT_STEP={was} (or None) to resume, or use a new "
                     f"MODEL_DIR")
  return was


def frozen_fingerprint(params) -> Optional[str]:
  """A digest of the frozen weights that tells two frozen models apart cheaply: every parameter's name
  and shape, and its first 1024 values as float32 (a copied or moved checkpoint agrees, and so does a
  run with another FROZEN_DTYPE: the cast comes later). None when a parameter cannot be read here."""
  from spot_jax.checkpoints.infer_config import flatten
  digest = hashlib.sha256()
  try:
    for name, leaf in sorted(flatten(params).items()):
      digest.update(f"{name}{tuple(leaf.shape)}".encode())
      if is_lazy(leaf):  # read lazily: only the leading rows that hold the first 1024 values
        head = leaf.head(1024)
      else:  # a view of a host array; a slice computed on the device for a jax one
        head = leaf.reshape(-1)[:1024]
      digest.update(np.asarray(jax.device_get(head), np.float32).tobytes())
  except (RuntimeError, ValueError, TypeError):  # e.g. an array spread over other processes
    return None
  return digest.hexdigest()[:16]


def frozen_architecture(config: T5Config) -> dict:
  """The config fields that fix the frozen parameters' names and shapes (`infer_config.SHAPE_FIELDS`),
  recorded with each checkpoint: a resumed run whose model_config changed is told so by name."""
  from spot_jax.checkpoints.infer_config import SHAPE_FIELDS
  return {name: getattr(config, name) for name in SHAPE_FIELDS}


def check_same_run(model_dir: str, meta: Mapping, task: str, frozen_model: Mapping, step: int) -> None:
  """Refuses to resume `model_dir` for another task or on another frozen model: the checkpoint's prompt
  (and its best export) belong to the run that wrote them, and continuing them silently mixes two runs."""
  fix = (f"use a new MODEL_DIR; to start from this prompt there, add prompts/from_file.gin with "
         f"PROMPT_FILE={model_dir!r}")
  if meta.get("task") not in (None, task):
    raise ValueError(f"{model_dir} holds a prompt trained on {meta['task']!r} (step {step}), but this run "
                     f"trains {task!r}: {fix}")
  was = meta.get("frozen_model") or {}
  # Checkpoints written before the architecture was recorded have none: the fingerprint decides alone.
  was_arch, now_arch = was.get("architecture"), frozen_model.get("architecture")
  if was_arch and now_arch and was_arch != now_arch:
    changed = ", ".join(f"{k}={now_arch.get(k)!r} (the run was trained with {was_arch.get(k)!r})"
                        for k in sorted(set(was_arch) | set(now_arch)) if was_arch.get(k) != now_arch.get(k))
    cause = ("a model_config binding (such as num_heads, d_model, num_encoder_layers) or the size gin "
             "(models/sizes/*.gin) changed")
    if was.get("path") != frozen_model.get("path"):
      cause = (f"the frozen checkpoint changed ({was.get('path') or 'a fresh initialization'} -> "
               f"{frozen_model.get('path') or 'a fresh initialization'}), or {cause}")
    raise ValueError(f"{model_dir} was trained on a frozen model whose parameter shapes differ from this "
                     f"run's: {changed}. {cause[0].upper()}{cause[1:]}: set it back to resume, or {fix}")
  if was.get("fingerprint") and frozen_model.get("fingerprint") and \
      was["fingerprint"] != frozen_model["fingerprint"]:
    def describe(m):
      return m.get("path") or f"a fresh initialization (seed {m.get('seed')})"
    differ = (f"{model_dir} was trained on the frozen model {describe(was)}, but this run loads "
              f"{describe(frozen_model)}, whose weights differ (fingerprint {frozen_model['fingerprint']} "
              f"!= {was['fingerprint']})")
    if was.get("seed") is not None and was.get("seed") == frozen_model.get("seed"):
      # Two fresh initializations of one seed: only the model config can tell them apart (a checkpoint
      # written before the architecture was recorded with it).
      raise ValueError(f"{differ}: with the same seed, the model config must have changed (a "
                       f"model_config binding such as num_heads, d_model, num_encoder_layers, or the size "
                       f"gin). Set it back to resume, or {fix}")
    raise ValueError(f"{differ}. A prompt only works with its own frozen model: set INITIAL_CHECKPOINT_PATH "
                     f"back, or {fix}")


def place_frozen(params, config: T5Config, mesh, frozen_dtype: str = "float32", axes=None):
  """Put frozen weights on the mesh by logical-axis rules (optionally as bfloat16). `axes`: the
  config's logical axes, already checked against the mesh (train checks them before it starts).

  A lazily read array (`load_frozen`'s T5X arrays) is read per shard: each distinct slice this
  process's devices hold is read once and cast to `frozen_dtype` alone; no process reads, or holds
  on the host, a slice only other processes' devices hold. Host arrays are cast whole, then sliced."""
  if axes is None:
    axes = param_logical_axes(config)
    partitioning.check_divisible(param_shapes(config), axes, mesh)
  shardings = partitioning.tree_shardings(axes, mesh)
  dtype = {"float32": np.float32, "bfloat16": jnp.bfloat16}[frozen_dtype]

  def put(x, sharding):
    if is_lazy(x):
      return _put_lazy(x.cast(dtype), sharding)
    x = np.asarray(x).astype(dtype)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, params, shardings, is_leaf=is_lazy), shardings


def _put_lazy(x, sharding):
  """`x` (a `LazyArray`) as a global array of `sharding`: the devices that hold the same slice (the
  replicas along `data`) share one read of it, made for this array only and dropped once placed."""
  read = {}

  def shard(index):
    key = tuple((s.start, s.stop) for s in normalize_index(index, x.shape))
    if key not in read:
      read[key] = x[index]
    return read[key]
  return jax.make_array_from_callback(x.shape, sharding, shard, dtype=x.dtype)

"""What a google-research/prompt-tuning (T5X) command line says, in spot_jax's terms.

Users migrate with their launch scripts: `--gin_file=prompt_tuning/configs/...`, macros such as
`EMBEDDING_FILE` or `USE_CACHED_TASKS`, bindings of T5X configurables (`utils.SaveCheckpointConfig.period`).
gin_utils refuses what spot_jax cannot honour; these tables make each refusal name the spot_jax
equivalent instead of a bare "not found". Two things are acted on, not only explained:
`MIXTURE_OR_TASK_MODULE` is imported (T5X imports it to register the tasks), and a `TRAIN_STEPS`
counted T5X's way (including the initial checkpoint's steps) is refused before a run 20x too long.
The same count in a finished run's checkpoints is undone for the prompt library: `t5x_run_steps`
reads the initial checkpoint's step from the run's `MODEL_DIR/config.gin`.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from typing import Optional, Sequence, Tuple

# prompt-tuning's configs and T5X's, by path under the library folder -> the spot_jax gin files.
_SIZE = r"(small|base|large|xl|xxl)"
_FILES = (
    (rf"prompt_tuning/configs/models/t5_1_1_{_SIZE}_prompt\.gin$",
     "--gin_file=models/t5_1_1_lm_adapted.gin, then the prompts/*.gin file, then "
     "--gin_file=models/sizes/{0}.gin (spot_jax keeps the size in a file of its own; PROMPT_LENGTH "
     "defaults to 100 and prompts/random_uniform.gin is the default initializer, as there)"),
    (r"prompt_tuning/configs/models/t5_1_1_prompt\.gin$",
     "--gin_file=models/t5_1_1_lm_adapted.gin and a models/sizes/*.gin file after the prompts/*.gin file "
     "(models/sizes/from_checkpoint.gin reads every dimension from the checkpoint)"),
    (rf"prompt_tuning/configs/models/mt5_{_SIZE}_prompt\.gin$",
     "--gin_file=models/mt5.gin, then the prompts/*.gin file, then --gin_file=models/sizes/{0}.gin"),
    (r"prompt_tuning/configs/models/mt5_\w+_prompt\.gin$",
     "--gin_file=models/mt5.gin and, after the prompts/*.gin file, --gin_file=models/sizes/from_checkpoint.gin"),
    (r"prompt_tuning/configs/models/sizes/(\w+)\.gin$",
     "--gin_file=models/sizes/{0}.gin if it exists, else models/sizes/from_checkpoint.gin"),
    (r"prompt_tuning/configs/prompts/from_file\.gin$", "--gin_file=prompts/from_file.gin (the same PROMPT_FILE)"),
    (r"prompt_tuning/configs/prompts/from_class_labels(_numpy)?\.gin$",
     "--gin_file=prompts/class_labels.gin (the same CLASS_LABELS; no EMBEDDING_FILE: the embedding is the "
     "frozen checkpoint's)"),
    (r"prompt_tuning/configs/prompts/from_sampled_vocab(_numpy)?\.gin$",
     "--gin_file=prompts/sampled_vocab.gin (no EMBEDDING_FILE: the embedding is the frozen checkpoint's)"),
    (r"(prompt_tuning/configs/runs/prompt_finetune|t5x/configs/runs/finetune)\.gin$",
     "--gin_file=runs/prompt_train.gin, run with `python -m spot_jax.train` (TRAIN_STEPS counts prompt "
     "steps only, not the checkpoint's)"),
    (r"(prompt_tuning/configs/runs/prompt_eval|t5x/configs/runs/eval)\.gin$",
     "--gin_file=runs/prompt_eval.gin, run with `python -m spot_jax.eval`"),
    (r"(prompt_tuning/configs/runs/prompt_infer|t5x/configs/runs/infer)\.gin$",
     "--gin_file=runs/prompt_infer.gin, run with `python -m spot_jax.infer`"),
    (r"prompt_tuning/configs/models/decoding/\w+\.gin$",
     "nothing: spot_jax decodes greedily (T5X's default) or scores the options of a `_rank` task; drop "
     "this file (there is no beam search or sampling)"),
    (r"prompt_tuning/configs/architectures/\w+\.gin$",
     "nothing: the models/*.gin file sets the architecture; drop this file"),
    (r"prompt_tuning/configs/extended/",
     "nothing: prompt-tuning's extended/ variants (multi-task, per-layer, IA3, wayward prompts) are not "
     "implemented in spot_jax"),
    (r"t5x/examples/\w+/t5_1_1/" + _SIZE + r"\.gin$",
     "--gin_file=models/t5_1_1.gin (or models/t5_1_1_lm_adapted.gin) and, after the prompts/*.gin file, "
     "--gin_file=models/sizes/{0}.gin"),
)
_LIBRARIES = ("prompt_tuning/", "t5x/", "flaxformer/")


def gin_file_hint(path: str) -> str:
  """' ...' naming the spot_jax gin files that replace a prompt-tuning/T5X config path, or ''."""
  path = str(path).replace("\\", "/")
  for pattern, replacement in _FILES:
    m = re.search(pattern, path)
    if m:
      size = next((g for g in m.groups() if g), "") if m.groups() else ""
      return (f" It is a google-research/prompt-tuning (T5X) config; spot_jax's equivalent: "
              f"{replacement.format(size)}.")
  if any(f"/{lib}" in f"/{path}" for lib in _LIBRARIES):
    return (" It is a google-research/prompt-tuning, T5X or Flaxformer config: spot_jax ships its own gin "
            "files in gin/ (models/, prompts/, models/sizes/, runs/, partitioning/; README 'Train a prompt'), "
            "found without --gin_search_paths.")
  return ""


# Macros a prompt-tuning/T5X command line sets that no spot_jax gin file of the run reads.
_MACROS = {
    "EMBEDDING_FILE": "spot_jax's sampled_vocab and class_labels initializers take the embedding table from "
                      "the frozen checkpoint (INITIAL_CHECKPOINT_PATH): drop it",
    "USE_CACHED_TASKS": "spot_jax preprocesses seqio tasks on the fly and never reads a seqio cache (what "
                        "USE_CACHED_TASKS=False does in T5X): drop it",
    "PROMPT_LENGTH": "spot_jax's eval and infer take the prompt length from PROMPT_FILE: drop it",
    "PROMPT_FILE": "to start training from a saved prompt, add --gin_file=prompts/from_file.gin after the "
                   "models/*.gin file (as prompt-tuning's prompts/from_file.gin)",
    "CLASS_LABELS": "add --gin_file=prompts/class_labels.gin after the models/*.gin file (as prompt-tuning's "
                    "prompts/from_class_labels.gin)",
    "INITIAL_CHECKPOINT_PATH": "spot_jax's eval and infer name the frozen checkpoint CHECKPOINT_PATH, as "
                               "T5X's eval.gin does",
    "CHECKPOINT_PATH": "training names the frozen checkpoint INITIAL_CHECKPOINT_PATH, as T5X's finetune.gin does",
    "MODEL_DIR": "eval writes to EVAL_OUTPUT_DIR and infer to INFER_OUTPUT_DIR, as in T5X",
    "RANDOM_SEED": "use SEED (the prompt initialization and the data order; default 0)",
    "EVAL_STEPS": "spot_jax evaluates the whole EVAL_SPLIT every EVAL_PERIOD steps; to evaluate fewer "
                  "examples bind spot_jax.train.train.eval_num_examples",
    "ACTIVATION_DTYPE": "bind spot_jax.model_config.dtype (float32 by default; models/gpu_bf16.gin and "
                        "models/cpu_bf16.gin set the bfloat16 forms)",
    "VOCABULARY": "spot_jax's tasks carry their vocabulary; point them at a local SentencePiece model with "
                  "the environment variable SPOT_JAX_VOCAB",
    "PROMPT": "choose the initializer with a prompts/*.gin file (it sets PROMPT_INIT)",
    "NUM_EMBEDDINGS": "bind spot_jax.model_config.vocab_size (models/*.gin: 32128 for T5, 250112 for mT5)",
    "Z_LOSS": "spot_jax's loss is fixed to prompt-tuning's settings: z-loss 1e-4, no label smoothing, "
              "LOSS_NORMALIZING_FACTOR=None (the gradient is that of the loss summed over the batch's target "
              "tokens, as T5X sums it; the logged loss is the mean per target token): drop it",
}
for _name in ("LABEL_SMOOTHING", "LOSS_NORMALIZING_FACTOR"):
  _MACROS[_name] = _MACROS["Z_LOSS"]
for _name in ("EMBED_DIM", "NUM_HEADS", "HEAD_DIM", "MLP_DIM", "NUM_ENCODER_LAYERS", "NUM_DECODER_LAYERS"):
  _MACROS[_name] = ("a models/sizes/*.gin file sets the dimensions (models/sizes/from_checkpoint.gin reads "
                    "them from the checkpoint); bind spot_jax.model_config fields to change one")


def macro_hint(name: str) -> str:
  """What to write instead of a prompt-tuning/T5X macro that this run does not read, or ''."""
  return _MACROS.get(name, "")


_SUBMESH = ("NUM_PARTITIONS, the size of the mesh's model axis (a submesh (x, y, z, c) is NUM_PARTITIONS = "
            "x*y*z*c; spot_jax lays the devices out itself), or a partitioning/model_parallel_*.gin file")
# T5X / prompt-tuning configurables (last name component, parameter) -> the spot_jax binding.
_CONFIGURABLES = {
    ("uniform", "scale"): "spot_jax.prompts.random_uniform.scale (add spot_jax.prompts.random_uniform.minval"
                          "=0.0 for flax's [0, scale) range)",
    ("from_sample_of_embeddings", "population_size"): "spot_jax.prompts.sampled_vocab.population_size",
    ("from_samples_of_embeddings", "population_size"): "spot_jax.prompts.sampled_vocab.population_size",
    ("Prompt", "length"): "PROMPT_LENGTH",
    ("PjitPartitioner", "num_partitions"): "NUM_PARTITIONS (or a partitioning/model_parallel_*.gin file)",
    ("ModelBasedPjitPartitioner", "num_partitions"): "NUM_PARTITIONS (or a partitioning/model_parallel_*.gin file)",
    ("PjitPartitioner", "model_parallel_submesh"): _SUBMESH,
    ("ModelBasedPjitPartitioner", "model_parallel_submesh"): _SUBMESH,
    ("PjitPartitioner", "logical_axis_rules"): "spot_jax.partitioning.logical_rules.rules",
    ("ModelBasedPjitPartitioner", "logical_axis_rules"): "spot_jax.partitioning.logical_rules.rules",
    ("Trainer", "num_microbatches"): "spot_jax.train.train.num_microbatches",
    ("SaveCheckpointConfig", "period"): "SAVE_PERIOD",
    ("SaveCheckpointConfig", "keep"): "spot_jax.train.train.keep_checkpoints",
    ("create_learning_rate_scheduler", "base_learning_rate"): "LEARNING_RATE",
    ("DatasetConfig", "batch_size"): "BATCH_SIZE",
    ("DatasetConfig", "split"): "EVAL_SPLIT (eval) or INFER_SPLIT (infer)",
    ("DatasetConfig", "use_cached"): "nothing: spot_jax never reads a seqio cache; drop it",
    ("RestoreCheckpointConfig", "path"): "INITIAL_CHECKPOINT_PATH (train) or CHECKPOINT_PATH (eval, infer)",
    ("RestoreCheckpointConfig", "mode"): "--gin.PROMPT_STEPS=\"'all'\" (eval, runs/prompt_eval.gin) with "
                                         "PROMPT_FILE = the training MODEL_DIR to evaluate every prompt export, as "
                                         "mode='all' does, or --gin.PROMPT_STEPS=[1000,2000] for some; train and "
                                         "infer restore one checkpoint: drop it",
    ("Adafactor", None): "spot_jax.optim.adafactor.<decay_rate | clipping_threshold | weight_decay | factored | "
                         "step_offset> (the step it counts from: INITIAL_CHECKPOINT_STEP)",
    ("SentencePieceVocabulary", None): "the environment variable SPOT_JAX_VOCAB=/path/to/sentencepiece.model",
    ("EncoderDecoderModel", None): "nothing: the loss is fixed to prompt-tuning's settings (z-loss 1e-4, no "
                                   "label smoothing, summed over target tokens: LOSS_NORMALIZING_FACTOR=None)",
}


def configurable_hint(gin_error: str) -> str:
  """'\\n...' naming the spot_jax binding for gin's "No configurable matching 'X'" on a T5X name, or ''."""
  m = re.search(r"No configurable matching '([\w.]+)'", gin_error)
  if m is None:
    return ""
  name = m.group(1)
  if name.split(".")[0] in ("spot_jax", "tasks"):
    return ""
  param = re.search(rf"(?:^|[\s/]){re.escape(name)}\.(\w+)\s*=", gin_error)
  last = name.split(".")[-1]
  for key in ((last, param.group(1) if param else None), (last, None)):
    if key in _CONFIGURABLES:
      return f"\nThat is a T5X/prompt-tuning configurable; in spot_jax set {_CONFIGURABLES[key]}."
  return ("\nThat looks like a T5X/prompt-tuning configurable: spot_jax's are spot_jax.* (the gin/ files and "
          "the README's macro table list them).")


# ---------------------------------------------------------------------------------------------------
# Acted on.

def import_task_modules(modules) -> None:
  """Imports MIXTURE_OR_TASK_MODULE (a module name or a list), as T5X does to register seqio tasks.

  A module in the current directory is found as `python -m spot_jax.train` finds it (`-m` puts the
  directory first on sys.path); the `spot-jax` console script does not, so it is tried there too."""
  if modules is None:
    return
  from spot_jax import import_guard  # pylint: disable=g-import-not-at-top
  for name in [modules] if isinstance(modules, str) else list(modules):
    # `tasks` names spot_jax's own package, imported already; a user's tasks.py here or on sys.path is
    # the one meant, and would be skipped without a word.
    import_guard.check_user_module(name)
    try:
      _import_here_too(name)
    except import_guard.ShadowedPackageError:
      raise
    except ImportError as e:
      raise SystemExit(
          f"MIXTURE_OR_TASK_MODULE={name!r} cannot be imported ({e}). A module of your own: run from its "
          "directory or add that directory to PYTHONPATH; a package: install it in this environment. Or use "
          "a task spot_jax registers (tasks/, docs/tasks.md; prompt-tuning's own task modules need T5X and "
          "are not installed with spot_jax)") from None


def _import_here_too(name: str):
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    here = os.getcwd()
    if e.name != name.split(".")[0] or here in sys.path or "" in sys.path:
      raise
    sys.path.append(here)  # after the installed packages: a local module never shadows one of them
    try:
      return importlib.import_module(name)
    except ModuleNotFoundError:
      sys.path.remove(here)
      raise e from None


_STEP_OF_CHECKPOINT = re.compile(r"checkpoint_(\d+)/*$")
# Released T5 checkpoints sit at 500k-1.1M steps; a prompt run rarely goes past 100k. Below this, a
# TRAIN_STEPS above the checkpoint's step is an ordinary long run from a small checkpoint.
T5X_COUNT_MIN_CHECKPOINT_STEP = 100_000


def check_train_steps(train_steps, initial_checkpoint_path: Optional[str]) -> None:
  """Refuses a TRAIN_STEPS counted as T5X counts (the initial checkpoint's steps included).

  In T5X and prompt-tuning, TRAIN_STEPS=1_150_000 from checkpoint_1100000 trains 50k steps; here it
  would train 1.15M. Raises ValueError naming the value to use and how to really run that many steps.
  """
  if not isinstance(train_steps, int) or not isinstance(initial_checkpoint_path, str):
    return
  m = _STEP_OF_CHECKPOINT.search(initial_checkpoint_path)
  if m is None:
    return
  start = int(m.group(1))
  if start < T5X_COUNT_MIN_CHECKPOINT_STEP or train_steps <= start:
    return
  raise ValueError(
      f"TRAIN_STEPS={train_steps} counts past the initial checkpoint's step {start} ({initial_checkpoint_path}), "
      f"as T5X and prompt-tuning count, where it means {train_steps - start} prompt steps. spot_jax counts "
      f"prompt steps from 0: set --gin.TRAIN_STEPS={train_steps - start}. (To really train {train_steps} steps, "
      "bind the run's train_steps parameter, e.g. spot_jax.train.train.train_steps, instead of the macro.)")


def query_macros(names: Sequence[str]) -> dict:
  """{name: value} of the gin macros that are set (after parsing), without failing on the others."""
  import gin  # pylint: disable=g-import-not-at-top
  out = {}
  for name in names:
    try:
      out[name] = gin.query_parameter(f"%{name}")
    except (ValueError, KeyError):
      pass
  return out


# ---------------------------------------------------------------------------------------------------
# Steps of a prompt-tuning run, counted as spot_jax counts them.

T5X_CONFIG_GIN = "config.gin"  # the gin config T5X's train writes into MODEL_DIR (gin_utils.summarize_gin_config)
_INITIAL_CHECKPOINT_MACRO = "INITIAL_CHECKPOINT_PATH"
_RESTORE_CONFIG = "RestoreCheckpointConfig"  # utils.RestoreCheckpointConfig.path: what T5X restores from


class _Macro:
  def __init__(self, name):
    self.name = name


class _Reference:
  def __init__(self, name):
    self.name = name


def _gin_statements(text: str, source: str):
  """The binding statements of a gin file, parsed by gin's own parser without registering or importing
  anything (a T5X config names T5X, Flaxformer and prompt-tuning configurables that are not installed)."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top

  class _Delegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_name, evaluate):
      return _Reference(scoped_name)

    def macro(self, macro_name):
      return _Macro(macro_name)

  import io  # pylint: disable=g-import-not-at-top
  stream = io.StringIO(text)
  stream.name = source
  return [s for s in config_parser.ConfigParser(stream, _Delegate())
          if isinstance(s, config_parser.BindingStatement)]


def initial_checkpoint_step_of_gin(text: str, source: str = T5X_CONFIG_GIN) -> Tuple[Optional[int], str]:
  """(step, '') of the checkpoint a T5X run's gin config restores first, or (None, why not).

  The path is `utils.RestoreCheckpointConfig.path` (macros resolved; usually `%INITIAL_CHECKPOINT_PATH`),
  else the `INITIAL_CHECKPOINT_PATH` macro; its step is the `checkpoint_<N>` it ends with. A T5X run
  continues that checkpoint's step count, so its own steps are its checkpoints' steps minus N.
  """
  try:
    statements = _gin_statements(text, source)
  except Exception as e:  # pylint: disable=broad-except  (gin raises SyntaxError and others)
    return None, f"{source} could not be parsed as gin ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
  macros = {s.selector: s.value for s in statements if not s.arg_name and "." not in s.selector}

  def resolve(value, depth=0):
    if isinstance(value, _Macro) and depth < 10:
      return resolve(macros.get(value.name), depth + 1)
    if isinstance(value, (list, tuple)):
      return [resolve(v, depth) for v in value]
    return value

  paths = [resolve(s.value) for s in statements
           if s.arg_name == "path" and s.selector.split(".")[-1] == _RESTORE_CONFIG]
  what = f"utils.{_RESTORE_CONFIG}.path"
  if not paths:
    paths, what = [resolve(macros.get(_INITIAL_CHECKPOINT_MACRO))], _INITIAL_CHECKPOINT_MACRO
    if paths == [None]:
      return None, f"{source} binds neither utils.{_RESTORE_CONFIG}.path nor {_INITIAL_CHECKPOINT_MACRO}"
  flat = []
  for p in paths:
    flat.extend(p if isinstance(p, list) else [p])
  steps = set()
  for p in flat:
    m = _STEP_OF_CHECKPOINT.search(p) if isinstance(p, str) else None
    if m is None:
      return None, f"{source}'s {what} ({p!r}) names no checkpoint_<step>"
    steps.add(int(m.group(1)))
  if len(steps) != 1:
    return None, f"{source}'s {what} names several checkpoints (steps {sorted(steps)})"
  return steps.pop(), ""


@dataclasses.dataclass
class T5XRunSteps:
  """The step of a prompt read out of a prompt-tuning (T5X) run.

  `global_step` is T5X's (it continues the initial checkpoint's count: checkpoint_1103000 after 3000
  prompt steps from checkpoint_1100000); `initial_step` is the initial checkpoint's, from the run's
  config.gin, or None with `why_unknown` saying why.
  """
  global_step: int
  initial_step: Optional[int]
  model_dir: Optional[str]
  why_unknown: str = ""

  @property
  def prompt_steps(self) -> int:
    """The prompt's own training steps when the initial step is known, else T5X's global step."""
    return self.global_step - self.initial_step if self.initial_step is not None else self.global_step


def t5x_run_steps(src) -> Optional[T5XRunSteps]:
  """The T5X step accounting of a `prompt_io.PromptSource` read out of a prompt-tuning run: its T5X
  `checkpoint_<step>/` (msgpack or Orbax-written) or its `numpy_checkpoints/checkpoint_<step>/` export
  (no `export.json`: spot_jax writes one with every export, prompt-tuning never does). None for any
  other source (spot_jax's exports already count prompt steps from 0) or when no step is known."""
  from spot_jax import fileio, prompt_io  # pylint: disable=g-import-not-at-top
  if src is None or src.step is None or src.export_dir is None:
    return None
  export_dir = src.export_dir.rstrip("/")
  if src.format in ("t5x_checkpoint", prompt_io.T5X_ORBAX_CHECKPOINT):
    model_dir = os.path.dirname(export_dir)
  elif src.format == "t5x" and not fileio.exists(fileio.join(export_dir, prompt_io.EXPORT_INFO)) and \
      _STEP_OF_CHECKPOINT.search(export_dir):
    parent = os.path.dirname(export_dir)
    model_dir = os.path.dirname(parent) if fileio.basename(parent) == prompt_io.NUMPY_CHECKPOINTS_DIR else None
  else:
    return None
  global_step = int(src.step)
  if model_dir is None:
    return T5XRunSteps(global_step, None, None, f"{export_dir} is not inside a MODEL_DIR/"
                       f"{prompt_io.NUMPY_CHECKPOINTS_DIR}/, so there is no {T5X_CONFIG_GIN} to read")
  config = fileio.join(model_dir, T5X_CONFIG_GIN)
  if not fileio.exists(config):
    return T5XRunSteps(global_step, None, model_dir, f"{model_dir} has no {T5X_CONFIG_GIN}")
  try:
    with fileio.open_file(config, "r") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    return T5XRunSteps(global_step, None, model_dir, f"{config} could not be read ({e})")
  initial, why = initial_checkpoint_step_of_gin(text, config)
  if initial is not None and initial > global_step:
    initial, why = None, (f"{config} names an initial checkpoint at step {initial}, after this checkpoint's "
                          f"step {global_step}")
  return T5XRunSteps(global_step, initial, model_dir, why)

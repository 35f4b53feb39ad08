"""A google-research/prompt-tuning command line, translated: config paths, macros, configurables,
its task module and its TRAIN_STEPS count."""
import re
import sys
import types

import numpy as np
import pytest

from spot_jax import prompt_tuning_compat as compat


@pytest.mark.parametrize("path, want", [
    ("prompt_tuning/configs/models/t5_1_1_base_prompt.gin",
     "--gin_file=models/t5_1_1_lm_adapted.gin, then the prompts/\\*.gin file, then --gin_file=models/sizes/base.gin"),
    ("/venv/lib/prompt_tuning/configs/models/mt5_xxl_prompt.gin", "models/mt5.gin, .*models/sizes/xxl.gin"),
    ("prompt_tuning/configs/prompts/from_class_labels.gin", "prompts/class_labels.gin \\(the same CLASS_LABELS"),
    ("prompt_tuning/configs/prompts/from_sampled_vocab_numpy.gin", "prompts/sampled_vocab.gin \\(no EMBEDDING_FILE"),
    ("prompt_tuning/configs/prompts/from_file.gin", "prompts/from_file.gin \\(the same PROMPT_FILE\\)"),
    ("prompt_tuning/configs/runs/prompt_finetune.gin", "runs/prompt_train.gin, run with `python -m spot_jax.train`"),
    ("prompt_tuning/configs/runs/prompt_eval.gin", "runs/prompt_eval.gin, run with `python -m spot_jax.eval`"),
    ("prompt_tuning/configs/models/decoding/beam_search.gin", "decodes greedily"),
    ("prompt_tuning/configs/extended/models/multi_task_t5_1_1_prompt.gin", "extended/ variants"),
    ("t5x/configs/runs/finetune.gin", "runs/prompt_train.gin"),
    ("flaxformer/t5x/configs/t5/architectures/t5_1_1_flaxformer.gin", "spot_jax ships its own gin files"),
])
def test_prompt_tuning_config_paths_name_their_spot_jax_files(path, want):
  hint = compat.gin_file_hint(path)
  assert hint.startswith(" It is a google-research/prompt-tuning")
  assert re.search(want, hint), hint


def test_other_paths_get_no_hint():
  assert compat.gin_file_hint("my_configs/rte.gin") == ""


def test_t5x_configurables_name_the_spot_jax_binding():
  err = ("No configurable matching 'partitioning.PjitPartitioner'.\n  In bindings string line 1\n"
         "    partitioning.PjitPartitioner.num_partitions = 2")
  assert "set NUM_PARTITIONS" in compat.configurable_hint(err)
  err = ("No configurable matching 'linen.initializers.uniform'.\n  In bindings string line 1\n"
         "    prompt_init/linen.initializers.uniform.scale = 0.1")
  assert "spot_jax.prompts.random_uniform.scale" in compat.configurable_hint(err)
  err = "No configurable matching 'adafactor.Adafactor'.\n    adafactor.Adafactor.decay_rate = 0.8"
  assert "spot_jax.optim.adafactor.<decay_rate" in compat.configurable_hint(err)
  assert "spot_jax's are spot_jax.*" in compat.configurable_hint("No configurable matching 'utils.Foo'.")
  assert compat.configurable_hint("No configurable matching 'spot_jax.trian.train'.") == ""


def test_migration_doc_maps_flax_uniform_with_its_range():
  """flax's `uniform(scale)` draws from [0, scale) and `random_uniform` from [-scale, scale): the
  migration doc's mapping of `uniform.scale` must also set minval=0.0, as the error hint does."""
  import pathlib
  import jax
  from flax import linen
  from spot_jax import prompts
  doc = (pathlib.Path(compat.__file__).resolve().parents[1] / "docs" / "prompt_tuning_migration.md").read_text()
  start = doc.index("`prompt_init/linen.initializers.uniform.scale` →")
  mapping = doc[start:doc.index("`prompt_init/prompts.from_sample_of_embeddings", start)]
  assert "`spot_jax.prompts.random_uniform.minval=0.0`" in mapping, mapping
  theirs = np.asarray(linen.initializers.uniform(scale=0.5)(jax.random.PRNGKey(0), (64, 32)))
  ours = prompts.random_uniform(scale=0.5, minval=0.0)(0, 64, 32)
  default = prompts.random_uniform(scale=0.5)(0, 64, 32)
  for drawn in (theirs, ours):
    assert drawn.min() >= 0.0 and drawn.max() < 0.5
  assert default.min() < -0.4


def test_t5x_restore_mode_names_prompt_steps():
  """t5x.eval's `utils.RestoreCheckpointConfig.mode = 'all'` (every checkpoint of a run) is eval's
  PROMPT_STEPS='all'; the hint is checked on gin's own error for that binding."""
  import gin
  gin.clear_config()  # a job run earlier in this process leaves gin finalized (locked)
  try:
    with pytest.raises(ValueError, match="No configurable matching 'utils.RestoreCheckpointConfig'") as e:
      gin.parse_config("utils.RestoreCheckpointConfig.mode = 'all'")
  finally:
    gin.clear_config()
  hint = compat.configurable_hint(str(e.value))
  assert "in spot_jax set --gin.PROMPT_STEPS=\"'all'\" (eval, runs/prompt_eval.gin) with PROMPT_FILE = the " \
         "training MODEL_DIR" in hint
  err = "No configurable matching 'utils.RestoreCheckpointConfig'.\n    utils.RestoreCheckpointConfig.path = '/c'"
  assert "set INITIAL_CHECKPOINT_PATH" in compat.configurable_hint(err)


def test_train_steps_counted_as_t5x_is_refused_with_the_spot_jax_count():
  with pytest.raises(ValueError, match=r"TRAIN_STEPS=1150000 counts past the initial checkpoint's step 1100000 "
                                       r".*means 50000 prompt steps.*set --gin.TRAIN_STEPS=50000"):
    compat.check_train_steps(1_150_000, "gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000")
  compat.check_train_steps(30_000, "gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000")
  compat.check_train_steps(30_000, "/cache/demo_backbone/checkpoint_1000")  # a small checkpoint: a long run
  compat.check_train_steps(1_150_000, "/hf/t5-base")  # no step in the path
  compat.check_train_steps(1_150_000, None)


def test_missing_task_module_names_the_fix(monkeypatch, tmp_path):
  with pytest.raises(SystemExit, match=r"MIXTURE_OR_TASK_MODULE='prompt_tuning.data.glue' cannot be imported "
                                       r".*add that directory to PYTHONPATH; a package: install it"):
    compat.import_task_modules("prompt_tuning.data.glue")
  mod = types.ModuleType("my_pt_tasks")
  monkeypatch.setitem(sys.modules, "my_pt_tasks", mod)
  compat.import_task_modules(["my_pt_tasks"])
  compat.import_task_modules(None)
  # A module in the current directory, as the `spot-jax` console script runs (no cwd on sys.path,
  # where `python -m` has it): imported from there too, placed after the installed packages.
  (tmp_path / "my_cwd_tasks.py").write_text("REGISTERED = True\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  compat.import_task_modules("my_cwd_tasks")
  assert sys.modules["my_cwd_tasks"].REGISTERED and sys.path[-1] == str(tmp_path)
  monkeypatch.delitem(sys.modules, "my_cwd_tasks")
  # A module that is there but fails on an import of its own is not retried: its error is shown.
  (tmp_path / "my_broken_tasks.py").write_text("import not_a_module_anywhere\n")
  with pytest.raises(SystemExit, match=r"'my_broken_tasks' cannot be imported \(No module named "
                                       r"'not_a_module_anywhere'\)"):
    compat.import_task_modules("my_broken_tasks")


# A T5X run's MODEL_DIR/config.gin as gin's config_str writes it: imports, a macro section, long values
# continued on the next line, `%MACRO` references in the bindings.
T5X_CONFIG_GIN = """\
from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import utils

# Macros:
# ==============================================================================
BATCH_SIZE = 32
INITIAL_CHECKPOINT_PATH = \\
    'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'
TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}

# Parameters for utils.RestoreCheckpointConfig:
# ==============================================================================
utils.RestoreCheckpointConfig.assignment_map = ((r'.*/prompt/.*', None),)
utils.RestoreCheckpointConfig.mode = 'specific'
utils.RestoreCheckpointConfig.path = %INITIAL_CHECKPOINT_PATH

# Parameters for train_script.train:
# ==============================================================================
train_script.train.checkpoint_cfg = @utils.CheckpointConfig()
"""


def test_initial_checkpoint_step_of_a_t5x_config_gin():
  assert compat.initial_checkpoint_step_of_gin(T5X_CONFIG_GIN) == (1_100_000, "")
  # The path T5X restores from wins over the macro; a list of one path; the macro alone.
  bound = T5X_CONFIG_GIN.replace("%INITIAL_CHECKPOINT_PATH", "['/ckpt/t5_base/checkpoint_1000000/']")
  assert compat.initial_checkpoint_step_of_gin(bound) == (1_000_000, "")
  macro_only = "INITIAL_CHECKPOINT_PATH = '/ckpt/checkpoint_500000'\n"
  assert compat.initial_checkpoint_step_of_gin(macro_only) == (500_000, "")
  for text, why in (
      ("BATCH_SIZE = 8\n", r"binds neither utils.RestoreCheckpointConfig.path nor INITIAL_CHECKPOINT_PATH"),
      ("INITIAL_CHECKPOINT_PATH = '/hf/t5-base'\n",
       r"INITIAL_CHECKPOINT_PATH \('/hf/t5-base'\) names no checkpoint_<step>"),
      ("utils.RestoreCheckpointConfig.path = ['/a/checkpoint_1', '/b/checkpoint_2']\n", r"several checkpoints"),
      ("INITIAL_CHECKPOINT_PATH = 'unterminated\n", r"could not be parsed as gin")):
    step, reason = compat.initial_checkpoint_step_of_gin(text)
    assert step is None and re.search(why, reason), reason


def test_the_loss_macros_hint_says_the_loss_is_summed_as_t5x_sums_it():
  """prompt-tuning's LOSS_NORMALIZING_FACTOR=None: T5X sums the token losses; the hint said 'averaged'."""
  for name in ("LOSS_NORMALIZING_FACTOR", "Z_LOSS", "LABEL_SMOOTHING"):
    hint = compat.macro_hint(name)
    assert "LOSS_NORMALIZING_FACTOR=None" in hint and "summed over the batch's target tokens" in hint
    assert "averaged" not in hint

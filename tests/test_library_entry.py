"""A library entry's record, as filled from its source: a training MODEL_DIR's task embedding, steps
and metrics, and a google-research/prompt-tuning run's T5X steps."""
import re
import warnings

import numpy as np
import pytest

from spot_jax import prompt_export as pexp
from spot_jax import prompt_io as pio
from spot_jax.spot.library import PromptLibrary

from test_library import _prompt


def test_add_model_dir_brings_task_embedding_steps_metrics(tmp_path):
  model_dir = str(tmp_path / "run")
  final, best, emb = _prompt(seed=1), _prompt(seed=2), _prompt(seed=3)
  pexp.export_numpy_checkpoint(emb, model_dir, 50, name="task_embedding")
  pexp.export_numpy_checkpoint(final, model_dir, 1000)
  pexp.export_numpy_checkpoint(best, model_dir, 800, name="best", metrics={"accuracy": 0.9})
  lib = PromptLibrary(str(tmp_path / "lib"))
  rec = lib.add("rte", model_dir, "t5_tiny")
  assert rec["steps"] == 800 and rec["metrics"] == {"accuracy": 0.9} and rec["has_task_embedding"]
  e = lib.get("rte")
  np.testing.assert_array_equal(e.prompt, best)
  np.testing.assert_array_equal(e.task_embedding, emb)
  rec = lib.add("rte", model_dir, "t5_tiny", overwrite=True, which="latest", steps=7)
  assert rec["steps"] == 7 and rec["metrics"] == {}
  np.testing.assert_array_equal(lib.get("rte").prompt, final)


def test_add_model_dir_files_the_trainers_task_keyed_metrics_under_their_own_names(tmp_path):
  """The trainer keys a best export's metrics `<task>/<metric>`; entries keep `spot source`'s names."""
  model_dir = str(tmp_path / "run")
  pexp.export_numpy_checkpoint(_prompt(), model_dir, 80, name="best",
                              metrics={"spot_bundled_movie/accuracy": 87.0, "other/accuracy": 50.0})
  lib = PromptLibrary(str(tmp_path / "lib"))
  assert lib.add("spot_bundled_movie", model_dir, "m")["metrics"] == {"accuracy": 87.0}
  with pytest.warns(UserWarning, match=r"are of other, spot_bundled_movie, not of 'spot_bundled_topic': "
                                       r"check that this run trained 'spot_bundled_topic'"):
    rec = lib.add("spot_bundled_topic", model_dir, "m")
  assert rec["metrics"] == {"spot_bundled_movie/accuracy": 87.0, "other/accuracy": 50.0}


def test_adding_a_run_or_an_entry_under_another_task_than_it_records_warns(tmp_path):
  """Before: `library add --task spot_bundled_nil runs/movie` was silent; the typo surfaced only in `spot`."""
  model_dir = str(tmp_path / "run")
  pexp.export_numpy_checkpoint(_prompt(), model_dir, 80, name="best", task="spot_bundled_movie")
  lib = PromptLibrary(str(tmp_path / "lib"))
  with pytest.warns(UserWarning, match=r"holds a prompt of task 'spot_bundled_movie' \(its export\.json says so\), "
                                       r"added as 'spot_bundled_nil': if that is a mistake, remove the entry and add "
                                       r"it with --task spot_bundled_movie"):
    lib.add("spot_bundled_nil", model_dir, "m")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lib.add("spot_bundled_movie", model_dir, "m")  # the recorded task: no warning
    PromptLibrary(str(tmp_path / "lib2")).add("spot_bundled_movie", str(tmp_path / "lib" / "spot_bundled_movie"), "m")
  with pytest.warns(UserWarning, match=r"its record\.json says so\), added as 'movie'"):
    PromptLibrary(str(tmp_path / "lib3")).add("movie", str(tmp_path / "lib" / "spot_bundled_movie"), "m")


# ----------------------------------------------------------------------------------------------------
# A google-research/prompt-tuning run: its steps are T5X's global steps.

def _prompt_tuning_model_dir(model_dir, config_gin=True):
  """A prompt-tuning MODEL_DIR 3000 steps after checkpoint_1100000: the T5X checkpoint_1103000 (frozen
  weights + prompt, written as tests/test_prompt_io.py writes them), prompt-tuning's numpy exports of
  steps 1100500 and 1103000 (no export.json), and T5X's config.gin. Returns (final prompt, early prompt)."""
  from test_prompt_io import _prompt_tuning_t5x_checkpoint
  from test_prompt_tuning_compat import T5X_CONFIG_GIN
  final, early = _prompt(5, 6, seed=1), _prompt(5, 6, seed=2)
  _prompt_tuning_t5x_checkpoint(model_dir, 1_103_000, final)
  for step, arr in ((1_100_500, early), (1_103_000, final)):
    d = model_dir / "numpy_checkpoints" / f"checkpoint_{step}"
    d.mkdir(parents=True)
    with open(d / pio.T5X_PROMPT_FILENAME, "wb") as f:
      np.save(f, arr)
  if config_gin:
    (model_dir / "config.gin").write_text(T5X_CONFIG_GIN)
  return final, early


def test_add_prompt_tuning_run_records_prompt_steps_and_t5x_global_step(tmp_path, recwarn):
  run = tmp_path / "pt_run"
  final, early = _prompt_tuning_model_dir(run)
  lib = PromptLibrary(str(tmp_path / "lib"))
  emb = str(run / "numpy_checkpoints" / "checkpoint_1100500")
  for source in (run, run / "checkpoint_1103000", run / "numpy_checkpoints" / "checkpoint_1103000",
                 run / "numpy_checkpoints"):
    rec = lib.add("rte", str(source), "t5_tiny", task_embedding=emb, overwrite=True)
    assert (rec["steps"], rec["t5x_global_step"], rec["t5x_initial_step"]) == (3000, 1_103_000, 1_100_000)
    assert (rec["task_embedding_step"], rec["task_embedding_t5x_global_step"]) == (500, 1_100_500)
    np.testing.assert_array_equal(lib.get("rte").prompt, final)
    np.testing.assert_array_equal(lib.get("rte").task_embedding, early)
  assert not [w for w in recwarn if "global step" in str(w.message)]
  # The same run written with Orbax (train.use_orbax=True) and no numpy export.
  from test_prompt_io import _prompt_tuning_orbax_checkpoint
  from test_prompt_tuning_compat import T5X_CONFIG_GIN
  orbax_run = tmp_path / "pt_orbax_run"
  _prompt_tuning_orbax_checkpoint(orbax_run, 1_102_000, {pio.T5X_PROMPT_PARAM: final})
  (orbax_run / "config.gin").write_text(T5X_CONFIG_GIN)
  rec = lib.add("boolq", str(orbax_run), None)
  assert (rec["steps"], rec["t5x_global_step"], rec["task_embedding_step"]) == (2000, 1_102_000, None)


def test_add_prompt_tuning_run_without_config_gin_warns_once_and_explicit_steps_win(tmp_path):
  run = tmp_path / "pt_run"
  _prompt_tuning_model_dir(run, config_gin=False)
  lib = PromptLibrary(str(tmp_path / "lib"))
  emb = str(run / "numpy_checkpoints" / "checkpoint_1100500")
  with pytest.warns(UserWarning) as caught:
    rec = lib.add("rte", str(run), "t5_tiny", task_embedding=emb)
  said = [str(w.message) for w in caught if "global step" in str(w.message)]
  assert len(said) == 1 and re.search(r"T5X's global step.*pt_run has no config.gin.*--steps and "
                                      r"--task-embedding-step \(steps=, task_embedding_step= in Python\)", said[0])
  assert (rec["steps"], rec["t5x_global_step"], rec["t5x_initial_step"]) == (1_103_000, 1_103_000, None)
  assert rec["task_embedding_step"] == 1_100_500
  # Explicit steps win, with or without config.gin, and silence the warning (CLI flags included).
  from spot_jax.spot import cli
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert cli.main(["add", "--library", str(tmp_path / "lib"), "--task", "rte", "--overwrite", "--steps", "2900",
                     "--task-embedding", emb, "--task-embedding-step", "450", str(run)]) == 0
    rec = lib.record("rte")
    assert (rec["steps"], rec["task_embedding_step"], rec["t5x_global_step"]) == (2900, 450, 1_103_000)
    from test_prompt_tuning_compat import T5X_CONFIG_GIN
    (run / "config.gin").write_text(T5X_CONFIG_GIN)
    rec = lib.add("rte", str(run), None, task_embedding=emb, steps=7, task_embedding_step=3, overwrite=True)
    assert (rec["steps"], rec["task_embedding_step"], rec["t5x_initial_step"]) == (7, 3, 1_100_000)
  # A config.gin whose initial checkpoint has no step: the same warning, saying why.
  (run / "config.gin").write_text("INITIAL_CHECKPOINT_PATH = '/hf/t5-base'\n")
  with pytest.warns(UserWarning, match=r"config.gin's INITIAL_CHECKPOINT_PATH \('/hf/t5-base'\) names no "
                                       r"checkpoint_<step>.*with --steps \(steps= in Python\)"):
    rec = lib.add("rte", str(run), None, overwrite=True)
  assert rec["steps"] == 1_103_000


def test_spot_jax_exports_keep_their_steps_beside_a_config_gin(tmp_path):
  """spot_jax counts prompt steps from 0 and writes export.json: a config.gin changes nothing."""
  from test_prompt_tuning_compat import T5X_CONFIG_GIN
  model_dir = tmp_path / "run"
  pexp.export_numpy_checkpoint(_prompt(), str(model_dir), 1_200_000)
  (model_dir / "config.gin").write_text(T5X_CONFIG_GIN)
  rec = PromptLibrary(str(tmp_path / "lib")).add("rte", str(model_dir), "t5_tiny")
  assert rec["steps"] == 1_200_000 and "t5x_global_step" not in rec


def test_a_task_embedding_step_without_a_task_embedding_is_refused_and_overwrite_says_what_it_drops(
    tmp_path):
  """docs/prompt_tuning_migration.md's re-add of a copied export passed --task-embedding-step alone: the
  step was dropped silently and so was the task embedding the entry had (retrieval then compares the
  prompt instead)."""
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("rte", _prompt(4, seed=0), "t5_tiny", task_embedding=_prompt(4, seed=1), task_embedding_step=500)
  with pytest.raises(ValueError, match=r"a task-embedding step \(500\) is given but there is no task "
                                       r"embedding: pass the early export it was taken from too"):
    lib.add("rte", _prompt(4, seed=2), None, steps=3000, task_embedding_step=500, overwrite=True)
  assert lib.record("rte")["task_embedding_step"] == 500  # the refused add changed nothing
  with pytest.warns(UserWarning, match=r"the entry it replaces had a task embedding \(step 500\) and this "
                                       r"add has none"):
    rec = lib.add("rte", _prompt(4, seed=2), None, steps=3000, overwrite=True)
  assert not rec["has_task_embedding"]

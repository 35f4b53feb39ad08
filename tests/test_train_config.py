"""A train run's settings: out-of-range, mistyped or missing values and gin macros fail before any
compute, naming the setting and the fix; absl's INFO lines stay off the console."""
import os

import jax
import numpy as np
import pytest

from spot_jax import gin_utils
from spot_jax import train as train_lib
from spot_jax.model import init_params

from train_setup import CFG, LENGTHS, PROMPT_LEN, TASK, _gin_args


def test_bad_inputs_fail_before_compute(tmp_path):
  params = init_params(CFG, jax.random.PRNGKey(0))
  common = dict(model_dir=str(tmp_path), task_feature_lengths=LENGTHS, train_steps=2, batch_size=8,
                prompt_length=PROMPT_LEN)
  with pytest.raises(ValueError, match=r"unknown task or mixture 'spot_bundled_movi'.*spot_bundled_movie"):
    train_lib.train(mixture_or_task_name="spot_bundled_movi", frozen=(CFG, params), **common)
  with pytest.raises(ValueError, match=r"no split 'dev'.*EVAL_PERIOD=2 evaluates on it.*EVAL_SPLIT"):
    train_lib.train(mixture_or_task_name=TASK, frozen=(CFG, params), eval_period=2, eval_split="dev",
                    **{**common, "model_dir": str(tmp_path / "m1")})
  assert not (tmp_path / "m1").exists()
  with pytest.raises(ValueError, match=r"TASK_EMBEDDING_STEP=5 is outside the run's steps 1..2"):
    train_lib.train(mixture_or_task_name=TASK, frozen=(CFG, params), task_embedding_step=5,
                    **{**common, "model_dir": str(tmp_path / "m4")})
  # Numbers out of range: one line naming the setting and its range, before any compute or directory.
  out_of_range = [
      (dict(train_steps=0), r"TRAIN_STEPS must be 1 or more, got 0: set --gin.TRAIN_STEPS"),
      (dict(train_steps=-5, task_embedding_step=1), r"TRAIN_STEPS must be 1 or more, got -5"),
      (dict(batch_size=0), r"BATCH_SIZE must be 1 or more, got 0"),
      (dict(batch_size=-8), r"BATCH_SIZE must be 1 or more, got -8"),
      (dict(prompt_length=0), r"PROMPT_LENGTH must be 1 or more, got 0"),
      (dict(prompt_length=-3), r"PROMPT_LENGTH must be 1 or more, got -3"),
      (dict(save_period=0), r"SAVE_PERIOD must be 1 or more, got 0"),
      (dict(save_period=-1), r"SAVE_PERIOD must be 1 or more, got -1"),
      (dict(log_period=0), r"LOG_PERIOD must be 1 or more, got 0"),
      (dict(eval_period=0), r"EVAL_PERIOD must be 1 or more \(or None: no periodic evaluation\), got 0"),
      (dict(num_partitions=0), r"NUM_PARTITIONS must be 1 or more, got 0"),
      (dict(num_microbatches=0), r"num_microbatches must be 1 or more, got 0: set "
                                 r"--gin.spot_jax.train.train.num_microbatches"),
      (dict(task_embedding_step=0), r"TASK_EMBEDDING_STEP must be 1 or more \(or None"),
      (dict(seed=-1), r"SEED must be 0 or more, got -1"),
      (dict(keep_checkpoints=0), r"keep_checkpoints must be 1 or more \(or None: keep every checkpoint\), got 0"),
      (dict(eval_batch_size=0), r"eval_batch_size must be 1 or more \(or None: BATCH_SIZE\), got 0"),
      (dict(eval_num_examples=-1), r"eval_num_examples must be 1 or more \(or None: the whole split\)"),
  ]
  for i, (bad_value, message) in enumerate(out_of_range):
    with pytest.raises(ValueError, match=message):
      train_lib.train(mixture_or_task_name=TASK, frozen=(CFG, params),
                      **{**common, "model_dir": str(tmp_path / f"range{i}"), **bad_value})
    assert not (tmp_path / f"range{i}").exists()
  # A MODEL_DIR another run holds (here this process, through another open file: flock conflicts
  # between two opens of one file in one process too) is refused before anything is written there.
  from spot_jax import fileio
  with fileio.exclusive_lock(str(tmp_path / "held"), "test"):
    with pytest.raises(fileio.InUseError, match=rf"held is in use by another spot_jax.train run \(pid "
                                                rf"{os.getpid()} on .*\): wait for it to end"):
      train_lib.train(mixture_or_task_name=TASK, frozen=(CFG, params),
                      **{**common, "model_dir": str(tmp_path / "held")})
  assert os.listdir(tmp_path / "held") == [".lock"]
  assert len(jax.devices()) == 8  # tests/conftest.py: 8 forced CPU devices, so the data axis is 8
  with pytest.raises(ValueError, match=r"BATCH_SIZE=6 .* does not split evenly over the mesh's 8 "
                                       r"data-parallel replicas"):
    train_lib.train(mixture_or_task_name=TASK, frozen=(CFG, params), **{**common, "batch_size": 6,
                                                                        "model_dir": str(tmp_path / "m5")})
  assert not (tmp_path / "m5").exists()
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((7, 32), np.float32))
  from spot_jax import prompts
  with pytest.raises(ValueError, match=r"shape \(7, 32\) but this run expects \[PROMPT_LENGTH=4, d_model=32\]"):
    train_lib.train(mixture_or_task_name=TASK, frozen=(CFG, params), prompt_init=prompts.from_file(str(bad)),
                    **{**common, "model_dir": str(tmp_path / "m2")})
  assert not (tmp_path / "m2").exists()  # a refused run leaves no empty checkpoints/ behind
  small = CFG.replace(vocab_size=512)  # the bundled vocabulary has more ids: NaN without the check
  with pytest.raises(ValueError, match=r"inputs vocabulary has \d+ ids but the model's vocab_size is 512"):
    train_lib.train(mixture_or_task_name=TASK, frozen=(small, init_params(small, jax.random.PRNGKey(0))),
                    **{**common, "model_dir": str(tmp_path / "m3")})
  big = CFG.replace(vocab_size=32128)  # a real T5's vocab_size: the bundled ids would mean other words
  with pytest.raises(ValueError, match=r"inputs vocabulary has 1100 ids but the model's vocab_size is 32128: "
                                       r"the task does not use the model's vocabulary"):
    train_lib.train(mixture_or_task_name=TASK, frozen=(big, init_params(big, jax.random.PRNGKey(0))),
                    **{**common, "model_dir": str(tmp_path / "m6")})
  assert not (tmp_path / "m6").exists()
  (tmp_path / "ckpt").mkdir()
  (tmp_path / "ckpt" / "checkpoint").write_bytes(b"\x00garbage")
  with pytest.raises(ValueError, match="checkpoint"):
    train_lib.train(mixture_or_task_name=TASK, initial_checkpoint_path=str(tmp_path / "ckpt"), **common)


def test_files_in_place_of_output_dirs_and_mistyped_values_fail_before_compute(tmp_path):
  params = init_params(CFG, jax.random.PRNGKey(0))
  common = dict(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, train_steps=2, batch_size=8,
                prompt_length=PROMPT_LEN, frozen=(CFG, params))
  for sub in ("checkpoints", "numpy_checkpoints", "inference_eval"):
    model_dir = tmp_path / sub
    model_dir.mkdir()
    (model_dir / sub).write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"{sub} is a file, but it must be a directory \(the run writes {sub}/ there\)"):
      train_lib.train(model_dir=str(model_dir), **common)
    assert sorted(p.name for p in model_dir.iterdir()) == [sub]  # nothing written
  with pytest.raises(ValueError, match=r"TRAIN_STEPS must be an integer, got 'abc' \(str\).*--gin.TRAIN_STEPS=100"):
    train_lib.train(model_dir=str(tmp_path / "m"), **{**common, "train_steps": "abc"})
  with pytest.raises(ValueError, match=r"BATCH_SIZE must be an integer, got 8.0 \(float\): e.g. --gin.BATCH_SIZE=8 "):
    train_lib.train(model_dir=str(tmp_path / "m"), **{**common, "batch_size": 8.0})
  with pytest.raises(ValueError, match=r"BATCH_SIZE must be an integer, got '16' \(str\): e.g. --gin.BATCH_SIZE=16 "):
    train_lib.train(model_dir=str(tmp_path / "m"), **{**common, "batch_size": "16"})


def test_missing_required_macro_names_it(tmp_path, capsys):
  args = [a for a in _gin_args(tmp_path) if not a.startswith("--gin.MODEL_DIR")]
  with pytest.raises(SystemExit, match=r"the macro MODEL_DIR is not set.\nSet it with --gin.MODEL_DIR=\.\.\.") as e:
    gin_utils.run(lambda: None, args)
  assert "REQUIRED" not in str(e.value)


def test_missing_prompt_file_names_the_gin_files_that_set_it(tmp_path):
  args = [a for a in _gin_args(tmp_path) if "prompts/" not in a]
  with pytest.raises(SystemExit, match=r"(?s)the macro PROMPT_INIT is not set.*--gin.PROMPT_INIT=.*"
                                       r"prompts/random_uniform.gin") as e:
    gin_utils.run(lambda: None, args)
  assert "TRAIN_STEPS" not in str(e.value)  # no dump of the whole config


def test_a_run_keeps_absl_info_lines_off_the_console(tmp_path, caplog):
  """orbax logs every save at INFO through absl (70 of a SPoT source run's 93 lines)."""
  import logging
  caplog.set_level(logging.INFO)  # what each command's logging.basicConfig(level=INFO) does
  logging.getLogger("absl").setLevel(logging.NOTSET)
  assert logging.getLogger("absl").isEnabledFor(logging.INFO)  # before: INFO reaches the console
  gin_utils.configure(_gin_args(tmp_path))
  assert not logging.getLogger("absl").isEnabledFor(logging.INFO)
  assert logging.getLogger("spot_jax").isEnabledFor(logging.INFO)


def test_a_misspelled_macro_is_refused_with_the_close_name(tmp_path):
  with pytest.raises(SystemExit, match=r"gin macro TRAIN_STEP is set on the command line but no gin "
                                       r"file of this run reads it.*Did you mean TRAIN_STEPS"):
    gin_utils.run(lambda: None, _gin_args(tmp_path, extra=["--gin.TRAIN_STEP=5"]))


def test_a_fresh_init_whose_vocab_size_is_not_the_tasks_names_the_binding_that_fits(tmp_path):
  """models/sizes/tiny.gin with no INITIAL_CHECKPOINT_PATH is a fresh init of T5's 32128 rows: the
  bundled task's 1100 ids were refused with "or load the model it was made for", which a fresh init
  has none of; the error names the vocab_size binding, 1100 padded to a multiple of 128."""
  import gin
  from spot_jax import input_pipeline
  args = _gin_args(tmp_path / "run", extra=["--gin.spot_jax.model_config.vocab_size=32128"])
  with pytest.raises(SystemExit, match=r"spot_bundled_movie's inputs vocabulary has 1100 ids but the model's "
                                       r"vocab_size is 32128, and the model is a fresh initialization of the gin "
                                       r"size \(INITIAL_CHECKPOINT_PATH is None\).* with "
                                       r"--gin.spot_jax.model_config.vocab_size=1152, or set INITIAL_CHECKPOINT_PATH"):
    gin_utils.run(gin.get_configurable(train_lib.train), args)
  task = input_pipeline.get_task(TASK)
  input_pipeline.check_vocabulary_fits(task, 1152, fresh_init=True)  # the binding it names fits
  with pytest.raises(ValueError, match=r"has 1100 ids but the model's vocab_size is 1024.*\(CHECKPOINT_PATH is "
                                       r"None\).*--gin.spot_jax.model_config.vocab_size=1152"):
    input_pipeline.check_vocabulary_fits(task, 1024, fresh_init=True, checkpoint_macro="CHECKPOINT_PATH")
  with pytest.raises(ValueError, match=r"or load the model it was made for") as e:  # a checkpoint: as before
    input_pipeline.check_vocabulary_fits(task, 32128)
  assert "vocab_size=1152" not in str(e.value)

"""`spot-jax spot` and `spot-jax spot source` (pipeline_cli) end to end on a tiny frozen model and the
bundled tasks: gin flags, the library they fill or read, and their errors."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import os

import gin
import numpy as np
import pytest

from spot_jax import prompt_io
from spot_jax.spot import pipeline, pipeline_cli
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import PromptLibrary

from spot_pipeline_setup import CFG, LENGTHS, P, SOURCES, TARGET

pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


def _gin_flags(model_dir, extra=()):
  return ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", *extra,
          "--gin.spot_jax.model_config.vocab_size=1152", "--gin.spot_jax.model_config.d_model=32",
          "--gin.spot_jax.model_config.num_heads=2", "--gin.spot_jax.model_config.head_dim=16",
          "--gin.spot_jax.model_config.d_ff=64", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8", f"--gin.PROMPT_LENGTH={P}",
          "--gin.EVAL_NUM_EXAMPLES=32", "--gin.spot_jax.train.train.log_period=2"]


def _evaluations(monkeypatch):
  """A list that records every call of the evaluator (which then runs)."""
  from spot_jax import evaluation
  calls, real = [], evaluation.evaluate
  monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
  return calls


def test_spot_cli_runs_the_whole_pipeline_with_a_baseline(library, tmp_path, capsys, clean_gin, monkeypatch,
                                                          caplog):
  lib = library[0]
  out = tmp_path / "target"
  argv = ["--target", TARGET, "--library", lib.path, "--strategy", "weighted_average", "--top-k", "2",
          "--baseline", *_gin_flags(out, ["--gin_file=runs/spot_target.gin"]), "--gin.TRAIN_STEPS=6",
          "--gin.TASK_EMBEDDING_STEP=3"]
  evaluated = _evaluations(monkeypatch)
  # The sources' task embeddings are from step 1, the target's from step 3: retrieval says so.
  with pytest.warns(UserWarning, match=r"from step 3, .*spot_bundled_movie \(step 1\)"):
    rc = pipeline_cli.main(argv)
  text = capsys.readouterr().out
  assert rc == 0, text
  assert evaluated == [TARGET, TARGET]  # transfer and baseline
  # The same command again: every run is finished, and so is its evaluation: none is run again.
  saved, evaluated[:] = (out / "result.json").read_bytes(), []
  gin.clear_config()
  with pytest.warns(UserWarning, match="from step 3"), caplog.at_level("INFO", logger="spot_jax.spot"):
    assert pipeline_cli.main(argv) == 0
  assert capsys.readouterr().out == text and (out / "result.json").read_bytes() == saved
  assert evaluated == [] and caplog.text.count("reusing its stored validation metrics") == 2
  assert "init: weighted average of" in text and "baseline (6 steps" in text, text
  result = json.loads((out / "result.json").read_text())
  assert result["strategy"] == "weighted_average" and len(result["chosen"]) == 2
  assert sorted(t["task"] for t in result["ranked"]) == sorted(SOURCES)
  assert "accuracy" in result["transfer_metrics"] and "accuracy" in result["baseline_metrics"]
  # The ranking is the similarity of the 3-step target run's prompt to each source embedding.
  emb = prompt_io.load_prompt(prompt_io.task_embedding_export_dir(str(out / "task_embedding")))
  assert prompt_io.read_export_info(prompt_io.task_embedding_export_dir(str(out / "task_embedding")))[
      "step"] == 3
  expected = sorted(sim.similarities_to(emb, lib.prompts("task_embedding")).items(),
                    key=lambda kv: (-kv[1], kv[0]))
  assert [(r["task"], pytest.approx(r["score"])) for r in result["ranked"]] == expected
  run_dirs = sorted(p.parent for p in out.rglob("numpy_checkpoints"))
  assert len(run_dirs) == 3, run_dirs  # the target's task embedding, transfer and baseline runs
  assert all("TRAIN_STEPS = 6" in (d / "config.gin").read_text() for d in run_dirs)
  weights = {c["task"]: c["weight"] for c in result["chosen"]}
  manual = sum(w * lib.get(t).prompt for t, w in weights.items())
  np.testing.assert_allclose(np.load(out / "init.npy"), manual, rtol=1e-5, atol=1e-6)
  for run in ("transfer", "baseline"):
    assert os.path.exists(prompt_io.checkpoint_export_dir(str(out / run), 6))
  # A mistyped target: one error line (no gin "In call to configurable"), and nothing created.
  rc = pipeline_cli.main(["--target", "spot_bundled_prodcut", "--library", lib.path,
                          *_gin_flags(tmp_path / "typo", ["--gin_file=runs/spot_target.gin"])])
  err = capsys.readouterr().err
  assert rc == 1 and "unknown task or mixture 'spot_bundled_prodcut'" in err and "In call to" not in err
  assert not os.path.exists(tmp_path / "typo")


def test_spot_source_cli_adds_one_prompt_to_a_library(tmp_path, capsys, clean_gin):
  rc = pipeline_cli.main(["source", *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
                      "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4",
                      f"--gin.LIBRARY_DIR='{tmp_path / 'lib'}'"])
  text = capsys.readouterr().out
  assert rc == 0, text
  rec = PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")
  assert rec["steps"] == 4 and rec["has_task_embedding"] and "accuracy" in rec["metrics"]
  assert rec["model_id"] == pipeline.default_model_id(None, CFG.replace(dropout_rate=0.1), 0)
  assert "added spot_bundled_nli" in text
  # The run's MODEL_DIR records the command's gin configuration, as `spot_jax.train` writes its own.
  config_gin = (tmp_path / "run" / "config.gin").read_text()
  assert "TRAIN_STEPS = 4" in config_gin and "'spot_bundled_nli'" in config_gin


def test_spot_source_cli_leaves_the_library_to_process_0(tmp_path, capsys, clean_gin, monkeypatch):
  """In a multi-process run every process trains the source prompt; only process 0 adds it (both added
  it before: the second add was refused and that process exited 1, or with --overwrite wrote it twice)."""
  import jax
  monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
  trained = []
  monkeypatch.setattr(pipeline_cli, "_train", lambda *a, **k: trained.append(a[3]) or np.zeros((P, 32), np.float32))
  monkeypatch.setattr(pipeline_cli, "evaluate_prompt", lambda *a, **k: {"accuracy": 50.0})
  rc = pipeline_cli.main(["source", *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
                          "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4",
                          f"--gin.LIBRARY_DIR='{tmp_path / 'lib'}'"])
  out = capsys.readouterr().out
  assert rc == 0 and trained == ["spot_bundled_nli"], out
  assert "spot_bundled_nli" not in PromptLibrary(str(tmp_path / "lib"))
  assert f"process 1: trained spot_bundled_nli in {tmp_path / 'run'}" in out
  assert f"process 0 adds it to {tmp_path / 'lib'}" in out


def test_cli_errors_name_the_problem(tmp_path, capsys, clean_gin):
  rc = pipeline_cli.main(["--target", TARGET, "--library", str(tmp_path / "mistyped"),
                      *_gin_flags(tmp_path / "t", ["--gin_file=runs/spot_target.gin"])])
  assert rc == 1
  assert f"library {tmp_path / 'mistyped'} does not exist: check the --library path" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  rc = pipeline_cli.main(["--target", TARGET, "--library", str(tmp_path / "empty"),
                      *_gin_flags(tmp_path / "t", ["--gin_file=runs/spot_target.gin"])])
  assert rc == 1
  assert "has no prompts" in capsys.readouterr().err


def test_spot_cli_refuses_a_library_of_another_frozen_model(library, tmp_path, capsys, clean_gin,
                                                             monkeypatch):
  lib = library[0]
  assert lib.model_id == pipeline.default_model_id(None, CFG, 0)
  out = tmp_path / "target"
  argv = ["--target", TARGET, "--library", lib.path,
          *_gin_flags(out, ["--gin_file=runs/spot_target.gin"]), "--gin.MODEL_ID='t5_other_model'"]
  rc = pipeline_cli.main(argv)
  err = capsys.readouterr().err
  assert rc == 1
  assert err.startswith("error: ") and "'t5_other_model'" in err and repr(lib.model_id) in err
  assert "--allow-other-model" in err and "MODEL_ID" in err
  assert not os.path.exists(out / "task_embedding")  # refused before any training
  gin.clear_config()
  calls = []

  class _Result:
    def format(self):
      return "stub result"

  monkeypatch.setattr(pipeline_cli, "run_target", lambda *a, **k: calls.append((a, k)) or _Result())
  with pytest.warns(UserWarning, match="t5_other_model.*--allow-other-model"):
    rc = pipeline_cli.main(argv + ["--allow-other-model"])
  assert rc == 0 and len(calls) == 1 and "stub result" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["source", "--help"], ["--help"]])
def test_spot_help_shows_the_gin_flags(argv, capsys):
  with pytest.raises(SystemExit) as e:
    pipeline_cli.main(argv)
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "--gin.NAME=VALUE" in text and "runs/prompt_train.gin: MODEL_DIR, MIXTURE_OR_TASK_NAME" in text


def test_train_only_macros_are_refused_by_the_pipeline(tmp_path):
  """runs/prompt_train.gin reads EVAL_PERIOD and EVAL_SPLIT, but the pipeline evaluates each run once on
  validation: they were accepted and ignored (the library got the last prompt, scored on validation)."""
  for macro, value in (("EVAL_PERIOD", "10"), ("EVAL_SPLIT", "'test'")):
    for command in (["source"], ["--target", TARGET, "--library", str(tmp_path / "lib")]):
      with pytest.raises(SystemExit, match=rf"error: --gin.{macro} has no effect here: .*spot-jax train"):
        pipeline_cli.main([*command, *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
                           f"--gin.{macro}={value}"])


def test_spot_source_cli_checkpoints_every_save_period(tmp_path, capsys, clean_gin, monkeypatch):
  run_dir = tmp_path / "run"
  argv = ["source", *_gin_flags(run_dir, ["--gin_file=runs/spot_source.gin"]),
          "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4", "--gin.SAVE_PERIOD=2"]
  rc = pipeline_cli.main(argv)
  assert rc == 0, capsys.readouterr()
  # A run killed after step 2 resumes from that checkpoint instead of restarting from step 0.
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
  # Rerun when finished (no LIBRARY_DIR: nothing says it is done), it neither trains nor evaluates again.
  text, evaluated = capsys.readouterr().out, _evaluations(monkeypatch)
  gin.clear_config()
  assert pipeline_cli.main(argv) == 0
  assert evaluated == [] and capsys.readouterr().out == text
  assert os.path.exists(prompt_io.checkpoint_export_dir(str(run_dir), 2))
  assert pipeline.RunConfig().save_period == 1000


def test_spot_source_cli_rerun_is_a_no_op_and_overwrite_refuses_a_finished_run(tmp_path, capsys,
                                                                                 clean_gin):
  argv = ["source", *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
          "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4",
          f"--gin.LIBRARY_DIR='{tmp_path / 'lib'}'"]
  assert pipeline_cli.main(argv) == 0
  created = PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")["created"]
  capsys.readouterr()
  gin.clear_config()
  rc = pipeline_cli.main(argv)  # the same finished command: nothing to do, success
  out = capsys.readouterr().out
  assert rc == 0 and "already in" in out, out
  assert PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")["created"] == created
  gin.clear_config()
  rc = pipeline_cli.main(argv + ["--gin.EVAL_NUM_EXAMPLES=16", "--overwrite"])
  err = capsys.readouterr().err
  assert rc == 1 and "new MODEL_DIR" in err and str(tmp_path / "run") in err, err
  assert PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")["created"] == created


def test_top_k_all_is_every_source_but_the_excluded(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  for t in ("a", "b", "target"):
    lib.add(t, np.ones((2, 4), np.float32), "m")
  parser = pipeline_cli._target_parser()
  assert parser.parse_args(["--target", "target", "--top-k", "all"]).top_k == "all"
  assert parser.parse_args(["--target", "target", "--top-k", "2"]).top_k == 2
  for bad in ("0", "some"):
    with pytest.raises(SystemExit):
      parser.parse_args(["--target", "target", "--top-k", bad])
  assert pipeline_cli.resolve_top_k("all", lib, "target") == 2  # the target is left out by default
  assert pipeline_cli.resolve_top_k("all", lib, "target", exclude=["a", "target"]) == 1
  assert pipeline_cli.resolve_top_k("all", lib, "other") == 3 and pipeline_cli.resolve_top_k(5, lib, "x") == 5


def test_pipeline_runs_count_adafactor_decay_from_the_initial_checkpoint_step(tmp_path, monkeypatch):
  """`spot`/`spot source` hand `train` the frozen model in memory, not INITIAL_CHECKPOINT_PATH, so every
  pipeline run counted Adafactor's decay from 0 even from checkpoint_1100000 (prompt-tuning: the
  checkpoint's step). The checkpoint's step now reaches each run; INITIAL_CHECKPOINT_STEP wins."""
  import jax
  from spot_jax import train as train_lib
  from spot_jax.checkpoints import write_t5x
  from spot_jax.model import init_params
  from spot_jax.spot import training_runs
  write_t5x(init_params(CFG, jax.random.PRNGKey(0)), str(tmp_path / "t5x"), step=7)
  s = dict(task_feature_lengths=LENGTHS, batch_size=2, prompt_length=P, prompt_init=None, seed=0,
           num_partitions=1, eval_batch_size=None, eval_num_examples=None, best_metric=None, save_period=5,
           initial_checkpoint_path=str(tmp_path / "t5x"), initial_checkpoint_step=None)
  run = pipeline_cli._run_config(s)
  assert run.initial_step == 7
  assert pipeline_cli._run_config(dict(s, initial_checkpoint_step=1_100_000)).initial_step == 1_100_000
  assert pipeline_cli._run_config(dict(s, initial_checkpoint_path=None)).initial_step == 0
  seen = {}
  monkeypatch.setattr(train_lib, "train", lambda **kw: seen.update(kw) or np.zeros((P, CFG.d_model)))
  training_runs._train(None, run, str(tmp_path / "m"), "spot_bundled_nli", 2)
  assert seen["initial_checkpoint_step"] == 7


def test_a_full_disk_is_one_line_naming_the_place(tmp_path, capsys, monkeypatch):
  """A full disk or read-only file system under `spot`/`spot source` was a traceback (gin's proxy of an
  error in a configurable hides its errno); a bug's OSError keeps its traceback."""
  import errno

  def full(argv, errno_=errno.ENOSPC):
    try:
      raise OSError(errno_, os.strerror(errno_), str(tmp_path / "lib" / "x.tmp-0123abcd"))
    except OSError as e:
      gin.utils.augment_exception_message_and_reraise(e, "\n  In call to configurable 'x'")
  monkeypatch.setattr(pipeline_cli, "source_main", full)
  assert pipeline_cli.main(["source"]) == 1
  assert capsys.readouterr().err == (f"error: cannot write {tmp_path / 'lib' / 'x'}: No space left on device: "
                                     "free some space or choose another directory\n")
  monkeypatch.setattr(pipeline_cli, "source_main", lambda argv: full(argv, errno.EBADF))
  with pytest.raises(OSError, match="Bad file descriptor"):
    pipeline_cli.main(["source"])


def test_a_vocabulary_error_raised_inside_tf_data_is_one_line(tmp_path, capsys, monkeypatch):
  """A vocabulary read first while tf.data traces a map (a task's first examples) reaches the CLI wrapped
  in TensorFlow's StagingError (~100 lines of frames); `spot-jax spot` says the VocabularyError's one
  line, as train, eval and infer do. Any other error inside tf.data keeps its traceback."""
  import seqio
  from tasks import user_data
  name = "spot_test_pipeline_cli_vocab"
  train = tmp_path / "train.tsv"
  train.write_text("premise\thypothesis\tlabel\na\tb\tyes\nc\td\tno\n")
  missing = str(tmp_path / "missing.model")
  user_data.register_task_from_files(name, train=str(train), overwrite=True, vocabulary=missing)
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  try:
    task = seqio.get_mixture_or_task(name)
    monkeypatch.setattr(pipeline_cli, "target_main", lambda argv: next(iter(
        task.get_dataset(None, split="train", shuffle=False))))
    assert pipeline_cli.main(["--target", name]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot load the SentencePiece vocabulary {missing} that task {name} was registered "
                   f"with: NotFoundError: {missing}; No such file or directory. Register the task with a model "
                   "file this machine can read (a local path), or with vocabulary=None for the project's "
                   "vocabulary (tasks.vocab: set_vocabulary, else $SPOT_JAX_VOCAB)."], err
  finally:
    for n in (name, name + "_rank"):
      if n in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(n)
  import tensorflow as tf

  def fails(x):  # raised while tf.data traces it: a StagingError around a RuntimeError
    raise RuntimeError("a bug inside a map")
  monkeypatch.setattr(pipeline_cli, "target_main", lambda argv: tf.data.Dataset.range(2).map(fails))
  with pytest.raises(Exception, match="a bug inside a map"):
    pipeline_cli.main(["--target", name])

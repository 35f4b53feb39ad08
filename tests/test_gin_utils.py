"""T5X-style flag handling shared by every gin-configured command."""
import os
import re
import sys
import types

import gin
import pytest

from spot_jax import gin_checks
from spot_jax import gin_flags
from spot_jax import gin_utils


def test_run_flags_are_split_from_a_commands_own():
  own, ours = gin_utils.split_run_flags(
      ["--target", "t", "--gin_file", "a.gin", "--gin.X=1", "--gin.Y", "2", "--baseline",
       "--coordinator_address=h:1", "--num_processes", "2", "--jax_distributed", "--top-k", "3"])
  assert own == ["--target", "t", "--baseline", "--top-k", "3"]
  assert ours == ["--gin_file", "a.gin", "--gin.X=1", "--gin.Y", "2", "--coordinator_address=h:1",
                  "--num_processes", "2", "--jax_distributed"]


def test_gin_dot_flags_become_bindings():
  bindings, rest = gin_utils.split_gin_flags(["--gin.MODEL_DIR='/tmp/x'", "--gin.STEPS", "3", "--other"])
  assert bindings == ["MODEL_DIR = '/tmp/x'", "STEPS = 3"] and rest == ["--other"]
  with pytest.raises(SystemExit, match="has no value"):
    gin_utils.split_gin_flags(["--gin.STEPS"])


def test_the_wheel_ships_every_gin_file_and_bundled_data_folder():
  """An installed wheel (`spot-jax launch --source git+...` installs one) must hold gin/ as
  spot_jax/gin/ and every bundled data folder: pyproject lists data folders one by one."""
  import pathlib
  import tomllib
  root = pathlib.Path(gin_utils.__file__).resolve().parents[1]
  config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
  assert config["package-dir"] == {"spot_jax.gin": "gin"}
  packages = set(config["packages"])
  gin_folders = {d for d in (root / "gin").rglob("*") if d.is_dir()} | {root / "gin"}
  want = {"spot_jax." + ".".join(d.relative_to(root).parts) for d in gin_folders}
  want |= {".".join(d.relative_to(root).parts) for d in [root / "tasks" / "data", *(root / "tasks" / "data").rglob("*")] if d.is_dir()}
  assert want - packages == set()
  assert "**/*.gin" in config["package-data"]["spot_jax.gin"]
  for package in want:
    if package.startswith("tasks.data"):
      assert config["package-data"].get(package) == ["*"], package


def test_gin_dir_holds_the_run_files():
  assert (gin_utils.GIN_DIR / "runs" / "prompt_train.gin").is_file()


def test_help_shows_the_gin_dot_form_and_each_run_files_required_macros():
  text = gin_utils._parser("spot_jax.train").format_help()
  assert "--gin.NAME=VALUE" in text
  assert "runs/prompt_train.gin: MODEL_DIR, MIXTURE_OR_TASK_NAME" in text
  assert "runs/prompt_eval.gin: MIXTURE_OR_TASK_NAME, CHECKPOINT_PATH, PROMPT_FILE, EVAL_OUTPUT_DIR" in text
  # The SPoT run files include prompt_train.gin: its required macros count unless they set them.
  assert "runs/spot_source.gin: MODEL_DIR, MIXTURE_OR_TASK_NAME" in text
  assert "runs/spot_target.gin: MODEL_DIR\n" in text  # the pipeline names each run's task


def test_bad_input_from_a_job_exits_with_its_message_or_the_traceback_on_request(monkeypatch):
  def job():
    raise FileNotFoundError("no prompt at /x: the path does not exist")
  argv = ["--gin_file=models/t5_1_1.gin"]
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  with pytest.raises(SystemExit, match=r"^spot_jax.eval: error: no prompt at /x: the path does not exist\n"):
    gin_utils.run(job, argv, prog="spot_jax.eval")
  monkeypatch.setenv("SPOT_JAX_TRACEBACK", "1")
  with pytest.raises(FileNotFoundError, match="no prompt at /x"):
    gin_utils.run(job, argv, prog="spot_jax.eval")
  def bug():
    raise TypeError("a bug keeps its traceback")
  monkeypatch.delenv("SPOT_JAX_TRACEBACK")
  with pytest.raises(TypeError):
    gin_utils.run(bug, argv)


def test_a_full_disk_or_read_only_place_is_one_line_naming_the_destination(tmp_path, monkeypatch):
  """A full disk (ENOSPC, raised by the write with no file name) or a read-only file system was a
  traceback: gin's proxy of an OSError raised in a configurable hides its errno. Other OSErrors keep it."""
  import errno
  import gin
  from spot_jax import fileio
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  real_open = fileio.open_file
  raised = {}

  def full(path, mode):
    if "w" not in mode:
      return real_open(path, mode)
    raise OSError(raised["errno"], os.strerror(raised["errno"]))  # as f.write on a full disk: no file name

  monkeypatch.setattr(fileio, "open_file", full)
  out = str(tmp_path / "run" / "numpy_checkpoints" / "checkpoint_2")
  with gin.unlock_config():
    job = gin.configurable("spot_test_write_job")(lambda: fileio.atomic_write_dir(out, {"p": b"1"}))
  argv = ["--gin_file=models/t5_1_1.gin"]
  raised["errno"] = errno.ENOSPC
  with pytest.raises(SystemExit, match=rf"^spot_jax.train: error: cannot write {re.escape(out)}: No space left "
                                       r"on device: free some space or choose another directory; once it can "
                                       r"write there, the same command resumes from the last checkpoint\n"):
    gin_utils.run(job, argv, prog="spot_jax.train")
  raised["errno"] = errno.EROFS
  with pytest.raises(SystemExit, match=rf"^spot_jax.infer: error: cannot write {re.escape(out)}: Read-only file "
                                       r"system: choose another directory\n"):
    gin_utils.run(job, argv, prog="spot_jax.infer")
  assert not os.path.exists(out) and not os.listdir(tmp_path / "run" / "numpy_checkpoints")  # no temporary
  raised["errno"] = errno.EBADF  # a bug, not the user's disk
  with pytest.raises(OSError, match="Bad file descriptor"):
    gin_utils.run(job, argv, prog="spot_jax.infer")


def test_an_unquoted_string_value_names_the_binding_and_the_quotes():
  # What the shell leaves of --gin.MODEL_DIR=/tmp/run and --gin.MIXTURE_OR_TASK_NAME=spot_glue_rte_v200;
  # gin's own words: "Unable to parse value. (line 2)" and "malformed node or string ... <ast.Name ...>".
  for value in ("/tmp/run", "spot_glue_rte_v200"):
    with pytest.raises(SystemExit, match=r"^gin configuration error: the value of MODEL_DIR is not quoted: "
                                         rf"'{value}' is read as gin code.*--gin.MODEL_DIR=\"'{value}'\"$"):
      gin_utils.parse_gin(["models/t5_1_1.gin"], ["TRAIN_STEPS = 3", f"MODEL_DIR = {value}"])


def test_running_out_of_device_memory_is_one_line_naming_the_sizes(monkeypatch):
  import jax
  import jax.numpy as jnp
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  def job():  # 400 GB: what an infer with TASK_FEATURE_LENGTHS=None asked for, for one very long row
    return jax.jit(lambda a: jnp.zeros((10 ** 11,), jnp.float32) + a)(1.0).block_until_ready()
  with pytest.raises(SystemExit, match=r"^spot_jax.infer: error: out of memory on the device: "
                                       r"RESOURCE_EXHAUSTED: .*400000000000 bytes\. Lower the batch size "
                                       r"\(BATCH_SIZE\), or bound the lengths with TASK_FEATURE_LENGTHS"):
    gin_utils.run(job, ["--gin_file=models/t5_1_1.gin"], prog="spot_jax.infer")


def test_an_unclosed_bracket_in_a_binding_is_a_gin_error_not_a_tokenizer_traceback():
  with pytest.raises(SystemExit, match=r"gin configuration error: .*an unclosed bracket or quote in a "
                                       r"--gin.NAME=VALUE binding"):
    gin_utils.parse_gin(["models/t5_1_1.gin"], ["spot_jax.train.train.train_steps = (3"])


def test_an_unclosed_bracket_in_a_gin_file_names_the_file(tmp_path):
  """Before: "('EOF in multi-line statement', (2, 0))" and no file."""
  broken = tmp_path / "mine.gin"
  broken.write_text("TRAIN_STEPS = (\n")
  with pytest.raises(SystemExit, match=r"gin configuration error: .*EOF in multi-line statement.* in "
                                       + re.escape(str(broken)) + r" \(an unclosed bracket or quote\?\)"):
    gin_utils.parse_gin(["models/t5_1_1.gin", str(broken)], [])


def test_a_macro_a_users_gin_file_sets_and_no_file_reads_is_refused_with_the_close_names(tmp_path):
  """Before: `TRAIN_STEP = 4` in the user's file (for TRAIN_STEPS) was ignored without a word."""
  mine = tmp_path / "mine.gin"
  mine.write_text("# my settings\nTRAIN_STEP = 4\nBATCH_SIZE = 4\n")
  argv = TRAIN[:4] + [f"--gin_file={mine}"] + TRAIN[4:]
  with pytest.raises(SystemExit, match=r"gin macro TRAIN_STEP is set in " + re.escape(str(mine)) +
                     r" but no gin file of this run reads it \(as %TRAIN_STEP\).*Did you mean TRAIN_STEPS"):
    gin_utils.configure(argv, prog="spot_jax.train")
  mine.write_text("TRAIN_STEPS = 4\nBATCH_SIZE = 4\n")  # read by the run file: accepted
  gin_utils.configure(argv, prog="spot_jax.train")
  assert gin.query_parameter("%TRAIN_STEPS") == 4


def test_a_misspelled_parameter_gets_the_close_names():
  with pytest.raises(SystemExit, match=r"doesn't have a parameter named 'batch_sise'(.|\n)*\nDid you mean "
                                       r"batch_size, eval_batch_size\?$"):
    gin_utils.parse_gin(["models/t5_1_1.gin"], ["spot_jax.train.train.batch_sise = 3"])


# A google-research/prompt-tuning command line: what works as there, what is refused naming the fix
# (the translations themselves: tests/test_prompt_tuning_compat.py).
TRAIN = ["--gin_file=models/t5_1_1_lm_adapted.gin", "--gin_file=prompts/random_uniform.gin",
         "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin", "--gin.MODEL_DIR='/tmp/x'",
         "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'"]


def test_a_prompt_tuning_train_command_line(monkeypatch):
  mod = types.ModuleType("my_pt_tasks")
  monkeypatch.setitem(sys.modules, "my_pt_tasks", mod)
  gin_utils.configure(TRAIN + ["--gin.MIXTURE_OR_TASK_MODULE='my_pt_tasks'", "--gin.DROPOUT_RATE=0.0",
                               "--gin.TRAIN_STEPS=20000", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=500",
                               "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/checkpoint_1100000'"])
  import gin
  from spot_jax import config
  assert gin.get_configurable(config.model_config)().dropout_rate == 0.0
  with pytest.raises(SystemExit, match=r"spot_jax: error: TRAIN_STEPS=1150000 counts past .*TRAIN_STEPS=50000"):
    gin_utils.configure(TRAIN + ["--gin.TRAIN_STEPS=1_150_000",
                                 "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/checkpoint_1100000'"])
  with pytest.raises(SystemExit, match=r"gin macro USE_CACHED_TASKS .*prompt-tuning macro: spot_jax "
                                       r"preprocesses seqio tasks on the fly.*drop it"):
    gin_utils.configure(TRAIN + ["--gin.USE_CACHED_TASKS=False"])
  with pytest.raises(SystemExit, match=r"gin macro EMBEDDING_FILE .*from the frozen checkpoint"):
    gin_utils.configure(TRAIN + ["--gin.EMBEDDING_FILE='/e.npy'"])
  with pytest.raises(SystemExit, match=r"gin macro PROMPT_FILE .*add --gin_file=prompts/from_file.gin"):
    gin_utils.configure(TRAIN + ["--gin.PROMPT_FILE='/p.npy'"])
  with pytest.raises(SystemExit, match=r"gin file 'prompt_tuning/configs/models/t5_1_1_base_prompt.gin' not "
                                       r"found.*spot_jax's equivalent: --gin_file=models/t5_1_1_lm_adapted.gin"):
    gin_utils.configure(["--gin_file=prompt_tuning/configs/models/t5_1_1_base_prompt.gin"] + TRAIN[1:])
  with pytest.raises(SystemExit, match=r"No configurable matching 'utils.SaveCheckpointConfig'(.|\n)*in "
                                       r"spot_jax set SAVE_PERIOD"):
    gin_utils.configure(TRAIN + ["--gin.utils.SaveCheckpointConfig.period=100"])


def test_log_period_is_a_macro_as_its_range_error_says():
  """train's range error said 'set --gin.LOG_PERIOD', a macro no file read: the binding was refused."""
  import gin
  gin_utils.configure(TRAIN + ["--gin.LOG_PERIOD=7"])
  assert gin.get_bindings("spot_jax.train.train")["log_period"] == 7


def test_eval_refuses_prompt_length_and_an_include_of_a_prompt_tuning_file(tmp_path):
  evals = ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_eval.gin",
           "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'", "--gin.CHECKPOINT_PATH=None",
           "--gin.PROMPT_FILE=None", "--gin.EVAL_OUTPUT_DIR='/tmp/e'"]
  with pytest.raises(SystemExit, match=r"gin macro PROMPT_LENGTH .*take the prompt length from PROMPT_FILE"):
    gin_utils.configure(evals + ["--gin.PROMPT_LENGTH=100"])
  with pytest.raises(SystemExit, match=r"gin macro INITIAL_CHECKPOINT_PATH .*CHECKPOINT_PATH, as T5X's eval.gin"):
    gin_utils.configure(evals + ["--gin.INITIAL_CHECKPOINT_PATH='/c'"])
  mine = tmp_path / "mine.gin"
  mine.write_text("include 'prompt_tuning/configs/runs/prompt_eval.gin'\n")
  with pytest.raises(SystemExit, match=r"Unable to open file: prompt_tuning/configs/runs/prompt_eval.gin.*"
                                       r"spot_jax's equivalent: --gin_file=runs/prompt_eval.gin") as caught:
    gin_utils.configure(evals + [f"--gin_file={mine}"])
  # After three parses in this process, each search path is listed once, and the including file named.
  said = str(caught.value)
  assert said.count(repr(gin_utils.default_search_paths()[0])) == 1 and f'In file "{mine}", line 1' in said


def test_every_configuration_refusal_reads_prog_error(monkeypatch):
  """Gin's refusals (a missing macro, a macro no file reads, a bad value) read `PROG: error: ...` as the
  jobs' own errors do; they were bare ("missing required gin binding: ..."), so a script looking for
  `error:` missed them."""
  base = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin"]
  for extra, says in ((["--gin.MIXTURE_OR_TASK_NAME='t'"], "missing required gin binding: the macro MODEL_DIR"),
                      (["--gin.MODEL_DIR='/x'", "--gin.TRAIN_STEP=3"], "gin macro TRAIN_STEP is set on the"),
                      (["--gin.MODEL_DIR=/x"], "gin configuration error: the value of MODEL_DIR is not quoted")):
    with pytest.raises(SystemExit) as e:
      gin_utils.configure(base + extra, prog="spot_jax.train")
    assert e.value.code.startswith(f"spot_jax.train: error: {says}"), e.value.code


def test_a_missing_macro_points_only_at_files_that_could_be_added():
  """Not a run file (another job's, e.g. prompt_train.gin for an eval) nor a None placeholder
  (spot_target.gin's MIXTURE_OR_TASK_NAME): infer without a task used to be sent there."""
  def explain(name):
    return gin_utils.explain_missing(ValueError(f"No values supplied for ['{name}/gin.macro']"))
  for name in ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS"):
    assert explain(name).endswith(f"Set it with --gin.{name}=... or in a --gin_file.")
  assert "prompts/random_uniform.gin" in explain("PROMPT_INIT")


def test_a_runs_or_models_folder_on_the_path_does_not_break_our_includes(tmp_path, monkeypatch):
  """`include 'runs/prompt_train.gin'` in our gin files: gin also looks for a package `runs`, and a
  plain `runs/` (or `models/`) folder in the current directory or on PYTHONPATH, where T5X projects
  keep theirs, crashed it with a TypeError (a namespace package has no origin)."""
  for name in ("runs", "models"):
    (tmp_path / name).mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  from spot_jax.spot import pipeline_cli  # noqa: F401  (its configurables, which spot_source.gin binds)
  gin_utils.configure(["--gin_file=models/t5_1_1_lm_adapted.gin", "--gin_file=prompts/random_uniform.gin",
                       "--gin_file=models/sizes/tiny.gin",
                       "--gin_file=runs/spot_source.gin", "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'",
                       "--gin.MODEL_DIR='/tmp/m'", "--gin.INITIAL_CHECKPOINT_PATH=None",
                       "--gin.LIBRARY_DIR='/tmp/lib'"])
  import gin
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "spot_bundled_movie"
  assert not gin_utils._gin_resource_exists("runs/prompt_train.gin")  # a folder, not a package resource


def test_a_mistake_in_the_users_task_files_is_one_error_line(tmp_path, monkeypatch):
  """Registering the user's tasks reads their files before the job: a bad label there is the same
  `error:` line as the job's (it came under a 20-frame traceback)."""
  (tmp_path / "bad.tsv").write_text("x\ty\nhello\tmaybe\n")
  (tmp_path / "my_bad_tasks.py").write_text(
      "from tasks import user_data\n"
      f"user_data.register_task_from_files('my_bad_task', train={str(tmp_path / 'bad.tsv')!r}, "
      "input_template='{x}', target_field='y', label_names=['a', 'b'])\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  argv = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin",
          "--gin.MIXTURE_OR_TASK_MODULE='my_bad_tasks'", "--gin.MIXTURE_OR_TASK_NAME='my_bad_task'",
          "--gin.MODEL_DIR='/tmp/m'", "--gin.INITIAL_CHECKPOINT_PATH=None"]
  with pytest.raises(SystemExit, match=r"^spot_jax: error: .*bad.tsv:2: unknown label 'maybe' in field 'y'.*\n"
                                       r"\(SPOT_JAX_TRACEBACK=1 shows the traceback\)$"):
    gin_utils.configure(argv)


def test_command_warnings_are_one_plain_line(monkeypatch):
  """A command's warnings: `warning: MESSAGE`, without the file, line and source line of the call."""
  import warnings
  monkeypatch.setattr(warnings, "formatwarning", lambda *a, **k: "file:line: source line")  # restored after
  said = "the target's task embedding is from step 3"
  gin_utils.plain_warnings()
  assert warnings.formatwarning(said, UserWarning, "/x/retrieval.py", 90) == f"warning: {said}\n"


def test_the_settings_that_differ_between_processes_are_named_with_each_processs_value():
  config = ("# Macros:\n# ====\nBATCH_SIZE = 8\nMODEL_DIR = '/tmp/run'\nTASK_FEATURE_LENGTHS = \\\n"
            "    {'inputs': 512,\n     'targets': 8}\n\n# Parameters for get_batches:\n# ====\n"
            "get_batches.shard_index = 0\n\n# Parameters for train:\n# ====\ntrain.batch_size = %BATCH_SIZE\n")
  assert gin_utils.shared_settings(config) == {
      "BATCH_SIZE": "8", "MODEL_DIR": "'/tmp/run'", "TASK_FEATURE_LENGTHS": "{'inputs': 512, 'targets': 8}",
      "train.batch_size": "%BATCH_SIZE"}  # shard_index is per process by design
  assert gin_utils.settings_differ_message([config, config.replace("shard_index = 0", "shard_index = 1")]) == ""
  other = config.replace("BATCH_SIZE = 8", "BATCH_SIZE = 16").replace("'targets': 8", "'targets': 4")
  message = gin_utils.settings_differ_message([config, other])
  assert message == (
      "the processes of this run were started with different gin settings: BATCH_SIZE: process 0 has 8, "
      "process 1 has 16; TASK_FEATURE_LENGTHS: process 0 has {'inputs': 512, 'targets': 8}, process 1 has "
      "{'inputs': 512, 'targets': 4}. Start every process with the same flags and gin files (only "
      "--process_id differs)")
  assert "EVAL_PERIOD: process 0 has (not set), process 1 has 4" in gin_utils.settings_differ_message(
      [config, config + "EVAL_PERIOD = 4\n"])


def test_two_processes_with_different_settings_both_refuse_to_start_and_write_nothing(tmp_path):
  """A process with another BATCH_SIZE trained on a mixture of the two runs' batches, and one with
  another TRAIN_STEPS hung at a collective (found by a multi-process audit): both must stop, at once,
  naming the setting and each process's value."""
  import os
  import pathlib
  import socket
  import subprocess
  repo = pathlib.Path(gin_utils.__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=str(repo),
             TF_CPP_MIN_LOG_LEVEL="2")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  model_dir = tmp_path / "run"
  procs = []
  for pid, batch_size in enumerate((8, 16)):
    args = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
            "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.TRAIN_STEPS=8",
            f"--gin.BATCH_SIZE={batch_size}", "--gin.PROMPT_LENGTH=4", "--gin.SAVE_PERIOD=4",
            "--gin.EVAL_PERIOD=None", "--gin.spot_jax.model_config.vocab_size=1152",
            "--gin.spot_jax.model_config.d_model=32", "--gin.spot_jax.model_config.num_heads=2",
            "--gin.spot_jax.model_config.head_dim=16", "--gin.spot_jax.model_config.d_ff=64",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
    procs.append(subprocess.Popen([sys.executable, "-m", "spot_jax", "train", *args], cwd=repo, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    errs = [p.communicate(timeout=180)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode not in (0, None), err[-3000:]
    assert "BATCH_SIZE: process 0 has 8, process 1 has 16" in err, err[-3000:]
    assert "Start every process with the same flags and gin files" in err and "Traceback" not in err
  assert not (model_dir / "checkpoints").exists() and not (model_dir / "numpy_checkpoints").exists()


# The partitioning of a run: which files and bindings decide NUM_PARTITIONS, and what is refused.
TINY = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin", "--gin_file=models/sizes/tiny.gin"]
NAMED = ["--gin.MODEL_DIR='/tmp/x'", "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'"]


def _num_partitions(argv):
  import gin
  gin_utils.configure(argv)
  return gin.query_parameter("%NUM_PARTITIONS")


def test_a_partitioning_file_that_a_later_run_files_include_would_undo_is_refused(tmp_path):
  """Every run file includes partitioning/data_parallel.gin: a partitioning file given before it ended
  the run with NUM_PARTITIONS = 1, without a word."""
  with pytest.raises(SystemExit, match=r"^spot_jax: error: --gin_file=partitioning/model_parallel_4.gin sets "
                                       r"NUM_PARTITIONS = 4, but the later --gin_file=runs/prompt_train.gin sets it "
                                       r"back to 1 through its include of partitioning/data_parallel.gin.* Give "
                                       r"--gin_file=partitioning/model_parallel_4.gin after "
                                       r"--gin_file=runs/prompt_train.gin, or set --gin.NUM_PARTITIONS=4"):
    _num_partitions(["--gin_file=partitioning/model_parallel_4.gin"] + TINY + ["--gin_file=runs/prompt_train.gin"]
                    + NAMED)
  with pytest.raises(SystemExit, match=r"later --gin_file=runs/spot_source.gin sets it back to 1 through its "
                                       r"include of runs/prompt_train.gin, which includes "
                                       r"partitioning/data_parallel.gin"):
    _num_partitions(TINY + ["--gin_file=partitioning/model_parallel_2.gin", "--gin_file=runs/spot_source.gin"]
                    + NAMED)
  # Any macro: models/gpu_bf16.gin before the variant it adjusts (whose include resets FROZEN_DTYPE).
  with pytest.raises(SystemExit, match=r"--gin_file=models/gpu_bf16.gin sets FROZEN_DTYPE = 'bfloat16', but the "
                                       r"later --gin_file=models/t5_1_1_lm_adapted.gin sets it back to 'float32'"):
    _num_partitions(["--gin_file=models/gpu_bf16.gin", "--gin_file=models/t5_1_1_lm_adapted.gin"] + TINY[1:]
                    + ["--gin_file=runs/prompt_train.gin"] + NAMED)
  # A user's task file before the run file, whose own line declares the macro again: gin then said the
  # macro was not set, though the file set it.
  mine = tmp_path / "my_task.gin"
  mine.write_text("MIXTURE_OR_TASK_NAME = 'spot_bundled_movie'\n")
  with pytest.raises(SystemExit, match=rf"--gin_file={re.escape(str(mine))} sets MIXTURE_OR_TASK_NAME = "
                                       r"'spot_bundled_movie', but the later --gin_file=runs/prompt_train.gin sets "
                                       r"it back to %gin.REQUIRED, and later files win.* Give "
                                       rf"--gin_file={re.escape(str(mine))} after --gin_file=runs/prompt_train.gin"):
    _num_partitions(TINY + [f"--gin_file={mine}", "--gin_file=runs/prompt_train.gin", "--gin.MODEL_DIR='/tmp/x'"])
  assert _num_partitions(TINY + ["--gin_file=runs/prompt_train.gin", f"--gin_file={mine}",
                                 "--gin.MODEL_DIR='/tmp/x'"]) == 1
  # What works: the documented order, a binding anywhere, a later file's own line, the same value again.
  assert _num_partitions(TINY + ["--gin_file=runs/prompt_train.gin", "--gin_file=partitioning/model_parallel_4.gin"]
                         + NAMED) == 4
  assert _num_partitions(["--gin.NUM_PARTITIONS=2"] + TINY + ["--gin_file=runs/prompt_train.gin"] + NAMED) == 2
  assert _num_partitions(TINY + ["--gin_file=runs/prompt_train.gin", "--gin_file=partitioning/model_parallel_4.gin",
                                 "--gin_file=partitioning/model_parallel_2.gin"] + NAMED) == 2
  assert _num_partitions(["--gin_file=partitioning/data_parallel.gin"] + TINY + ["--gin_file=runs/prompt_train.gin"]
                         + NAMED) == 1


def test_a_bf16_file_before_the_variant_that_sets_its_values_directly_is_refused(tmp_path):
  """models/t5_1_1.gin sets FROZEN_DTYPE and dtype on lines of its own (no include): given after
  models/gpu_bf16.gin it trained with float32 frozen weights and activations beside the fused attention,
  half the GPU setting, without a word; after models/cpu_bf16.gin, with float32 frozen weights."""
  import gin
  rest = TINY[1:] + ["--gin_file=runs/prompt_train.gin"] + NAMED
  for bf16, also in (("models/gpu_bf16.gin", r" \(and spot_jax.model_config.dtype = 'bfloat16' back to "
                                             r"'float32'\)"), ("models/cpu_bf16.gin", "")):
    for variant in ("models/t5_1_1.gin", "models/t5_1_1_lm_adapted.gin"):
      how = " through its include of models/t5_1_1.gin" if variant.endswith("adapted.gin") else ""
      with pytest.raises(SystemExit, match=rf"^spot_jax: error: --gin_file={bf16} sets FROZEN_DTYPE = 'bfloat16', "
                                           rf"but the later --gin_file={variant} sets it back to 'float32'{how}{also}, "
                                           rf"and later files win: {bf16} would be applied only in part. Give "
                                           rf"--gin_file={bf16} after --gin_file={variant}, or set "
                                           rf"--gin.FROZEN_DTYPE=\"'bfloat16'\""):
        gin_utils.configure([f"--gin_file={bf16}", f"--gin_file={variant}"] + rest)
      # The documented order: after the size.
      gin_utils.configure([f"--gin_file={variant}"] + TINY[1:] + [f"--gin_file={bf16}"] + rest[2:])
      assert gin.query_parameter("%FROZEN_DTYPE") == "bfloat16"
      assert gin.query_parameter("spot_jax.model_config.dtype") == ("bfloat16" if "gpu" in bf16 else "float32")
  # A user's file before the variant, setting a binding the variant sets too: refused; after it, it wins.
  mine = tmp_path / "mine.gin"
  mine.write_text("spot_jax.model_config.dropout_broadcast = False\n")
  with pytest.raises(SystemExit, match=rf"--gin_file={re.escape(str(mine))} sets spot_jax.model_config."
                                       r"dropout_broadcast = False, but the later --gin_file=models/t5_1_1.gin sets "
                                       r"it back to True, and later files win: .* would have no effect"):
    gin_utils.configure([f"--gin_file={mine}"] + TINY + ["--gin_file=runs/prompt_train.gin"] + NAMED)
  gin_utils.configure(TINY + [f"--gin_file={mine}", "--gin_file=runs/prompt_train.gin"] + NAMED)
  assert gin.query_parameter("spot_jax.model_config.dropout_broadcast") is False
  # Two files of one place: the later wins, as it says (T5 1.1 then mT5's vocabulary).
  gin_utils.configure(["--gin_file=models/t5_1_1.gin", "--gin_file=models/mt5.gin"] + rest)
  assert gin.query_parameter("spot_jax.model_config.vocab_size") == 250112


def test_a_users_file_that_includes_the_projects_files_comes_before_the_files_of_later_places(tmp_path):
  """T5X users wrap the project's files in a gin file of their own. Its values through an include have
  the place of the file that sets them (models/t5_1_1.gin's FROZEN_DTYPE is the variant's), so the
  README's order after it (models/gpu_bf16.gin after the size, a partitioning file after the run file)
  was refused as if the wrapper set them on lines of its own, with advice that undid the bf16 setting."""
  import gin
  model = tmp_path / "my_model.gin"
  model.write_text("include 'models/t5_1_1.gin'\ninclude 'prompts/random_uniform.gin'\n"
                   "include 'models/sizes/base.gin'\n")
  gin_utils.configure([f"--gin_file={model}", "--gin_file=models/gpu_bf16.gin", "--gin_file=runs/prompt_train.gin"]
                      + NAMED)
  assert gin.query_parameter("%FROZEN_DTYPE") == "bfloat16"
  assert gin.query_parameter("spot_jax.model_config.dtype") == "bfloat16"
  assert gin.query_parameter("spot_jax.model_config.attention_impl") == "fused"
  assert gin.query_parameter("spot_jax.model_config.size") == "base"
  run = tmp_path / "my_run.gin"
  run.write_text("include 'models/t5_1_1.gin'\ninclude 'prompts/random_uniform.gin'\n"
                 "include 'models/sizes/tiny.gin'\ninclude 'runs/prompt_train.gin'\n")
  assert _num_partitions([f"--gin_file={run}", "--gin_file=partitioning/model_parallel_4.gin"] + NAMED) == 4
  # Still refused: a wrapper's include of a later place before an earlier place's file ...
  bf16 = tmp_path / "my_bf16.gin"
  bf16.write_text("include 'models/gpu_bf16.gin'\n")
  with pytest.raises(SystemExit, match=rf"--gin_file={re.escape(str(bf16))} sets FROZEN_DTYPE = 'bfloat16' through "
                                       r"its include of models/gpu_bf16.gin, but the later "
                                       r"--gin_file=models/t5_1_1.gin sets it back to 'float32'.* Give "
                                       rf"--gin_file={re.escape(str(bf16))} after --gin_file=models/t5_1_1.gin"):
    gin_utils.configure([f"--gin_file={bf16}"] + TINY + ["--gin_file=runs/prompt_train.gin"] + NAMED)
  # ... and a wrapper's own line that a later project file sets back.
  model.write_text(model.read_text() + "spot_jax.model_config.attention_impl = 'einsum'\n")
  with pytest.raises(SystemExit, match=rf"--gin_file={re.escape(str(model))} sets spot_jax.model_config."
                                       r"attention_impl = 'einsum', but the later --gin_file=models/gpu_bf16.gin "
                                       r"sets it back to 'fused', and later files win"):
    gin_utils.configure([f"--gin_file={model}", "--gin_file=models/gpu_bf16.gin", "--gin_file=runs/prompt_train.gin"]
                        + NAMED)


def test_the_order_guard_compares_values_as_gin_reads_them_and_bindings_by_their_configurable(tmp_path):
  """It compared the text of a binding's first line (every `X = {` ... `}` was one value) and names as
  written (`model_config.dtype` was not `spot_jax.model_config.dtype`)."""
  runs = gin_utils.GIN_DIR / "runs"
  def check(*files):
    gin_checks.check_file_order([str(f) for f in files], [str(f) for f in files], [str(tmp_path)], runs)
  mine, theirs, wrapper = tmp_path / "mine.gin", tmp_path / "theirs.gin", tmp_path / "wrapper.gin"
  mine.write_text("X = {  # the lengths\n    'inputs': 64,\n    'targets': 4,\n}\n")
  wrapper.write_text("include 'theirs.gin'\n")
  theirs.write_text("X = {\n    'inputs': 512,  # T5X's\n    'targets': 4,\n}\n")
  with pytest.raises(SystemExit, match=r"sets X = \{ 'inputs': 64, 'targets': 4, \}, but the later "
                                       rf"--gin_file={re.escape(str(wrapper))} sets it back to "
                                       r"\{ 'inputs': 512, 'targets': 4, \} through its include of theirs.gin"):
    check(mine, wrapper)
  theirs.write_text("X = {'targets': 4,\n     \"inputs\": 64}\n")  # the same value, written otherwise
  check(mine, wrapper)
  mine.write_text("model_config.dropout_broadcast = False\n")
  with pytest.raises(SystemExit, match=r"sets spot_jax.model_config.dropout_broadcast = False, but the later "
                                       r"--gin_file=models/t5_1_1.gin sets it back to True"):
    gin_utils.configure([f"--gin_file={mine}"] + TINY + ["--gin_file=runs/prompt_train.gin"] + NAMED)


def test_a_binding_of_a_parameter_the_jobs_pass_themselves_is_refused_naming_the_macro(tmp_path):
  """make_mesh is configurable, but train and eval pass num_partitions: the binding was ignored."""
  base = TINY + ["--gin_file=runs/prompt_train.gin"] + NAMED
  with pytest.raises(SystemExit, match=r"^spot_jax: error: the binding spot_jax.partitioning.make_mesh.num_partitions "
                                       r"would have no effect: the jobs pass num_partitions to make_mesh themselves; "
                                       r"set NUM_PARTITIONS \(e.g. --gin.NUM_PARTITIONS=2"):
    gin_utils.configure(base + ["--gin.spot_jax.partitioning.make_mesh.num_partitions=8"])
  mine = tmp_path / "mine.gin"
  mine.write_text("train/spot_jax.input_pipeline.get_batches.batch_size = 4\n")
  with pytest.raises(SystemExit, match=r"the binding train/spot_jax.input_pipeline.get_batches.batch_size would "
                                       r"have no effect: .*set BATCH_SIZE"):
    gin_utils.configure(base + [f"--gin_file={mine}"])


def test_every_parameter_the_jobs_pass_to_a_configurable_is_listed():
  """The call sites in spot_jax/ of each configurable that no command calls through gin: a parameter
  given at every one of them must be in PASSED_BY_THE_JOBS (so that a binding of it is refused)."""
  import ast
  import inspect
  import pathlib
  import gin
  gin_utils.import_configurables()
  root = pathlib.Path(gin_utils.__file__).parent
  sources = [p.read_text() for p in root.rglob("*.py")]
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  by_name = {}
  for selector in list(registry._selector_map):  # pylint: disable=protected-access
    info = registry[selector]
    if selector.startswith("spot_jax.") and not any(f"get_configurable({info.name})" in s for s in sources):
      by_name.setdefault(info.name, []).append((selector, list(inspect.signature(info.wrapped).parameters)))
  calls = {}
  for source in sources:
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Call):
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if name in by_name:
          calls.setdefault(name, []).append(node)
  missing = []
  for name, nodes in calls.items():
    for selector, params in by_name[name]:
      if any(isinstance(a, ast.Starred) for n in nodes for a in n.args) or any(k.arg is None for n in nodes
                                                                                for k in n.keywords):
        continue
      always = set.intersection(*({*params[:len(n.args)], *(k.arg for k in n.keywords)} for n in nodes))
      missing += [f"{selector}.{p}" for p in sorted(always - set(gin_checks.PASSED_BY_THE_JOBS.get(selector, {})))]
  assert not missing, missing
  assert {"make_mesh", "get_batches"} <= set(calls)  # the scan sees the call sites


def test_num_partitions_of_the_wrong_type_or_range_is_refused_in_the_same_words_by_every_job():
  """eval said "NUM_PARTITIONS=0 must divide the 8 devices" and train "must be 1 or more"; a string '2'
  got train's example --gin.NUM_PARTITIONS=100."""
  evals = TINY[::2] + ["--gin_file=runs/prompt_eval.gin", "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_movie'",
                       "--gin.CHECKPOINT_PATH=None", "--gin.PROMPT_FILE=None", "--gin.EVAL_OUTPUT_DIR='/tmp/e'"]
  for argv in (TINY + ["--gin_file=runs/prompt_train.gin"] + NAMED, evals):
    with pytest.raises(SystemExit, match=r"^spot_jax: error: NUM_PARTITIONS must be 1 or more, got 0"):
      gin_utils.configure(argv + ["--gin.NUM_PARTITIONS=0"])
    with pytest.raises(SystemExit, match=r"^spot_jax: error: NUM_PARTITIONS must be an integer, got '2' \(str\): "
                                         r"e.g. --gin.NUM_PARTITIONS=2 \(no quotes\)"):
      gin_utils.configure(argv + ["--gin.NUM_PARTITIONS='2'"])


def test_a_t5x_partitioner_submesh_names_num_partitions():
  with pytest.raises(SystemExit, match=r"No configurable matching 'partitioning.PjitPartitioner'(.|\n)*in spot_jax "
                                       r"set NUM_PARTITIONS, the size of the mesh's model axis"):
    gin_utils.configure(TRAIN + ["--gin.partitioning.PjitPartitioner.model_parallel_submesh=(2, 2, 1, 1)"])


def test_jax_distributed_waits_come_from_the_environment(monkeypatch):
  """SPOT_JAX_STARTUP_TIMEOUT_S bounds the wait for the other processes to connect and
  SPOT_JAX_HEARTBEAT_TIMEOUT_S how long a process killed outright goes unnoticed (JAX: 300 s and
  100 s); unset, JAX's defaults are left alone."""
  import argparse
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
  args = argparse.Namespace(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
                            jax_distributed=False)
  monkeypatch.delenv("SPOT_JAX_STARTUP_TIMEOUT_S", raising=False)
  monkeypatch.delenv("SPOT_JAX_HEARTBEAT_TIMEOUT_S", raising=False)
  gin_utils.init_distributed(args)
  monkeypatch.setenv("SPOT_JAX_STARTUP_TIMEOUT_S", "30")
  monkeypatch.setenv("SPOT_JAX_HEARTBEAT_TIMEOUT_S", "10.0")
  gin_utils.init_distributed(args)
  assert calls == [(("127.0.0.1:1234", 2, 1), {}),
                   (("127.0.0.1:1234", 2, 1), {"initialization_timeout": 30, "heartbeat_timeout_seconds": 10})]
  monkeypatch.setenv("SPOT_JAX_HEARTBEAT_TIMEOUT_S", "soon")
  with pytest.raises(SystemExit, match=r"SPOT_JAX_HEARTBEAT_TIMEOUT_S='soon' must be a number of seconds"):
    gin_utils.init_distributed(args)


def _pasted_into_bash(text):
  """The words bash makes of `text` (a suggested flag pasted onto a command line)."""
  import subprocess
  out = subprocess.run(["bash", "-c", f"printf '%s\\0' {text}"], capture_output=True, text=True, check=True)
  return out.stdout.split("\0")[:-1]


@pytest.mark.parametrize("written", ['"spot_bundled_movie"', "'spot_bundled_movie'"])
def test_the_order_refusal_suggests_a_binding_that_works_pasted_into_bash(tmp_path, written):
  """A task file written as docs/user_data.md writes it (`MIXTURE_OR_TASK_NAME = "my_sent"`) before the run
  file was refused suggesting `--gin.MIXTURE_OR_TASK_NAME="my_sent"`: bash removes those quotes, and gin
  then refused the bare word ("the value of MIXTURE_OR_TASK_NAME is not quoted")."""
  mine = tmp_path / "my_task.gin"
  mine.write_text(f"MIXTURE_OR_TASK_NAME = {written}\n")
  with pytest.raises(SystemExit) as e:
    gin_utils.configure(TINY + [f"--gin_file={mine}", "--gin_file=runs/prompt_train.gin", "--gin.MODEL_DIR='/tmp/x'"])
  said = str(e.value)
  assert said.endswith(f"Give --gin_file={mine} after --gin_file=runs/prompt_train.gin, or set "
                       "--gin.MIXTURE_OR_TASK_NAME=\"'spot_bundled_movie'\" (a --gin.NAME=VALUE binding wins "
                       "wherever it stands)"), said
  flag = re.search(r", or set (.*) \(a --gin\.NAME=VALUE binding", said).group(1)
  gin_utils.configure(TINY + ["--gin_file=runs/prompt_train.gin", "--gin.MODEL_DIR='/tmp/x'",
                              *_pasted_into_bash(flag)])
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "spot_bundled_movie"


@pytest.mark.parametrize("value", [
    '"my_sent"', "'my_sent'", '{"inputs": 16, "targets": 4}', "{'inputs': 16,   'targets': 4}", "[1000, 2000]",
    "None", "100", "%gin.REQUIRED", "'gs://b/run dir'", "\"it's\"", "'say \"hi\"'", "'$HOME/`x`'",
    "\"a\\\\b\"", "\"it's $HOME\"", "['x', \"y\"]", "'!x'"])
def test_a_suggested_binding_gives_gin_the_files_value_through_bash(value):
  flag = gin_flags.shell_binding("X", value)
  (word,) = _pasted_into_bash(flag)
  assert word.startswith("--gin.X=")
  assert gin_checks._parse_value(word[len("--gin.X="):]) == gin_checks._parse_value(value), (value, flag, word)


def test_a_suggested_binding_writes_strings_as_the_docs_do():
  """Gin strings in single quotes inside the shell's double quotes (`--gin.X="'x'"`), as the docs write them."""
  assert gin_flags.shell_binding("X", '"my_sent"') == "--gin.X=\"'my_sent'\""
  assert gin_flags.shell_binding("X", "'my_sent'") == "--gin.X=\"'my_sent'\""
  assert gin_flags.shell_binding("X", '{"inputs": 16, "targets": 4}') == "--gin.X=\"{'inputs': 16, 'targets': 4}\""
  assert gin_flags.shell_binding("X", "4") == "--gin.X=4"
  assert gin_flags.shell_binding("X", "%gin.REQUIRED") == "--gin.X=%gin.REQUIRED"
  assert gin_flags.shell_binding("X", '"$HOME"') == "--gin.X='\"$HOME\"'"
  assert gin_flags.shell_binding("X", "'say \"hi\"'") == "--gin.X=\"'say \\\"hi\\\"'\""


def test_the_unquoted_string_hint_quotes_any_value_for_bash():
  said = gin_checks.unquoted_string_binding(["MODEL_DIR = /tmp/run"])
  assert said.endswith("Quote it inside the shell's quotes: --gin.MODEL_DIR=\"'/tmp/run'\""), said
  said = gin_checks.unquoted_string_binding(["MODEL_DIR = /tmp/$run"])
  (word,) = _pasted_into_bash(said.rpartition("quotes: ")[2])
  assert gin_checks._parse_value(word.partition("=")[2]) == "/tmp/$run"

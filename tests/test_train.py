"""The trainer: prompt-only updates on a (4, 2) mesh, resume after kill -9, two processes, failures."""
import hashlib
import json
import os
import re
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from spot_jax import gin_utils, optim, prompt_io
from spot_jax import train as train_lib
from spot_jax.config import size_config
from spot_jax.model import init_params

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK = "spot_bundled_movie"
LENGTHS = {"inputs": 32, "targets": 4}
CFG = size_config("tiny", vocab_size=1152, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                  dropout_rate=0.1)
STEPS, PROMPT_LEN = 24, 4


def _gin_args(model_dir, steps=STEPS, extra=()):
  return ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin",
          "--gin_file=partitioning/model_parallel_2.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
          f"--gin.PROMPT_LENGTH={PROMPT_LEN}", "--gin.SAVE_PERIOD=8", "--gin.EVAL_PERIOD=None",
          "--gin.spot_jax.model_config.vocab_size=1152", "--gin.spot_jax.model_config.d_model=32",
          "--gin.spot_jax.model_config.num_heads=2", "--gin.spot_jax.model_config.head_dim=16",
          "--gin.spot_jax.model_config.d_ff=64", "--gin.spot_jax.train.train.log_period=4",
          *extra]


def _env(devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = str(REPO)
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


def _train_cli(model_dir, log=None, **kw):
  """The training CLI as a child process; its output is piped, or written to the open file `log`
  (for a child nobody reads until it ends: a full pipe would stall it)."""
  return subprocess.Popen([sys.executable, "-m", "spot_jax.train", *_gin_args(model_dir, **kw)],
                          cwd=REPO, env=_env(), stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _final_prompt(model_dir, step=STEPS):
  return np.load(os.path.join(prompt_io.checkpoint_export_dir(str(model_dir), step), "prompt.npy"))


def test_trains_only_the_prompt_on_a_4x2_mesh_and_the_loss_falls(tmp_path):
  assert len(jax.devices()) == 8
  params = init_params(CFG, jax.random.PRNGKey(0))
  before = jax.tree.map(np.array, params)
  losses = []
  prompt = train_lib.train(
      model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, train_steps=60,
      batch_size=8, frozen=(CFG, params), prompt_length=PROMPT_LEN, num_partitions=2, save_period=60,
      log_period=10, enable_dropout=False,
      hooks=[lambda step, state: None])
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses
  initial = np.random.default_rng(0).uniform(-0.5, 0.5, (PROMPT_LEN, 32)).astype(np.float32)
  assert prompt.shape == (PROMPT_LEN, 32) and np.abs(prompt - initial).max() > 1e-2
  jax.tree.map(np.testing.assert_array_equal, params, before)  # frozen weights untouched
  np.testing.assert_array_equal(np.load(tmp_path / "numpy_checkpoints/checkpoint_60/prompt.npy"), prompt)
  with open(tmp_path / "numpy_checkpoints/checkpoint_60/encoder.prompt.prompt.prompt", "rb") as f:
    np.testing.assert_array_equal(np.load(f), prompt)


def test_kill_9_then_restart_ends_with_the_uninterrupted_prompt(tmp_path):
  # The uninterrupted run goes beside the killed one and its resumption: three process start-ups in
  # the time of two.
  straight_log = open(tmp_path / "straight.log", "w+")
  straight = _train_cli(tmp_path / "straight", log=straight_log)
  killed = _train_cli(tmp_path / "killed")
  committed_8 = tmp_path / "killed" / "checkpoints" / "8" / "commit_success.txt"
  deadline = time.time() + 300
  while not committed_8.exists() and killed.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert not (tmp_path / "killed/numpy_checkpoints/checkpoint_24").exists(), "killed too late"
  resumed = _train_cli(tmp_path / "killed")
  out = resumed.communicate(timeout=400)[0]
  assert resumed.returncode == 0, out[-3000:]
  assert "resuming from step 8" in out or "resuming from step 16" in out, out[-3000:]
  straight.wait(timeout=400)
  straight_log.seek(0)
  assert straight.returncode == 0, straight_log.read()[-3000:]
  straight_log.close()
  np.testing.assert_array_equal(_final_prompt(tmp_path / "killed"), _final_prompt(tmp_path / "straight"))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_one_prompt_together(tmp_path):
  port = _free_port()
  procs = []
  for pid in range(2):
    args = _gin_args(tmp_path / "shared", steps=8) + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
    procs.append(subprocess.Popen([sys.executable, "-m", "spot_jax.train", *args], cwd=REPO, env=_env(4),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  prompt = _final_prompt(tmp_path / "shared", 8)
  initial = np.random.default_rng(0).uniform(-0.5, 0.5, (PROMPT_LEN, 32)).astype(np.float32)
  assert np.isfinite(prompt).all() and np.abs(prompt - initial).max() > 1e-3
  # Both processes hold the same replicated prompt, equal to the exported one.
  digests = [re.search(r"process (\d): trained 8 steps .* final prompt sha256 (\w+)", out) for out in outs]
  assert all(digests), [out[-2000:] for out in outs]
  assert {d.group(1) for d in digests} == {"0", "1"}
  assert digests[0].group(2) == digests[1].group(2) == hashlib.sha256(prompt.tobytes()).hexdigest()[:16]


def test_a_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
  """A pod preemption may reach one worker first: both must stop at one step (the save is collective),
  not one saving while the other steps (both hung forever; found by a multi-process audit)."""
  port, procs = _free_port(), []
  for pid in range(2):
    args = _gin_args(tmp_path / "run", steps=100000) + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
    procs.append(subprocess.Popen([sys.executable, "-m", "spot_jax.train", *args], cwd=REPO, env=_env(4),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  jsonl, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 300
  while not (jsonl.exists() and jsonl.read_text().strip()) and procs[0].poll() is None and time.time() < deadline:
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=200)[0] for p in procs]
  stopped = [re.search(r"stopped by SIGTERM at step (\d+)", out) for out in outs]
  assert all(stopped) and [p.returncode for p in procs] == [143, 143], [out[-2000:] for out in outs]
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step
  assert (pathlib.Path(prompt_io.checkpoint_export_dir(str(tmp_path / "run"), step)) / "prompt.npy").exists()


def test_a_model_replica_across_two_processes_trains_on_the_whole_batch(tmp_path):
  """NUM_PARTITIONS=8 over 2 processes x 4 devices: one replica spans both, so both must feed the same
  rows (before, each fed half the batch to its half of the model). Same prompt as one process."""
  extra = ["--gin.NUM_PARTITIONS=8", "--gin.spot_jax.model_config.num_heads=8",
           "--gin.spot_jax.model_config.head_dim=4"]
  port, procs = _free_port(), []
  for pid in range(2):
    args = _gin_args(tmp_path / "two", steps=4, extra=extra) + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
    procs.append(subprocess.Popen([sys.executable, "-m", "spot_jax.train", *args], cwd=REPO, env=_env(4),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  procs.append(subprocess.Popen([sys.executable, "-m", "spot_jax.train",
                                 *_gin_args(tmp_path / "one", steps=4, extra=extra)], cwd=REPO, env=_env(8),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  tokens = [[r["train/target_tokens"] for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))]
            for d in ("two", "one")]
  assert tokens[0] == tokens[1]  # the whole batch's target tokens, not half of them
  np.testing.assert_allclose(_final_prompt(tmp_path / "two", 4), _final_prompt(tmp_path / "one", 4),
                             rtol=0, atol=1e-5)


def test_sigterm_writes_a_checkpoint_and_exits_143_and_the_model_dir_is_locked_meanwhile(tmp_path):
  proc = _train_cli(tmp_path, steps=100000)
  jsonl = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while not (jsonl.exists() and jsonl.read_text().strip()) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  # A second run on the running one's MODEL_DIR is refused before it writes anything there.
  params = init_params(CFG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is in use by another spot_jax.train run "
                                       rf"\(pid {proc.pid} on "):
    train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                    train_steps=2, batch_size=8, prompt_length=PROMPT_LEN, frozen=(CFG, params))
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  # Not a finished run: 128 + SIGTERM, so that a pipeline or a scheduler does not carry on.
  assert proc.returncode == 143, out[-3000:]
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] >= 4
  assert f"spot_jax.train: stopped by SIGTERM at step {steps[-1]}; the checkpoint is in " \
         f"{tmp_path / 'checkpoints'}: rerun the same command to resume" in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  assert (pathlib.Path(prompt_io.checkpoint_export_dir(str(tmp_path), steps[-1])) / "prompt.npy").exists()


def test_sigterm_in_a_spot_source_run_adds_nothing_to_the_library_and_a_rerun_resumes(tmp_path, monkeypatch,
                                                                                      capsys, caplog):
  import logging
  import gin
  from spot_jax.spot import pipeline_cli
  from spot_jax.spot.library import PromptLibrary
  argv = ["source", "--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/spot_source.gin",
          "--gin.spot_jax.model_config.vocab_size=1152", "--gin.spot_jax.model_config.d_model=32",
          "--gin.spot_jax.model_config.num_heads=2", "--gin.spot_jax.model_config.head_dim=16",
          "--gin.spot_jax.model_config.d_ff=64", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
          "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8", f"--gin.PROMPT_LENGTH={PROMPT_LEN}",
          "--gin.EVAL_NUM_EXAMPLES=8", f"--gin.LIBRARY_DIR='{tmp_path / 'lib'}'"]
  real_train = train_lib.train

  def preempted_at_step_2(**kwargs):  # a SIGTERM to this process while the source prompt trains
    hook = lambda step, state: step == 2 and signal.raise_signal(signal.SIGTERM)
    return real_train(hooks=[hook], **kwargs)
  monkeypatch.setattr(train_lib, "train", preempted_at_step_2)
  try:
    assert pipeline_cli.main(argv) == 143
    assert f"stopped by SIGTERM at step 2; the checkpoint is in {tmp_path / 'run' / 'checkpoints'}" in \
        capsys.readouterr().err
    assert TASK not in PromptLibrary(str(tmp_path / "lib"))  # the half-trained prompt is not a source
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # train() put the handler back
    monkeypatch.setattr(train_lib, "train", real_train)
    with caplog.at_level(logging.INFO, logger="spot_jax"):
      assert pipeline_cli.main(argv) == 0  # the same command resumes (the lock was released)
  finally:
    gin.clear_config()
  assert "resuming from step 2" in caplog.text
  assert PromptLibrary(str(tmp_path / "lib")).record(TASK)["steps"] == 4


def test_nan_loss_stops_naming_the_step(tmp_path):
  params = init_params(CFG, jax.random.PRNGKey(0))
  with pytest.raises(FloatingPointError, match=r"NaN or inf at step 1 .*no checkpoint was written yet"):
    train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                    train_steps=4, batch_size=8, frozen=(CFG, params), prompt_length=PROMPT_LEN,
                    optimizer=optim.adafactor(learning_rate=float("nan")), log_period=2)


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
  with pytest.raises(ValueError, match=r"BATCH_SIZE must be an integer, got 8.0"):
    train_lib.train(model_dir=str(tmp_path / "m"), **{**common, "batch_size": 8.0})


def test_an_error_while_a_save_is_in_flight_keeps_that_checkpoint(tmp_path):
  """The run's error propagates at once, after the asynchronous save of that step is complete: a rerun
  resumes from it (before, the save was left to orbax's threads, which held the exiting process for
  minutes and left a temporary directory)."""
  params = init_params(CFG, jax.random.PRNGKey(0))

  def fail_after_the_save(step, state):
    if step == 2:
      raise OSError("disk full (simulated)")
  with pytest.raises(OSError, match="simulated"):
    train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                    train_steps=6, batch_size=8, prompt_length=PROMPT_LEN, frozen=(CFG, params),
                    save_period=2, hooks=[fail_after_the_save])
  ckpt_dir = tmp_path / "checkpoints"
  assert sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")) == ["2"]
  from spot_jax import checkpointing
  assert checkpointing.PromptCheckpoints(str(tmp_path)).latest_step() == 2


def test_a_resume_warns_of_another_data_layout_and_each_run_drops_the_records_it_logs_again(tmp_path,
                                                                                              caplog):
  params = init_params(CFG, jax.random.PRNGKey(0))
  common = dict(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                batch_size=8, prompt_length=PROMPT_LEN, frozen=(CFG, params), save_period=2)
  # What a run killed before its first checkpoint left: its metrics are logged again by the fresh
  # start (before, the rerun's steps appeared twice in metrics.jsonl).
  eval_log = tmp_path / "inference_eval" / f"{TASK}-metrics.jsonl"
  eval_log.parent.mkdir(parents=True)
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "train/loss": 99.0}\n')
  eval_log.write_text('{"step": 2, "accuracy": 1.0}\n')
  train_lib.train(train_steps=2, **common)
  assert [r.get("train/loss") != 99.0 for r in map(json.loads, open(tmp_path / "metrics.jsonl"))] == [True]
  assert eval_log.read_text() == ""
  metas = [f for f in (tmp_path / "checkpoints" / "2").rglob("*")
           if f.is_file() and b'"data_shards": 1' in f.read_bytes()]
  assert len(metas) == 1  # the layout is recorded with the checkpoint
  assert json.loads(metas[0].read_bytes())["batch_size"] == 8
  metas[0].write_bytes(metas[0].read_bytes().replace(b'"data_shards": 1', b'"data_shards": 2')
                       .replace(b'"batch_size": 8', b'"batch_size": 16'))
  # The killed run's records past the checkpoint (step 2), here seqio's eval log's, are dropped.
  eval_log.write_text('{"step": 2, "accuracy": 1.0}\n{"step": 3, "accuracy": 2.0}\n')
  import logging
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    train_lib.train(train_steps=3, **common)
  assert "reading the data in 2 shard(s); this run reads 1" in caplog.text
  assert "was trained with BATCH_SIZE=16; this run uses 8: it resumes at step 2" in caplog.text
  assert [json.loads(l)["step"] for l in open(eval_log)] == [2]
  assert [r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))] == [2, 3]


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


def test_fresh_initialization_warning_names_the_callers_macro(caplog):
  import logging
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    config, _ = train_lib.load_frozen(None, CFG, 0, macro="CHECKPOINT_PATH")
  assert config == CFG
  assert "CHECKPOINT_PATH is unset" in caplog.text and "INITIAL_CHECKPOINT_PATH" not in caplog.text
  with pytest.raises(ValueError, match="set CHECKPOINT_PATH to a T5X"):
    train_lib.load_frozen(None, None, 0, macro="CHECKPOINT_PATH")


def test_sizes_from_checkpoint_takes_the_models_dimensions_from_it(tmp_path):
  """A checkpoint whose size has no gin file: models/sizes/from_checkpoint.gin infers them all."""
  import gin
  from spot_jax.config import model_config
  from spot_jax import checkpoints
  odd = CFG.replace(num_encoder_layers=3, d_ff=48)  # a size no gin file describes
  ckpt = checkpoints.write_t5x(init_params(odd, jax.random.PRNGKey(0)), str(tmp_path / "ckpt"), step=1)
  args = ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/from_checkpoint.gin", "--gin_file=runs/prompt_train.gin",
          f"--gin.MODEL_DIR='{tmp_path / 'run'}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
          f"--gin.PROMPT_LENGTH={PROMPT_LEN}", "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=None",
          f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'"]
  prompt = gin_utils.run(gin.get_configurable(train_lib.train), args)
  assert prompt.shape == (PROMPT_LEN, odd.d_model)
  # The exports name the frozen checkpoint (a PEFT export's base model when it is a HF folder).
  assert prompt_io.read_export_info(prompt_io.checkpoint_export_dir(str(tmp_path / "run"), 2))[
      "frozen_model"] == ckpt
  # The other model_config bindings still apply (here models/gpu_bf16.gin's), shape ones are checked.
  gpu = [a for a in args if "runs/" not in a] + ["--gin_file=models/gpu_bf16.gin", "--gin_file=runs/prompt_train.gin"]
  gin_utils.configure(gpu)
  config, _ = train_lib.load_frozen(ckpt, gin.get_configurable(model_config)(), 0)
  assert (config.d_ff, config.num_encoder_layers) == (48, 3)
  assert (config.dtype, config.attention_impl, config.dropout_rate) == ("bfloat16", "fused", 0.1)
  gin_utils.configure([a.replace("t5_1_1.gin", "t5_1_0.gin") for a in args])  # a ReLU variant file
  with pytest.raises(ValueError, match=r"(?s)feed_forward: config says 'relu', checkpoint has 'gated-gelu'"
                                       r".*from_checkpoint.gin"):
    train_lib.load_frozen(ckpt, gin.get_configurable(model_config)(), 0)
  with pytest.raises(ValueError, match="from_checkpoint.gin takes the model's dimensions from the checkpoint"):
    train_lib.load_frozen(None, gin.get_configurable(model_config)(), 0)


def test_the_best_export_survives_a_resume(tmp_path, caplog):
  """A resumed run compares its evaluations with the best export on disk, not with nothing."""
  params = init_params(CFG, jax.random.PRNGKey(0))
  common = dict(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                batch_size=8, prompt_length=PROMPT_LEN, frozen=(CFG, params), eval_period=2,
                eval_num_examples=8, save_period=2, enable_dropout=False)
  train_lib.train(train_steps=2, **common)
  best = pathlib.Path(prompt_io.best_export_dir(str(tmp_path)))
  info = json.loads((best / "export.json").read_text())
  assert info["step"] == 2
  # Plant a best no later evaluation can reach (accuracies are at most 100).
  info["metrics"] = {k: 1000.0 for k in info["metrics"]}
  (best / "export.json").write_text(json.dumps(info))
  train_lib.train(train_steps=4, **common)
  assert json.loads((best / "export.json").read_text())["step"] == 2
  import logging
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    final = train_lib.train(train_steps=3, **common)  # fewer steps than the run already has
  assert "latest checkpoint is step 4, past TRAIN_STEPS=3" in caplog.text
  np.testing.assert_array_equal(final, prompt_io.load_prompt(prompt_io.checkpoint_export_dir(str(tmp_path), 4)))
  # The MODEL_DIR belongs to its run: another task or another frozen model is refused before a step.
  with pytest.raises(ValueError, match=r"holds a prompt trained on 'spot_bundled_movie' \(step 4\), but this run "
                                       r"trains 'spot_bundled_topic': use a new MODEL_DIR.*prompts/from_file.gin"):
    train_lib.train(train_steps=6, **{**common, "mixture_or_task_name": "spot_bundled_topic"})
  other = init_params(CFG, jax.random.PRNGKey(1))
  with pytest.raises(ValueError, match=r"whose weights differ.*set INITIAL_CHECKPOINT_PATH back"):
    train_lib.train(train_steps=6, **{**common, "frozen": (CFG, other)})
  # Another model config (--gin.spot_jax.model_config.num_heads=4) is named as such, not as other weights.
  heads = CFG.replace(num_heads=4, head_dim=8)
  with pytest.raises(ValueError, match=r"parameter shapes differ from this run's: head_dim=8 \(the run was "
                                       r"trained with 16\), num_heads=4 \(the run was trained with 2\)\. A "
                                       r"model_config binding .* changed: set it back to resume"):
    train_lib.train(train_steps=6, **{**common, "frozen": (heads, init_params(heads, jax.random.PRNGKey(0)))})
  # A checkpoint written before the architecture was recorded: two fresh initializations of one seed
  # whose fingerprints differ can only be two configs.
  was = {"path": None, "seed": 0, "fingerprint": "a" * 16}
  with pytest.raises(ValueError, match=r"whose weights differ .*with the same seed, the model config must "
                                       r"have changed \(a model_config binding"):
    train_lib.check_same_run(str(tmp_path), {"task": TASK, "frozen_model": was}, TASK,
                             {**was, "fingerprint": "b" * 16, "architecture": {"num_heads": 2}}, 4)
  train_lib.check_same_run(str(tmp_path), {"task": TASK, "frozen_model": was}, TASK,
                           {**was, "architecture": {"num_heads": 2}}, 4)  # the same model: accepted
  # Host or device copies of one model agree (the same run resumed above, with device arrays).
  assert train_lib.frozen_fingerprint(params) == train_lib.frozen_fingerprint(jax.device_get(params))


def test_logs_the_learning_rate_of_each_step_and_t5x_inference_eval_files(tmp_path):
  """`train/learning_rate` (metrics.jsonl and TensorBoard) is the optimizer's own schedule at each
  logged step; periodic evaluation writes seqio's JSON logs into MODEL_DIR/inference_eval (T5X's
  layout) with the metrics that metrics.jsonl has."""
  params = init_params(CFG, jax.random.PRNGKey(0))
  schedule = optim.linear_warmup_rsqrt_decay(learning_rate=0.3, warmup_steps=8)
  tx = optim.adafactor(learning_rate=schedule)
  assert optim.learning_rate_schedule(tx) is schedule
  train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                  train_steps=12, batch_size=8, frozen=(CFG, params), prompt_length=PROMPT_LEN,
                  optimizer=tx, log_period=4, eval_period=6, eval_num_examples=4, save_period=12,
                  enable_dropout=False)
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  logged = {r["step"]: r["train/learning_rate"] for r in records if "train/loss" in r}
  # The update that makes step s is optax's update number s - 1: rsqrt warm-up to 0.3 at step 8.
  want = {4: 0.3 * 4 / 8, 8: 0.3, 12: 0.3 * np.sqrt(8 / 12)}
  assert sorted(logged) == [4, 8, 12]
  np.testing.assert_allclose([logged[s] for s in want], list(want.values()), rtol=1e-6)
  np.testing.assert_allclose([logged[s] for s in want], [float(schedule(s - 1)) for s in want], rtol=1e-7)
  from spot_jax import metrics_log
  tb = metrics_log.read_tensorboard_scalars(str(tmp_path))
  assert [s for s, _ in tb["train/learning_rate"]] == [4, 8, 12]
  np.testing.assert_allclose([v for _, v in tb["train/learning_rate"]], list(want.values()), rtol=1e-6)
  # seqio's JSONLogger in MODEL_DIR/inference_eval, at the evaluated steps.
  inference_eval = tmp_path / "inference_eval"
  eval_acc = {r["step"]: r[f"eval/{TASK}/accuracy"] for r in records if f"eval/{TASK}/accuracy" in r}
  assert sorted(eval_acc) == [6, 12]
  seqio_metrics = [json.loads(l) for l in open(inference_eval / f"{TASK}-metrics.jsonl")]
  assert [(m["step"], m["accuracy"]) for m in seqio_metrics] == [(6, eval_acc[6]), (12, eval_acc[12])]
  for step in (6, 12):
    rows = [json.loads(l) for l in open(inference_eval / f"{TASK}-{step:06d}.jsonl")]
    assert len(rows) == 4 and all("prediction" in r and "target" in r for r in rows)


def test_a_nan_evaluation_is_never_the_best_export(tmp_path, monkeypatch):
  # STS-B's correlations are NaN for a prompt that writes one number (as T5's); placed first, a NaN
  # best would block every later evaluation (nothing compares above it).
  values = iter([float("nan"), 50.0])
  monkeypatch.setattr(train_lib, "_evaluate", lambda *a, **k: {f"{TASK}/pearson_corrcoef": next(values)})
  params = init_params(CFG, jax.random.PRNGKey(0))
  train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                  train_steps=4, batch_size=8, prompt_length=PROMPT_LEN, frozen=(CFG, params), eval_period=2,
                  save_period=4, enable_dropout=False)
  info = prompt_io.read_export_info(prompt_io.best_export_dir(str(tmp_path)))
  assert info["step"] == 4 and info["metrics"] == {f"{TASK}/pearson_corrcoef": 50.0}

"""The trainer as processes: killed (kill -9) and resumed, stopped by SIGTERM (one process or one
of two), and two processes training one prompt together."""
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

from spot_jax import prompt_io
from spot_jax import train as train_lib
from spot_jax.model import init_params

from train_setup import CFG, LENGTHS, PROMPT_LEN, STEPS, TASK, _gin_args

REPO = pathlib.Path(__file__).resolve().parents[1]


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
  """With evaluation during training (EVAL_PERIOD): both processes decode their rows of each eval batch
  and process 0 writes the whole validation split's predictions, once."""
  port = _free_port()
  procs = []
  for pid in range(2):
    args = _gin_args(tmp_path / "shared", steps=8, extra=["--gin.EVAL_PERIOD=8"]) + [
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
  import seqio
  import tasks  # noqa: F401  (registers TASK)
  validation = [ex["inputs_pretokenized"].decode() for ex in
                seqio.get_mixture_or_task(TASK).get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()]
  with open(tmp_path / "shared" / "inference_eval" / f"{TASK}-000008.jsonl") as f:
    predicted = [json.loads(line)["input"]["inputs_pretokenized"] for line in f]
  assert sorted(predicted) == sorted(validation) and len(validation) > 8  # every example, once
  evals = [r for r in map(json.loads, open(tmp_path / "shared" / "metrics.jsonl")) if any("eval/" in k for k in r)]
  assert [r["step"] for r in evals] == [8]
  # The run's gin configuration, as T5X writes it (process 0), once.
  assert "TRAIN_STEPS = 8\n" in (tmp_path / "shared" / "config.gin").read_text()
  assert not list((tmp_path / "shared").glob("config.gin.*"))


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

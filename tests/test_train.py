"""The trainer: prompt-only updates on a (4, 2) mesh, in-process resumes, evaluation and its exports,
NaNs. Runs as child processes (kill -9, SIGTERM, two processes) are test_train_processes.py; settings
refused before compute, test_train_config.py."""
import json
import pathlib

import jax
import numpy as np
import pytest

from spot_jax import gin_utils, optim, prompt_io
from spot_jax import frozen_model as frozen_lib
from spot_jax import train as train_lib
from spot_jax.model import init_params

from train_setup import CFG, LENGTHS, PROMPT_LEN, TASK


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


def test_nan_loss_stops_naming_the_step(tmp_path):
  params = init_params(CFG, jax.random.PRNGKey(0))
  with pytest.raises(FloatingPointError, match=r"NaN or inf at step 1 .*no checkpoint was written yet"):
    train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                    train_steps=4, batch_size=8, frozen=(CFG, params), prompt_length=PROMPT_LEN,
                    optimizer=optim.adafactor(learning_rate=float("nan")), log_period=2)


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

  def killed(step, state):
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(train_steps=2, hooks=[killed], log_period=1, **common)
  assert not (tmp_path / "checkpoints").exists() and (tmp_path / ".fresh_start.json").exists()
  eval_log = tmp_path / "inference_eval" / f"{TASK}-metrics.jsonl"
  eval_log.parent.mkdir(parents=True)
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "train/loss": 99.0}\n')
  eval_log.write_text('{"step": 2, "accuracy": 1.0}\n')
  train_lib.train(train_steps=2, **common)
  assert [r.get("train/loss") != 99.0 for r in map(json.loads, open(tmp_path / "metrics.jsonl"))] == [True]
  assert eval_log.read_text() == ""
  assert not (tmp_path / ".fresh_start.json").exists()  # the first checkpoint ends the fresh start
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


def _tree(path):
  return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def test_a_fresh_start_over_another_runs_results_is_refused_before_compute(tmp_path, monkeypatch):
  """A finished run whose checkpoints/ were deleted (to save space), or an EVAL_OUTPUT_DIR: a fresh
  start overwrote the exports and dropped metrics.jsonl, even for another task."""
  import shutil
  _small_run(tmp_path, "done", task_embedding_step=2)
  shutil.rmtree(tmp_path / "done" / "checkpoints")
  before = _tree(tmp_path / "done")

  def no_compute(*a, **k):
    raise AssertionError("computed before the refusal")
  monkeypatch.setattr(train_lib.partitioning, "make_mesh", no_compute)
  for task in ("spot_bundled_topic", TASK):
    with pytest.raises(ValueError, match=
                       r"done holds numpy exports \(numpy_checkpoints/: checkpoint_4, checkpoint_8, task_embedding\), "
                       r"metrics.jsonl \(records of steps 4-8\) but no training checkpoint to resume \(checkpoints/ is "
                       r"missing or empty\): a fresh start would overwrite them( \(they are of 'spot_bundled_movie'; "
                       r"this run trains 'spot_bundled_topic'\))?. Use a new MODEL_DIR, or delete numpy_checkpoints/ "
                       r"and metrics.jsonl in it to start over there\n") as e:
      _small_run(tmp_path, "done", mixture_or_task_name=task)
    assert ("spot_bundled_topic" in str(e.value)) == (task != TASK)
    assert _tree(tmp_path / "done") == before  # nothing written, not even the lock file
  # An evaluation's output directory.
  (tmp_path / "ev").mkdir()
  (tmp_path / "ev" / "metrics.jsonl").write_text('{"step": 2, "eval/x/accuracy": 50.0}\n')
  with pytest.raises(ValueError, match=r"ev holds metrics.jsonl \(records of step 2\) but no training checkpoint"):
    _small_run(tmp_path, "ev")
  assert (tmp_path / "ev" / "metrics.jsonl").read_text() == '{"step": 2, "eval/x/accuracy": 50.0}\n'
  # An empty MODEL_DIR and an empty metrics.jsonl hold nothing: the run starts.
  monkeypatch.undo()
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "metrics.jsonl").write_text("")
  _small_run(tmp_path, "empty", train_steps=4)
  assert prompt_io.read_export_info(prompt_io.checkpoint_export_dir(str(tmp_path / "empty"), 4))["task"] == TASK


def test_fresh_initialization_warning_names_the_callers_macro(caplog):
  import logging
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    config, _ = frozen_lib.load_frozen(None, CFG, 0, macro="CHECKPOINT_PATH")
  assert config == CFG
  assert "CHECKPOINT_PATH is unset" in caplog.text and "INITIAL_CHECKPOINT_PATH" not in caplog.text
  with pytest.raises(ValueError, match="set CHECKPOINT_PATH to a T5X"):
    frozen_lib.load_frozen(None, None, 0, macro="CHECKPOINT_PATH")


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
  config, _ = frozen_lib.load_frozen(ckpt, gin.get_configurable(model_config)(), 0)
  assert (config.d_ff, config.num_encoder_layers) == (48, 3)
  assert (config.dtype, config.attention_impl, config.dropout_rate) == ("bfloat16", "fused", 0.1)
  gin_utils.configure([a.replace("t5_1_1.gin", "t5_1_0.gin") for a in args])  # a ReLU variant file
  with pytest.raises(ValueError, match=r"(?s)feed_forward: config says 'relu', checkpoint has 'gated-gelu'"
                                       r".*those of --gin_file=models/t5_1_1.gin: give it in place of the "
                                       r"variant file") as e:
    frozen_lib.load_frozen(ckpt, gin.get_configurable(model_config)(), 0)
  assert "from_checkpoint" not in str(e.value).split("\n", 1)[1]  # the file in use is not the fix
  with pytest.raises(ValueError, match="from_checkpoint.gin takes the model's dimensions from the checkpoint"):
    frozen_lib.load_frozen(None, gin.get_configurable(model_config)(), 0)


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
  with pytest.raises(ValueError, match=r"step 4, past this run's 3 steps.*a new MODEL_DIR for fewer steps"):
    train_lib.train(train_steps=3, refuse_past_steps=True, **common)  # the SPoT pipeline's runs
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
    frozen_lib.check_same_run(str(tmp_path), {"task": TASK, "frozen_model": was}, TASK,
                             {**was, "fingerprint": "b" * 16, "architecture": {"num_heads": 2}}, 4)
  frozen_lib.check_same_run(str(tmp_path), {"task": TASK, "frozen_model": was}, TASK,
                           {**was, "architecture": {"num_heads": 2}}, 4)  # the same model: accepted
  # Host or device copies of one model agree (the same run resumed above, with device arrays).
  assert frozen_lib.frozen_fingerprint(params) == frozen_lib.frozen_fingerprint(jax.device_get(params))


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


def test_adafactor_decay_counts_from_the_initial_checkpoints_step_and_a_resume_keeps_it(tmp_path):
  """Training from a T5X checkpoint_N counts Adafactor's decay from step N (T5X restores it), as an
  explicit INITIAL_CHECKPOINT_STEP=N does; the value is recorded, and a resume that sets another is refused."""
  from spot_jax import checkpoints, checkpointing
  params = init_params(CFG, jax.random.PRNGKey(0))
  ckpt = checkpoints.write_t5x(params, str(tmp_path / "t5x"), step=1_100_000)
  assert ckpt.rstrip("/").endswith("checkpoint_1100000")
  assert frozen_lib.checkpoint_step(ckpt) == 1_100_000
  assert frozen_lib.checkpoint_step(str(tmp_path / "t5x")) == 1_100_000  # a model directory: its newest
  assert frozen_lib.checkpoint_step(None) == 0
  common = dict(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, train_steps=3, batch_size=8,
                prompt_length=PROMPT_LEN, save_period=3, log_period=3, enable_dropout=False,
                async_checkpoints=False)
  from_path = train_lib.train(model_dir=str(tmp_path / "a"), initial_checkpoint_path=ckpt, model_config=CFG,
                              **common)
  explicit = train_lib.train(model_dir=str(tmp_path / "b"), frozen=(CFG, params),
                             initial_checkpoint_step=1_100_000, **common)
  from_zero = train_lib.train(model_dir=str(tmp_path / "c"), frozen=(CFG, params), **common)
  np.testing.assert_allclose(from_path, explicit, rtol=1e-6, atol=1e-7)
  # β2 = 0 at a run's first update (the old count) gives another prompt from the second update on.
  assert np.abs(from_path - from_zero).max() > 1e-3
  ckpts = checkpointing.PromptCheckpoints(str(tmp_path / "a"), 3, False)
  assert ckpts.saved_meta(3)["initial_checkpoint_step"] == 1_100_000
  ckpts.close()
  with pytest.raises(ValueError, match=r"trained with Adafactor's second-moment decay counting from global "
                                       r"step 1100000 .* sets INITIAL_CHECKPOINT_STEP=0: set "
                                       r"--gin.INITIAL_CHECKPOINT_STEP=1100000 \(or None\) to resume"):
    train_lib.train(model_dir=str(tmp_path / "a"), initial_checkpoint_path=ckpt, model_config=CFG,
                    initial_checkpoint_step=0, **{**common, "train_steps": 4})


def test_evaluation_during_training_reads_whole_inputs_as_t5x_infer_eval(tmp_path, monkeypatch, caplog):
  """T5X's infer_eval evaluates with task_feature_lengths=None (the split's longest example): validation
  inputs longer than TASK_FEATURE_LENGTHS' training length are not cut, nor is the best export picked on
  cut inputs. eval_task_feature_lengths caps them on request."""
  from spot_jax import evaluation
  seen, real = [], evaluation.evaluate

  def recording(name, config, params, prompt, feature_lengths=None, **kwargs):
    seen.append(feature_lengths)
    return real(name, config, params, prompt, feature_lengths, **kwargs)
  monkeypatch.setattr(evaluation, "evaluate", recording)
  params = init_params(CFG, jax.random.PRNGKey(0))
  short = {"inputs": 8, "targets": 4}  # the bundled inputs run to 27 tokens
  common = dict(mixture_or_task_name=TASK, task_feature_lengths=short, train_steps=2, batch_size=8,
                prompt_length=PROMPT_LEN, frozen=(CFG, params), eval_period=2, eval_num_examples=8,
                save_period=2, enable_dropout=False)
  train_lib.train(model_dir=str(tmp_path / "a"), **common)
  assert seen == [None]
  train_lib.train(model_dir=str(tmp_path / "b"), eval_task_feature_lengths=short, **common)
  assert seen[-1] == short
  with pytest.raises(ValueError, match=r"eval_task_feature_lengths lacks \['targets'\]"):
    train_lib.train(model_dir=str(tmp_path / "c"), eval_task_feature_lengths={"inputs": 8}, **common)
  # The cut it warns of names the setting that cuts: it named TASK_FEATURE_LENGTHS, already longer.
  import logging
  caplog.clear()  # run "b" warned of its own cut (inputs 8)
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    train_lib.train(model_dir=str(tmp_path / "d"), eval_task_feature_lengths={"inputs": 9, "targets": 4},
                    **{**common, "task_feature_lengths": {"inputs": 32, "targets": 4}})
  cuts = [r.getMessage() for r in caplog.records if "'validation' examples have inputs longer" in r.getMessage()]
  assert len(cuts) == 1, cuts
  assert "than spot_jax.train.train.eval_task_feature_lengths['inputs']=9 tokens" in cuts[0]
  assert "--gin.spot_jax.train.train.eval_task_feature_lengths=\"{'inputs': " in cuts[0]


def test_preemption_sync_ids_rise_across_the_runs_of_a_process(monkeypatch):
  """In a multi-process run JAX's preemption service stops every process at the sync point, the
  highest step id reported + 1. The ids were each run's own steps: after a 40-step run, a notice
  between runs set the point at 41, which the SPoT pipeline's next 40-step run never reached (it and
  the pipeline finished, exit 0). The ids now count every step of the process."""
  from jax.experimental import multihost_utils
  reported, notice = [], []

  def sync_point(step_id):
    reported.append(step_id)
    return bool(notice) and step_id == notice[0]
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", sync_point)

  def run(steps):  # one training run's loop: check after every step
    stop = train_lib._Stop()
    stop._sync = True  # as under jax.distributed
    with stop:
      for step in range(1, steps + 1):
        if stop.check():
          return step
    return None
  assert run(40) is None
  notice.append(max(reported) + 1)  # SIGTERM between runs: JAX's sync point
  assert run(40) == 1  # the next run stops (and saves) at its first step
  assert reported == sorted(set(reported))  # rising over the process


def _small_run(tmp_path, name, **kw):
  args = dict(model_dir=str(tmp_path / name), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
              train_steps=8, batch_size=8, prompt_length=PROMPT_LEN, save_period=4, log_period=4,
              enable_dropout=False, async_checkpoints=False,
              frozen=(CFG, init_params(CFG, jax.random.PRNGKey(0))))
  args.update(kw)
  return train_lib.train(**args)


def test_a_failed_or_missing_numpy_export_is_written_by_the_rerun(tmp_path, monkeypatch):
  """The numpy export came after the orbax save: when it failed, the rerun resumed from the saved step
  and never wrote it, and load_prompt(MODEL_DIR) served the previous step's prompt."""
  from spot_jax import prompt_export
  real = prompt_export.export_numpy_checkpoint

  def fails_at_8(prompt, model_dir, step, **kw):
    if step == 8 and kw.get("name") is None:
      raise OSError("disk full (simulated)")
    return real(prompt, model_dir, step, **kw)
  monkeypatch.setattr(prompt_export, "export_numpy_checkpoint", fails_at_8)
  with pytest.raises(OSError, match="simulated"):
    _small_run(tmp_path, "a")
  assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
  monkeypatch.setattr(prompt_export, "export_numpy_checkpoint", real)
  final = _small_run(tmp_path, "a")
  source = prompt_io.resolve_prompt(str(tmp_path / "a"))
  assert source.step == 8
  np.testing.assert_array_equal(prompt_io.load_prompt(str(tmp_path / "a")), final)
  # A checkpoint whose export is gone (a run stopped between the two before this order): the rerun,
  # which trains nothing, writes it from the restored prompt.
  import shutil
  shutil.rmtree(tmp_path / "a" / "numpy_checkpoints" / "checkpoint_8")
  np.testing.assert_array_equal(_small_run(tmp_path, "a"), final)
  np.testing.assert_array_equal(np.load(tmp_path / "a" / "numpy_checkpoints/checkpoint_8/prompt.npy"), final)


def test_a_step_is_saved_before_it_is_evaluated_and_a_missed_evaluation_runs_on_resume(tmp_path, monkeypatch,
                                                                                      caplog):
  """An evaluation that failed (here a mistyped best_metric) lost the step's checkpoint: the rerun
  trained the whole SAVE_PERIOD again and failed the same way."""
  with pytest.raises(ValueError, match="best_metric 'acuracy' is not among"):
    _small_run(tmp_path, "b", eval_period=4, eval_num_examples=8, best_metric="acuracy")
  assert (tmp_path / "b" / "checkpoints" / "4").is_dir()
  assert (tmp_path / "b" / "numpy_checkpoints" / "checkpoint_4").is_dir()
  # The rerun (metric corrected) evaluates step 4, which was saved but not evaluated, then goes on.
  import logging
  with caplog.at_level(logging.INFO, logger="spot_jax"):
    _small_run(tmp_path, "b", eval_period=4, eval_num_examples=8, best_metric="accuracy")
  assert "evaluating step 4, which the stopped run saved but did not evaluate" in caplog.text
  evals = [r["step"] for r in map(json.loads, open(tmp_path / "b" / "metrics.jsonl"))
           if any(k.startswith("eval/") for k in r)]
  assert evals == [4, 8]
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="spot_jax"):
    _small_run(tmp_path, "b", eval_period=4, eval_num_examples=8)  # finished: nothing evaluated again
  assert "did not evaluate" not in caplog.text


def test_a_task_embedding_step_the_resumed_run_is_past_is_taken_from_its_export_or_refused(tmp_path):
  """TASK_EMBEDDING_STEP=4 on a run resumed at 8 was never exported, without a word."""
  _small_run(tmp_path, "c")
  _small_run(tmp_path, "c", train_steps=12, task_embedding_step=4)
  np.testing.assert_array_equal(prompt_io.load_prompt(str(tmp_path / "c"), which="task_embedding"),
                                np.load(tmp_path / "c" / "numpy_checkpoints/checkpoint_4/prompt.npy"))
  _small_run(tmp_path, "d")
  with pytest.raises(ValueError, match=r"TASK_EMBEDDING_STEP=2, but .*d resumes at step 8, past it, and holds no "
                                       r"task-embedding export nor a numpy export of step 2.*Use a new MODEL_DIR, "
                                       r"or set TASK_EMBEDDING_STEP to a step after 8 \(or to a saved step: \[4, 8\]\)"):
    _small_run(tmp_path, "d", train_steps=12, task_embedding_step=2)
  with pytest.raises(FileNotFoundError, match=r"Training writes task_embedding/ at TASK_EMBEDDING_STEP: set it"):
    prompt_io.load_prompt(str(tmp_path / "d"), which="task_embedding")


def test_a_rank_task_at_rate_0_in_the_mixture_is_evaluated_not_refused(tmp_path):
  """tasks/mixtures.py: rate 0 means evaluated, not trained; training refused such a mixture."""
  import seqio
  import tasks.bundled  # noqa: F401  (registers TASK and its _rank twin)
  name = "test_train_movie_with_rank_eval"
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(TASK, 1.0), (TASK + "_rank", 0.0)])
  _small_run(tmp_path, "e", mixture_or_task_name=name, train_steps=4, eval_period=4, eval_num_examples=8)
  last = [json.loads(l) for l in open(tmp_path / "e" / "metrics.jsonl")][-1]
  assert f"eval/{TASK}_rank/accuracy" in last and f"eval/{TASK}/accuracy" in last
  seqio.MixtureRegistry.remove(name + "_trained")
  seqio.MixtureRegistry.add(name + "_trained", [(TASK, 1.0), (TASK + "_rank", 0.5)])
  with pytest.raises(ValueError, match=rf"{TASK}_rank \(in mixture {name}_trained\) is a rank-classification"):
    _small_run(tmp_path, "f", mixture_or_task_name=name + "_trained", train_steps=4)


def test_ctrl_c_is_one_line_saying_how_to_resume(monkeypatch, capsys):
  """Before: a traceback through the step loop and orbax's thread errors, and no word of resuming."""
  from spot_jax import gin_utils
  from spot_jax import train as train_module

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(gin_utils, "run", interrupted)
  with pytest.raises(SystemExit) as e:
    train_module.main(["--gin_file=runs/prompt_train.gin"])
  assert e.value.code == 130
  assert capsys.readouterr().err.strip() == (
      "spot_jax.train: interrupted (Ctrl-C): the steps since the last saved checkpoint are lost; rerun the same "
      "command to resume from it (SIGTERM, `kill PID`, saves the current step first)")


def test_a_run_reports_the_examples_cut_among_all_it_trained_on(tmp_path, caplog):
  """The truncation check read only the first 64 examples of the task, so a task whose long examples
  came later trained on them cut without a word. The run now counts the cut examples in the batches
  its steps take (exactly TRAIN_STEPS of them: the loop no longer reads one past the last step) and
  reports the total when it ends."""
  import dataclasses
  import seqio
  import tensorflow as tf
  name = "spot_test_train_cut_late"
  rows = [{"inputs": "x" * (40 if i >= 64 and i % 2 else 4), "targets": "no"} for i in range(200)]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {k: [r[k] for r in rows] for k in ("inputs", "targets")}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True) for k in ("inputs", "targets")},
      metric_fns=[])
  config = dataclasses.replace(CFG, vocab_size=384)  # the byte vocabulary's 259 ids, padded
  with caplog.at_level("WARNING", logger="spot_jax"):
    train_lib.train(model_dir=str(tmp_path), mixture_or_task_name=name, task_feature_lengths={"inputs": 16,
                    "targets": 4}, train_steps=15, batch_size=8, frozen=(config, init_params(config, jax.random.PRNGKey(0))),
                    prompt_length=PROMPT_LEN, save_period=15, log_period=5, enable_dropout=False)
  ours = [r.getMessage() for r in caplog.records if r.name == "spot_jax" and name in r.getMessage()]
  assert not any("of the first 64" in m for m in ours), ours  # the first 64 are short
  (total,) = [m for m in ours if "examples this run read (" in m]
  assert " of the 120 'train' examples this run read (batches 1-15) had inputs longer than " \
         "TASK_FEATURE_LENGTHS['inputs']=16 tokens (up to 41 with EOS)" in total, total


def test_a_run_writes_its_gin_config_to_model_dir_as_t5x_does(tmp_path):
  """T5X's train writes MODEL_DIR/config.gin (gin.config_str(), at the start of each run); spot_jax's
  wrote none, so a finished MODEL_DIR held no record of its settings. A resume with other settings
  keeps the earlier file beside the new one; a config.gin alone is no result a fresh start must keep."""
  import gin
  from spot_jax import prompt_tuning_compat, resume
  from train_setup import _gin_args
  run = tmp_path / "run"
  train_lib.main(_gin_args(run, steps=2))
  text = (run / "config.gin").read_text()
  assert "TRAIN_STEPS = 2\n" in text and f"MIXTURE_OR_TASK_NAME = '{TASK}'\n" in text, text
  gin.clear_config()
  gin.parse_config(text)  # gin reads it back
  assert gin.query_parameter("%TRAIN_STEPS") == 2 and gin.query_parameter("%MIXTURE_OR_TASK_NAME") == TASK
  assert gin.query_parameter("%NUM_PARTITIONS") == 2
  gin.clear_config()
  # library add reads a config.gin only beside a prompt-tuning run's exports: spot_jax's are unaffected.
  _, source = prompt_io.load_prompt_with_source(str(run))
  assert source.step == 2 and prompt_tuning_compat.t5x_run_steps(source) is None
  # Resumed with more steps: the new settings, and the earlier file kept; the same again: no new file.
  for _ in range(2):
    train_lib.main(_gin_args(run, steps=4))
    assert "TRAIN_STEPS = 4\n" in (run / "config.gin").read_text()
    (kept,) = run.glob("config.gin.old-*")
    assert kept.read_text() == text
  # A rerun with nothing left to train (TRAIN_STEPS below the latest checkpoint) leaves the record alone.
  train_lib.main(_gin_args(run, steps=3))
  assert "TRAIN_STEPS = 4\n" in (run / "config.gin").read_text() and len(list(run.glob("config.gin.old-*"))) == 1
  # A MODEL_DIR holding only another run's config.gin: a fresh start goes on (and keeps it aside).
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.gin").write_text("TRAIN_STEPS = 7\n")
  resume.check_fresh_start(str(other), "spot_bundled_topic")
  train_lib.write_config_gin(str(other), text)
  assert (other / "config.gin").read_text() == text
  assert [p.read_text() for p in other.glob("config.gin.old-*")] == ["TRAIN_STEPS = 7\n"]

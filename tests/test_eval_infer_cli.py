"""`python -m spot_jax.eval|infer` through gin on the tiny model and a bundled task (in process)."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import os

import gin
import numpy as np
import pytest

from spot_jax import eval as eval_cli
from spot_jax import infer as infer_cli
from spot_jax import metrics_log

TASK = "spot_bundled_movie"
LENGTHS = {"inputs": 32, "targets": 4}


def _args(run_gin, out_macro, out_dir, prompt_file, extra=()):
  return ["--gin_file=models/t5_1_1.gin", "--gin_file=models/sizes/tiny.gin", f"--gin_file=runs/{run_gin}",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.CHECKPOINT_PATH=None",
          f"--gin.PROMPT_FILE={prompt_file!r}" if prompt_file else "--gin.PROMPT_FILE=None",
          f"--gin.{out_macro}='{out_dir}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=4",
          "--gin.spot_jax.model_config.vocab_size=1152", *extra]


@pytest.fixture
def prompt_file(tmp_path):
  path = str(tmp_path / "prompt.npy")
  np.save(path, np.random.RandomState(0).uniform(-0.5, 0.5, (4, 64)).astype(np.float32))
  yield path
  gin.clear_config()


def test_eval_cli_writes_metrics(tmp_path, prompt_file):
  out = tmp_path / "eval"
  results = eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", out, prompt_file,
                                ["--gin.spot_jax.eval.evaluate_prompt.num_examples=6"]))
  acc = results[TASK]["accuracy"]
  assert 0.0 <= acc <= 100.0
  records = metrics_log.read_jsonl(str(out / "metrics.jsonl"))
  assert records[-1][f"eval/{TASK}/accuracy"] == acc and records[-1]["step"] == 0
  assert metrics_log.read_tensorboard_scalars(str(out))[f"eval/{TASK}/accuracy"] == [(0, acc)]
  with open(out / f"{TASK}-000000.jsonl") as f:
    assert len(f.readlines()) == 6  # seqio's per-example inference log


def test_infer_cli_writes_jsonl(tmp_path, prompt_file):
  out = tmp_path / "infer"
  written = infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", out, prompt_file,
                                 ["--gin.spot_jax.infer.infer_prompt.num_examples=5"]))
  path = out / f"{TASK}-validation.jsonl"
  assert written == {TASK: str(path)}
  rows = [json.loads(line) for line in open(path)]
  assert len(rows) == 5 and all(set(r) == {"inputs", "prediction", "targets"} for r in rows)
  assert all(r["inputs"] and r["targets"] in ("positive", "negative") for r in rows)
  assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_wrong_prompt_width_fails_before_compute(tmp_path, prompt_file):
  bad = str(tmp_path / "bad.npy")
  np.save(bad, np.zeros((4, 32), np.float32))
  with pytest.raises(SystemExit, match=r"spot_jax.eval: error: the prompt in .* has shape \(4, 32\).*d_model is 64") as e:
    eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", tmp_path / "e", bad))
  assert "In call to configurable" not in str(e.value)
  with pytest.raises(SystemExit, match="unknown task"):
    eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", tmp_path / "e", prompt_file,
                        ["--gin.MIXTURE_OR_TASK_NAME='spot_no_such_task'"]))
  with pytest.raises(SystemExit, match="PROMPT_FILE"):
    eval_cli.main([a for a in _args("prompt_eval.gin", "EVAL_OUTPUT_DIR", tmp_path / "e", prompt_file)
                   if "PROMPT_FILE" not in a])


def test_an_output_dir_that_is_a_file_is_refused_before_the_model_loads(tmp_path, prompt_file):
  for run_gin, macro, cli in (("prompt_eval.gin", "EVAL_OUTPUT_DIR", eval_cli),
                              ("prompt_infer.gin", "INFER_OUTPUT_DIR", infer_cli)):
    gin.clear_config()
    out = tmp_path / macro
    out.write_text("x")
    with pytest.raises(SystemExit, match=rf"error: {out} is a file, but it must be a directory \({macro}\): "
                                         r"move the file away"):
      cli.main(_args(run_gin, macro, out, prompt_file))


def test_a_model_smaller_than_the_task_vocabulary_is_refused(tmp_path, prompt_file):
  for run_gin, macro, out in (("prompt_eval.gin", "EVAL_OUTPUT_DIR", "e"),
                              ("prompt_infer.gin", "INFER_OUTPUT_DIR", "i")):
    gin.clear_config()
    args = [a for a in _args(run_gin, macro, tmp_path / out, prompt_file) if "vocab_size" not in a]
    with pytest.raises(SystemExit, match=r"vocabulary has \d+ ids but the model's vocab_size is 512"):
      (eval_cli if run_gin == "prompt_eval.gin" else infer_cli).main(
          args + ["--gin.spot_jax.model_config.vocab_size=512"])


def test_gpu_and_cpu_bf16_gins_give_the_benchmarked_settings_and_run(tmp_path, prompt_file,
                                                                   monkeypatch):
  """models/gpu_bf16.gin (after the size): bfloat16 activations and frozen weights, the fused
  attention; models/cpu_bf16.gin: float32 activations, bfloat16 products and frozen weights. infer
  runs with each (the fused form's XLA lowering here). Without them: float32, einsum."""
  from spot_jax import train as train_lib
  placed, place = [], train_lib.place_frozen
  monkeypatch.setattr(train_lib, "place_frozen", lambda params, config, mesh, dtype: placed.append(
      (config.dtype, config.matmul_dtype, config.attention_impl, dtype))
      or place(params, config, mesh, dtype))
  for extra, want in (((), ("float32", "activation", "einsum", "float32")),
                      (("models/gpu_bf16.gin",), ("bfloat16", "activation", "fused", "bfloat16")),
                      (("models/cpu_bf16.gin",), ("float32", "bfloat16", "einsum", "bfloat16"))):
    gin.clear_config()
    args = _args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file,
                 ["--gin.spot_jax.infer.infer_prompt.num_examples=3"])
    args[2:2] = [f"--gin_file={f}" for f in extra]  # after the size, before the run file
    written = infer_cli.main(args)
    assert placed[-1] == want
    rows = [json.loads(line) for line in open(written[TASK])]
    assert len(rows) == 3 and all(set(r) == {"inputs", "prediction", "targets"} for r in rows)


def test_infer_on_a_rank_task_scores_the_options(tmp_path, prompt_file):
  """`infer` on `<task>_rank` writes the best-scored option per example (not decoded text), with every
  option's score; the scores are the ones `eval` gives the same rows, and the accuracy of the
  predictions is eval's rank-classification accuracy."""
  rank = TASK + "_rank"
  pick = [f"--gin.MIXTURE_OR_TASK_NAME='{rank}'"]
  written = infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file,
                                 pick + ["--gin.spot_jax.infer.infer_prompt.num_examples=6"]))
  rows = [json.loads(line) for line in open(written[rank])]
  assert len(rows) == 6
  assert all(set(r) == {"inputs", "prediction", "targets", "options", "scores"} for r in rows)
  assert all(r["options"] == ["negative", "positive"] and r["targets"] in r["options"] for r in rows)
  assert all(r["prediction"] == r["options"][int(np.argmax(r["scores"]))] for r in rows)
  gin.clear_config()
  results = eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", tmp_path / "e", prompt_file,
                                pick + ["--gin.spot_jax.eval.evaluate_prompt.num_examples=6"]))
  with open(tmp_path / "e" / f"{rank}-000000.jsonl") as f:  # seqio's log: one scored row per option
    scored = [json.loads(line) for line in f]
  by_row = {tuple(s["target"][:2]): s["score"] for s in scored}
  assert len(by_row) == 12
  np.testing.assert_allclose([r["scores"] for r in rows],
                             [[by_row[(e, k)] for k in range(2)] for e in range(6)], rtol=1e-5, atol=1e-5)
  accuracy = 100.0 * np.mean([r["prediction"] == r["targets"] for r in rows])
  assert results[rank]["accuracy"] == pytest.approx(accuracy)

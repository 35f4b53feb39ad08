"""gs:// paths users give (MODEL_DIR, --out-dir, --metrics, gin files, prompt sources) reach tf.io.gfile
through `spot_jax.fileio`, and never become a local directory named `gs:`; the prompt library, which
is local-only, refuses gs:// naming the fix. A stand-in for tf.io.gfile maps gs://bucket/... to a
temporary directory; every test runs in an empty working directory where a stray `gs:` would show."""
import json
import os
import types

import numpy as np
import pytest

from spot_jax import fileio
from spot_jax import prompt_export as pexp
from spot_jax.spot import cli
from spot_jax.spot.library import PromptLibrary

from gfile_stub import LocalGfile


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The bucket's local directory; the working directory is an empty `cwd/`."""
  root = tmp_path / "bucket"
  root.mkdir()
  monkeypatch.setattr(fileio, "gfile", lambda: LocalGfile(root))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  assert os.listdir(cwd) == [], "a gs:// path was written as a local directory"


def _prompt(seed, shape=(4, 8)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _library(path, tasks=("a", "b")):
  lib = PromptLibrary(str(path))
  for i, t in enumerate(tasks):
    lib.add(t, _prompt(i), "tiny", task_embedding=_prompt(10 + i))
  return lib


def test_spot_transfer_into_a_gs_model_dir_writes_the_bucket(bucket, tmp_path, monkeypatch, caplog):
  """`spot --gin.MODEL_DIR=gs://BUCKET/cb` (the README's example): run_target made it with os.makedirs,
  a local `gs:/BUCKET/cb` directory."""
  from spot_jax.spot import pipeline
  lib = _library(tmp_path / "lib")
  trained = []

  def fake_train_from(frozen, run, model_dir, task, steps, prompt, what, **kwargs):
    trained.append(model_dir)
    return prompt
  monkeypatch.setattr(pipeline, "_train_from", fake_train_from)  # training on gs:// is not the point
  monkeypatch.setattr(pipeline, "evaluate_prompt", lambda *a: {"accuracy": 1.0})
  frozen = (types.SimpleNamespace(d_model=8), None)
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    result = pipeline.run_target(frozen, lib, "spot_bundled_product", "gs://bucket/cb", "weighted_average",
                                 top_k=3, steps=3, target_embedding=_prompt(0))  # a registered target
  assert "top-3 asked for, but library" in caplog.text and "has 2 source(s)" in caplog.text
  assert len(result.chosen) == 2
  assert trained == ["gs://bucket/cb/transfer"]
  saved = json.loads((bucket / "cb" / "result.json").read_text())
  assert saved["strategy"] == "weighted_average" and saved["out_dir"] == "gs://bucket/cb"
  np.testing.assert_array_equal(np.load(bucket / "cb" / "init.npy"), result.transfer_prompt)


def test_a_gs_library_is_refused_naming_the_fix(bucket, tmp_path, capsys):
  with pytest.raises(ValueError, match=r"gs://bucket/lib: the prompt library must be a local directory, "
                                       r"not gs:// \(use a local directory, e\.g\. copy this one with "
                                       r"`gsutil -m cp -r gs://bucket/lib /data/spot_library`"):
    PromptLibrary("gs://bucket/lib")
  with pytest.raises(ValueError, match="must be a local directory"):  # not "does not exist"
    PromptLibrary.existing("gs://bucket/lib")
  pexp.save_npy(_prompt(0), str(tmp_path / "p.npy"))
  assert cli.main(["add", "--library", "gs://bucket/lib", "--task", "t", "--model-id", "m",
                   str(tmp_path / "p.npy")]) == 1
  assert "must be a local directory" in capsys.readouterr().err
  from spot_jax.spot import pipeline
  with pytest.raises(ValueError, match="must be a local directory"):  # before any training
    pipeline.train_source_prompts(None, ["t"], "gs://bucket/lib", "gs://bucket/runs", steps=1)
  assert os.listdir(bucket) == []


def test_library_add_of_a_gs_model_dir_brings_its_task_embedding(bucket, tmp_path):
  """The MODEL_DIR of `spot source` on a TPU VM is gs://: its task-embedding export was skipped (an
  os.path.isdir test), leaving the entry without one."""
  pexp.export_numpy_checkpoint(_prompt(1), "gs://bucket/run", 2, name="task_embedding")
  pexp.export_numpy_checkpoint(_prompt(2), "gs://bucket/run", 20)
  lib = PromptLibrary(str(tmp_path / "lib"))
  rec = lib.add("t", "gs://bucket/run", "tiny")
  assert rec["has_task_embedding"] and rec["task_embedding_step"] == 2 and rec["steps"] == 20
  np.testing.assert_array_equal(lib.get("t").task_embedding, _prompt(1))


def test_a_gs_target_run_without_task_embedding_export_falls_back_to_its_prompt(bucket):
  from spot_jax.spot import retrieval
  pexp.export_numpy_checkpoint(_prompt(3), "gs://bucket/target", 5)
  with pytest.warns(UserWarning, match="has no task_embedding export"):
    np.testing.assert_array_equal(retrieval.load_target_embedding("gs://bucket/target"), _prompt(3))


def test_similarity_out_dir_and_metrics_file_on_gs(bucket, tmp_path, capsys):
  lib = str(tmp_path / "lib")
  pexp.save_npy(_prompt(0), str(tmp_path / "a.npy"))
  pexp.save_npy(_prompt(1), str(tmp_path / "b.npy"))
  with fileio.open_file("gs://bucket/metrics.json", "w") as f:
    f.write('{"accuracy": 0.75}')
  assert cli.main(["add", "--library", lib, "--task", "a", "--model-id", "m", "--metrics",
                   "gs://bucket/metrics.json", str(tmp_path / "a.npy")]) == 0
  assert PromptLibrary(lib).record("a")["metrics"] == {"accuracy": 0.75}
  assert cli.main(["add", "--library", lib, "--task", "b", str(tmp_path / "b.npy")]) == 0
  assert cli.main(["similarity", "--library", lib, "--out-dir", "gs://bucket/sim"]) == 0
  capsys.readouterr()
  assert json.loads((bucket / "sim" / "similarity_cos_avg_tokens.json").read_text())["names"] == ["a", "b"]
  assert (bucket / "sim" / "similarity_cos_avg_tokens.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_jsonl_on_gs_is_read_back(bucket):
  from spot_jax import metrics_log
  with fileio.open_file("gs://bucket/eval/metrics.jsonl", "w") as f:  # what a finished run left
    f.write('{"step": 1, "eval/x": 0.5}\n')
  assert metrics_log.read_jsonl("gs://bucket/eval/metrics.jsonl") == [{"step": 1, "eval/x": 0.5}]
  with metrics_log.MetricsLogger("gs://bucket/eval", enabled=True, tensorboard=False, console=False) as log:
    log.write(2, {"x": 0.75}, prefix="eval")
  assert [r["step"] for r in metrics_log.read_jsonl("gs://bucket/eval/metrics.jsonl")] == [1, 2]


def test_a_runs_config_gin_on_a_gs_model_dir_is_written_to_the_bucket(bucket):
  """MODEL_DIR/config.gin goes where the run's other files go (through fileio: gs:// is the bucket);
  a rerun with other settings keeps the earlier file there."""
  from spot_jax import train as train_lib
  train_lib.write_config_gin("gs://bucket/run", "TRAIN_STEPS = 2\n")
  assert (bucket / "run" / "config.gin").read_text() == "TRAIN_STEPS = 2\n"
  train_lib.write_config_gin("gs://bucket/run", "TRAIN_STEPS = 4\n")
  assert (bucket / "run" / "config.gin").read_text() == "TRAIN_STEPS = 4\n"
  assert [p.read_text() for p in (bucket / "run").glob("config.gin.old-*")] == ["TRAIN_STEPS = 2\n"]
  assert not [p for p in (bucket / "run").iterdir() if ".tmp-" in p.name]  # written atomically, no leftover


def test_a_gin_file_on_gs_is_read(bucket):
  import gin
  from spot_jax import gin_utils
  (bucket / "run.gin").write_text("MODEL_DIR = 'gs://bucket/run'\n")
  try:
    gin_utils.parse_gin(["gs://bucket/run.gin"], [])
    assert gin.query_parameter("%MODEL_DIR") == "gs://bucket/run"
  finally:
    gin.clear_config()


def test_local_only_writers_refuse_gs(bucket, monkeypatch):
  from spot_jax import demo
  from spot_jax.checkpoints import CheckpointError, write_hf
  with pytest.raises(CheckpointError, match="write_hf writes local directories only"):
    write_hf({}, None, "gs://bucket/hf")

  def stop():
    raise RuntimeError("the demo went past its output directory")
  from spot_jax.spot import pipeline
  monkeypatch.setattr(pipeline, "enable_compilation_cache", stop)
  with pytest.raises(SystemExit):  # argparse's error: usage line and the message, exit status 2
    demo.main(["--quick", "--out", "gs://bucket/demo"])
  with pytest.raises(ValueError, match=r"the backbone cache \(--cache-dir\) must be a local directory"):
    demo.run_demo("out", cache_dir="gs://bucket/cache")

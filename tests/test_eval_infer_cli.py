"""`python -m spot_jax.eval|infer` through gin on the tiny model and a bundled task (in process)."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import logging
import os

import gin
import numpy as np
import pytest

from spot_jax import eval as eval_cli
from spot_jax import infer as infer_cli
from spot_jax import metrics_log

from eval_cli_setup import RANK, TASK, _args


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


def test_infer_rerun_keeps_the_earlier_predictions(tmp_path, prompt_file, caplog):
  """A second `infer` into the same INFER_OUTPUT_DIR replaced the first run's predictions without a word
  (another prompt, another num_examples: the earlier file was lost). Now it is kept aside under
  `<file>.old-<id>`, named in a warning; a rerun that predicts the same bytes leaves everything as it was."""
  out = tmp_path / "infer"
  path = out / f"{TASK}-validation.jsonl"

  def run(n):
    gin.clear_config()
    with caplog.at_level(logging.INFO, logger="spot_jax"):
      infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", out, prompt_file,
                           [f"--gin.spot_jax.infer.infer_prompt.num_examples={n}"]))
  run(5)
  first = path.read_bytes()
  caplog.clear()
  run(3)
  backups = [n for n in os.listdir(out) if n != path.name]
  assert len(backups) == 1 and backups[0].startswith(f"{path.name}.old-"), os.listdir(out)
  assert (out / backups[0]).read_bytes() == first and len(path.read_text().splitlines()) == 3
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "kept them" in r.getMessage()]
  assert warned == [f"{path} held other predictions (an earlier run's): kept them as {out / backups[0]}"]
  second, caplog_before = path.read_bytes(), len(caplog.records)
  run(3)  # the same predictions again: no second backup, no warning
  assert sorted(os.listdir(out)) == sorted([path.name, backups[0]]) and path.read_bytes() == second
  assert not [r for r in caplog.records[caplog_before:] if "kept them" in r.getMessage()]
  assert "(the same bytes): left as it was" in caplog.text


def test_infer_refuses_an_unwritable_output_dir_before_loading_the_model(tmp_path, prompt_file, monkeypatch):
  """A read-only or full INFER_OUTPUT_DIR failed only after all inference, in a traceback: the directory
  is now made and written to (a probe file; both removed again) first."""
  import errno
  from spot_jax import eval as eval_lib
  from spot_jax import fileio
  real_open = fileio.open_file

  def read_only(path, mode):
    if "w" in mode:
      raise OSError(errno.EROFS, "Read-only file system", path)
    return real_open(path, mode)

  def load(*a, **k):
    raise AssertionError("the model was loaded before INFER_OUTPUT_DIR was checked")
  monkeypatch.setattr(fileio, "open_file", read_only)
  monkeypatch.setattr(eval_lib, "load_model_and_prompt", load)
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  out = tmp_path / "infer"
  with pytest.raises(SystemExit, match=rf"^spot_jax.infer: error: cannot write {out}: Read-only file system: "
                                       r"choose another directory\n"):
    infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", out, prompt_file))
  assert os.listdir(tmp_path) == ["prompt.npy"]  # no probe file, nor the folder made for it


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
  from spot_jax import frozen_model as frozen_lib
  placed, place = [], frozen_lib.place_frozen
  monkeypatch.setattr(frozen_lib, "place_frozen", lambda params, config, mesh, dtype: placed.append(
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


def test_tfds_task_without_prepared_data_fails_before_the_model_loads(tmp_path, prompt_file, monkeypatch):
  """Found by a seqio/user-data audit: eval/infer on a TFDS task whose data is not here went to
  tfds.load(download=True) (a 60-line ModuleNotFoundError offline; a GLUE download online) after
  loading the model. Now they stop first with train's DataNotPreparedError and its fixes."""
  import seqio
  from tensorflow_datasets.core import constants
  from spot_jax import frozen_model as frozen_lib
  data_dir = str(tmp_path / "tfds")
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setattr(constants, "DATA_DIR", data_dir)
  monkeypatch.setattr(seqio.utils.LazyTfdsLoader, "_MEMOIZED_BUILDERS", {})
  monkeypatch.setattr(frozen_lib, "load_frozen", lambda *a, **k: pytest.fail("the model was loaded"))
  for task in ("spot_glue_rte_v200", "spot_glue_rte_v200_rank"):
    for run_gin, macro, cli in (("prompt_eval.gin", "EVAL_OUTPUT_DIR", eval_cli),
                                ("prompt_infer.gin", "INFER_OUTPUT_DIR", infer_cli)):
      gin.clear_config()
      with pytest.raises(SystemExit) as e:
        cli.main(_args(run_gin, macro, tmp_path / macro, prompt_file,
                       [f"--gin.MIXTURE_OR_TASK_NAME='{task}'"]))
      msg = str(e.value)
      assert f"task {task!r} reads the TFDS dataset glue/rte:2.0.0 (split 'validation'), which is not " \
             "prepared in" in msg and data_dir in msg, msg
      assert "--tfds_data_dir=DIR" in msg and "tfds build glue/rte:2.0.0" in msg, msg
      assert not os.path.exists(tmp_path / macro)


def test_infer_names_mixture_tasks_left_out(tmp_path, prompt_file, caplog):
  """Found by a seqio/user-data audit: a mixture member without the split was dropped silently."""
  import seqio
  train_only = "spot_test_infer_train_only"
  mix = "spot_test_infer_left_out_mix"
  for registry, name in ((seqio.MixtureRegistry, mix), (seqio.TaskRegistry, train_only)):
    if name in registry.names():
      registry.remove(name)
  movie = seqio.get_mixture_or_task(TASK)
  import tensorflow as tf
  seqio.TaskRegistry.add(train_only, source=seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
          {"inputs": ["a fine film"], "targets": ["positive"]}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=movie.output_features, metric_fns=[])
  seqio.MixtureRegistry.add(mix, [TASK, train_only], default_rate=1.0)
  try:
    with caplog.at_level(logging.WARNING, logger="spot_jax"):
      written = infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file,
                                     [f"--gin.MIXTURE_OR_TASK_NAME='{mix}'",
                                      "--gin.spot_jax.infer.infer_prompt.num_examples=2"]))
    assert list(written) == [TASK]
    assert f"mixture {mix!r}: 1 of its tasks are left out of inference on 'validation': {train_only} " \
           "(no 'validation' split; it has ['train'])" in caplog.text, caplog.text
  finally:
    seqio.MixtureRegistry.remove(mix)
    seqio.TaskRegistry.remove(train_only)


# ----------------------------------------------------------------------------------------------------
def _two_processes(command, run_gin, macro, out_dir, prompt_file, extra, devices_per_process=2):
  """Runs `python -m spot_jax.<command>` as two processes (jax.distributed on localhost); returns their
  outputs once both have exited 0."""
  import socket
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  procs = [subprocess.Popen([sys.executable, "-m", f"spot_jax.{command}",
                             *_args(run_gin, macro, out_dir, prompt_file, extra),
                             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
  return outs


def test_eval_in_two_processes_writes_what_one_process_writes(tmp_path, prompt_file):
  """Two processes x 4 devices (jax.distributed on localhost): the batch is sharded over both, and
  fetching a decode or score that spans the other process's devices crashed ("spans non-addressable
  devices"; found by a multi-process audit). Process 0 writes the same predictions as one process."""
  extra = ["--gin.spot_jax.eval.evaluate_prompt.num_examples=8"]
  _two_processes("eval", "prompt_eval.gin", "EVAL_OUTPUT_DIR", tmp_path / "two", prompt_file, extra,
                 devices_per_process=4)
  gin.clear_config()
  eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", tmp_path / "one", prompt_file, extra))
  rows = {d: [json.loads(l)["prediction"] for l in open(tmp_path / d / f"{TASK}-000000.jsonl")]
          for d in ("two", "one")}
  assert len(rows["two"]) == 8 and rows["two"] == rows["one"]


def test_infer_in_two_processes_keeps_an_earlier_file_once(tmp_path, prompt_file):
  """Only process 0 writes the predictions, so an earlier file in INFER_OUTPUT_DIR is kept aside once
  (not once per process, nor moved again by the second process) and no temporary file is left."""
  out = tmp_path / "two"
  out.mkdir()
  path = out / f"{TASK}-validation.jsonl"
  path.write_text('{"prediction": "an earlier run"}\n')
  outs = _two_processes("infer", "prompt_infer.gin", "INFER_OUTPUT_DIR", out, prompt_file,
                        ["--gin.spot_jax.infer.infer_prompt.num_examples=4"])
  backups = sorted(n for n in os.listdir(out) if n != path.name)
  assert len(backups) == 1 and backups[0].startswith(f"{path.name}.old-"), os.listdir(out)
  assert (out / backups[0]).read_text() == '{"prediction": "an earlier run"}\n'
  assert len(path.read_text().splitlines()) == 4
  assert [sum("kept them as" in line for line in o.splitlines()) for o in outs] == [1, 0]


def test_eval_in_two_processes_keeps_another_prompts_results_once(tmp_path, prompt_file):
  """EVAL_OUTPUT_DIR holds another prompt's step-0 results (evaluated_prompts.json says whose): an eval
  in two processes keeps each file it replaces once, beside itself as `<file>.old-<id>`, in process 0
  (the only writer), which alone warns; the live files hold this prompt's step 0 once."""
  import hashlib
  out = tmp_path / "two"
  out.mkdir()
  earlier = {
      f"{TASK}-000000.jsonl": '{"target": "positive", "prediction": "an earlier prompt\'s"}\n',
      f"{TASK}-metrics.jsonl": '{"step": 0, "accuracy": 12.5}\n',
      "metrics.jsonl": json.dumps({"step": 0, "time": 1.0, f"eval/{TASK}/accuracy": 12.5}) + "\n",
      eval_cli.RECORDS: json.dumps({TASK: {"0": {"prompt": "/elsewhere/p.npy", "prompt_sha256": "0" * 64,
                                                  "settings": {}}}}),
  }
  for name, text in earlier.items():
    (out / name).write_text(text)
  outs = _two_processes("eval", "prompt_eval.gin", "EVAL_OUTPUT_DIR", out, prompt_file,
                        ["--gin.spot_jax.eval.evaluate_prompt.num_examples=4"])
  kept = sorted(n for n in os.listdir(out) if ".old-" in n)
  assert kept == sorted(f"{n}.old-{hashlib.sha256(t.encode()).hexdigest()[:8]}" for n, t in earlier.items())
  assert all((out / f"{n}.old-{hashlib.sha256(t.encode()).hexdigest()[:8]}").read_text() == t
             for n, t in earlier.items())
  assert [sum("/elsewhere/p.npy" in line and "kept them as" in line for line in o.splitlines())
          for o in outs] == [1, 0]
  assert [r["step"] for r in metrics_log.read_jsonl(str(out / "metrics.jsonl"))] == [0]
  assert json.loads((out / eval_cli.RECORDS).read_text())[TASK]["0"]["prompt"] == prompt_file
  assert len(open(out / f"{TASK}-000000.jsonl").readlines()) == 4
  assert not [n for n in os.listdir(out) if ".tmp" in n]


# ----------------------------------------------------------------------------------------------------
# Found by an eval/infer audit.

def _no_model_load(monkeypatch):
  from spot_jax import frozen_model as frozen_lib
  monkeypatch.setattr(frozen_lib, "load_frozen", lambda *a, **k: pytest.fail("the model was loaded"))


def _register_user_task(tmp_path, name, **splits):
  """A user-data task over the bundled vocabulary; `splits`: {split: [(text, label)]}, label "" =
  unlabelled (a test split only)."""
  from tasks import bundled, user_data
  paths = {}
  for split, rows in splits.items():
    path = tmp_path / f"{name}-{split}.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    paths[split] = str(path)
  user_data.register_task_from_files(name, format="tsv", input_template="review: {text}",
                                     target_field="label", label_names=["yes", "absolutely not at all"],
                                     vocabulary=bundled.get_vocabulary(), overwrite=True, **paths)


def test_infer_on_an_unlabelled_split_decodes_as_long_as_the_labelled_splits(tmp_path, prompt_file,
                                                                             caplog):
  """An unlabelled test split (every target the placeholder "<unk>", as GLUE's test splits) with
  TASK_FEATURE_LENGTHS=None took its decode length from the placeholder (4 tokens + EOS), cutting
  every prediction short. Now it decodes as long as the validation split's longest target, with a
  note, so the same inputs get the same predictions on both splits."""
  texts = ["the script is lovely", "the ending felt bad", "my friends picked this"]
  name = "spot_test_infer_unlabelled"
  _register_user_task(tmp_path, name, validation=[(t, l) for t, l in zip(texts, ["yes", "absolutely not at all",
                                                                                  "yes"])],
                      test=[(t, "") for t in texts])
  rows = {}
  for split in ("validation", "test"):
    gin.clear_config()
    with caplog.at_level(logging.INFO, logger="spot_jax"):
      written = infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file,
                                     [f"--gin.MIXTURE_OR_TASK_NAME='{name}'", "--gin.TASK_FEATURE_LENGTHS=None",
                                      f"--gin.INFER_SPLIT='{split}'"]))
    rows[split] = [json.loads(line) for line in open(written[name])]
  vocabulary = seqio_vocabulary()
  longest = len(vocabulary.encode("absolutely not at all")) + 1
  placeholder = len(vocabulary.encode("<unk>")) + 1
  assert longest > placeholder + 2
  assert [r["targets"] for r in rows["test"]] == ["<unk>"] * 3
  # The random model decodes to the length limit: the validation limit shows in its predictions.
  assert max(len(vocabulary.encode(r["prediction"])) for r in rows["validation"]) > placeholder
  assert [r["prediction"] for r in rows["test"]] == [r["prediction"] for r in rows["validation"]]
  assert (f"task {name!r}: every 'test' target is the placeholder '<unk>' (an unlabelled split), so the "
          f"decode length is the longest target of its 'validation' split: {longest} tokens with EOS "
          "(--gin.TASK_FEATURE_LENGTHS=\"{'inputs': N, 'targets': M}\" sets it)") in caplog.text, caplog.text
  from spot_jax import inference
  from tasks import user_data
  assert inference.UNLABELLED_TARGET == user_data.UNLABELLED_TARGET


def seqio_vocabulary():
  from tasks import bundled
  return bundled.get_vocabulary()


def test_infer_on_an_unlabelled_task_without_labelled_splits_needs_feature_lengths(tmp_path, prompt_file,
                                                                                   monkeypatch):
  """Without a labelled split nothing tells the decode length: refused before the model loads,
  naming TASK_FEATURE_LENGTHS; given it, infer runs."""
  name = "spot_test_infer_unlabelled_only"
  _register_user_task(tmp_path, name, test=[("all good", ""), ("the food was cold", "")])
  args = _args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file,
               [f"--gin.MIXTURE_OR_TASK_NAME='{name}'", "--gin.INFER_SPLIT='test'"])
  with monkeypatch.context() as mp:
    _no_model_load(mp)
    with pytest.raises(SystemExit, match=rf"^spot_jax.infer: error: task '{name}': every target of its 'test' "
                                         r"split is the placeholder '<unk>' \(an unlabelled split\), so the split "
                                         r"cannot set the decode length, and the task has no labelled split to "
                                         r"take it from \(it has \['test'\]\). Set it: --gin.TASK_FEATURE_LENGTHS="):
      infer_cli.main(args + ["--gin.TASK_FEATURE_LENGTHS=None"])
  assert not os.path.exists(tmp_path / "i")
  gin.clear_config()
  written = infer_cli.main(args)  # TASK_FEATURE_LENGTHS given (LENGTHS)
  assert len(open(written[name]).readlines()) == 2


@pytest.mark.parametrize("value", [0, -1, -5, "'3'", 2.5, True])
def test_num_examples_other_than_a_positive_integer_or_none_is_refused_before_compute(
    tmp_path, prompt_file, monkeypatch, value, run_dir):
  """0 evaluated the whole split (the docs say "the first N"); a negative value the whole split of a
  plain task, and on a rank task crashed inside seqio (eval) or wrote an empty file (infer)."""
  _no_model_load(monkeypatch)
  for run_gin, macro, cli, binding, extra in (
      ("prompt_eval.gin", "EVAL_OUTPUT_DIR", eval_cli, "spot_jax.eval.evaluate_prompt", []),
      ("prompt_eval.gin", "EVAL_OUTPUT_DIR", eval_cli, "spot_jax.eval.evaluate_prompt",
       ["--gin.PROMPT_STEPS='all'"]),
      ("prompt_infer.gin", "INFER_OUTPUT_DIR", infer_cli, "spot_jax.infer.infer_prompt", [])):
    for task in (TASK, RANK):
      gin.clear_config()
      out = tmp_path / macro
      prompt = str(run_dir) if extra else prompt_file
      with pytest.raises(SystemExit, match=rf"error: {binding}.num_examples must be (an integer )?1 or more "
                                           r"\(or None: the whole split\), got .*: set "
                                           rf"--gin.{binding}.num_examples=N"):
        cli.main(_args(run_gin, macro, out, prompt, [f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
                                                     f"--gin.{binding}.num_examples={value}"] + extra))
      assert not os.path.exists(out)


def test_an_unknown_split_is_refused_before_the_model_loads_naming_the_splits(tmp_path, prompt_file,
                                                                             monkeypatch, run_dir):
  _no_model_load(monkeypatch)
  for run_gin, macro, cli, split_macro, extra in (
      ("prompt_eval.gin", "EVAL_OUTPUT_DIR", eval_cli, "EVAL_SPLIT", []),
      ("prompt_eval.gin", "EVAL_OUTPUT_DIR", eval_cli, "EVAL_SPLIT", ["--gin.PROMPT_STEPS='all'"]),
      ("prompt_infer.gin", "INFER_OUTPUT_DIR", infer_cli, "INFER_SPLIT", [])):
    gin.clear_config()
    with pytest.raises(SystemExit, match=rf"error: {TASK} has no split 'dev'; it has \['test', 'train', "
                                         r"'validation'\]"):
      cli.main(_args(run_gin, macro, tmp_path / macro, str(run_dir) if extra else prompt_file,
                     [f"--gin.{split_macro}='dev'"] + extra))
    assert not os.path.exists(tmp_path / macro)


def test_infer_warns_when_every_option_is_cut_to_the_same_target(tmp_path, prompt_file, caplog, monkeypatch):
  """TASK_FEATURE_LENGTHS['targets']=1 cuts every option of a rank task to EOS: all score the same
  and the prediction is always option 0. infer says so, counting the option rows it scored (all of
  them, not a first few) and naming the options that become one."""
  from spot_jax import truncation
  monkeypatch.setattr(truncation, "_TRUNCATION_CHECKED", set())
  monkeypatch.setattr(truncation, "_TRUNCATION_WARNED", set())
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    written = infer_cli.main(_args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file,
                                   [f"--gin.MIXTURE_OR_TASK_NAME='{RANK}'",
                                    "--gin.TASK_FEATURE_LENGTHS={'inputs': 6, 'targets': 1}",
                                    "--gin.spot_jax.infer.infer_prompt.num_examples=3"]))
  rows = [json.loads(line) for line in open(written[RANK])]
  assert len(rows) == 3
  assert all(r["scores"][0] == r["scores"][1] and r["prediction"] == r["options"][0] for r in rows)
  assert (f"task {RANK!r}: 6 of the 6 'validation' option rows have targets longer than "
          "TASK_FEATURE_LENGTHS['targets']=1 tokens (up to 2 with EOS); seqio cuts them to 1 (keeping EOS), "
          "so its option scores come from cut targets, and distinct targets become the same target "
          "('negative' and 'positive'), which cannot be told apart") in caplog.text, caplog.text
  assert "first 64" not in caplog.text, caplog.text


# ----------------------------------------------------------------------------------------------------
# Found by a user walking docs/user_data.md and docs/eval_infer.md.

def _vocabulary_task_file(tmp_path, name, vocabulary=None):
  """A user's gin file registering a task as docs/user_data.md does (`vocabulary`: a gin value, None for
  the project's vocabulary)."""
  data = tmp_path / "data.tsv"
  data.write_text("premise\thypothesis\tlabel\na b\tc\tyes\nd e\tf\tno\n")
  path = tmp_path / f"{name}.gin"
  path.write_text(f'import tasks.user_data\n\n{name}/tasks.user_data.register_task_from_files:\n'
                  f'  name = "{name}"\n  train = "{data}"\n  validation = "{data}"\n'
                  f'  input_template = "premise: {{premise}} hypothesis: {{hypothesis}}"\n'
                  f'  label_names = ["yes", "no"]\n  vocabulary = {vocabulary}\n  overwrite = True  # each command registers it again\n\n'
                  f'tasks.user_data.register_from_gin.tasks = [@{name}/tasks.user_data.register_task_from_files()]\n'
                  f'MIXTURE_OR_TASK_NAME = "{name}"\n')
  return str(path)


def _cli_error(argv, monkeypatch, model_loads=False):
  """What `spot-jax ARGV` prints and exits with, run in process (the model must not load, unless
  `model_loads`: train initializes a fresh model before it reads the data)."""
  from spot_jax import __main__ as cli
  with monkeypatch.context() as mp:
    if not model_loads:
      _no_model_load(mp)
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
  gin.clear_config()
  return str(e.value.code)


def test_a_missing_spot_jax_vocab_is_one_line_from_eval_and_infer_as_from_train(tmp_path, prompt_file,
                                                                               monkeypatch):
  """eval and infer read a split's first examples before the model loads; a vocabulary that cannot be
  read (SPOT_JAX_VOCAB unset offline, or pointing at a missing file) then failed inside tf.data, and the
  user got ~110 lines ending in TensorFlow's `StagingError: in user code:`, the VocabularyError with its
  fix buried inside. train said it in one line; now all three do."""
  import seqio
  from tasks import vocab
  missing = str(tmp_path / "no_such" / "sentencepiece.model")
  monkeypatch.setenv(vocab.ENV_VAR, missing)
  monkeypatch.setattr(vocab, "_override", None)
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  name = "spot_test_cli_vocab_missing"
  mine = _vocabulary_task_file(tmp_path, name)
  said = (f"cannot load the SentencePiece vocabulary {missing} (from the environment variable SPOT_JAX_VOCAB): "
          f"NotFoundError: {missing}; No such file or directory. Point the tasks at a model file this machine can "
          f"read (without network, a local copy of the T5 vocabulary {vocab.DEFAULT_VOCAB_PATH}): "
          "export SPOT_JAX_VOCAB=/path/to/sentencepiece.model, or call "
          "tasks.vocab.set_vocabulary('/path/to/sentencepiece.model') in Python (it wins over SPOT_JAX_VOCAB); "
          "100 extra ids are appended to the model's pieces (none to a file that holds them, as T5X's "
          "cc_all.32000.100extra does).\n(SPOT_JAX_TRACEBACK=1 shows the traceback)")
  try:
    for command, run_gin, macro in (("eval", "prompt_eval.gin", "EVAL_OUTPUT_DIR"),
                                    ("infer", "prompt_infer.gin", "INFER_OUTPUT_DIR")):
      argv = [command] + [a for a in _args(run_gin, macro, tmp_path / command, prompt_file)
                          if not a.startswith("--gin.MIXTURE_OR_TASK_NAME")] + [f"--gin_file={mine}"]
      argv.append("--gin.TASK_FEATURE_LENGTHS=None")  # the run files' default: the split's longest example
      assert _cli_error(argv, monkeypatch) == f"spot_jax.{command}: error: {said}"
    train = ["train", "--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
             "--gin_file=models/sizes/tiny.gin", "--gin_file=runs/prompt_train.gin", f"--gin_file={mine}",
             f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
             "--gin.spot_jax.model_config.vocab_size=1152"]
    assert _cli_error(train, monkeypatch, model_loads=True) == f"spot_jax.train: error: {said}"
  finally:
    for n in (name, name + "_rank"):
      if n in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(n)


def test_infer_on_a_task_registered_with_a_missing_vocabulary_file_names_the_fix(tmp_path, prompt_file,
                                                                                 monkeypatch):
  """`register_task_from_files(..., vocabulary="/nonexistent/spm.model")`: infer said only
  `NotFoundError: /nonexistent/spm.model; No such file or directory` under TensorFlow's frames, not the
  documented VocabularyError naming the task and what to register it with."""
  import seqio
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  name = "spot_test_cli_vocab_explicit"
  missing = str(tmp_path / "nonexistent" / "spm.model")
  mine = _vocabulary_task_file(tmp_path, name, vocabulary=f'"{missing}"')
  try:
    argv = ["infer"] + [a for a in _args("prompt_infer.gin", "INFER_OUTPUT_DIR", tmp_path / "i", prompt_file)
                        if not a.startswith("--gin.MIXTURE_OR_TASK_NAME")] + [f"--gin_file={mine}",
                                                                               "--gin.TASK_FEATURE_LENGTHS=None"]
    assert _cli_error(argv, monkeypatch) == (
        f"spot_jax.infer: error: cannot load the SentencePiece vocabulary {missing} that task {name} was "
        f"registered with: NotFoundError: {missing}; No such file or directory. Register the task with a model "
        "file this machine can read (a local path), or with vocabulary=None for the project's vocabulary "
        "(tasks.vocab: set_vocabulary, else $SPOT_JAX_VOCAB).\n(SPOT_JAX_TRACEBACK=1 shows the traceback)")
  finally:
    seqio.TaskRegistry.remove(name)


def test_eval_and_infer_name_the_hf_folders_own_vocabulary_as_train_does(tmp_path, prompt_file, monkeypatch):
  """Offline, the project's default vocabulary (gs://t5-data/...) cannot be read; train's error names a
  Hugging Face CHECKPOINT_PATH's own spiece.model as the SPOT_JAX_VOCAB to use, eval's and infer's
  gave the generic advice (their split checks read the vocabulary first, without the checkpoint)."""
  import seqio
  from tasks import bundled, vocab
  monkeypatch.delenv(vocab.ENV_VAR, raising=False)
  monkeypatch.setattr(vocab, "DEFAULT_VOCAB_PATH", str(tmp_path / "t5" / "sentencepiece.model"))
  monkeypatch.setattr(vocab, "_cache", {})
  monkeypatch.setattr(vocab, "_override", None)
  monkeypatch.delenv("SPOT_JAX_TRACEBACK", raising=False)
  folder = tmp_path / "t5_hf"  # what the error needs of a download: config.json, weights, spiece.model
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 64}))
  (folder / "model.safetensors").write_bytes(b"")  # never read: the error comes before the model loads
  (folder / "spiece.model").write_bytes(open(bundled.VOCAB_PATH, "rb").read())
  name = "spot_test_cli_vocab_hf_copy"
  mine = _vocabulary_task_file(tmp_path, name)
  try:
    for command, run_gin, macro in (("eval", "prompt_eval.gin", "EVAL_OUTPUT_DIR"),
                                    ("infer", "prompt_infer.gin", "INFER_OUTPUT_DIR")):
      argv = [command] + [a for a in _args(run_gin, macro, tmp_path / command, prompt_file)
                          if not a.startswith(("--gin.MIXTURE_OR_TASK_NAME", "--gin.CHECKPOINT_PATH"))]
      argv += [f"--gin_file={mine}", f"--gin.CHECKPOINT_PATH='{folder}'"]
      said = _cli_error(argv, monkeypatch)
      assert said.startswith(f"spot_jax.{command}: error: cannot load the SentencePiece vocabulary "), said
      assert f"export SPOT_JAX_VOCAB={folder / 'spiece.model'}" in said, said
  finally:
    for n in (name, name + "_rank"):
      if n in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(n)

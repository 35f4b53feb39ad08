"""Reading every prompt format: round trips, auto-detection, prompt-tuning checkpoints, errors."""
import os

import numpy as np
import pytest

from spot_jax import fileio
from spot_jax import prompt_export as pexp
from spot_jax import prompt_io as pio


def _prompt(p=4, d=6, seed=0):
  return np.random.default_rng(seed).normal(size=(p, d)).astype(np.float32)


def test_npy_round_trip_and_dtype(tmp_path):
  p = _prompt().astype(np.float64)
  path = pexp.save_npy(p, str(tmp_path / "sub" / "p.npy"))
  out = pio.load_prompt(path)
  assert out.dtype == np.float32 and out.shape == (4, 6)
  np.testing.assert_allclose(out, p.astype(np.float32))
  assert os.listdir(tmp_path / "sub") == ["p.npy"]  # no temporary left behind


def test_npy_without_suffix_and_bfloat16(tmp_path):
  import ml_dtypes
  p = _prompt()
  with open(tmp_path / "weird_name", "wb") as f:
    np.save(f, p.astype(ml_dtypes.bfloat16))
  out = pio.load_prompt(str(tmp_path / "weird_name"))
  np.testing.assert_allclose(out, p.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_prompt_tuning_layout_written_by_hand(tmp_path):
  """What google-research/prompt-tuning writes: np.save to a file handle, no prompt.npy beside it."""
  numpy_dir = tmp_path / "model" / "numpy_checkpoints"
  prompts = {}
  for step in (100, 1200, 300):
    d = numpy_dir / f"checkpoint_{step}"
    d.mkdir(parents=True)
    prompts[step] = _prompt(seed=step)
    with open(d / "encoder.prompt.prompt.prompt", "wb") as f:
      np.save(f, prompts[step])
  (numpy_dir / "checkpoint_5000.tmp-1699999").mkdir()  # interrupted write: must be ignored
  with open(numpy_dir / "checkpoint_5000.tmp-1699999" / "encoder.prompt.prompt.prompt", "wb") as f:
    np.save(f, _prompt(seed=9))
  single = numpy_dir / "checkpoint_300" / "encoder.prompt.prompt.prompt"
  np.testing.assert_array_equal(pio.load_prompt(str(single)), prompts[300])
  np.testing.assert_array_equal(pio.load_prompt(str(single.parent)), prompts[300])
  np.testing.assert_array_equal(pio.load_prompt(str(numpy_dir)), prompts[1200])  # newest step
  np.testing.assert_array_equal(pio.load_prompt(str(tmp_path / "model")), prompts[1200])
  src = pio.resolve_prompt(str(tmp_path / "model"))
  assert src.format == "t5x" and src.step == 1200
  assert [s for s, _ in pio.list_numpy_checkpoints(str(numpy_dir))] == [100, 300, 1200]


def test_model_dir_prefers_best_and_finds_task_embedding(tmp_path):
  model_dir = str(tmp_path / "m")
  p10, p20, best, emb = (_prompt(seed=s) for s in range(4))
  pexp.export_numpy_checkpoint(p10, model_dir, 10)
  pexp.export_numpy_checkpoint(p20, model_dir, 20)
  assert pio.find_exports(model_dir).best is None
  np.testing.assert_array_equal(pio.load_prompt(model_dir), p20)
  pexp.export_numpy_checkpoint(best, model_dir, 15, name="best", metrics={"accuracy": 0.75})
  pexp.export_numpy_checkpoint(emb, model_dir, 2, name="task_embedding")
  np.testing.assert_array_equal(pio.load_prompt(model_dir), best)
  np.testing.assert_array_equal(pio.load_prompt(model_dir, "latest"), p20)
  np.testing.assert_array_equal(pio.load_prompt(model_dir, "task_embedding"), emb)
  ex = pio.find_exports(model_dir)
  assert ex.best == pio.best_export_dir(model_dir)
  assert ex.task_embedding == pio.task_embedding_export_dir(model_dir)
  assert [s for s, _ in ex.checkpoints] == [10, 20]
  info = pio.read_export_info(ex.best)
  assert info["step"] == 15 and info["metrics"] == {"accuracy": 0.75}
  assert pio.resolve_prompt(model_dir).step == 15


def test_a_best_export_left_as_its_backup_by_a_kill_is_still_the_best(tmp_path, caplog):
  """A kill between `atomic_write_dir`'s two renames leaves `best.old-<id>` and no `best/`: `load_prompt`
  (which='auto') took the latest export instead, without a word."""
  model_dir = str(tmp_path / "m")
  p10, p20, best = (_prompt(seed=s) for s in range(3))
  pexp.export_numpy_checkpoint(p10, model_dir, 10)
  pexp.export_numpy_checkpoint(p20, model_dir, 20)
  pexp.export_numpy_checkpoint(best, model_dir, 10, name="best", metrics={"accuracy": 0.75})
  numpy_dir = os.path.dirname(pio.best_export_dir(model_dir))
  os.rename(pio.best_export_dir(model_dir), os.path.join(numpy_dir, "best.old-1a2b3c4d"))
  with caplog.at_level("WARNING", logger="spot_jax"):
    np.testing.assert_array_equal(pio.load_prompt(model_dir), best)
  assert "best.old-1a2b3c4d is there" in caplog.text
  pexp.export_numpy_checkpoint(p20, model_dir, 20, name="best")  # the run's next best export wins
  np.testing.assert_array_equal(pio.load_prompt(model_dir, "best"), p20)


def test_errors(tmp_path):
  with pytest.raises(ValueError, match="rank 2"):
    pexp.save_npy(np.zeros((1, 2, 3)), str(tmp_path / "a.npy"))
  bad = _prompt()
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    pexp.save_npy(bad, str(tmp_path / "b.npy"))
  assert not os.path.exists(tmp_path / "b.npy")
  np.save(tmp_path / "nan.npy", bad)
  with pytest.raises(ValueError, match="nan.npy.*NaN"):
    pio.load_prompt(str(tmp_path / "nan.npy"))
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match=r"unknown prompt format at .*notes.txt.*Accepted"):
    pio.load_prompt(str(tmp_path / "notes.txt"))
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(ValueError, match=r"unknown prompt format at .*empty_dir.*PEFT"):
    pio.load_prompt(str(tmp_path / "empty_dir"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pio.load_prompt(str(tmp_path / "missing"))
  (tmp_path / "m" / "numpy_checkpoints").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="Training writes them: numpy_checkpoints/checkpoint_<step>"):
    pio.load_prompt(str(tmp_path / "m"))
  (tmp_path / "run" / "checkpoints" / "10").mkdir(parents=True)  # orbax only: killed before its first export
  with pytest.raises(FileNotFoundError, match=r"run is a MODEL_DIR with training checkpoints but no numpy "
                                              r"export yet.*SAVE_PERIOD"):
    pio.load_prompt(str(tmp_path / "run"))


def test_check_prompt_shape_states_both_shapes():
  p = _prompt(4, 6)
  assert pio.check_prompt_shape(p, 4, 6).shape == (4, 6)
  assert pio.check_prompt_shape(p, None, 6).shape == (4, 6)
  with pytest.raises(ValueError, match=r"my.npy: prompt shape \(4, 6\) .* \(100, 6\).*PROMPT_LENGTH=4"):
    pio.check_prompt_shape(p, 100, 6, "my.npy")
  with pytest.raises(ValueError, match=r"\(4, 6\) .* \(4, 512\).*d_model differs"):
    pio.check_prompt_shape(p, 4, 512)


def test_gcs_prompt_without_network_fails_fast(monkeypatch):
  import threading
  import time
  release = threading.Event()

  class Silent:
    def exists(self, path):
      release.wait(60)
      return True

  monkeypatch.setattr(fileio, "gfile", lambda: Silent())
  monkeypatch.setenv("SPOT_JAX_GCS_TIMEOUT", "0.5")
  start = time.monotonic()
  try:
    with pytest.raises(ValueError, match=r"no answer from Google Cloud Storage for gs://quiet-bucket/run "
                                         r"within 0.5 s.*gsutil"):
      pio.load_prompt("gs://quiet-bucket/run")
  finally:
    release.set()
  assert time.monotonic() - start < 10


def test_damaged_npy_names_the_file_and_the_fix(tmp_path):
  data = pexp.npy_bytes(_prompt())
  (tmp_path / "header.npy").write_bytes(data[:40])
  (tmp_path / "data.npy").write_bytes(data[:-12])
  np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  for name, reason in (("header", "reading array header"), ("data", "reading array data"),
                       ("pickled", "Object arrays")):
    with pytest.raises(ValueError, match=rf"{name}\.npy is not a readable numeric \.npy .*{reason}.*"
                                         "Export or copy it again"):
      pio.load_prompt(str(tmp_path / f"{name}.npy"))
  run = str(tmp_path / "run")  # a MODEL_DIR whose newest export was cut short
  pexp.export_numpy_checkpoint(_prompt(), run, 10)
  f = os.path.join(pio.checkpoint_export_dir(run, 10), pio.T5X_PROMPT_FILENAME)
  open(f, "wb").write(data[:40])
  with pytest.raises(ValueError, match=r"encoder\.prompt\.prompt\.prompt is not a readable numeric"):
    pio.load_prompt(run)


def test_damaged_json_beside_a_prompt(tmp_path):
  d = pexp.export_peft(_prompt(), str(tmp_path / "adapter"))
  (tmp_path / "adapter" / pio.PEFT_CONFIG).write_text("{x")
  with pytest.raises(ValueError, match=r"adapter_config\.json is not valid JSON.*Save the adapter again"):
    pio.load_prompt(d)
  (tmp_path / "adapter" / pio.PEFT_CONFIG).write_text("[1]")
  with pytest.raises(ValueError, match=r"adapter_config\.json holds a JSON list"):
    pio.load_prompt(d)
  # export.json is only metadata: the prompt still loads, its step and metrics are unknown
  run = str(tmp_path / "run")
  exp = pexp.export_numpy_checkpoint(_prompt(), run, 10, name="best", metrics={"accuracy": 0.5})
  open(os.path.join(exp, pio.EXPORT_INFO), "w").write("{x")
  with pytest.warns(UserWarning, match=r"export\.json is not valid JSON.*ignoring it.*export it again"):
    p, src = pio.load_prompt_with_source(run)
  np.testing.assert_array_equal(p, _prompt())
  assert src.step is None


# ----------------------------------------------------------------------------------------------------
# What google-research/prompt-tuning writes besides encoder.prompt.prompt.prompt.

def _prompt_tuning_t5x_checkpoint(model_dir, step, prompt, inline_prompt=False):
  """A prompt-tuning run's T5X checkpoint: the frozen T5 plus target/encoder/prompt/prompt/prompt, and
  Adafactor state for the prompt (an array of the same shape that must not be taken for it)."""
  from spot_jax.checkpoints import t5x, write_t5x
  from spot_jax.checkpoints.infer_config import expected_shapes, unflatten
  from spot_jax.config import T5Config
  config = T5Config(vocab_size=16, d_model=prompt.shape[1], num_heads=2, head_dim=3, d_ff=12,
                    num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=4)
  rng = np.random.default_rng(step)
  flat = {n: rng.normal(size=s).astype(np.float32) for n, s in expected_shapes(config).items()}
  flat[pio.T5X_PROMPT_PARAM] = prompt
  external = (lambda n, a: t5x.default_external(n, a) and "prompt" not in n) if inline_prompt else \
      t5x.default_external
  ckpt = write_t5x(unflatten(flat), str(model_dir), step=step, external=external)
  path = os.path.join(ckpt, "checkpoint")
  state = t5x.decode_msgpack(open(path, "rb").read())
  state["optimizer"]["state"]["param_states"] = unflatten({pio.T5X_PROMPT_PARAM + "/v": np.ones_like(prompt)})
  open(path, "wb").write(t5x.encode_msgpack(state))
  return ckpt


def test_prompt_out_of_a_prompt_tuning_t5x_checkpoint(tmp_path):
  model_dir = tmp_path / "pt_run"
  old, new = _prompt(5, 6, seed=1), _prompt(5, 6, seed=2)
  _prompt_tuning_t5x_checkpoint(model_dir, 1_100_500, old, inline_prompt=True)
  ckpt = _prompt_tuning_t5x_checkpoint(model_dir, 1_101_000, new)
  assert os.path.isdir(os.path.join(ckpt, "target.encoder.prompt.prompt.prompt"))  # a zarr array, as T5X
  # Only the prompt is read: the frozen weights' arrays may be absent (an 11B checkpoint is not loaded).
  import shutil
  shutil.rmtree(os.path.join(ckpt, "target.token_embedder.embedding"))
  for path in (ckpt, os.path.join(ckpt, "checkpoint"), str(model_dir)):
    p, src = pio.load_prompt_with_source(path)
    np.testing.assert_array_equal(p, new)
    assert (src.format, src.file, src.step) == ("t5x_checkpoint", ckpt, 1_101_000)
  inline = os.path.join(str(model_dir), "checkpoint_1100500")
  np.testing.assert_array_equal(pio.load_prompt(inline), old)
  with pytest.raises(FileNotFoundError, match=r"T5X checkpoints \(steps \[1100500, 1101000\]\) but no best"):
    pio.load_prompt(str(model_dir), which="best")
  # Its numpy export wins where the run wrote one (the same prompt, and no checkpoint to parse).
  exported = model_dir / "numpy_checkpoints" / "checkpoint_1101000"
  exported.mkdir(parents=True)
  with open(exported / pio.T5X_PROMPT_FILENAME, "wb") as f:
    np.save(f, new)
  assert pio.resolve_prompt(str(model_dir)).format == "t5x"
  # A prompt file of prompt-tuning's from_file.gin and its checkpoint: the same prompt.
  from spot_jax import prompts
  np.testing.assert_array_equal(prompts.make_prompt(prompts.from_file(ckpt), 0, 5, 6), new)


def test_a_frozen_models_t5x_checkpoint_is_not_a_prompt(tmp_path):
  from spot_jax.checkpoints import write_t5x
  from spot_jax.checkpoints.infer_config import unflatten
  ckpt = write_t5x(unflatten({"token_embedder/embedding": np.ones((16, 6), np.float32)}), str(tmp_path), 3)
  with pytest.raises(ValueError, match=r"checkpoint_3 is a T5X checkpoint without a prompt \(no "
                                       r"target/encoder/prompt/prompt/prompt\).*Pass the run's MODEL_DIR"):
    pio.load_prompt(ckpt)


def test_prompt_tuning_multi_task_and_decoder_prompts_are_refused_naming_the_fix(tmp_path):
  # extended/ multi-task configs: a shared prompt and a [tasks, P*d] table; no plain encoder prompt.
  step_dir = tmp_path / "mt_run" / "numpy_checkpoints" / "checkpoint_1100100"
  step_dir.mkdir(parents=True)
  for name, arr in (("encoder.prompt.prompt.shared_prompt", _prompt(5, 6)),
                    ("encoder.prompt.prompt.task_prompts.embedding", np.zeros((8, 30), np.float32))):
    with open(step_dir / name, "wb") as f:
      np.save(f, arr)
  for path in (step_dir, step_dir.parent, tmp_path / "mt_run"):
    with pytest.raises(ValueError, match=r"checkpoint_1100100 holds encoder\.prompt\.prompt\.shared_prompt, "
                                         r"encoder\.prompt\.prompt\.task_prompts\.embedding, not encoder\.prompt\."
                                         r"prompt\.prompt: a multi-task prompt.*save the result with numpy\.save"):
      pio.load_prompt(str(path))
  # The shared prompt itself is a plain numpy file: passing it is the user's explicit choice.
  np.testing.assert_array_equal(pio.load_prompt(str(step_dir / "encoder.prompt.prompt.shared_prompt")),
                                _prompt(5, 6))
  dec = tmp_path / "decoder_only" / "checkpoint_7"
  dec.mkdir(parents=True)
  with open(dec / "decoder.prompt.prompt.prompt", "wb") as f:
    np.save(f, _prompt())
  with pytest.raises(ValueError, match=r"a decoder-side prompt.*spot_jax's T5 prompts the encoder"):
    pio.load_prompt(str(dec))
  # The same multi-task prompt in a T5X checkpoint.
  from spot_jax.checkpoints import write_t5x
  from spot_jax.checkpoints.infer_config import unflatten
  ckpt = write_t5x(unflatten({"encoder/prompt/prompt/shared_prompt": _prompt(5, 6),
                              "encoder/prompt/prompt/task_prompts/embedding": np.zeros((8, 30), np.float32)}),
                   str(tmp_path / "mt_t5x"), 1)
  with pytest.raises(ValueError, match=r"holds target/encoder/prompt/prompt/shared_prompt, .*not "
                                       r"target/encoder/prompt/prompt/prompt: a multi-task prompt"):
    pio.load_prompt(ckpt)
  dec_ckpt = write_t5x(unflatten({"decoder/prompt/prompt/prompt": _prompt(5, 6)}), str(tmp_path / "dec_t5x"), 2)
  with pytest.raises(ValueError, match=r"holds target/decoder/prompt/prompt/prompt, .*a decoder-side prompt"):
    pio.load_prompt(dec_ckpt)


# ----------------------------------------------------------------------------------------------------
# The same prompt in a T5X checkpoint written with Orbax (`train.use_orbax=True`).

def _prompt_tuning_orbax_checkpoint(model_dir, step, prompt_params, use_ocdbt=False):
  """A prompt-tuning run's T5X checkpoint as T5X's Orbax manager writes it (checkpoint_<step>/state/,
  written by test_checkpoints_t5x_orbax's writer): a few frozen weights plus `prompt_params`
  ({name under target: array}), with Adafactor slots for every parameter."""
  pytest.importorskip("orbax.checkpoint")
  from spot_jax.checkpoints.infer_config import unflatten
  from test_checkpoints_t5x_orbax import write_t5x_orbax
  rng = np.random.default_rng(step)
  d = next(iter(prompt_params.values())).shape[-1]
  flat = {"token_embedder/embedding": rng.normal(size=(16, d)).astype(np.float32),
          "encoder/layers_0/mlp/wo/kernel": rng.normal(size=(12, d)).astype(np.float32),
          "encoder/encoder_norm/scale": np.ones(d, np.float32), **prompt_params}
  return write_t5x_orbax(unflatten(flat), model_dir, step, use_ocdbt=use_ocdbt)


def test_prompt_out_of_an_orbax_written_t5x_checkpoint_restores_the_prompt_alone(tmp_path, orbax_reads):
  model_dir = tmp_path / "pt_orbax_run"
  old, new = _prompt(5, 6, seed=1), _prompt(5, 6, seed=2)
  old_ckpt = _prompt_tuning_orbax_checkpoint(model_dir, 1_100_500, {pio.T5X_PROMPT_PARAM: old}, use_ocdbt=True)
  ckpt = _prompt_tuning_orbax_checkpoint(model_dir, 1_103_000, {pio.T5X_PROMPT_PARAM: new})
  assert os.path.isdir(os.path.join(ckpt, "state", "target.encoder.prompt.prompt.prompt"))  # T5X's layout
  read = orbax_reads  # the arrays read from disk
  for path in (ckpt, ckpt + "/", os.path.join(ckpt, "state"), str(model_dir)):
    read.clear()
    p, src = pio.load_prompt_with_source(path)
    np.testing.assert_array_equal(p, new)
    assert (src.format, src.file, src.step) == ("t5x_orbax_checkpoint", ckpt, 1_103_000)
    assert read == ["target.encoder.prompt.prompt.prompt"]  # no frozen weight, no optimizer slot
  read.clear()
  np.testing.assert_array_equal(pio.load_prompt(old_ckpt), old)  # an OCDBT store: the same partial restore
  assert read == ["target.encoder.prompt.prompt.prompt"]
  # The frozen weights and the optimizer state may even be absent (an 11B checkpoint is not loaded).
  import shutil
  for name in os.listdir(os.path.join(ckpt, "state")):
    if name.startswith("state.") or name.startswith("target.") and "prompt" not in name:
      shutil.rmtree(os.path.join(ckpt, "state", name))
  np.testing.assert_array_equal(pio.load_prompt(ckpt), new)
  with pytest.raises(FileNotFoundError, match=r"T5X checkpoints \(steps \[1100500, 1103000\]\) but no best"):
    pio.load_prompt(str(model_dir), which="best")
  # The newest step wins across msgpack and Orbax-written steps of one MODEL_DIR.
  native = _prompt_tuning_t5x_checkpoint(model_dir, 1_104_000, _prompt(5, 6, seed=3))
  assert pio.resolve_prompt(str(model_dir)).file == native


def test_orbax_written_multi_task_decoder_and_frozen_checkpoints_are_refused(tmp_path):
  mt = _prompt_tuning_orbax_checkpoint(tmp_path / "mt", 1, {
      "encoder/prompt/prompt/shared_prompt": _prompt(5, 6),
      "encoder/prompt/prompt/task_prompts/embedding": np.zeros((8, 30), np.float32)})
  with pytest.raises(ValueError, match=r"checkpoint_1 holds target/encoder/prompt/prompt/shared_prompt, "
                                       r"target/encoder/prompt/prompt/task_prompts/embedding, not "
                                       r"target/encoder/prompt/prompt/prompt: a multi-task prompt.*numpy\.save"):
    pio.load_prompt(mt)
  dec = _prompt_tuning_orbax_checkpoint(tmp_path / "dec", 2, {"decoder/prompt/prompt/prompt": _prompt(5, 6)})
  with pytest.raises(ValueError, match=r"holds target/decoder/prompt/prompt/prompt, .*a decoder-side prompt.*"
                                       r"spot_jax's T5 prompts the encoder"):
    pio.load_prompt(str(tmp_path / "dec"))  # the MODEL_DIR: its newest (only) step
  frozen = _prompt_tuning_orbax_checkpoint(tmp_path / "frozen", 3, {"decoder/logits_dense/kernel": _prompt(6, 16)})
  with pytest.raises(ValueError, match=r"checkpoint_3 is a T5X checkpoint \(Orbax-written\) without a prompt "
                                       r"\(no target/encoder/prompt/prompt/prompt\).*Pass the run's MODEL_DIR"):
    pio.load_prompt(os.path.join(frozen, "state"))
  assert dec.endswith("checkpoint_2")


def test_absolute_local_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "models" / "t5").mkdir(parents=True)
  assert pio.absolute_local_path("models/t5") == str(tmp_path / "models" / "t5")
  assert pio.absolute_local_path("./missing") == str(tmp_path / "missing")
  for unchanged in ("google/t5-v1_1-base", "t5-base", "gs://bucket/ckpt", None, "/abs/path", "/abs/dir/"):
    assert pio.absolute_local_path(unchanged) == unchanged


def test_a_training_checkpoint_is_named_with_the_export_to_load_instead(tmp_path):
  """MODEL_DIR/checkpoints/<step> (orbax, spot_jax's own) was an "unknown prompt format"."""
  model_dir = tmp_path / "run"
  (model_dir / "numpy_checkpoints" / "checkpoint_8").mkdir(parents=True)
  np.save(model_dir / "numpy_checkpoints" / "checkpoint_8" / "prompt.npy", np.zeros((2, 4), np.float32))
  (model_dir / "checkpoints" / "8" / "state").mkdir(parents=True)
  (model_dir / "checkpoints" / "8" / "_CHECKPOINT_METADATA").write_text("{}")
  for path in (model_dir / "checkpoints" / "8", model_dir / "checkpoints" / "8" / "state"):
    with pytest.raises(ValueError, match=rf"{path} is spot_jax's training checkpoint \(orbax: the prompt with its "
                                         rf"optimizer state\), not a prompt export: load "
                                         rf"{model_dir}/numpy_checkpoints/checkpoint_8 \(the prompt of step 8\); "
                                         rf"{model_dir} itself loads its newest export \(step 8\), as it has no "
                                         r"best/ export"):
      pio.resolve_prompt(str(path))
  with pytest.raises(ValueError, match=rf"not a prompt export: load {model_dir}, which loads its newest export "
                                       r"\(step 8\)"):
    pio.resolve_prompt(str(model_dir / "checkpoints"))


def test_a_training_checkpoint_names_what_the_model_dir_loads_its_best_export(tmp_path):
  """The message said MODEL_DIR gave "its newest export" (step 8) where load_prompt(MODEL_DIR) reads best/
  (step 2)."""
  model_dir = tmp_path / "run"
  pexp.export_numpy_checkpoint(_prompt(seed=2), str(model_dir), 2, name="best", metrics={"accuracy": 0.9})
  pexp.export_numpy_checkpoint(_prompt(seed=8), str(model_dir), 8)
  (model_dir / "checkpoints" / "8" / "state").mkdir(parents=True)
  best = model_dir / "numpy_checkpoints" / "best"
  with pytest.raises(ValueError) as e:
    pio.resolve_prompt(str(model_dir / "checkpoints" / "8"))
  said = str(e.value)
  assert f"load {model_dir}/numpy_checkpoints/checkpoint_8 (the prompt of step 8)" in said
  assert f"{model_dir} itself loads its best-on-validation export {best} (step 2), not its newest (step 8)" in said
  assert "its newest export" not in said
  with pytest.raises(ValueError, match=rf"load {model_dir}, which loads its best-on-validation export {best} "
                                       r"\(step 2\), not its newest \(step 8\)"):
    pio.resolve_prompt(str(model_dir / "checkpoints"))
  src = pio.resolve_prompt(str(model_dir))  # what the message says
  assert (src.export_dir, src.step) == (str(best), 2)


def test_a_model_checkpoint_as_the_prompt_names_the_swap(tmp_path):
  """A Hugging Face model folder (or one of its files) and a T5X model checkpoint passed as PROMPT_FILE:
  an "unknown prompt format" (HF) or no hint that the two paths were swapped (T5X)."""
  from spot_jax.checkpoints import write_hf, write_t5x
  from spot_jax.checkpoints.infer_config import expected_shapes, unflatten
  from spot_jax.config import T5Config
  config = T5Config(vocab_size=16, d_model=6, num_heads=2, head_dim=3, d_ff=12, num_encoder_layers=1,
                    num_decoder_layers=1, relative_attention_num_buckets=4, dropout_rate=0.0)
  params = unflatten({n: np.zeros(s, np.float32) for n, s in expected_shapes(config).items()})
  hf = str(tmp_path / "hf")
  write_hf(params, config, hf)
  swapped = r"were CHECKPOINT_PATH \(INITIAL_CHECKPOINT_PATH when training; load_t5's path\) and PROMPT_FILE swapped\?"
  with pytest.raises(ValueError, match=rf"{hf} looks like a Hugging Face model folder \(config\.json \+ "
                                       rf"model\.safetensors\): a model checkpoint, not a prompt: {swapped}"):
    pio.load_prompt(hf)
  for name in ("model.safetensors", "config.json"):
    with pytest.raises(ValueError, match=rf"a file of the Hugging Face model folder {hf} .*: {swapped}"):
      pio.load_prompt(os.path.join(hf, name))
  t5x_dir = write_t5x(params, str(tmp_path / "t5x"), step=5)
  for path in (t5x_dir, str(tmp_path / "t5x")):
    with pytest.raises(ValueError, match=rf"checkpoint_5 is a T5X checkpoint without a prompt .*frozen model's "
                                         rf"checkpoint.*{swapped}"):
      pio.load_prompt(path)

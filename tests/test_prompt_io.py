"""Reading every prompt format: round trips, auto-detection, prompt-tuning checkpoints, errors."""
import json
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


def test_peft_round_trip_and_config(tmp_path):
  from safetensors.numpy import load_file
  p = _prompt(5, 8)
  d = pexp.export_peft(p, str(tmp_path / "adapter"), base_model_name_or_path="google/t5-base-lm-adapt",
                      num_attention_heads=12, num_layers=12)
  cfg = json.load(open(os.path.join(d, "adapter_config.json")))
  assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["task_type"] == "SEQ_2_SEQ_LM"
  assert cfg["num_virtual_tokens"] == 5 and cfg["token_dim"] == 8
  assert cfg["num_transformer_submodules"] == 1 and cfg["inference_mode"] is True
  assert cfg["prompt_tuning_init"] == "RANDOM" and cfg["num_layers"] == 12
  tensors = load_file(os.path.join(d, "adapter_model.safetensors"))
  assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (5, 8)
  np.testing.assert_array_equal(pio.load_prompt(d), p)
  np.testing.assert_array_equal(pio.load_prompt(os.path.join(d, "adapter_model.safetensors")), p)
  assert pio.resolve_prompt(d).format == "peft"


def test_peft_two_submodules_takes_encoder_rows(tmp_path):
  from safetensors.numpy import save_file
  d = tmp_path / "peft2"
  d.mkdir()
  rows = _prompt(6, 4)  # 2 * P with P = 3
  cfg = pexp.peft_adapter_config(3, 4)
  cfg["num_transformer_submodules"] = 2
  (d / "adapter_config.json").write_text(json.dumps(cfg))
  save_file({"prompt_embeddings": rows}, str(d / "adapter_model.safetensors"))
  with pytest.warns(UserWarning, match="first 3"):
    out = pio.load_prompt(str(d))
  np.testing.assert_array_equal(out, rows[:3])
  cfg["num_transformer_submodules"] = 1  # rows disagree with the config now
  (d / "adapter_config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="num_virtual_tokens=3"):
    pio.load_prompt(str(d))


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


PEFT_BF16 = os.path.join(os.path.dirname(__file__), "fixtures", "hf_formats", "peft_bf16")  # make_hf_formats.py


def test_peft_adapter_of_a_bfloat16_prompt():
  """PEFT's own save_pretrained of a bfloat16 prompt (BF16 safetensors, PEFT's default 2 submodules)."""
  ref = np.load(os.path.join(PEFT_BF16, "outputs.npz"))
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):
    out = pio.load_prompt(PEFT_BF16)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, ref["prompt"])
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):  # the config beside it
    rows = pio.load_prompt(os.path.join(PEFT_BF16, "adapter_model.safetensors"))
  np.testing.assert_array_equal(rows, ref["prompt"])


def test_truncated_peft_adapter_names_the_fix(tmp_path):
  d = pexp.export_peft(_prompt(), str(tmp_path / "adapter"))
  weights = os.path.join(d, "adapter_model.safetensors")
  data = open(weights, "rb").read()
  with open(weights, "wb") as f:
    f.write(data[:-7])
  with pytest.raises(ValueError, match=r"adapter_model\.safetensors is not a readable safetensors file .*"
                                       r"truncated or damaged"):
    pio.load_prompt(d)


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


# ----------------------------------------------------------------------------------------------------
# PEFT adapters as PEFT writes them (found by an HF/PEFT audit).

def _peft_adapter(directory, rows, **config):
  """An adapter directory as PEFT's save_pretrained writes it: `config` overrides PEFT's seq2seq default
  (PROMPT_TUNING, SEQ_2_SEQ_LM, num_transformer_submodules=2); a value of None drops the key."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  shape = next(iter(rows.values())).shape if isinstance(rows, dict) else rows.shape
  cfg = pexp.peft_adapter_config(shape[0] // 2, shape[1])
  cfg["num_transformer_submodules"] = 2
  cfg.update(config)
  cfg = {k: v for k, v in cfg.items() if v is not None}
  with open(os.path.join(directory, pio.PEFT_CONFIG), "w") as f:
    json.dump(cfg, f)
  tensors = rows if isinstance(rows, dict) else {"prompt_embeddings": rows}
  save_file(tensors, os.path.join(directory, pio.PEFT_WEIGHTS), metadata={"format": "pt"})
  return str(directory)


def test_peft_safetensors_file_reads_the_config_beside_it(tmp_path):
  """The adapter_model.safetensors FILE of PEFT's default seq2seq adapter (2P rows) gives the P encoder
  rows, with the warning, exactly as its directory does (it gave all 2P rows as a 2P-token prompt)."""
  rows = _prompt(8, 6)
  d = _peft_adapter(tmp_path / "s2", rows, num_virtual_tokens=4)
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):
    from_dir = pio.load_prompt(d)
  with pytest.warns(UserWarning, match="PEFT stored 8 prompt rows .*using the first 4"):
    from_file, src = pio.load_prompt_with_source(os.path.join(d, pio.PEFT_WEIGHTS))
  np.testing.assert_array_equal(from_file, rows[:4])
  np.testing.assert_array_equal(from_file, from_dir)
  assert src.export_dir == d
  # Copied away from its config: an even row count is ambiguous (P + P rows, or one 2P prompt): refused.
  lone = tmp_path / "lone" / "adapter_model.safetensors"
  lone.parent.mkdir()
  lone.write_bytes(open(os.path.join(d, pio.PEFT_WEIGHTS), "rb").read())
  with pytest.raises(ValueError, match=r"no adapter_config\.json beside it, so its 8 rows may be one 8-token "
                                       r"prompt or 4 encoder \+ 4 decoder rows .*pass the adapter directory"):
    pio.load_prompt(str(lone))
  # An odd row count cannot be P + P rows: one prompt.
  from safetensors.numpy import save_file
  save_file({"prompt_embeddings": _prompt(5, 6)}, str(tmp_path / "lone" / "odd.safetensors"))
  np.testing.assert_array_equal(pio.load_prompt(str(tmp_path / "lone" / "odd.safetensors")), _prompt(5, 6))


def test_named_peft_adapter_points_at_its_subfolder(tmp_path):
  """save_pretrained of an adapter named 'rte' writes OUT/rte/adapter_*: OUT names the subfolder."""
  out = tmp_path / "out"
  _peft_adapter(out / "rte", _prompt(8, 6))
  (out / "README.md").write_text("model card")
  with pytest.raises(ValueError, match=r"out holds no adapter_config\.json itself but PEFT adapters saved under "
                                       r"a name in rte/ .*: pass .*out/rte$"):
    pio.load_prompt(str(out))
  _peft_adapter(out / "mnli", _prompt(8, 6))
  with pytest.raises(ValueError, match=r"in mnli/, rte/ .*pass one of them, e.g. .*out/mnli$"):
    pio.load_prompt(str(out))


def test_other_peft_adapter_types_are_named_and_p_tuning_is_read(tmp_path):
  lora = {f"base_model.model.encoder.block.{i}.layer.0.SelfAttention.{m}.lora_{ab}.weight": _prompt(4, 6)
          for i in range(4) for m in "qv" for ab in "AB"}
  d = _peft_adapter(tmp_path / "lora", lora, peft_type="LORA", num_virtual_tokens=None, token_dim=None,
                    num_transformer_submodules=None)
  for path in (d, os.path.join(d, pio.PEFT_WEIGHTS)):
    with pytest.raises(ValueError, match=r"lora: this is a LORA adapter, not a soft prompt") as e:
      pio.load_prompt(path)
    assert "lora_A" not in str(e.value)  # not 16 tensor names before the point
  os.remove(os.path.join(d, pio.PEFT_CONFIG))  # a LoRA file alone: a few names, and what it is
  with pytest.raises(ValueError, match=r"found base_model.*, \.\.\. \(16 tensors\); its lora_A/lora_B tensors "
                                       r"make it a LoRA adapter, not a soft prompt"):
    pio.load_prompt(os.path.join(d, pio.PEFT_WEIGHTS))
  prefix = _peft_adapter(tmp_path / "prefix", _prompt(4, 24), peft_type="PREFIX_TUNING", num_virtual_tokens=4,
                         token_dim=6)
  with pytest.raises(ValueError, match=r"PREFIX_TUNING adapter, not a soft prompt \(per-layer key/value prefixes"):
    pio.load_prompt(prefix)
  # P-tuning: PEFT saves the reparameterized prompt (its MLP/LSTM output), which is what PEFT feeds the
  # encoder at inference (checked with peft 0.21: equal, and identical logits).
  rows = _prompt(8, 6, seed=3)
  pt = _peft_adapter(tmp_path / "ptuning", rows, peft_type="P_TUNING", num_virtual_tokens=4,
                     encoder_hidden_size=16, encoder_reparameterization_type="MLP")
  with pytest.warns(UserWarning, match="using the first 4"):
    np.testing.assert_array_equal(pio.load_prompt(pt), rows[:4])


def test_peft_metadata_is_checked(tmp_path):
  """task_type, token_dim and num_virtual_tokens x num_transformer_submodules are checked as PEFT does."""
  gpt2 = _peft_adapter(tmp_path / "gpt2", _prompt(4, 6), task_type="CAUSAL_LM", num_virtual_tokens=4,
                       num_transformer_submodules=1)
  with pytest.raises(ValueError, match=r"gpt2: task_type is 'CAUSAL_LM' \(a decoder-only model's prompt.*not "
                                       r"SEQ_2_SEQ_LM.*save prompt_embeddings as a \.npy"):
    pio.load_prompt(gpt2)
  bad_td = _peft_adapter(tmp_path / "bad_td", _prompt(4, 6), num_virtual_tokens=4, num_transformer_submodules=1,
                         token_dim=3)
  with pytest.raises(ValueError, match=r"prompt_embeddings is 6 wide but adapter_config\.json says token_dim=3 "
                                       r"\(PEFT refuses to load it\)"):
    pio.load_prompt(bad_td)
  # P rows under num_transformer_submodules=2 (PEFT wants 2P): refused, not taken as is.
  half = _peft_adapter(tmp_path / "half", _prompt(4, 6), num_virtual_tokens=4)
  with pytest.raises(ValueError, match=r"4 rows but adapter_config\.json says num_virtual_tokens=4, "
                                       r"num_transformer_submodules=2, i\.e\. 8 rows"):
    pio.load_prompt(half)
  # No num_transformer_submodules: PEFT's default for SEQ_2_SEQ_LM is 2, so 2P rows are P + P.
  rows = _prompt(6, 6)
  nosubs = _peft_adapter(tmp_path / "nosubs", rows, num_virtual_tokens=3, num_transformer_submodules=None)
  with pytest.warns(UserWarning, match="using the first 3"):
    np.testing.assert_array_equal(pio.load_prompt(nosubs), rows[:3])
  # A PEFT adapter directory gives its base model for an export (absolute when local and relative).
  assert pio.read_export_info(gpt2) == {}
  cfg = json.load(open(os.path.join(nosubs, pio.PEFT_CONFIG)))
  cfg["base_model_name_or_path"] = "google/t5-v1_1-base"
  json.dump(cfg, open(os.path.join(nosubs, pio.PEFT_CONFIG), "w"))
  assert pio.read_export_info(nosubs) == {"frozen_model": "google/t5-v1_1-base"}


def test_absolute_local_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "models" / "t5").mkdir(parents=True)
  assert pio.absolute_local_path("models/t5") == str(tmp_path / "models" / "t5")
  assert pio.absolute_local_path("./missing") == str(tmp_path / "missing")
  for unchanged in ("google/t5-v1_1-base", "t5-base", "gs://bucket/ckpt", None, "/abs/path", "/abs/dir/"):
    assert pio.absolute_local_path(unchanged) == unchanged

"""`spot_jax.load_t5`: the public numpy API on a Hugging Face folder and on a T5X checkpoint."""
import os
import re

import numpy as np
import pytest

import spot_jax
from spot_jax.checkpoints import read_params, write_t5x

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_parity", "t5_1_1")


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(os.path.join(FIXTURE, "outputs.npz")))


def test_load_t5_hf_folder_matches_transformers(reference):
  model = spot_jax.load_t5(FIXTURE)
  assert model.config.d_model == 32 and not model.config.tie_word_embeddings
  logits = model.logits(reference["input_ids"], reference["decoder_input_ids"])
  assert np.abs(logits - reference["logits"]).max() <= 1e-4
  prompted = model.logits(reference["input_ids"], reference["decoder_input_ids"], prompt=reference["prompt"])
  assert np.abs(prompted - reference["logits_prompt"]).max() <= 1e-4
  encoded = model.encode(reference["input_ids"], prompt=reference["prompt"])
  assert encoded.shape[1] == reference["prompt"].shape[0] + reference["input_ids"].shape[1]


def test_load_t5_t5x_folder_gives_the_same_logits(tmp_path, reference):
  config, params = read_params(FIXTURE)
  write_t5x(params, str(tmp_path / "t5x"), step=7)
  model = spot_jax.load_t5(str(tmp_path / "t5x"))  # the parent dir: newest checkpoint_<step>
  assert model.config.d_model == config.d_model
  logits = model.logits(reference["input_ids"], reference["decoder_input_ids"], prompt=reference["prompt"])
  assert np.abs(logits - reference["logits_prompt"]).max() <= 1e-4


def test_load_t5_overrides_and_bad_prompt():
  model = spot_jax.load_t5(FIXTURE, dtype="bfloat16", relative_attention_max_distance=64)
  assert model.config.dtype == "bfloat16" and model.config.relative_attention_max_distance == 64
  with pytest.raises(ValueError, match=r"expected \[P, 32\]"):
    model.encode(np.ones((1, 3), np.int32), prompt=np.zeros((4, 16), np.float32))


def test_load_t5_rejects_a_path_of_neither_format(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match="neither a T5X checkpoint"):
    spot_jax.load_t5(str(tmp_path))


def test_load_t5_on_a_peft_prompt_adapter_names_the_swap_and_its_base_model(tmp_path):
  """A PEFT prompt adapter (adapter_config.json + adapter_model.safetensors) was "holds weights but no
  config.json ... Copy it from the model's Hub repository"."""
  import json
  from spot_jax import prompt_export
  adapter = prompt_export.export_peft(np.zeros((4, 32), np.float32), str(tmp_path / "adapter"),
                                      base_model_name_or_path=FIXTURE)
  for path in (adapter, os.path.join(adapter, "adapter_model.safetensors")):
    with pytest.raises(ValueError) as e:
      spot_jax.load_t5(path)
    said = str(e.value)
    assert said.startswith(f"{adapter} is a PEFT prompt adapter (PROMPT_TUNING: adapter_config.json + "
                           "adapter_model.safetensors), a trained soft prompt, not a model checkpoint: pass it as "
                           "the prompt (PROMPT_FILE"), said
    assert said.endswith(f"its base model: {FIXTURE} (adapter_config.json's base_model_name_or_path)"), said
    assert "no config.json" not in said
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  config.update(peft_type="LORA", base_model_name_or_path=None)
  (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"is a PEFT LORA adapter .*not a soft prompt either.*Load its base model: "
                                       r"its base model, the T5 it was trained on \(adapter_config\.json's "
                                       r"base_model_name_or_path names none\)"):
    spot_jax.load_t5(adapter)


def test_load_t5_on_a_training_model_dir_names_the_swap_and_its_frozen_model(tmp_path):
  """A spot_jax training MODEL_DIR (or its checkpoints/<step>, numpy_checkpoints/...) passed as the model:
  a listing of the folder, or "holds no `target` parameters" for checkpoints/<step>."""
  import jax.numpy as jnp
  from spot_jax import checkpointing, optim, prompt_export
  from spot_jax.train_step import init_state
  run = str(tmp_path / "run")
  state = init_state(np.zeros((4, 32), np.float32), optim.adafactor())._replace(step=jnp.asarray(4))
  ckpts = checkpointing.PromptCheckpoints(run, async_save=False)
  ckpts.save(state, {"step": 4, "frozen_model": {"path": "/models/from_meta", "seed": None}})
  ckpts.close()
  frozen_meta = f"/models/from_meta (recorded in {run}/checkpoints/4/meta/metadata)"
  with pytest.raises(ValueError, match=rf"{run} is a spot_jax prompt-tuning run's folder: it holds checkpoints/ of "
                                       rf"a trained prompt, not a T5 model.*the model that run was trained on: "
                                       rf"{re.escape(frozen_meta)}$"):
    spot_jax.load_t5(run)  # no export yet: the orbax checkpoint's metadata names the model
  prompt_export.export_numpy_checkpoint(np.zeros((4, 32), np.float32), run, 4, name="best", frozen_model=FIXTURE)
  frozen = f"{FIXTURE} (recorded in {run}/numpy_checkpoints/best/export.json)"
  for path in (run, f"{run}/checkpoints", f"{run}/checkpoints/4", f"{run}/checkpoints/4/state",
               f"{run}/numpy_checkpoints", f"{run}/numpy_checkpoints/best"):
    with pytest.raises(ValueError) as e:
      spot_jax.load_t5(path)
    said = str(e.value)
    start = (f"{run} is a spot_jax prompt-tuning run's folder: it" if path == run else
             f"{path} lies in a spot_jax prompt-tuning run's folder, {run}, which")
    assert said.startswith(f"{start} holds numpy_checkpoints/ and checkpoints/ of a trained prompt, not a T5 "
                           "model. Pass the run's folder as the prompt (PROMPT_FILE"), said
    assert said.endswith(f"the model that run was trained on: {frozen}"), said


def test_load_t5_on_a_prompt_tuning_model_dir_loads_its_newest_t5x_checkpoint(tmp_path, reference):
  """google-research/prompt-tuning's MODEL_DIR: T5X checkpoint_<step>/ (the frozen model's weights and the
  prompt) beside numpy_checkpoints/. It loads as the model, its newest step, as it did before spot_jax's
  own training MODEL_DIRs were refused ("a spot_jax prompt-tuning run's folder ... do not name it")."""
  from spot_jax.checkpoints import detect_format
  from spot_jax.checkpoints.infer_config import flatten, unflatten
  config, params = read_params(FIXTURE)
  run = tmp_path / "pt_run"
  prompt = reference["prompt"].astype(np.float32)
  with_prompt = unflatten({**flatten(params), "encoder/prompt/prompt/prompt": prompt})
  write_t5x(with_prompt, str(run), step=1_100_500)
  write_t5x(with_prompt, str(run), step=1_101_000)
  export = run / "numpy_checkpoints" / "checkpoint_1101000"
  export.mkdir(parents=True)
  with open(export / "encoder.prompt.prompt.prompt", "wb") as f:
    np.save(f, prompt)
  assert detect_format(str(run)) == "t5x"
  model = spot_jax.load_t5(str(run))
  assert model.config.d_model == config.d_model
  logits = model.logits(reference["input_ids"], reference["decoder_input_ids"], prompt=reference["prompt"])
  assert np.abs(logits - reference["logits_prompt"]).max() <= 1e-4
  # Its exports are still a prompt, not a model.
  with pytest.raises(ValueError, match=r"numpy_checkpoints lies in a spot_jax prompt-tuning run's folder"):
    spot_jax.load_t5(str(run / "numpy_checkpoints"))


def test_a_prompt_tuning_model_dir_written_with_orbax_is_a_model(tmp_path):
  """The same MODEL_DIR of a prompt-tuning run whose T5X saved with Orbax (checkpoint_<step>/state/)."""
  pytest.importorskip("orbax.checkpoint")
  from spot_jax.checkpoints import detect_format
  from spot_jax.checkpoints.infer_config import unflatten
  from test_checkpoints_t5x_orbax import write_t5x_orbax
  run = tmp_path / "pt_run"
  write_t5x_orbax(unflatten({"token_embedder/embedding": np.ones((16, 6), np.float32),
                             "encoder/prompt/prompt/prompt": np.zeros((4, 6), np.float32)}), str(run), 3)
  (run / "numpy_checkpoints" / "checkpoint_3").mkdir(parents=True)
  with open(run / "numpy_checkpoints" / "checkpoint_3" / "encoder.prompt.prompt.prompt", "wb") as f:
    np.save(f, np.zeros((4, 6), np.float32))
  assert detect_format(str(run)) == "t5x_orbax"


def test_peft_bfloat16_adapter_gives_the_logits_peft_gives():
  """A prompt PEFT saved in bfloat16 (tests/fixtures/make_hf_formats.py) on the model it was made for."""
  import warnings
  from spot_jax import prompt_io
  adapter = os.path.join(os.path.dirname(__file__), "fixtures", "hf_formats", "peft_bf16")
  ref = np.load(os.path.join(adapter, "outputs.npz"))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # PEFT's decoder rows are dropped, with a warning
    prompt = prompt_io.load_prompt(adapter)
  model = spot_jax.load_t5(FIXTURE)
  logits = model.logits(ref["input_ids"], ref["decoder_input_ids"], prompt=prompt)
  assert np.abs(logits - ref["logits"]).max() <= 1e-4


def test_load_t5_names_a_pytorch_only_folder(tmp_path):
  import shutil
  shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
  with pytest.raises(ValueError, match=r"(?s)holds PyTorch pickle weights \(pytorch_model\.bin\).*"
                                       r"save_pretrained\(.*safe_serialization=True\)"):
    spot_jax.load_t5(str(tmp_path))


@pytest.fixture(scope="module")
def tiny():
  return spot_jax.load_t5(FIXTURE)  # vocab_size 128, d_model 32


_CALLS = {"encode": lambda m, ids, dec: m.encode(ids), "logits": lambda m, ids, dec: m.logits(ids, dec)}


@pytest.mark.parametrize("method", sorted(_CALLS))
def test_token_ids_outside_the_vocabulary_are_refused_not_nan(tiny, method):
  """`jnp.take` gathers an out-of-range id as a row of NaN: the outputs would be all-NaN, silently."""
  ok = np.array([[4, 5, 1]])
  with pytest.raises(ValueError, match=r"input_ids holds token id 128 \(min 1, max 128\), but this model's "
                                       r"vocab_size is 128 .*tokenized with another model's vocabulary"):
    _CALLS[method](tiny, np.array([[128, 5, 1]]), ok)
  with pytest.raises(ValueError, match=r"input_ids holds negative token id -100 .*vocab_size=128.*Pad with 0"):
    _CALLS[method](tiny, np.array([[-100, 5, 1]]), ok)
  if method == "logits":
    with pytest.raises(ValueError, match=r"decoder_input_ids holds token id 40000 .*vocab_size is 128"):
      tiny.logits(ok, np.array([[0, 40000]]))
    with pytest.raises(ValueError, match=r"decoder_input_ids holds negative token id -1 "):
      tiny.logits(ok, np.array([[-1]]))
  assert np.isfinite(_CALLS[method](tiny, np.array([[127, 5, 1]]), np.array([[0, 127]]))).all()


def test_token_ids_must_be_a_2d_integer_batch(tiny):
  with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\] token ids, got shape \(3,\); "
                                       r"wrap a single example as x\[None\]"):
    tiny.encode(np.array([4, 5, 1]))
  with pytest.raises(ValueError, match=r"decoder_input_ids must be \[batch, length\] .*got shape \(1,\)"):
    tiny.logits(np.array([[4, 5, 1]]), np.array([0]))
  with pytest.raises(ValueError, match=r"input_ids must hold integer token ids, got dtype float"):
    tiny.encode(np.array([[4.5, 5, 1]]))
  assert tiny.encode(np.array([[4.0, 5, 1]])).shape == (1, 3, 32)  # integral floats are ids


def test_decoder_batch_must_match_the_input_batch(tiny):
  with pytest.raises(ValueError, match=r"input_ids has batch size 2 but decoder_input_ids has 3"):
    tiny.logits(np.ones((2, 3), np.int32), np.zeros((3, 1), np.int32))


@pytest.mark.parametrize("shape", [(4, 32), (2, 4, 32)])
def test_non_finite_prompt_is_refused_not_nan(tiny, shape):
  prompt = np.zeros(shape, np.float32)
  prompt[..., 1, 3] = np.nan
  prompt[..., 2, 0] = np.inf
  bad = 2 * (shape[0] if len(shape) == 3 else 1)
  with pytest.raises(ValueError, match=rf"prompt holds {bad} NaN/inf value\(s\)"):
    tiny.encode(np.ones((2, 3), np.int32), prompt=prompt)
  with pytest.raises(ValueError, match=r"NaN/inf"):
    tiny.logits(np.ones((2, 3), np.int32), np.zeros((2, 1), np.int32), prompt=prompt)


REAL_T5X = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures",
                        "t5x_tiny_checkpoint")


@pytest.mark.skipif(not os.path.isdir(REAL_T5X), reason="shared T5X fixture not present")
def test_real_t5x_checkpoint_refuses_ids_of_another_vocabulary():
  model = spot_jax.load_t5(REAL_T5X)
  with pytest.raises(ValueError, match=rf"token id 40000 .*vocab_size is {model.config.vocab_size}"):
    model.logits(np.array([[40000, 5, 1]]), np.zeros((1, 1), np.int32))

"""spot_jax's PEFT export against Hugging Face PEFT itself (an independent implementation).

The fixture (tests/fixtures/peft_parity/, made by tests/fixtures/make_peft_parity.py with torch,
transformers 4.57 and peft 0.21) holds a prompt exported by `prompt_export.export_peft`, and the logits
that `peft.PeftModel.from_pretrained` gave with it on tests/fixtures/hf_parity/t5_1_1.
"""
import json
import os

import numpy as np
from safetensors.numpy import load_file

import spot_jax
from spot_jax import prompt_export, prompt_io

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ADAPTER = os.path.join(FIXTURES, "peft_parity", "adapter")
TOL = 1e-4


def _ref():
  return dict(np.load(os.path.join(FIXTURES, "peft_parity", "outputs.npz")))


def test_peft_logits_with_our_exported_prompt_match_ours():
  """PEFT prepends the exported prompt to the encoder input, as spot_jax does: same logits."""
  ref = _ref()
  prompt = prompt_io.load_prompt(ADAPTER)  # our reader of the PEFT format
  np.testing.assert_array_equal(prompt, ref["prompt"])
  model = spot_jax.load_t5(os.path.join(FIXTURES, "hf_parity", "t5_1_1"))
  logits = model.logits(ref["input_ids"], ref["decoder_input_ids"], prompt=prompt)
  err = float(np.max(np.abs(logits - ref["logits"])))
  assert err <= TOL, f"max abs error against PEFT {err:.3g} > {TOL}"
  without = model.logits(ref["input_ids"], ref["decoder_input_ids"])
  assert float(np.max(np.abs(without - ref["logits"]))) > 100 * TOL  # the prompt is what matches


def test_export_still_writes_what_peft_loaded(tmp_path):
  """Today's export_peft writes the same adapter files the fixture's PEFT run loaded."""
  ref = _ref()
  out = prompt_export.export_peft(ref["prompt"], str(tmp_path / "adapter"),
                              base_model_name_or_path="tests/fixtures/hf_parity/t5_1_1")
  for name in ("adapter_config.json",):
    with open(os.path.join(out, name)) as a, open(os.path.join(ADAPTER, name)) as b:
      assert json.load(a) == json.load(b)
  got, want = load_file(os.path.join(out, "adapter_model.safetensors")), load_file(
      os.path.join(ADAPTER, "adapter_model.safetensors"))
  assert list(got) == list(want) == ["prompt_embeddings"]
  np.testing.assert_array_equal(got["prompt_embeddings"], want["prompt_embeddings"])


def test_an_adapter_saved_by_peft_loads_as_its_prompt():
  prompt = prompt_io.load_prompt(os.path.join(FIXTURES, "peft_parity", "saved_by_peft"))
  np.testing.assert_array_equal(prompt, _ref()["prompt"])

"""Hugging Face T5 directories: config.json read as transformers reads it (its fields, their types
and defaults, the variant it implies) and checked against the tensors beside it and a gin config."""
import json
import os
import warnings

import pytest
from safetensors.numpy import load_file, save_file

from spot_jax.checkpoints import CheckpointError, read_hf, read_params, write_hf
from spot_jax.checkpoints.hf_config import config_from_hf

from hf_checkpoint_setup import V10, V11, _assert_same, _params


def _hf_json(**changes):
  from spot_jax.checkpoints.hf_config import config_to_hf
  d = config_to_hf(V11)
  d.update(changes)
  return d


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="bart"), "model_type 'bart' is not supported"),
    (dict(is_decoder=True), "not an encoder-decoder"),
    (dict(architectures=["T5EncoderModel"]), "not an encoder-decoder"),
    (dict(is_encoder_decoder=False), "not an encoder-decoder"),
    (dict(feed_forward_proj="gated-silu"), "feed_forward_proj 'gated-silu' is not supported"),
])
def test_unsupported_architectures(changes, match):
  with pytest.raises(CheckpointError, match=match):
    config_from_hf(_hf_json(**changes))


@pytest.mark.parametrize("changes,match", [
    (dict(d_kv=None), r"field 'd_kv' is null, not a positive integer"),
    (dict(d_model="512"), r"field 'd_model' is \"512\", not a positive integer"),
    (dict(num_heads=2.5), r"field 'num_heads' is 2.5, not a positive integer"),
    (dict(num_layers=0), r"field 'num_layers' is 0, not a positive integer"),
    (dict(relative_attention_num_buckets=None), r"field 'relative_attention_num_buckets' is null, not a positive integer"),
    (dict(layer_norm_epsilon=None), r"field 'layer_norm_epsilon' is null, not a number >= 0"),
])
def test_config_json_field_of_the_wrong_type_is_named(changes, match):
  """A hand-edited field (`"d_kv": null`) used to surface as `TypeError: int() argument ...`."""
  with pytest.raises(CheckpointError, match=rf"config.json: {match}; set it to the model's value"):
    config_from_hf(_hf_json(**changes))


def test_config_json_null_num_decoder_layers_means_num_layers():
  assert config_from_hf(_hf_json(num_decoder_layers=None)).num_decoder_layers == V11.num_encoder_layers


def test_read_hf_names_the_config_file_and_field(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  d = json.loads((tmp_path / "config.json").read_text())
  d["d_kv"] = None
  (tmp_path / "config.json").write_text(json.dumps(d))
  with pytest.raises(CheckpointError, match=r"config\.json: field 'd_kv' is null"):
    read_params(str(tmp_path))


def test_config_json_defaults_follow_transformers():
  d = _hf_json()
  for k in ("tie_word_embeddings", "num_decoder_layers", "relative_attention_max_distance"):
    del d[k]
  config = config_from_hf(d)
  assert config.tie_word_embeddings and config.num_decoder_layers == V11.num_encoder_layers
  assert config.relative_attention_max_distance == 128


def test_shape_contradicting_config_json(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  d = json.loads((tmp_path / "config.json").read_text())
  d["d_ff"] = 16
  (tmp_path / "config.json").write_text(json.dumps(d))
  with pytest.raises(CheckpointError, match=r"'encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight'.*"
                                            r"has shape \(12, 8\) but config\.json implies \(16, 8\)"):
    read_params(str(tmp_path))


def test_given_config_must_agree(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  with pytest.raises(CheckpointError, match="vocab_size: config says 32, checkpoint has 16"):
    read_params(str(tmp_path), config=V11.replace(vocab_size=32))
  # Gated-GELU with tied embeddings (HF's T5Config default): no variant file has it, the hint binds it.
  tied = V11.replace(tie_word_embeddings=True)
  write_hf(_params(tied), tied, str(tmp_path / "tied"))
  with pytest.raises(CheckpointError, match=r"(?s)tie_word_embeddings: config says False, checkpoint has True.*"
                                            r"--gin\.spot_jax\.model_config\.tie_word_embeddings=True\.$"):
    read_params(str(tmp_path / "tied"), config=V11)
  with pytest.raises(CheckpointError) as shape_only:
    read_params(str(tmp_path), config=V11.replace(vocab_size=32))
  assert "field by field" not in str(shape_only.value)  # a size mismatch is not bound away


def test_the_field_by_field_hint_works_pasted_into_bash():
  """A string field was suggested as --gin.spot_jax.model_config.feed_forward='gated-gelu': bash removes the
  quotes, and gin refused the bare word gated-gelu."""
  import subprocess
  from spot_jax import gin_checks
  from spot_jax.checkpoints.infer_config import check_agreement
  tied = V11.replace(tie_word_embeddings=True)  # gated-GELU, tied: no variant file has it
  with pytest.raises(CheckpointError) as e:
    check_agreement(V10.replace(tie_word_embeddings=False), tied, "the checkpoint")
  hint = str(e.value).rpartition("field by field: ")[2]
  assert hint == "--gin.spot_jax.model_config.feed_forward=\"'gated-gelu'\" " \
                 "--gin.spot_jax.model_config.tie_word_embeddings=True.", hint
  words = subprocess.run(["bash", "-c", f"printf '%s\\0' {hint[:-1]}"], capture_output=True, text=True,
                         check=True).stdout.split("\0")[:-1]
  assert [gin_checks._parse_value(w.partition("=")[2]) for w in words] == ["gated-gelu", True]


def test_weights_without_config_json(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  os.remove(tmp_path / "config.json")
  with pytest.raises(CheckpointError, match=r"holds weights \(model\.safetensors\) but no config\.json.*"
                                            r"Copy it from where the weights came from"):
    read_params(str(tmp_path))


def test_read_hf_without_config_json(tmp_path):
  write_hf(_params(V11), V11, str(tmp_path))
  os.remove(tmp_path / "config.json")
  with pytest.raises(CheckpointError, match=r"config\.json does not exist: a Hugging Face checkpoint needs"):
    read_hf(str(tmp_path))


# ----------------------------------------------------------------------------- found by an HF/PEFT audit

def _edit_config(folder, drop=(), **changes):
  d = json.loads((folder / "config.json").read_text())
  for k in drop:
    d.pop(k, None)
  d.update(changes)
  (folder / "config.json").write_text(json.dumps(d))


def test_variant_defaults_follow_the_model_type_as_in_transformers(tmp_path):
  """MT5Config defaults to untied gated-gelu (T5Config to tied relu): an mT5 config.json without those
  fields was read as tied, silently dropping lm_head.weight (logits off by up to 10.7)."""
  params = _params(V11)
  write_hf(params, V11, str(tmp_path))
  _edit_config(tmp_path, drop=("tie_word_embeddings",), model_type="mt5",
               architectures=["MT5ForConditionalGeneration"])
  config, got = read_params(str(tmp_path))
  assert config == V11 and not config.tie_word_embeddings and config.gated
  _assert_same(params, got)
  for model_type, tied, ff in (("t5", True, "relu"), ("mt5", False, "gated-gelu")):
    d = {k: v for k, v in _hf_json(model_type=model_type).items()
         if k not in ("tie_word_embeddings", "feed_forward_proj", "dense_act_fn", "is_gated_act")}
    config = config_from_hf(d)
    assert (config.tie_word_embeddings, config.feed_forward) == (tied, ff), model_type


@pytest.mark.parametrize("drop_field", [False, True], ids=["says_tied", "t5_default_tied"])
def test_tied_config_over_a_different_lm_head_is_an_error(tmp_path, drop_field):
  write_hf(_params(V11), V11, str(tmp_path))  # untied: lm_head.weight differs from shared.weight
  if drop_field:
    _edit_config(tmp_path, drop=("tie_word_embeddings",))
    said = r"config\.json has no \"tie_word_embeddings\", and model_type 't5' defaults to tied"
  else:
    _edit_config(tmp_path, tie_word_embeddings=True)
    said = r"config\.json says \"tie_word_embeddings\": true"
  with pytest.raises(CheckpointError, match=rf"(?s){said}.*model\.safetensors also holds an lm_head\.weight that "
                                            r"differs from it \(max \|difference\| .*set \"tie_word_embeddings\": "
                                            r"false in config\.json"):
    read_params(str(tmp_path))


def test_tied_config_with_an_equal_lm_head_reads_without_a_word(tmp_path):
  params = _params(V10)
  write_hf(params, V10, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["lm_head.weight"] = tensors["shared.weight"].copy()  # older saves keep every tied copy
  tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"].copy()
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, got = read_params(str(tmp_path))
  _assert_same(params, got)


def test_tensors_the_config_does_not_use_are_named_in_a_warning(tmp_path):
  """transformers warns "Some weights ... were not used"; spot_jax read a 3-layer decoder as 2 silently."""
  deeper = V11.replace(num_decoder_layers=3)
  write_hf(_params(deeper), deeper, str(tmp_path))
  _edit_config(tmp_path, num_decoder_layers=2)
  with pytest.warns(UserWarning, match=r"14 tensor\(s\) of the checkpoint are not used .* 2\+2 layers.*"
                                       r"decoder\.block\.2\.layer\.0\.SelfAttention\.k\.weight.*the weights hold "
                                       r"decoder block 2 beyond the 2 that config\.json's num_decoder_layers says; "
                                       r"if that field is wrong, set it to 3"):
    config, _ = read_params(str(tmp_path))
  assert config.num_decoder_layers == 2


@pytest.mark.parametrize("content,kind", [("[1, 2]", "list"), ('"t5"', "string"), ("null", "null")])
def test_config_json_that_is_not_an_object(tmp_path, content, kind):
  """A JSON list used to give `AttributeError: 'list' object has no attribute 'get'`."""
  write_hf(_params(V11), V11, str(tmp_path))
  (tmp_path / "config.json").write_text(content)
  with pytest.raises(CheckpointError, match=rf"config\.json holds a JSON {kind}, not an object"):
    read_params(str(tmp_path))


@pytest.mark.parametrize("changes,match", [
    # bool("false") is True: a quoted flag silently tied the output layer.
    (dict(tie_word_embeddings="false"), r"field 'tie_word_embeddings' is \"false\", not true or false"),
    (dict(tie_word_embeddings=None), r"field 'tie_word_embeddings' is null, not true or false"),
    (dict(is_encoder_decoder="yes"), r"field 'is_encoder_decoder' is \"yes\", not true or false"),
    (dict(feed_forward_proj=["gated-gelu"]), r"feed_forward_proj \['gated-gelu'\] is not supported"),
    (dict(architectures="T5ForConditionalGeneration"), r"field 'architectures' is \"T5ForConditionalGeneration\", "
                                                       r"not a list of class names"),
    (dict(architectures=[5]), r"field 'architectures' is \[5\], not a list"),
    (dict(model_type=["t5"]), r"model_type \['t5'\] is not supported"),
    # transformers builds the MLP from these two when config.json states them
    (dict(dense_act_fn="gelu"), r"dense_act_fn \"gelu\" with feed_forward_proj 'gated-gelu': transformers would "
                                r"apply 'gelu', spot_jax computes 'gelu_new'"),
    (dict(is_gated_act=False), r"is_gated_act is false but feed_forward_proj 'gated-gelu' is gated"),
])
def test_config_json_fields_of_the_wrong_type_or_meaning(changes, match):
  with pytest.raises(CheckpointError, match=rf"config\.json: {match}"):
    config_from_hf(_hf_json(**changes))


def test_tanh_gelu_under_its_other_names_is_accepted():
  for act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    assert config_from_hf(_hf_json(dense_act_fn=act)).feed_forward == "gated-gelu"

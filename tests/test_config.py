"""spot_jax/config.py and gin/models/: every variant file with every size file gives T5X's dimensions
(the table below is T5X's t5x/examples/t5/{t5_1_0,t5_1_1,mt5}/*.gin), and a size of the other family is
refused naming the fix."""
import gin
import pytest

from spot_jax import gin_utils
from spot_jax.config import size_config

# (d_model, heads, head_dim, d_ff, encoder layers, decoder layers, vocab, feed_forward, tied)
T5X = {("t5_1_0", "small"): (512, 8, 64, 2048, 6, 6, 32128, "relu", True),
       ("t5_1_0", "base"): (768, 12, 64, 3072, 12, 12, 32128, "relu", True),
       ("t5_1_0", "large"): (1024, 16, 64, 4096, 24, 24, 32128, "relu", True),
       ("t5_1_0", "3B"): (1024, 32, 128, 16384, 24, 24, 32128, "relu", True),
       ("t5_1_0", "11B"): (1024, 128, 128, 65536, 24, 24, 32128, "relu", True)}
for _variant in ("t5_1_1", "t5_1_1_lm_adapted", "mt5"):
  for _size, _dims in {"small": (512, 6, 64, 1024, 8, 8), "base": (768, 12, 64, 2048, 12, 12),
                       "large": (1024, 16, 64, 2816, 24, 24), "xl": (2048, 32, 64, 5120, 24, 24),
                       "xxl": (4096, 64, 64, 10240, 24, 24)}.items():
    T5X[(_variant, _size)] = _dims + (250112 if _variant == "mt5" else 32128, "gated-gelu", False)
FIELDS = ("d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers", "num_decoder_layers",
          "vocab_size", "feed_forward", "tie_word_embeddings")


def _model_config(*files):
  gin_utils.parse_gin([*files], [])
  try:
    return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("variant,size", sorted(T5X))
def test_each_variant_and_size_file_gives_t5xs_dimensions(variant, size):
  config = _model_config(f"models/{variant}.gin", "prompts/random_uniform.gin", f"models/sizes/{size}.gin")
  assert tuple(getattr(config, f) for f in FIELDS) == T5X[(variant, size)]
  assert config.dropout_rate == 0.1 and config.relative_attention_num_buckets == 32
  assert config.dropout_broadcast  # T5X's masks, shared across positions


def test_a_size_of_the_other_family_is_refused_naming_the_fix():
  with pytest.raises(ValueError, match=r"unknown t5_1_0 size 'xl'; its sizes: \['tiny', 'small', 'base', 'large', "
                                       r"'3B', '11B'\] \('xl' is a size of t5_1_1: include models/t5_1_1\.gin"):
    _model_config("models/t5_1_0.gin", "prompts/random_uniform.gin", "models/sizes/xl.gin")
  with pytest.raises(ValueError, match=r"unknown t5_1_1 size '3B'.*'3B' is a size of t5_1_0.*from_checkpoint\.gin"):
    size_config("3B")
  with pytest.raises(ValueError, match=r"unknown T5 family 't5_2'"):
    size_config("small", family="t5_2")


@pytest.mark.parametrize("field,value,message", [
    ("dropout_rate", 1.0, r"dropout_rate must be a number in \[0, 1\), got 1\.0 \(1 drops every activation"),
    ("dropout_rate", -0.1, r"dropout_rate must be a number in \[0, 1\)"),
    ("layer_norm_epsilon", -1.0, r"layer_norm_epsilon must be a positive finite number, got -1\.0"),
    ("layer_norm_epsilon", float("nan"), r"layer_norm_epsilon must be a positive finite number, got nan"),
    ("relative_attention_max_distance", -1, r"relative_attention_max_distance must be a positive integer"),
    ("relative_attention_max_distance", "64", r"relative_attention_max_distance must be a positive integer, got '64'"),
    ("d_ff", 64.0, r"d_ff must be a positive integer, got 64\.0"),
    ("tie_word_embeddings", "yes", r"tie_word_embeddings must be True or False, got 'yes'"),
])
def test_values_a_model_cannot_learn_or_run_with_are_refused_where_they_are_set(field, value, message):
  """Before: dropout 1 trained with a zero gradient and exit 0, eps -1 or NaN gave NaN logits named as a
  diverged loss, a string max distance failed deep in a layer."""
  with pytest.raises(ValueError, match=message):
    size_config("tiny", **{field: value})


def test_in_range_values_and_numpy_integers_are_accepted():
  import numpy as np
  config = size_config("tiny", dropout_rate=0, layer_norm_epsilon=1e-2, d_ff=np.int64(96))
  assert (config.dropout_rate, config.layer_norm_epsilon, config.d_ff) == (0, 1e-2, 96)

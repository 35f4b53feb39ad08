"""T5 architecture description shared by the model, the checkpoint readers and gin.

One frozen dataclass so that a config can be a jit static argument and a dict key.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

FEED_FORWARDS = ("relu", "gated-gelu")
ATTENTION_IMPLS = ("einsum", "fused", "pallas")
DROPOUT_BITS = ("auto", "16bit", "per_element")
MLP_BACKWARDS = ("auto", "store", "recompute")
NORM_IMPLS = ("xla", "pallas")
CROSS_ATTENTION_IMPLS = ("auto", "einsum", "pallas")
PALLAS_ATTENTION_BACKWARDS = ("two_kernels", "atomic_dq")
MATMUL_DTYPES = ("activation", "bfloat16")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and variant of a T5 encoder-decoder.

  `feed_forward="relu"` with `tie_word_embeddings=True` is T5 1.0; `"gated-gelu"` with untied
  `logits_dense` is T5 1.1, LM-adapted and mT5 (DESIGN.md §3).
  """
  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  feed_forward: str = "gated-gelu"
  tie_word_embeddings: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.1
  dtype: str = "float32"  # activation dtype; parameters stay in their stored dtype
  # The inputs of every projection (attention q/k/v/o, the MLP, the logits): "activation" casts the
  # kernel to the activation dtype (T5X's form); "bfloat16" rounds the input and the kernel to
  # bfloat16 and adds the products up in float32, the output in the activation dtype. On CPUs with
  # AVX512-BF16/AMX, XLA runs such products up to three times as fast as float32 ones, and with
  # bfloat16 frozen weights a decoding step reads half the bytes (docs/bench.md). Values change by
  # bfloat16 rounding of the products' inputs, as a TPU's default float32 matmul precision does.
  matmul_dtype: str = "activation"
  # Encoder self-attention and (outside incremental decoding) cross-attention: "einsum"
  # materializes the [B, H, Q, K] probabilities (T5X's form, with dropout on them); "fused" calls
  # cuDNN flash attention on GPU (`jax.nn.dot_product_attention`'s XLA form elsewhere), which never
  # writes them to memory but drops no attention probabilities and needs right-padded inputs
  # (seqio's unpacked EncDecFeatureConverter layout). The weights are the same for both. "pallas"
  # is "fused" with the encoder self-attention through our own Triton flash kernel
  # (`spot_jax/pallas_attention.py`, GPUs; interpreted on CPU), which reads T5's bias itself.
  attention_impl: str = "einsum"
  # The decoder's cross-attention in training: "auto" follows `attention_impl` (einsum, or cuDNN
  # for "fused" and "pallas"); "einsum" keeps T5X's form whatever the encoder uses (its
  # probabilities are small: 32 queries); "pallas" runs it through our flash kernel (no bias,
  # launch `pallas_attention.CROSS_LAUNCH`; needs `attention_impl` "fused" or "pallas").
  cross_attention_impl: str = "auto"
  # Einsum attention only: scores, softmax and the stored probabilities in float32 (HF's choice,
  # and ours by default) or in the activation dtype (T5X's `float32_attention_logits=False`), which
  # halves the bytes of the [B, H, L, L] tensors that bound a bfloat16 step on a GPU.
  float32_attention_logits: bool = True
  # How dropout masks get their random bits (dropout._keep_mask): "16bit" draws two per hashed word
  # (least hashing: CPUs), "per_element" hashes each element's index (an elementwise function XLA
  # can fuse: accelerators); "auto" picks by backend. Same distribution either way.
  dropout_bits: str = "auto"
  # Dropout masks shared across sequence positions (mask [B, 1, D] for [B, L, D]; attention
  # probabilities [B, H, 1, K]), as T5X's T5 and prompt-tuning's flaxformer draw them
  # (`broadcast_dims=(-2,)`, `broadcast_dropout=True`), except after the encoder's final norm, where
  # T5X draws per element too. False: one draw per element (HF's and PyTorch's form; the Python
  # default, which the benchmarks against HF PEFT keep). `models/t5_1_1.gin` (every variant file)
  # sets True. The L-times smaller masks also cost L times fewer random bits.
  dropout_broadcast: bool = False
  # Gated-GELU block, training: "store" keeps GELU's tanh and the dropout mask for the backward
  # pass; "recompute" recomputes both from the two projections, which are kept anyway (less memory
  # traffic: accelerators); "auto" picks by target platform. Same values either way.
  mlp_backward: str = "auto"
  # Encoder residual adds, their dropout and the RMSNorm after each: "xla" lets XLA fuse them
  # (two kernels each way); "pallas" runs one Triton kernel each way (spot_jax/fused_norm.py: fewer
  # bytes moved on GPUs; interpreted, slowly, on CPU; no TPU). Its dropout masks are the
  # "per_element" ones. Same values either way.
  norm_impl: str = "xla"
  # Launch settings of those Triton kernels, for the GPU at hand (`python -m bench.attention_kernels`
  # and `bench.norm_kernels` time the candidates): `attention_impl="pallas"`'s (block_q, block_k,
  # num_warps, num_stages), and `norm_impl="pallas"`'s (rows per program, warps), where () is
  # `fused_norm.default_tiling`. They change speed only, never values.
  pallas_attention_launch: tuple = (64, 64, 4, 2)
  norm_tiling: tuple = ()
  # `attention_impl="pallas"`'s backward pass: "two_kernels" (`dq`, then `dk, dv`; seven tile
  # products, deterministic) or "atomic_dq" (one kernel adding `dq` up with float32 atomics: five
  # products, rounding that varies from run to run). Speed only; the values agree to rounding.
  pallas_attention_backward: str = "two_kernels"

  def __post_init__(self):
    self._check_numbers()
    # Lists (gin, JSON) become tuples: a config is a jit static argument and must hash.
    for name, sizes in (("pallas_attention_launch", (4,)), ("norm_tiling", (0, 2))):
      value = getattr(self, name)
      try:
        value = tuple(int(x) for x in value)
      except (TypeError, ValueError):
        value = None
      if value is None or len(value) not in sizes or any(x < 1 for x in value):
        raise ValueError(f"{name}={getattr(self, name)!r} must be {' or '.join(map(str, sizes))} "
                         "positive integers")
      object.__setattr__(self, name, value)
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r} is not supported; use one of "
                       f"{ATTENTION_IMPLS}")
    if self.cross_attention_impl not in CROSS_ATTENTION_IMPLS:
      raise ValueError(f"cross_attention_impl={self.cross_attention_impl!r} is not supported; use "
                       f"one of {CROSS_ATTENTION_IMPLS}")
    if self.cross_attention_impl == "pallas" and self.attention_impl == "einsum":
      raise ValueError("cross_attention_impl='pallas' needs attention_impl 'fused' or 'pallas' "
                       "(right-padded lengths instead of an additive mask); got 'einsum'")
    if self.pallas_attention_backward not in PALLAS_ATTENTION_BACKWARDS:
      raise ValueError(f"pallas_attention_backward={self.pallas_attention_backward!r} is not "
                       f"supported; use one of {PALLAS_ATTENTION_BACKWARDS}")
    if self.dropout_bits not in DROPOUT_BITS:
      raise ValueError(f"dropout_bits={self.dropout_bits!r} is not supported; use one of "
                       f"{DROPOUT_BITS}")
    if self.mlp_backward not in MLP_BACKWARDS:
      raise ValueError(f"mlp_backward={self.mlp_backward!r} is not supported; use one of "
                       f"{MLP_BACKWARDS}")
    if self.norm_impl not in NORM_IMPLS:
      raise ValueError(f"norm_impl={self.norm_impl!r} is not supported; use one of {NORM_IMPLS}")
    if self.norm_impl == "pallas" and self.dropout_broadcast and self.dropout_rate > 0:
      raise ValueError("norm_impl='pallas' draws its dropout masks per element inside its kernel, not shared "
                       "across positions: set dropout_broadcast=False with it (--gin.spot_jax.model_config."
                       "dropout_broadcast=False), or keep norm_impl='xla'")
    if self.feed_forward not in FEED_FORWARDS:
      raise ValueError(f"feed_forward={self.feed_forward!r} is not supported; use one of {FEED_FORWARDS}")
    if self.matmul_dtype not in MATMUL_DTYPES:
      raise ValueError(f"matmul_dtype={self.matmul_dtype!r} is not supported; use one of "
                       f"{MATMUL_DTYPES}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r} is not supported; use 'float32' or 'bfloat16'")

  def _check_numbers(self):
    """Numbers out of range would not fail where they are set but give a model that cannot learn
    (dropout_rate 1: every activation dropped, a zero gradient) or NaN logits (eps <= 0), named as
    a diverged loss; a string ("64", from an unquoted override) would fail deep in a layer."""
    for name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers",
                 "num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rate, eps = self.dropout_rate, self.layer_norm_epsilon
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
      raise ValueError(f"dropout_rate must be a number in [0, 1), got {rate!r} (1 drops every activation: "
                       "nothing would be learned); T5 uses 0.1, and 0 turns dropout off")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
      raise ValueError(f"layer_norm_epsilon must be a positive finite number, got {eps!r} (every public T5 "
                       "uses 1e-6)")
    for name in ("tie_word_embeddings", "float32_attention_logits", "dropout_broadcast"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

  @property
  def gated(self) -> bool:
    return self.feed_forward == "gated-gelu"

  def replace(self, **overrides: Any) -> "T5Config":
    unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown T5Config field(s) {sorted(unknown)}; valid fields: "
                       f"{[f.name for f in dataclasses.fields(self)]}")
    return dataclasses.replace(self, **overrides)


def _v11(**kw) -> T5Config:
  return T5Config(feed_forward="gated-gelu", tie_word_embeddings=False, **kw)


# T5 1.1 / LM-adapted sizes (DESIGN.md §3); `tiny` is for tests and the offline demo.
SIZES = {
    "tiny": _v11(vocab_size=32128, d_model=64, num_heads=4, head_dim=16, d_ff=128,
                 num_encoder_layers=2, num_decoder_layers=2),
    "small": _v11(d_model=512, num_heads=6, head_dim=64, d_ff=1024, num_encoder_layers=8,
                  num_decoder_layers=8),
    "base": _v11(d_model=768, num_heads=12, head_dim=64, d_ff=2048, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": _v11(d_model=1024, num_heads=16, head_dim=64, d_ff=2816, num_encoder_layers=24,
                  num_decoder_layers=24),
    "xl": _v11(d_model=2048, num_heads=32, head_dim=64, d_ff=5120, num_encoder_layers=24,
               num_decoder_layers=24),
    "xxl": _v11(d_model=4096, num_heads=64, head_dim=64, d_ff=10240, num_encoder_layers=24,
                num_decoder_layers=24),
}


def _v10(**kw) -> T5Config:
  return T5Config(feed_forward="relu", tie_word_embeddings=True, **kw)


# T5 1.0 sizes (T5X's t5_1_0/*.gin): other widths and depths than 1.1's, and 3B / 11B in place of xl / xxl.
SIZES_T5_1_0 = {
    "tiny": SIZES["tiny"].replace(feed_forward="relu", tie_word_embeddings=True),
    "small": _v10(d_model=512, num_heads=8, head_dim=64, d_ff=2048, num_encoder_layers=6,
                  num_decoder_layers=6),
    "base": _v10(d_model=768, num_heads=12, head_dim=64, d_ff=3072, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": _v10(d_model=1024, num_heads=16, head_dim=64, d_ff=4096, num_encoder_layers=24,
                  num_decoder_layers=24),
    "3B": _v10(d_model=1024, num_heads=32, head_dim=128, d_ff=16384, num_encoder_layers=24,
               num_decoder_layers=24),
    "11B": _v10(d_model=1024, num_heads=128, head_dim=128, d_ff=65536, num_encoder_layers=24,
                num_decoder_layers=24),
}
FAMILIES = {"t5_1_1": SIZES, "t5_1_0": SIZES_T5_1_0}


def size_config(name: str, family: str = "t5_1_1", **overrides: Any) -> T5Config:
  """The config of a named size of `family` ('t5_1_1': T5 1.1, LM-adapted and mT5, whose sizes
  agree; 't5_1_0'), with field overrides (e.g. `vocab_size=250112` for mT5)."""
  if family not in FAMILIES:
    raise ValueError(f"unknown T5 family {family!r}; known: {sorted(FAMILIES)}")
  sizes = FAMILIES[family]
  if name not in sizes:
    others = [f for f, s in FAMILIES.items() if name in s]
    hint = (f" ({name!r} is a size of {others[0]}: include models/{others[0]}.gin, or use "
            "models/sizes/from_checkpoint.gin to take the dimensions from the checkpoint)") if others else ""
    raise ValueError(f"unknown {family} size {name!r}; its sizes: {list(sizes)}{hint}")
  return sizes[name].replace(**overrides) if overrides else sizes[name]


FROM_CHECKPOINT = "from_checkpoint"


@dataclasses.dataclass(frozen=True)
class FromCheckpoint:
  """A model config whose dimensions come from the checkpoint it is loaded with
  (`models/sizes/from_checkpoint.gin`). `overrides` are the gin's other fields: the shape ones
  (vocab_size, feed_forward, ...) are checked against the checkpoint, the rest (dtype, dropout, max
  distance, attention_impl, ...) are applied, so `models/gpu_bf16.gin` still works beside it."""
  overrides: tuple  # ((field, value), ...): hashable, as gin values are compared


def model_config(size: str = "tiny", family: str = "t5_1_1", **overrides: Any):
  """Gin entry point (`models/*.gin` set the family and variant, `models/sizes/*.gin` the size): a
  size of the family plus any field overrides, or `size='from_checkpoint'` (a `FromCheckpoint`,
  resolved when the checkpoint is read)."""
  if size == FROM_CHECKPOINT:
    T5Config().replace(**overrides)  # unknown field names fail here, before anything is read
    return FromCheckpoint(tuple(sorted(overrides.items())))
  return size_config(size, family, **overrides)


def _register_gin():
  import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
  import gin
  gin.external_configurable(model_config, "model_config", module="spot_jax")


_register_gin()

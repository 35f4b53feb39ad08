"""Analytic FLOP counts of a prompt-tuning step and of greedy decoding (matmuls only, 2·m·k·n).

The frozen weights get no gradients, so a step costs the forward pass plus the backward pass through
*activations*: a matmul against a frozen weight costs 1× its forward again (the input gradient only),
a matmul between two activations (attention scores, attention-weighted values) costs 2×. Parts of the
decoder that do not depend on the prompt (the first layer's self-attention and its cross-attention
query) have no backward at all: JAX's autodiff never linearizes them. Elementwise work (norms,
softmax, GELU, the loss) is left out; XLA's cost analysis counts it, hence its slightly larger total.
"""
from __future__ import annotations

import dataclasses

from spot_jax.config import T5Config


def _mm(m, k, n):
  return 2 * m * k * n


@dataclasses.dataclass
class StepFlops:
  forward: int
  backward: int  # through activations only

  @property
  def total(self) -> int:
    return self.forward + self.backward

  @property
  def with_weight_gradients(self) -> int:
    """What full fine-tuning would cost: forward + 2× forward (T5X's usual 6·N·tokens estimate)."""
    return 3 * self.forward

  def as_dict(self) -> dict:
    return {"forward": self.forward, "backward_activations": self.backward, "total": self.total,
            "total_if_weight_gradients": self.with_weight_gradients}


def train_step_flops(config: T5Config, batch: int, input_length: int, target_length: int,
                     prompt_length: int) -> StepFlops:
  """FLOPs of one prompt-tuning step on `[batch, prompt_length + input_length]` encoder positions."""
  c = config
  B, S, T = batch, prompt_length + input_length, target_length
  d, inner, f, H, hd = c.d_model, c.num_heads * c.head_dim, c.d_ff, c.num_heads, c.head_dim
  n_in = 2 if c.gated else 1
  attn_mm = lambda q, k: 2 * B * H * q * k * hd  # one of the two [q, k] attention products

  fwd = bwd = 0
  # Encoder: every position depends on the prompt, so every product is differentiated.
  enc_weights = _mm(B * S, d, inner) * 4 + _mm(B * S, d, f) * n_in + _mm(B * S, f, d)
  enc_acts = attn_mm(S, S) * 2
  fwd += c.num_encoder_layers * (enc_weights + enc_acts)
  bwd += c.num_encoder_layers * (enc_weights + 2 * enc_acts)
  # Decoder.
  for i in range(c.num_decoder_layers):
    self_w, self_a = _mm(B * T, d, inner) * 4, attn_mm(T, T) * 2
    cross_q, cross_kv, cross_out = _mm(B * T, d, inner), _mm(B * S, d, inner) * 2, _mm(B * T, inner, d)
    cross_a = attn_mm(T, S) * 2
    mlp = _mm(B * T, d, f) * n_in + _mm(B * T, f, d)
    fwd += self_w + self_a + cross_q + cross_kv + cross_out + cross_a + mlp
    if i == 0:
      # The self-attention and the cross-attention query see only decoder tokens: no backward.
      # Scores need d(keys) only (1×); the value product needs both operands (2×).
      bwd += cross_kv + cross_out + attn_mm(T, S) * (1 + 2) + mlp
    else:
      bwd += self_w + 2 * self_a + cross_q + cross_kv + cross_out + 2 * cross_a + mlp
  logits = _mm(B * T, d, c.vocab_size)
  fwd += logits
  bwd += logits
  return StepFlops(int(fwd), int(bwd))


def decode_flops(config: T5Config, batch: int, input_length: int, prompt_length: int,
                 decode_length: int) -> int:
  """FLOPs of greedy decoding with a KV cache: encode once, then `decode_length` one-token steps.

  Each step attends over the full cache length (the cache is preallocated), as a jitted loop does.
  """
  c = config
  B, S, T = batch, prompt_length + input_length, decode_length
  d, inner, f, H, hd = c.d_model, c.num_heads * c.head_dim, c.d_ff, c.num_heads, c.head_dim
  n_in = 2 if c.gated else 1
  enc = c.num_encoder_layers * (_mm(B * S, d, inner) * 4 + _mm(B * S, d, f) * n_in + _mm(B * S, f, d)
                                + 4 * B * H * S * S * hd)
  cross_kv = c.num_decoder_layers * _mm(B * S, d, inner) * 2  # projected once per sequence
  per_token_layer = (_mm(B, d, inner) * 4 + 4 * B * H * T * hd  # self-attention over the cache
                     + _mm(B, d, inner) * 2 + 4 * B * H * S * hd  # cross-attention q, out
                     + _mm(B, d, f) * n_in + _mm(B, f, d))
  per_token = c.num_decoder_layers * per_token_layer + _mm(B, d, c.vocab_size)
  return int(enc + cross_kv + T * per_token)

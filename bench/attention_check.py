"""Do the attention forms compute the same step on this device? Run before timing them.

  python -m bench.attention_check [--size small] [--json out.json]

The fused form runs cuDNN on a GPU, which the CPU test suite cannot reach, so the GPU suite checks
it here first: the loss and the prompt gradient of T5 1.1 (random weights, bfloat16, dropout off,
right-padded rows of different lengths) under `attention_impl="fused"`, under `"pallas"` (our
Triton flash kernel; `pallas_cross`: the cross-attention through it too; `pallas_atomic`: its
one-kernel backward, `dq` added with atomics) and under bfloat16
attention logits, each against the float32-logits einsum
form; and `norm_impl="pallas"` (Triton
kernels, their dropout masks hashed in the kernel) against XLA's norms, dropout on, same key.
Prints relative errors; exits 1 when one is above `--tolerance` (bfloat16 rounding alone gives
about 1e-2).
"""
from __future__ import annotations

import argparse
import json
import sys


def relative_errors(size: str = "small", batch: int = 4, input_length: int = 200,
                    prompt_length: int = 100, target_length: int = 16, seed: int = 0,
                    only=("fused", "einsum_bf16_logits")) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bench.train_throughput import random_batch
  from spot_jax import model as model_lib, train_step
  from spot_jax.config import size_config

  base = size_config(size, dtype="bfloat16", dropout_rate=0.0)
  # name → (config, the variant it must equal, dropout on). The one-kernel norms are checked with
  # dropout on (their masks are hashed in the kernel) against the same step with XLA's norms.
  dropped = base.replace(attention_impl="fused", dropout_rate=0.1, dropout_bits="per_element")
  variants = {"einsum_f32_logits": (base, None, False),
              "fused": (base.replace(attention_impl="fused"), "einsum_f32_logits", False),
              "pallas": (base.replace(attention_impl="pallas"), "einsum_f32_logits", False),
              "pallas_cross": (base.replace(attention_impl="pallas", cross_attention_impl="pallas"),
                               "einsum_f32_logits", False),
              "pallas_atomic": (base.replace(attention_impl="pallas",
                                             pallas_attention_backward="atomic_dq"),
                                "einsum_f32_logits", False),
              "einsum_bf16_logits": (base.replace(float32_attention_logits=False),
                                     "einsum_f32_logits", False),
              "fused_dropout": (dropped, None, True),
              "pallas_norm": (dropped.replace(norm_impl="pallas"), "fused_dropout", True)}
  wanted = set(only) | {variants[name][1] for name in only}
  variants = {k: v for k, v in variants.items() if k in wanted}
  params = model_lib.T5(base).init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32),
                                   jnp.ones((1, 4), jnp.int32),
                                   prompt=jnp.zeros((prompt_length, base.d_model)))["params"]
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  data = random_batch(base, batch, input_length, target_length, seed)
  # Right padding of different lengths, so the fused form's sequence lengths are exercised.
  for row, keep in enumerate(np.linspace(input_length, input_length // 3, batch).astype(int)):
    data["encoder_input_tokens"][row, keep:] = 0
  prompt = jnp.asarray(np.random.default_rng(seed).uniform(-0.5, 0.5, (prompt_length, base.d_model)),
                       jnp.float32)
  out = {}
  for name, (config, _, dropout) in variants.items():
    loss_fn = train_step.make_loss_fn(config, enable_dropout=dropout)
    rng = jax.random.PRNGKey(seed + 1) if dropout else None
    mean_loss = lambda p: (lambda s, c: s / c)(*loss_fn(p, params, data, rng))
    loss, grad = jax.jit(jax.value_and_grad(mean_loss))(prompt)
    out[name] = (float(loss), np.asarray(grad, np.float64))
  result = {}
  for name in only:
    (loss, grad), (ref_loss, ref_grad) = out[name], out[variants[name][1]]
    result[name] = {"loss": loss, "reference": variants[name][1], "reference_loss": ref_loss,
                    "loss_rel_err": abs(loss - ref_loss) / abs(ref_loss),
                    "grad_rel_err": float(np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad))}
  return result | {"device": jax.devices()[0].device_kind, "size": size}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="small")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--input-length", type=int, default=200)
  p.add_argument("--prompt-length", type=int, default=100)
  p.add_argument("--target-length", type=int, default=16)
  p.add_argument("--tolerance", type=float, default=5e-2)
  p.add_argument("--json", default="")
  p.add_argument("--variants", default="fused,einsum_bf16_logits",
                 help="comma-separated forms to check (fused, pallas, pallas_cross, pallas_atomic, "
                      "einsum_bf16_logits: "
                      "against the float32-logits einsum form; pallas_norm: the one-kernel norms, "
                      "dropout on, against XLA's)")
  args = p.parse_args(argv)
  result = relative_errors(args.size, args.batch, args.input_length, args.prompt_length,
                           args.target_length, only=tuple(args.variants.split(",")))
  bad = []
  for name, r in result.items():
    if isinstance(r, dict):
      print(f"{name}: loss {r['loss']:.5f} vs {r['reference']}'s {r['reference_loss']:.5f} "
            f"(rel {r['loss_rel_err']:.2e}),"
            f" prompt gradient rel {r['grad_rel_err']:.2e}")
      if not max(r["loss_rel_err"], r["grad_rel_err"]) <= args.tolerance:
        bad.append(name)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  if bad:
    print(f"ABOVE TOLERANCE {args.tolerance}: {bad}")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())

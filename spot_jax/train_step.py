"""Where the prompt is trained: the jitted step that differentiates the prompt alone.

The frozen parameters are an argument of the step that is never differentiated, updated or copied
into optimizer state, so XLA computes gradients through activations only (no weight gradients).
The train state is a small pytree: step, prompt, optimizer state, and the first step whose loss,
gradient or prompt was not finite (such an update is skipped, so a saved prompt is never poisoned; the host checks the flag
at log and save points instead of syncing every step).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from spot_jax.config import T5Config
from spot_jax.model import T5

BATCH_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights")


class TrainState(NamedTuple):
  step: jax.Array
  prompt: jax.Array  # [P, d] float32
  opt_state: Any
  nonfinite_step: jax.Array  # -1 while every update so far was finite; else the first bad step (1-based)


def init_state(prompt, tx: optax.GradientTransformation) -> TrainState:
  prompt = jnp.asarray(prompt, jnp.float32)
  return TrainState(jnp.array(0, jnp.int32), prompt, tx.init(prompt), jnp.array(-1, jnp.int32))


def cross_entropy(logits, targets, weights, z_loss: float = 1e-4):
  """Token cross-entropy plus T5X's z-loss, summed over weighted tokens; returns (sum, count)."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  loss = log_z - target_logit + z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights)


def make_loss_fn(config: T5Config, enable_dropout: bool, z_loss: float = 1e-4) -> Callable:
  model = T5(config)

  def loss_fn(prompt, frozen, batch, rng):
    logits = model.apply({"params": frozen}, batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"], prompt=prompt, enable_dropout=enable_dropout,
                         rngs={"dropout": rng} if enable_dropout else {})
    return cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss)
  return loss_fn


def split_microbatches(batch, num_microbatches: int, mesh=None):
  """`[B, ...]` arrays -> `[num_microbatches, B // num_microbatches, ...]`, microbatch `i` holding rows
  `i, i + num_microbatches, i + 2 * num_microbatches, ...` of the batch.

  Strided, not in contiguous blocks: the batch is split over the mesh's `data` axis in contiguous
  blocks of rows, so block `i` of a contiguous split lived on `1/num_microbatches` of the data shards,
  and XLA gathered it and had every device compute the whole microbatch (no memory saved, the work
  multiplied). Strided, each device's block holds `B / (data * num_microbatches)` rows of every
  microbatch. Which rows form a microbatch depends only on `B` and `num_microbatches`, never on the
  mesh, so neither do the dropout masks. With `mesh`, each microbatch is also constrained to stay
  split as the batch is (where its rows divide over the batch's mesh axes).
  """
  def split(x):
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  micro = jax.tree.map(split, batch)
  if mesh is None:
    return micro
  from spot_jax import partitioning
  spec = partitioning.batch_sharding(mesh).spec
  shards = int(np.prod([mesh.shape[a] for a in jax.tree.leaves(tuple(spec))]))

  def constrain(x):
    if x.shape[1] % shards:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, *spec)))
  return jax.tree.map(constrain, micro)


def make_train_step(config: T5Config, tx: optax.GradientTransformation, enable_dropout: bool = True,
                    num_microbatches: int = 1, z_loss: float = 1e-4, mesh=None) -> Callable:
  """`step(state, frozen, batch, rng) -> (state, metrics)`; pure, to be jitted by the caller.

  The gradient is that of the loss summed over the batch's target tokens (cross-entropy and z-loss),
  as T5X computes it with prompt-tuning's LOSS_NORMALIZING_FACTOR=None: a batch with more target
  tokens weighs more. With microbatches (`split_microbatches`: strided rows, so each stays split over
  the `data` axis; pass the `mesh` the step is jitted over to pin that) the per-microbatch sums are
  added, so the update equals the full-batch one. Logged: `loss`, the mean over the batch's target
  tokens (comparable across batches and runs), `target_tokens`, `grad_norm` (of the summed loss's
  gradient, the one the optimizer gets) and `prompt_norm`.
  """
  loss_fn = make_loss_fn(config, enable_dropout, z_loss)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if num_microbatches == 1:
      (loss_sum, count), grad_sum = grad_fn(state.prompt, frozen, batch, rng)
    else:
      micro = split_microbatches(batch, num_microbatches, mesh)

      def body(carry, xs):
        mb, i = xs
        (l, c), g = grad_fn(state.prompt, frozen, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, c, g)), None

      zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros_like(state.prompt))
      (loss_sum, count, grad_sum), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(num_microbatches)))
    # Like T5X's loss without a normalizing factor, the update follows the sum; only the logged loss is
    # divided by the token count.
    loss, grads = loss_sum / jnp.maximum(count, 1.0), grad_sum
    updates, opt_state = tx.update(grads, state.opt_state, state.prompt)
    new_prompt = optax.apply_updates(state.prompt, updates)
    grad_norm, new_norm = optax.global_norm(grads), optax.global_norm(new_prompt)
    # A prompt whose norm overflows float32 (entries past ~1e18) has diverged even while the loss
    # stays finite (the first RMSNorm scales it back): treat it as a non-finite update too.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(new_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    # Numbered as the log numbers steps: the update that produces step N is step N.
    nonfinite = jnp.where((state.nonfinite_step < 0) & ~finite, state.step + 1, state.nonfinite_step)
    new_state = TrainState(state.step + 1, keep(new_prompt, state.prompt),
                           keep(opt_state, state.opt_state), nonfinite)
    metrics = {"loss": loss, "target_tokens": count, "grad_norm": grad_norm,
               "prompt_norm": jnp.where(finite, new_norm, optax.global_norm(state.prompt))}
    return new_state, metrics

  return step


# XLA options the step compiles with, by the mesh's platform. On a GPU, XLA's dot merger joins the
# projections that share an input into one matmul and then copies each output slice out again; the
# T5 1.1 base step ran 2.3% faster on an H200 without it (docs/bench.md). Only an XLA option: on
# CPU and TPU the step compiles with XLA's defaults.
GPU_COMPILER_OPTIONS = {"xla_gpu_dot_merger_threshold_mb": 0}


def default_compiler_options(mesh) -> dict:
  """The XLA options `jit_train_step` uses on `mesh`'s platform (none on CPU and TPU)."""
  return dict(GPU_COMPILER_OPTIONS) if mesh.devices.flat[0].platform in ("gpu", "cuda") else {}


def step_compiler_options(mesh, overrides: dict | None = None) -> dict:
  """What the step compiles with: `default_compiler_options(mesh)`, `overrides` added on top."""
  return {**default_compiler_options(mesh), **(overrides or {})}


def jit_train_step(step_fn, mesh, frozen_shardings, donate: bool = True,
                   compiler_options: dict | None = None):
  """`jax.jit` over the mesh: prompt/opt state replicated, frozen by logical rules, batch over data.

  `compiler_options` (XLA option name → value) are added to, and override, the platform's defaults
  (`step_compiler_options`).
  """
  from spot_jax import partitioning
  rep = partitioning.replicated(mesh)
  batch = partitioning.batch_sharding(mesh)
  options = step_compiler_options(mesh, compiler_options)
  return jax.jit(step_fn,
                 in_shardings=(rep, frozen_shardings, batch, rep),
                 out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else (),
                 compiler_options=options or None)

"""Prompt-tuning training throughput of spot_jax on random T5 weights.

The step is exactly the trainer's (`make_train_step` + `jit_train_step`); the batch is random tokens
already on the device (cycled over a few distinct batches), so the input pipeline is not measured.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import time

import numpy as np

from bench import flops as flops_lib


def host_peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB.

  Linux's `VmHWM` first: `getrusage`'s peak survives `exec`, so a child started from a large parent
  would report the parent's peak; `VmHWM` belongs to the current program only.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_host_peak_rss() -> bool:
  """Restart `VmHWM` from the current RSS (Linux: `echo 5 > /proc/self/clear_refs`).

  Lets one process measure the ceiling first and still report the training's own peak.
  """
  import gc
  gc.collect()
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def host_rss_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def device_peak_mib(devices) -> float | None:
  """Largest `peak_bytes_in_use` over devices, where the backend reports it (not on CPU)."""
  peaks = []
  for dev in devices:
    try:
      stats = dev.memory_stats()
    except Exception:  # pylint: disable=broad-except  (backends without allocator stats)
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) / 2 ** 20 if peaks else None


def xla_flops(compiled) -> float | None:
  """Total `flops` of XLA's cost analysis (a dict, or a list of per-program dicts in older JAX)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without cost analysis)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def random_frozen_params(config, shardings, weight_dtype: str = "float32", seed: int = 0):
  """Random T5 weights, made leaf by leaf on the host and placed in their final sharding.

  Shapes come from `jax.eval_shape` of the model's init; values are N(0, 1/fan_in) for kernels and
  N(0, 1) for embeddings (T5 1.1's init up to truncation), ones for norm scales. Only throughput is
  measured, so the exact initializer does not matter, but activations stay finite. Host numpy,
  one leaf at a time, rather than jitted `jax.random` generators: those left ~250 MB more resident
  memory behind them on CPU for T5-small (their uint32 temporaries), which the peak-RSS figure
  would then charge to the step; here the extra peak is one leaf.
  """
  import jax
  import jax.numpy as jnp
  from spot_jax.model import param_shapes

  is_shape = lambda x: isinstance(x, tuple)
  path_shapes, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(config),
                                                              is_leaf=is_shape)
  flat_shardings = jax.tree.leaves(shardings)
  rng = np.random.default_rng(seed)
  dtype = jnp.dtype(weight_dtype)
  leaves = []
  for (path, shape), sharding in zip(path_shapes, flat_shardings):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      value = np.ones(shape, np.float32)
    else:
      value = rng.standard_normal(shape, dtype=np.float32)
      if not ("embedding" in name and "rel_embedding" not in name):
        value *= np.float32(1.0 / math.sqrt(shape[0]))
    leaves.append(jax.device_put(value.astype(dtype, copy=False), sharding))
    del value
  return jax.tree.unflatten(treedef, leaves)


def random_batch(config, batch: int, input_length: int, target_length: int, seed: int) -> dict:
  """Host numpy batch in the EncDec feature-converter layout (no padding: every token is real)."""
  rng = np.random.default_rng(seed)
  vocab = min(config.vocab_size, 32000)
  inputs = rng.integers(2, vocab, (batch, input_length), dtype=np.int32)
  targets = rng.integers(2, vocab, (batch, target_length), dtype=np.int32)
  targets[:, -1] = 1  # EOS
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets, np.float32)}


def run(size: str = "small", batch: int = 8, input_length: int = 128, target_length: int = 8,
        prompt_length: int = 100, dtype: str = "float32", weight_dtype: str = "float32",
        num_partitions: int = 1, num_devices: int | None = None, microbatches: int = 1,
        dropout: float = 0.1, steps: int = 5, warmup: int = 1, donate: bool = True,
        config_overrides: dict | None = None, seed: int = 0, profile_dir: str = "",
        compiler_options: dict | None = None) -> dict:
  """Compile and time the prompt-tuning step; returns a flat dict of results (see `bench.md`).

  With `profile_dir`, three more steps run under the profiler after the timed ones (so the trace
  costs the timing nothing) and `profile` holds their device time by op (bench/device_profile.py).
  """
  import jax
  from spot_jax import model, optim, partitioning, train_step
  from spot_jax.config import size_config

  if batch % microbatches:
    raise ValueError(f"batch={batch} does not divide into microbatches={microbatches}; "
                     "pick a divisor of the batch")
  config = size_config(size, dtype=dtype, dropout_rate=dropout, **(config_overrides or {}))
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  if num_partitions < 1 or len(devices) % num_partitions:  # the mesh's own error names the gin macro
    raise ValueError(f"--num-partitions {num_partitions} must divide the {len(devices)} device(s) used: "
                     f"pass a divisor of {len(devices)} (or change --devices)")
  mesh = partitioning.make_mesh(num_partitions, devices=devices)
  data_size = mesh.shape["data"]
  if (batch // microbatches) % data_size:
    raise ValueError(f"the (micro)batch of {batch // microbatches} does not split over the "
                     f"{data_size} data-parallel devices; change --batch, --microbatches or "
                     "--num-partitions/--devices")
  logical = model.param_logical_axes(config)
  partitioning.check_divisible(model.param_shapes(config), logical, mesh)
  frozen_shardings = partitioning.tree_shardings(logical, mesh)

  peak_reset = reset_host_peak_rss()
  rss_before_mib = host_rss_mib()
  t0 = time.perf_counter()
  frozen = random_frozen_params(config, frozen_shardings, weight_dtype, seed)
  jax.block_until_ready(frozen)
  init_s = time.perf_counter() - t0
  rss_params_mib = host_rss_mib()

  tx = optim.adafactor(learning_rate=0.3)
  prompt = np.random.default_rng(seed).uniform(-0.5, 0.5, (prompt_length, config.d_model))
  state = jax.device_put(train_step.init_state(prompt.astype(np.float32), tx),
                         partitioning.replicated(mesh))
  step_fn = train_step.make_train_step(config, tx, enable_dropout=dropout > 0,
                                       num_microbatches=microbatches, mesh=mesh)
  jitted = train_step.jit_train_step(step_fn, mesh, frozen_shardings, donate=donate,
                                     compiler_options=compiler_options)
  compiler_options = train_step.step_compiler_options(mesh, compiler_options)  # as reported
  batches = [partitioning.global_batch(random_batch(config, batch, input_length, target_length,
                                                    seed + i), mesh) for i in range(2)]
  rng = jax.random.PRNGKey(seed)

  t0 = time.perf_counter()
  lowered = jitted.lower(state, frozen, batches[0], rng)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  peak_compile_mib = host_peak_rss_mib()

  for i in range(warmup):
    state, metrics = compiled(state, frozen, batches[i % 2], rng)
  jax.block_until_ready(state)
  times, cpu_times = [], []
  for i in range(steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, frozen, batches[i % 2], rng)
    jax.block_until_ready(state.step)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  # The rate reported: `steps` more steps back to back and one sync at the end, as the trainer runs
  # (no host sync per step), so dispatching step i+1 overlaps step i on an accelerator.
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state, frozen, batches[i % 2], rng)
  jax.block_until_ready(state)
  pipelined = (time.perf_counter() - start) / steps
  loss = float(metrics["loss"])

  profile = None
  if profile_dir:
    from bench import device_profile as profile_lib
    traced = 3

    def run_traced():
      nonlocal state
      for i in range(traced):
        state, _ = compiled(state, frozen, batches[i % 2], rng)
      jax.block_until_ready(state)

    try:
      xplane = profile_lib.trace(run_traced, profile_dir)
      hlo = compiled.as_text()
      with open(os.path.join(profile_dir, "step.hlo.txt"), "w") as f:
        f.write(hlo)
      profile = profile_lib.summarize(xplane, traced, hlo)
    except Exception as e:  # a profiler that fails (no CUPTI, say) must not lose the timings
      profile = {"error": f"{type(e).__name__}: {e}"}

  step_s = statistics.median(times)
  count = flops_lib.train_step_flops(config, batch, input_length, target_length, prompt_length)
  xla = xla_flops(compiled)
  return {
      "framework": "spot_jax", "pid": os.getpid(), "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "devices": len(devices), "device_kind": devices[0].device_kind,
      "mesh": dict(mesh.shape), "size": size, "batch": batch, "input_length": input_length,
      "target_length": target_length, "prompt_length": prompt_length, "dtype": dtype,
      "weight_dtype": weight_dtype, "matmul_dtype": config.matmul_dtype,
      "attention_impl": config.attention_impl,
      "cross_attention_impl": config.cross_attention_impl,
      "float32_attention_logits": config.float32_attention_logits,
      "dropout_bits": config.dropout_bits, "mlp_backward": config.mlp_backward,
      "norm_impl": config.norm_impl, "norm_tiling": list(config.norm_tiling),
      "pallas_attention_launch": list(config.pallas_attention_launch),
      "pallas_attention_backward": config.pallas_attention_backward,
      "compiler_options": compiler_options,
      "microbatches": microbatches, "dropout": dropout,
      "donate": donate, "steps": steps, "warmup": warmup,
      "init_s": init_s, "compile_s": compile_s,
      "step_s_median": step_s, "step_s_min": min(times), "step_times_s": times,
      "step_s_pipelined": pipelined,
      # CPU seconds of all threads per step: less sensitive than wall time to other processes'
      # load (wall ≈ cpu / cores on an idle machine).
      "step_cpu_s_median": statistics.median(cpu_times),
      "examples_per_s": batch / pipelined,
      "tokens_per_s": batch * (prompt_length + input_length + target_length) / pipelined,
      "flops_per_step": count.total, "flops": count.as_dict(), "xla_flops_per_step": xla,
      "xla_to_analytic": (xla / count.total) if xla else None,
      "gflops_per_s": count.total / pipelined / 1e9,
      "host_peak_rss_mib": host_peak_rss_mib(), "host_peak_reset_before_init": peak_reset,
      "host_rss_before_init_mib": rss_before_mib, "host_rss_after_init_mib": rss_params_mib,
      "host_peak_after_compile_mib": peak_compile_mib, "device_peak_mib": device_peak_mib(devices),
      "final_loss": loss, "loadavg_1min": os.getloadavg()[0], "profile": profile,
  }

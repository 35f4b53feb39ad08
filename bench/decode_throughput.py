"""Greedy-decode throughput of spot_jax (`spot_jax.decode`) on random T5 weights.

EOS is disabled (`eos_id=-1`) so every run decodes exactly `decode_length` tokens, matching HF
`generate(min_new_tokens=max_new_tokens=decode_length)` in the peer.
"""
from __future__ import annotations

import inspect
import os
import statistics
import time

import numpy as np

from bench import flops as flops_lib
from bench.train_throughput import (device_peak_mib, host_peak_rss_mib, random_batch,
                                    random_frozen_params, reset_host_peak_rss)


def run(size: str = "small", batch: int = 8, input_length: int = 128, prompt_length: int = 100,
        decode_length: int = 32, dtype: str = "float32", weight_dtype: str = "float32",
        num_partitions: int = 1, num_devices: int | None = None, steps: int = 3, warmup: int = 1,
        config_overrides: dict | None = None, seed: int = 0) -> dict:
  import jax
  import jax.numpy as jnp
  from spot_jax import decode, model, partitioning
  from spot_jax.config import size_config

  config = size_config(size, dtype=dtype, dropout_rate=0.0, **(config_overrides or {}))
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  mesh = partitioning.make_mesh(num_partitions, devices=devices)
  frozen_shardings = partitioning.tree_shardings(model.param_logical_axes(config), mesh)
  peak_reset = reset_host_peak_rss()  # a training bench may have run in this process first
  frozen = random_frozen_params(config, frozen_shardings, weight_dtype, seed)
  prompt = jnp.asarray(np.random.default_rng(seed).uniform(
      -0.5, 0.5, (prompt_length, config.d_model)).astype(np.float32))
  tokens = jnp.asarray(random_batch(config, batch, input_length, 1, seed)["encoder_input_tokens"])
  # eos_id -1 never matches: always decode the full length. (decode_fn takes eos_id either as a
  # static argument or as a traced one, depending on the spot_jax.decode version.)
  if "eos_id" in inspect.signature(decode.decode_fn).parameters:
    fn, call = decode.decode_fn(config, decode_length, eos_id=-1), (frozen, prompt, tokens)
  else:
    fn, call = decode.decode_fn(config, decode_length), (frozen, prompt, tokens, jnp.int32(-1))

  t0 = time.perf_counter()
  compiled = fn.lower(*call).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    compiled(*call).block_until_ready()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    out = compiled(*call).block_until_ready()
    times.append(time.perf_counter() - start)
  run_s = statistics.median(times)
  count = flops_lib.decode_flops(config, batch, input_length, prompt_length, decode_length)
  return {
      "framework": "spot_jax", "pid": os.getpid(), "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "devices": len(devices), "size": size, "batch": batch, "input_length": input_length,
      "prompt_length": prompt_length, "decode_length": decode_length, "dtype": dtype,
      "weight_dtype": weight_dtype, "matmul_dtype": config.matmul_dtype,
      "attention_impl": config.attention_impl,
      "float32_attention_logits": config.float32_attention_logits,
      "compile_s": compile_s, "decode_s_median": run_s,
      "decode_s_min": min(times), "decode_times_s": times, "generated_length": int(out.shape[1]),
      "examples_per_s": batch / run_s, "tokens_per_s": batch * decode_length / run_s,
      "flops_per_run": count,
      "gflops_per_s": count / run_s / 1e9, "host_peak_rss_mib": host_peak_rss_mib(),
      "host_peak_reset_before_init": peak_reset,
      "device_peak_mib": device_peak_mib(devices), "loadavg_1min": os.getloadavg()[0],
  }

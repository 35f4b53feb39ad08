"""The whole trainer (`spot_jax.train.train`) timed at the bench's shapes, beside the bare step.

`bench train` times the jitted step on batches already on the device; this runs the real loop on a
seqio task of random token ids over the model's whole vocabulary, full length (seqio/tf.data input,
host-to-device placement, logging, checkpoint at the end), so the difference between the two is what
the loop and the input pipeline cost. (A bundled task would not do: its 1100-id vocabulary is not a
32k model's, which the trainer refuses.) Timing uses the loop's own
syncs: the trainer reads metrics back only every `log_period` steps, so the time between two such
steps, divided by `log_period`, is the loop's throughput; the first window (compilation) is left out.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

EXAMPLES = 2048


def register_random_task(vocab_size: int, input_length: int, target_length: int) -> str:
  """(Once) registers a task of random ids in [2, vocab_size), `input_length` / `target_length` long
  with their EOS, so batches are as full as `bench train`'s; returns its name."""
  import numpy as np
  import seqio
  import tensorflow as tf
  name = f"bench_random_tokens_v{vocab_size}_i{input_length}_t{target_length}"
  if name in seqio.TaskRegistry.names():
    return name

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    rng = np.random.RandomState(0 if split == "train" else 1)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": rng.randint(2, vocab_size, size=(EXAMPLES, input_length - 1)).astype(np.int32),
        "targets": rng.randint(2, vocab_size, size=(EXAMPLES, target_length - 1)).astype(np.int32)})

  vocab = seqio.PassThroughVocabulary(size=vocab_size, eos_id=1)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"],
                                            num_input_examples={"train": EXAMPLES, "validation": EXAMPLES}),
      preprocessors=[seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")})
  return name


def run(size: str = "small", batch: int = 8, input_length: int = 128, target_length: int = 8,
        prompt_length: int = 100, dropout: float = 0.1, steps: int = 40, log_period: int = 10,
        dtype: str = "float32", weight_dtype: str = "float32",
        config_overrides: dict | None = None, seed: int = 0) -> dict:
  """Train `steps` steps from a random init; returns per-window step times and their median."""
  from spot_jax import train
  from spot_jax.config import size_config

  if steps < 2 * log_period:
    raise ValueError(f"steps={steps} must be at least 2 * log_period={2 * log_period}: the first "
                     "window holds the compilation and is not counted")
  config = size_config(size, dtype=dtype, dropout_rate=dropout, **(config_overrides or {}))
  task = register_random_task(config.vocab_size, input_length, target_length)
  marks = {}

  def mark(step, state):  # runs right after the loop's own sync at log steps
    if step % log_period == 0:
      marks[step] = time.perf_counter()

  with tempfile.TemporaryDirectory() as model_dir:
    start = time.perf_counter()
    train.train(model_dir=model_dir, mixture_or_task_name=task,
                task_feature_lengths={"inputs": input_length, "targets": target_length},
                train_steps=steps, batch_size=batch, model_config=config,
                prompt_length=prompt_length, seed=seed, save_period=10 ** 9,
                log_period=log_period, enable_dropout=dropout > 0, frozen_dtype=weight_dtype,
                hooks=[mark])
    total_s = time.perf_counter() - start
  logged = sorted(marks)
  windows = [(marks[b] - marks[a]) / (b - a) for a, b in zip(logged, logged[1:])]
  step_s = statistics.median(windows)
  return {"framework": "spot_jax.train", "pid": os.getpid(), "task": task, "size": size,
          "batch": batch, "input_length": input_length, "target_length": target_length,
          "prompt_length": prompt_length, "dropout": dropout, "dtype": dtype,
          "weight_dtype": weight_dtype, "steps": steps, "log_period": log_period,
          "window_step_s": windows, "step_s_median": step_s, "examples_per_s": batch / step_s,
          "first_window_s": marks[logged[0]] - start, "total_s": total_s}

"""The Hugging Face PEFT peer: the same prompt-tuning step in PyTorch, for `spot-jax bench --peer`.

Runs as its own process under a Python that has torch, transformers and peft (see
requirements-bench.txt: 4.57.x; 5.17 also ran, on GPU), so neither framework shares memory or
threads with the other. It imports nothing from spot_jax or JAX (so it repeats a few small helpers,
such as the peak-RSS reader); results go to stdout as one JSON line prefixed with `PEER_RESULT `.

Setup, matched to spot_jax's: T5ForConditionalGeneration built from a T5 1.1 config with random
weights, PEFT prompt tuning with the prompt on the encoder only (`num_transformer_submodules=1`),
frozen base, HF Adafactor with the prompt-tuning settings (constant lr 0.3, decay_rate -0.8,
clip_threshold 1.0, weight_decay 1e-5, no parameter scaling, no relative step).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

# T5 1.1 sizes (mirrors spot_jax.config.SIZES, repeated here so this script needs no spot_jax).
SIZES = {
    "tiny": dict(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2),
    "small": dict(d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8),
    "base": dict(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12),
    "large": dict(d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24,
                  num_decoder_layers=24),
    "xl": dict(d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24),
    "xxl": dict(d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_layers=24,
                num_decoder_layers=24),
}


def host_peak_rss_mib() -> float:
  """Peak RSS of this program (`VmHWM`: unlike getrusage's, it is not inherited across exec)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=("train", "decode"), default="train")
  p.add_argument("--size", default="small", choices=sorted(SIZES))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--input-length", type=int, default=128)
  p.add_argument("--target-length", type=int, default=8)
  p.add_argument("--prompt-length", type=int, default=100)
  p.add_argument("--decode-length", type=int, default=32)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                 help="auto: cuda when torch sees a GPU")
  p.add_argument("--vocab-size", type=int, default=32128)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def build(args):
  import torch
  import transformers
  import peft

  torch.manual_seed(args.seed)
  torch.set_num_threads(args.threads or os.cpu_count())
  if args.device == "auto":
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
  config = transformers.T5Config(vocab_size=args.vocab_size, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False, dropout_rate=args.dropout,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                 **SIZES[args.size])
  with torch.device(args.device):  # initialize on the device: a CPU init of T5-large takes long
    model = transformers.T5ForConditionalGeneration(config)
  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  model = model.to(dtype)
  peft_config = peft.PromptTuningConfig(
      task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=args.prompt_length,
      token_dim=config.d_model, num_transformer_submodules=1,
      num_attention_heads=config.num_heads, num_layers=config.num_layers,
      prompt_tuning_init=peft.PromptTuningInit.RANDOM)
  model = peft.get_peft_model(model, peft_config).to(args.device)
  trainable = [p for p in model.parameters() if p.requires_grad]
  return torch, transformers, peft, model, trainable


def batch(torch, args, seed):
  g = torch.Generator().manual_seed(seed)
  vocab = min(args.vocab_size, 32000)
  inputs = torch.randint(2, vocab, (args.batch, args.input_length), generator=g)
  labels = torch.randint(2, vocab, (args.batch, args.target_length), generator=g)
  labels[:, -1] = 1
  return tuple(t.to(args.device) for t in (inputs, torch.ones_like(inputs), labels))


def sync(torch, args):
  """Wait for queued GPU work, so a step's wall time is its compute (a no-op on CPU)."""
  if args.device == "cuda":
    torch.cuda.synchronize()


def device_peak_mib(torch, args):
  return torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == "cuda" else None


def run_train(args) -> dict:
  torch, transformers, peft, model, trainable = build(args)
  from transformers.optimization import Adafactor
  optimizer = Adafactor(trainable, lr=0.3, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8,
                        beta1=None, weight_decay=1e-5, scale_parameter=False, relative_step=False,
                        warmup_init=False)
  model.train(args.dropout > 0)
  batches = [batch(torch, args, args.seed + i) for i in range(2)]

  def step(b):
    inputs, mask, labels = b
    loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  for i in range(args.warmup):
    step(batches[i % 2])
  sync(torch, args)
  times, cpu_times = [], []
  for i in range(args.steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = step(batches[i % 2])
    sync(torch, args)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  # Back to back with one sync at the end, as a training loop runs: launches overlap device work.
  start = time.perf_counter()
  for i in range(args.steps):
    loss = step(batches[i % 2])
  sync(torch, args)
  pipelined = (time.perf_counter() - start) / args.steps
  return {"framework": "hf_peft", "torch_version": torch.__version__,
          "transformers_version": transformers.__version__, "peft_version": peft.__version__,
          "threads": torch.get_num_threads(), "step_s_median": statistics.median(times),
          "step_s_min": min(times), "step_times_s": times, "step_s_pipelined": pipelined,
          "step_cpu_s_median": statistics.median(cpu_times), "examples_per_s": args.batch / pipelined,
          "tokens_per_s": args.batch * (args.prompt_length + args.input_length + args.target_length)
                          / pipelined,
          "trainable_params": sum(p.numel() for p in trainable), "final_loss": float(loss.detach()),
          "host_peak_rss_mib": host_peak_rss_mib(), "device": args.device,
          "device_peak_mib": device_peak_mib(torch, args), "loadavg_1min": os.getloadavg()[0]}


def run_decode(args) -> dict:
  torch, transformers, peft, model, _ = build(args)
  model.eval()
  inputs, mask, _ = batch(torch, args, args.seed)
  kwargs = dict(input_ids=inputs, attention_mask=mask, max_new_tokens=args.decode_length,
                min_new_tokens=args.decode_length, do_sample=False, num_beams=1, use_cache=True)
  with torch.inference_mode():
    for _ in range(args.warmup):
      model.generate(**kwargs)
    sync(torch, args)
    times = []
    for _ in range(args.steps):
      start = time.perf_counter()
      out = model.generate(**kwargs)
      sync(torch, args)
      times.append(time.perf_counter() - start)
  run_s = statistics.median(times)
  return {"framework": "hf_peft_generate", "torch_version": torch.__version__,
          "transformers_version": transformers.__version__, "peft_version": peft.__version__,
          "threads": torch.get_num_threads(), "decode_s_median": run_s, "decode_s_min": min(times),
          "decode_times_s": times, "generated_length": int(out.shape[1]),
          "examples_per_s": args.batch / run_s, "tokens_per_s": args.batch * args.decode_length / run_s,
          "host_peak_rss_mib": host_peak_rss_mib(), "device": args.device,
          "device_peak_mib": device_peak_mib(torch, args), "loadavg_1min": os.getloadavg()[0]}


def main(argv=None):
  args = parse_args(argv)
  result = run_train(args) if args.mode == "train" else run_decode(args)
  result["args"] = vars(args)
  sys.stdout.write("PEER_RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
  main()

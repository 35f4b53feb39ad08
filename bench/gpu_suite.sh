#!/usr/bin/env bash
# The GPU runs behind the README's GPU table: T5 1.1 base and large in bfloat16 (activations and
# frozen weights), inputs 512 + prompt 100, targets 32, dropout 0.1.
#
#   bash bench/gpu_suite.sh OUT_DIR [DEADLINE_S] [PACK.tgz]
#
# First `bench.attention_check` (do the fused form, our Pallas attention and the one-kernel norms
# compute their references' loss and prompt gradient on this GPU?), `bench.attention_kernels`
# (T5-large's attention calls timed alone, in the variants that decide between cuDNN and our kernel:
# ATTENTION_ROWS, or "all") and `bench.norm_kernels` (its residual norm alone, XLA against the
# Pallas kernel's tilings); both at KERNELS_SIZE/KERNELS_BATCH, or skipped with
# SKIP_ATTENTION_KERNELS=1. Then `bench.suite_choice` reads their JSON and picks the whole-step
# flags they favour, and the runs follow in priority order: large b64 with the chosen flags, large
# b64 by default (the baseline on this machine), base b64 with the chosen flags, both at b128, base
# by default, each kernel alone, XLA's dot merger back on, the PEFT ratios. A run with the same
# arguments as an earlier one (a profile aside) is not run twice. Each run is its own process under
# `timeout`, so one failure or out-of-memory keeps the others' JSON (OUT_DIR/NAME.json, with a
# device-time profile by op) and the log (OUT_DIR/suite.log). A run that would start after
# DEADLINE_S (default 450) seconds is skipped. With PACK.tgz, OUT_DIR is re-packed into it after
# every run (a device call brings back few files). Override the run list with RUNS (one "NAME|bench
# arguments" per line) and the check's size with CHECK_SIZE (default tiny) for a dry run on CPU.
set -u
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [DEADLINE_S] [PACK.tgz]}
deadline=${2:-450}
pack=${3:-}
py=${PYTHON:-python3}
mkdir -p "$out"
# JAX's allocator grows on demand instead of taking 75% of the GPU up front: the PEFT peer and
# `bench all`'s decode child are processes of their own on the same GPU.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
shape="--dtype bfloat16 --weight-dtype bfloat16 --input-length 512 --prompt-length 100 \
--target-length 32 --steps 10 --warmup 2 --no-ceiling"
merge="--xla-option xla_gpu_dot_merger_threshold_mb=32"  # XLA's own default; the trainer's is 0
norm="--norm-impl pallas"  # the residual add, dropout and RMSNorm as one Triton kernel each way

log="$out/suite.log"
start=$SECONDS
{
  echo "== $(date -u +%FT%TZ) $(uname -m) python: $($py --version 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  $py - <<'EOF' 2>&1
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "gin", "torch", "transformers", "peft"):
  try:
    print(name, getattr(importlib.import_module(name), "__version__", "?"))
  except Exception as e:  # report, do not stop: the runs say what they need
    print(name, "MISSING", type(e).__name__, e)
import jax
print("jax devices:", jax.devices())
EOF
} >>"$log"

pack_now() {
  [ -n "$pack" ] && tar -czf "$pack.tmp" -C "$out" . 2>/dev/null && mv "$pack.tmp" "$pack"
  return 0
}

echo "== attention check ($((SECONDS - start))s)" | tee -a "$log"
# Autotuning off: a correctness check needs no fast kernels, and it saves compile time.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" timeout 120 $py -m bench.attention_check --size "${CHECK_SIZE:-tiny}" --variants "${CHECK_VARIANTS:-fused,pallas,pallas_atomic,pallas_cross,pallas_norm}" \
  --json "$out/attention_check.json" 2>&1 | tee -a "$log" | grep -v "^\[bench\]"
pack_now

# The attention calls of T5-large's step alone, in variants (bias, mask, padding; bench.md).
if [ -z "${SKIP_ATTENTION_KERNELS:-}" ]; then
  echo "== attention kernels ($((SECONDS - start))s)" | tee -a "$log"
  # The rows that decide between cuDNN and our kernel; ATTENTION_ROWS=all for every variant.
  rows=${ATTENTION_ROWS:-model,pallas_t5,pallas_t5_atomic,pallas_t5_128x64,pallas_t5_64x128,pallas_t5_64x128_atomic,pallas_t5_s3,pallas_t5_128x64_w8s3,pallas_t5_full_bias,model_short,pallas_t5_short,cross,cross_pallas,pad128_plain,mosaic_fa3_f16}
  [ "$rows" = all ] && rows=
  timeout 240 $py -m bench.attention_kernels --size "${KERNELS_SIZE:-large}" \
    --batch "${KERNELS_BATCH:-64}" --only "$rows" --json "$out/attention_kernels.json" 2>&1 | tee -a "$log"
  pack_now
  # The residual norm alone, XLA's kernels against the Pallas kernel in several tilings.
  echo "== norm kernels ($((SECONDS - start))s)" | tee -a "$log"
  timeout 90 $py -m bench.norm_kernels --size "${KERNELS_SIZE:-large}" \
    --batch "${KERNELS_BATCH:-64}" --json "$out/norm_kernels.json" 2>&1 | tee -a "$log"
  pack_now
fi

# The whole-step flags the kernels above favour on this GPU (defaults when they were skipped).
best=$($py -m bench.suite_choice "$out" 2> >(tee -a "$log" >&2))
[ -n "$best" ] || best="--attention fused"
echo "== chosen: $best" | tee -a "$log"
# Priority order: large with what the kernels chose, large by default (the baseline on this
# machine; skipped when the choice is the default), base with the choice, both at twice the batch,
# base by default, each kernel on its own, then the rest.
default_runs="large_b64_best|train --size large --batch 64 $best --profile $out/prof_large_b64_best $shape
large_b64_fused|train --size large --batch 64 --attention fused --profile $out/prof_large_b64_fused $shape
base_b64_best|train --size base --batch 64 $best --profile $out/prof_base_b64_best $shape
large_b128_best|train --size large --batch 128 $best $shape
base_b128_best|train --size base --batch 128 $best $shape
base_b64_fused|train --size base --batch 64 --attention fused --profile $out/prof_base_b64_fused $shape
large_b64_fused_norm|train --size large --batch 64 --attention fused $norm $shape
large_b64_pallas|train --size large --batch 64 --attention pallas $shape
large_b64_pallas_norm|train --size large --batch 64 --attention pallas $norm $shape
large_b64_fused_merge|train --size large --batch 64 --attention fused $merge $shape
base_b64_fused_peer|train --size base --batch 64 --attention fused --peer $shape
large_b32_fused|train --size large --batch 32 --attention fused --peer $shape"
runs=${RUNS:-$default_runs}

declare -A seen  # a run whose arguments (profile aside) an earlier run had is not run again
while IFS='|' read -r name args; do
  [ -z "$name" ] && continue
  key=$(sed -E 's/--profile [^ ]+//; s/ +/ /g; s/^ //; s/ $//' <<<"$args")
  if [ -n "${seen[$key]:-}" ]; then
    echo "== $name: SKIPPED, the same run as ${seen[$key]}" | tee -a "$log"
    continue
  fi
  seen[$key]=$name
  left=$((deadline - (SECONDS - start)))
  if [ "$left" -lt 60 ]; then
    echo "== $name: SKIPPED, ${left}s left before the ${deadline}s deadline" | tee -a "$log"
    continue
  fi
  echo "== $name ($((SECONDS - start))s): bench $args" | tee -a "$log"
  # shellcheck disable=SC2086  (the argument list is meant to split)
  timeout "$left" $py -m bench $args --json "$out/$name.json" >>"$log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start))s" | tee -a "$log"
  pack_now
done <<<"$runs"

# One line per run, last, where the device call's output tail shows it.
$py -m bench.suite_summary "$out" 2>&1 | tee -a "$log"
pack_now

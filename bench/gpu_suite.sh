#!/usr/bin/env bash
# The GPU runs behind the README's GPU table: T5 1.1 base and large in bfloat16 (activations and
# frozen weights), inputs 512 + prompt 100, targets 32, dropout 0.1, beside HF PEFT on the same GPU.
#
#   bash bench/gpu_suite.sh OUT_DIR [DEADLINE_S]
#
# Runs in priority order (what earlier GPU runs left unmeasured comes first: the fused attention
# beside the einsum form on the same machine, then T5-large), each its own process under `timeout`,
# so one failure or out-of-memory keeps the others' JSON (OUT_DIR/NAME.json) and the log
# (OUT_DIR/suite.log); a run that would start after DEADLINE_S (default 450) seconds is skipped. Override any run list with
# RUNS (one "NAME|bench arguments" per line) for a dry run on CPU, e.g. with --size tiny.
set -u
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [DEADLINE_S]}
deadline=${2:-450}
py=${PYTHON:-python3}
mkdir -p "$out"
# JAX's allocator grows on demand instead of taking 75% of the GPU up front: the PEFT peer and
# `bench all`'s decode child are processes of their own on the same GPU.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
shape="--dtype bfloat16 --weight-dtype bfloat16 --input-length 512 --prompt-length 100 \
--target-length 32 --steps 10 --warmup 2 --ceiling-size 16384"
default_runs="base_b64_fused|train --size base --batch 64 --attention fused $shape
base_b64|train --size base --batch 64 --no-ceiling $shape
large_b32|train --size large --batch 32 --peer --no-ceiling $shape
large_b32_fused|train --size large --batch 32 --attention fused --no-ceiling $shape
base_b64_all|all --size base --batch 64 --decode-length 32 --peer --no-ceiling $shape
base_b64_nodropout|train --size base --batch 64 --dropout 0 --no-ceiling $shape"
runs=${RUNS:-$default_runs}

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

while IFS='|' read -r name args; do
  [ -z "$name" ] && continue
  left=$((deadline - (SECONDS - start)))
  if [ "$left" -lt 60 ]; then
    echo "== $name: SKIPPED, ${left}s left before the ${deadline}s deadline" | tee -a "$log"
    continue
  fi
  echo "== $name ($((SECONDS - start))s): bench $args" | tee -a "$log"
  # shellcheck disable=SC2086  (the argument list is meant to split)
  timeout "$left" $py -m bench $args --json "$out/$name.json" >>"$log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start))s" | tee -a "$log"
done <<<"$runs"

#!/usr/bin/env bash
# One command for the day a GPU or TPU is lent (nanoloop_jax/tools/device_check.py): fp32/bf16 loss against the
# CPU, fused vs xla attention, train-step MFU of configs/gpt2_owt_looped.py on one device, decode tokens/s,
# compile times. Writes device_check.json and device_check.md (a BENCHMARKS.md-ready table). A few minutes.
#
#   scripts/device_check.sh                  # picks the JAX extra from the host (cuda12 / tpu / none)
#   scripts/device_check.sh out/h100.json    # another output path
#
# Runs end to end on a CPU-only machine too, reporting "no accelerator" for what it cannot measure.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-device_check.json}"
extra=()
if command -v nvidia-smi >/dev/null 2>&1; then
  extra=(--extra cuda12)
elif [ -e /dev/accel0 ] || ls /dev/vfio/[0-9]* >/dev/null 2>&1; then  # TPU VM chips
  extra=(--extra tpu)
fi
exec uv run "${extra[@]}" python bench.py --config=configs/gpt2_owt_looped.py --suite=device --json="$out"

#!/usr/bin/env bash
# The GPU check in one call of the device tool (about 5-7 minutes on one H100, set-up and compiling included). Here, once:
#     bash ../shared/gpu-kit/pack.sh                 # copies the kit (models, 6,000/6,000 IMDB rows, wheels) to .gpu-kit/
# then a device call with carry [".gpu-kit"], timeout_s 480, command:
#     bash bench/gpu_check.sh
# It prints one table and leaves gpu_check.md, gpu_check.json and the logs in $OUT (or /tmp/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
source .gpu-kit/setup.sh                  # datasets wheels, offline variables, /tmp/models/{minilm,bert-base,gpt2}
work=/tmp/gpu-check-work                  # the runs (models, checkpoints) stay on the machine; $OUT gets 4 small files
python3 bench/gpu_check.py --models /tmp/models --data .gpu-kit/assets/imdb --out "$work" "$@" 2>&1 | tee "$out/log.txt"
cp "$work/gpu_check.md" "$work/gpu_check.json" "$work/runs.log" "$out/"

#!/usr/bin/env bash
# The GPU speed benchmark in one call of the device tool (about 8-10 minutes on one H100, set-up and compiling
# included). Here, once:
#     bash ../shared/gpu-kit/pack.sh                 # copies the kit (models, 6,000/6,000 IMDB rows, wheels) to .gpu-kit/
# then a device call with carry [".gpu-kit"], timeout_s 600, command:
#     bash bench/gpu_bench.sh
# The table, gpu-bench.json, gpu-bench.md and runs.log are written into $OUT (or /tmp/gpu-bench) after every row, the
# most wanted first, so a call stopped at its limit keeps its rows; the rest in a second call, e.g.
#     bash bench/gpu_bench.sh --rows c_reduce_overhead,b_compiled,c_eager,bf16_steps
# Then copy gpu-bench.json to results/ and the table into the README's GPUs section.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-bench}"
mkdir -p "$out"
source .gpu-kit/setup.sh                  # datasets wheels, offline variables, /tmp/models/{minilm,bert-base,gpt2}
python3 bench/gpu_bench.py --models /tmp/models --data .gpu-kit/assets/imdb --out "$out" --work /tmp/gpu-bench-work \
    "$@" 2>&1 | tee "$out/log.txt"

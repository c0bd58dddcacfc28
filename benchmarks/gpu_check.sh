#!/usr/bin/env bash
# Issue 12's GPU measurements in one prepared run, for a session that is lent the GPU machine
# (the library's `device` tool: one command, about 15 minutes of device time in all):
#
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=560)      # the files come back from $OUT
#
# No install: the machine has torch with CUDA, numpy, numba, scipy, click, tqdm and safetensors,
# and the package runs from src/ (PYTHONPATH). Tested on the CPU first with small sizes:
#
#   DEVICE=cpu ITEMS=20000 EXAMPLES=20000 OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
#
# 1. The CUDA path end to end: a small synthetic set trained with --device cuda and with
#    --device cpu (same seed), both evaluated on the CPU (the saved model is device-independent).
# 2. E-step and score-collection examples/s at ITEMS items (issue 12 item 5: >= 200k and >= 500k
#    at 10^6 items), paper-amazon shapes with the mean-pool encoder, at batch 4,096 and 16,384,
#    and 16,384 again with TF32 matmuls (what TF32 would buy; the library does not set it).
# Each step's output is under $OUT (8 files: bench_collect's JSON + markdown, the evaluation JSON, a log).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
DEVICE="${DEVICE:-cuda}"
ITEMS="${ITEMS:-1000000}"
EXAMPLES="${EXAMPLES:-1000000}"
OUT="${OUT:-benchmarks/out/gpu}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT  # only the folder made here
mkdir -p "$OUT"
dr() { "$PYTHON" -m deep_retrieval.cli "$@"; }
step() { echo "=== $* ($(date -u +%H:%M:%S) UTC)"; local t0=$SECONDS; "$@"; echo "=== done in $((SECONDS - t0)) s"; }

{
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

    # 1. the CUDA path end to end, against the CPU
    step dr synth --preset demo --out "$WORK/demo"
    for dev in "$DEVICE" cpu; do
        step dr train "$WORK/demo" --config demo --device "$dev" --set train.epochs_joint=5 \
            --set train.progress=false --out "$WORK/trained_on_$dev" --force
    done
    step dr evaluate "$WORK/demo" --methods "$WORK/trained_on_$DEVICE,$WORK/trained_on_cpu" --k 10,50 \
        --exclude-history --json "$OUT/tiny_eval.json"

    # 2. throughput at ITEMS items, generated once
    step dr synth --preset personal --items "$ITEMS" --out "$WORK/personal"
    for run in 4096 16384 16384:tf32; do
        batch="${run%%:*}"; tf32=(); [[ "$run" == *tf32 ]] && tf32=(--tf32)
        step "$PYTHON" benchmarks/bench_collect.py "$WORK/personal" --config paper-amazon \
            --set encoder.kind=mean --set "train.batch_size=$batch" --examples "$EXAMPLES" \
            --warmup 3 --threads 4 --device "$DEVICE" "${tf32[@]}" --out "$OUT/collect_${ITEMS}_${run/:/_}.json"
    done
} 2>&1 | tee "$OUT/gpu_check.log"

#!/usr/bin/env bash
# The whole benchmark suite, in order. Each benchmark writes its JSON under benchmarks/out/
# and appends its section to benchmarks/README.md.
#
#   benchmarks/run_all.sh                 # from the repository root or anywhere
#   PYTHON=python ML1M_PAIRS=/path/pairs.csv.gz WORK=/tmp/dr-bench benchmarks/run_all.sh
#
# ml-1m is prepared into $WORK/ml1m from $ML1M_PAIRS when missing (bench_train.py skips
# ml-1m if it cannot be). Each step is timed; a failing step stops the suite.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
WORK="${WORK:-/tmp/dr-bench}"
ML1M_PAIRS="${ML1M_PAIRS:-/work/shared/data/ml-1m/pairs.csv.gz}"
ML1M="$WORK/ml1m"
mkdir -p "$WORK"

step() {
    echo "=== $* ($(date -u +%H:%M:%S) UTC)"
    local t0=$SECONDS
    "$@"
    echo "=== done in $((SECONDS - t0)) s: $*"
}

if [[ ! -f "$ML1M/manifest.json" && -f "$ML1M_PAIRS" ]]; then
    step "$PYTHON" -m deep_retrieval.cli prepare "$ML1M_PAIRS" --out "$ML1M"
fi

step "$PYTHON" benchmarks/bench_synth.py
step "$PYTHON" benchmarks/bench_mstep.py
step "$PYTHON" benchmarks/bench_train.py --ml1m "$ML1M" --workdir "$WORK"
step "$PYTHON" benchmarks/bench_scale.py
step "$PYTHON" benchmarks/bench_quality.py synth
echo "all benchmarks done; results in benchmarks/out/, sections appended to benchmarks/README.md"

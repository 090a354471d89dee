#!/usr/bin/env bash
# The README's main job on the built-in default. Builds t2diff, then runs the most complete
# pipeline that exists today (see README.md, "What works today").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
build=${BUILD_DIR:-build}
echo "== embedding table benchmark (1M rows, dim 64, Adagrad) =="
"$build/bench/bench_embedding" --rows=1000000 --benchmark_min_time=0.5

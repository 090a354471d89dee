#!/usr/bin/env bash
# Builds t2diff and runs every test that needs no GPU (unit, MPI and end-to-end), two at a time.
# Ends with CTest's summary; exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" -j 2 --output-on-failure --no-label-summary -LE gpu

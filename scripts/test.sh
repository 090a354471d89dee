#!/usr/bin/env bash
# Builds t2diff and runs every test that needs no GPU (unit, MPI and end-to-end), two at a time,
# then the torch-free unit tests under ASan + UBSan and 10 s per fuzz target (scripts/sanitize.sh),
# and the threaded torch-free tests under ThreadSanitizer (scripts/tsan.sh).
# Ends with CTest's summaries; exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" -j 2 --output-on-failure --no-label-summary -LE gpu
bash scripts/sanitize.sh
bash scripts/tsan.sh

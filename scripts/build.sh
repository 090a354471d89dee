#!/usr/bin/env bash
# Configures and builds t2diff (Release, warnings as errors) into ${BUILD_DIR:-build}.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DT2D_WERROR=ON "$@"
cmake --build "$build" -j "$(nproc)"

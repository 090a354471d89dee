#!/usr/bin/env bash
# Configures and builds t2diff (Release, warnings as errors) into ${BUILD_DIR:-build}.
# No -G: a new build folder gets CMake's default generator (Unix Makefiles), exactly what
# `cmake -S . -B build && cmake --build build` does; an existing one keeps its generator.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DT2D_WERROR=ON "$@"
cmake --build "$build" -j "$(nproc)"

#!/usr/bin/env bash
# Builds the torch-free unit tests with clang's AddressSanitizer + UndefinedBehaviorSanitizer into
# ${SAN_BUILD_DIR:-build-san} and runs them through CTest. Exits non-zero on any finding: UBSan
# is built with -fno-sanitize-recover=all (the first finding ends the test binary), ASan and
# LeakSanitizer end it by themselves, and CTest reports the failed binary.
#
# The subset: common_test, embedding_test, comm_test, ps_test and data_test, every unit test that
# does not link libtorch (comm/ and ps/ as threads over the in-process transport). Left out:
# config_test, model_test, trainer_test, serving_test and launcher_test link libtorch, which is
# not built with sanitizers (nor is its OpenMP runtime), so most of what they run could not be
# checked; the MPI and end-to-end tests run under mpiexec, and OpenMPI is not built with them
# either (LeakSanitizer reports thousands of its allocations, from libmpi and its plugins).
#
# The same build holds the libFuzzer targets of tests/fuzz/ (-DT2D_BUILD_FUZZ=ON; every library
# is compiled with -fsanitize=fuzzer-no-link so they see its coverage): after the tests,
# scripts/fuzz.sh runs each for ${SAN_FUZZ_SECONDS:-10} seconds (0 skips them). With
# SAN_CONFIGURE_ONLY=1 this only configures the build (scripts/fuzz.sh uses that).
#
# Needs clang and the compiler-rt runtimes (scripts/setup.sh installs both). From scratch on 2
# cores about 6 minutes (measured while another build shared them), of which the tests take
# about 10 seconds and the fuzzing 40.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SAN_BUILD_DIR:-build-san}
targets=(common_test embedding_test comm_test ps_test data_test)

command -v clang++ > /dev/null || { echo "sanitize: clang++ not found (run scripts/setup.sh)" >&2; exit 1; }
# Benchmarks are not tests; the rest of the project is configured (CMake needs libtorch to be
# found) but only the targets above are built.
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DT2D_BUILD_BENCH=OFF \
  -DT2D_BUILD_FUZZ=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all -fno-omit-frame-pointer" > /dev/null
[[ "${SAN_CONFIGURE_ONLY:-0}" == 1 ]] && exit 0
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
regex="^($(IFS='|'; echo "${targets[*]}"))$"
ctest --test-dir "$build" -j 2 --output-on-failure --no-label-summary --no-tests=error -R "$regex"

fuzz_seconds=${SAN_FUZZ_SECONDS:-10}
if [[ "$fuzz_seconds" != 0 ]]; then
  SAN_BUILD_DIR="$build" bash scripts/fuzz.sh "$fuzz_seconds"
fi

#!/usr/bin/env bash
# Builds the threaded torch-free unit tests with clang's ThreadSanitizer into
# ${TSAN_BUILD_DIR:-build-tsan} and runs them through CTest; any data race or lock-order
# inversion ends the test binary with a non-zero exit (TSAN_OPTIONS halt_on_error=1).
#
# The subset: embedding_test (the table store's locks and tickets), comm_test (the in-process
# transport and communicator, many threads as ranks) and ps_test (parameter servers and their
# clients as threads over the in-process transport) and data_test (the generator's worker
# threads). The in-process twins use the standard
# mutex and condition variable, which ThreadSanitizer understands; Debian's abseil is not built
# with it, so code synchronised by absl::Mutex could not be checked (none is left in these
# targets). Suppressions (tests/tsan.supp) name third-party frames only.
#
# Needs clang and the compiler-rt runtimes (scripts/setup.sh installs both). Run by
# scripts/test.sh last; about 10 minutes from scratch on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TSAN_BUILD_DIR:-build-tsan}
targets=(embedding_test comm_test ps_test data_test)

command -v clang++ > /dev/null || { echo "tsan: clang++ not found (run scripts/setup.sh)" >&2; exit 1; }
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DT2D_BUILD_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" > /dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp}
regex="^($(IFS='|'; echo "${targets[*]}"))$"
ctest --test-dir "$build" -j 2 --output-on-failure --no-label-summary --no-tests=error -R "$regex" --timeout 1200

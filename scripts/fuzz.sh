#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz/ for SECONDS_PER_TARGET (default 60) seconds, one
# after another, on a fresh copy of its seed corpus (written by fuzz_seed_gen, plus any
# checked-in reproducers under tests/fuzz/corpus/<target>/). Builds them first in the sanitizer
# build ${SAN_BUILD_DIR:-build-san} (configuring it through scripts/sanitize.sh if needed).
#
# Prints per target the inputs executed and whether anything was found. Exits non-zero on any
# crash, sanitizer finding, leak, timeout (-timeout, default 10 s per input) or out-of-memory
# (-rss_limit_mb, default 2048), keeping the reproducer in $build/fuzz/artifacts/ and the log
# in $build/fuzz/<target>.log. Reproduce one with: $build/tests/fuzz/<target> <file>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=${SAN_BUILD_DIR:-build-san}
targets=(sample_file_fuzz shard_file_fuzz sources_fuzz ps_messages_fuzz request_fuzz)

if ! grep -q '^T2D_BUILD_FUZZ:BOOL=ON' "$build/CMakeCache.txt" 2> /dev/null; then
  SAN_CONFIGURE_ONLY=1 bash scripts/sanitize.sh
fi
cmake --build "$build" -j "$(nproc)" --target fuzz_targets

work="$build/fuzz"
rm -rf "$work/seeds" "$work/corpus" "$work/tmp"
mkdir -p "$work/seeds" "$work/corpus" "$work/tmp" "$work/artifacts"
"$build/tests/fuzz/fuzz_seed_gen" "$work/seeds"

# Leaks and UB end the run like crashes; glog's output from the parsers is not wanted.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export GLOG_minloglevel=${GLOG_minloglevel:-3}
export TMPDIR="$work/tmp"  # the targets' scratch input files
failed=0
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  mkdir -p "$corpus"
  cp "$work/seeds/$t"/* "$corpus"/
  [[ -d "tests/fuzz/corpus/$t" ]] && cp "tests/fuzz/corpus/$t"/* "$corpus"/
  rc=0
  "$build/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t-" "$corpus" > "$work/$t.log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1 || true)
  if [[ $rc -eq 0 ]]; then
    echo "fuzz: $t: ${runs:-?} runs in ${seconds}s, ${cov:-cov: ?}, nothing found"
  else
    failed=1
    echo "fuzz: $t: FOUND something after ${runs:-?} runs (exit $rc); log $work/$t.log" >&2
    grep -E '^(==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)|runtime error' "$work/$t.log" | head -8 >&2 || true
  fi
done
rm -rf "$work/tmp"
exit $failed

#!/usr/bin/env bash
# Usage: expect_failure.sh REGEX COMMAND [ARGS...]
# Passes when COMMAND exits non-zero (within CTest's timeout: a hang fails the test) and its
# combined output matches the extended regular expression REGEX.
regex=$1
shift
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -eq 0 ]; then
  echo "expect_failure: the job exited 0, expected a failure"
  exit 1
fi
if ! grep -Eq -- "$regex" <<<"$out"; then
  echo "expect_failure: exit code $rc, but no output line matches: $regex"
  exit 1
fi
echo "expect_failure: failed as expected (exit code $rc)"

#!/usr/bin/env bash
# Behaviour check for refactors: runs the same jobs with two t2diff binaries and compares what
# they wrote. Model files (sparse shards, dense state, bundle arrays, evaluation ranks) must be
# byte-identical; metrics equal to 6 decimals (timing fields excluded). Async runs (job B) are
# not reproducible run to run, even with one binary, so they are listed but not judged.
#
#   bash scripts/identity/check.sh OLD_T2DIFF NEW_T2DIFF [WORK_DIR]
#
# Jobs (scripts/identity/run_jobs.sh): A sync 1 server + 2 workers with export, eval and
# retrieve; B async with prefetch; C single process cut at 15 steps and resumed; D ML-1M one
# epoch (when ../shared/data is there).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${3:-/tmp/t2d-identity}
mkdir -p "$work"
bash "$here/run_jobs.sh" "$1" "$work/old" "$work/data"
bash "$here/run_jobs.sh" "$2" "$work/new" "$work/data"
python3 "$here/compare.py" "$work/old" "$work/new"

# Sourced by the end-to-end test scripts: `check`, which prints PASS or FAIL and counts them in
# $passes and $failures (a script ends by printing both and exiting non-zero if a check failed)
# and returns the condition's status, so that `check ... || show-the-log` can follow a failure,
# and grep helpers.

failures=0
passes=0
check() {  # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then
    echo "PASS: $name"
    passes=$((passes + 1))
  else
    echo "FAIL: $name"
    failures=$((failures + 1))
    return 1
  fi
}
contains() { grep -qF -- "$2" "$1"; }  # contains FILE TEXT
# npy_rows FILE: the first dimension of a .npy file's shape (from its header; empty if none).
npy_rows() { head -c 4096 "$1" 2> /dev/null | head -n 1 | LC_ALL=C sed -n "s/.*'shape': (\([0-9]*\).*/\1/p"; }
has() { grep -qF -- "$2" <<< "$1"; }   # has STRING TEXT

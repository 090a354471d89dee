#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing and running t2diff need.
# Idempotent: when every package is already installed it does nothing (no apt-get update).
# Must run as root. Exits non-zero with a message naming the failing step.
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ make cmake ninja-build ccache
  # libraries
  libopenmpi-dev openmpi-bin openssh-client
  libtorch-dev libopenblas0-openmp
  libprotobuf-dev protobuf-compiler
  libgoogle-glog-dev libgflags-dev libabsl-dev zlib1g-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  # the serving bundle's item index (serving/item_index.h)
  libfaiss-dev
  # OpenMP for clang (the sanitizer build configures the whole project, and faiss needs OpenMP)
  libomp-dev
  # the sanitizer build of the torch-free tests (scripts/sanitize.sh): clang and its runtimes
  clang libclang-rt-dev
  # reading a serving bundle from Python (docs/read_bundle.py, run by tests/e2e/serve_test.sh)
  python3-numpy python3-faiss
  # the multi-host test's network namespaces (tests/e2e/multihost_test.sh)
  iproute2
  # plots: training curves (scripts/plot_metrics.sh, bench/quality/run_study.py)
  gnuplot-nox
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: these packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi

echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q || { echo "setup: 'apt-get update' failed" >&2; exit 1; }
apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || { echo "setup: 'apt-get install' failed for: ${missing[*]}" >&2; exit 1; }
echo "setup: done"

#!/usr/bin/env bash
# Training throughput: the distributed trainer against a single process with in-process tables.
#
#   bash bench/bench_train.sh [STEPS]      (after scripts/build.sh; needs ../shared/data)
#
# ML-1M (sequence file, clean protocol) at the authors' size (D = 4: 2 id + 2 tag dims, n = 50,
# batch 512, full softmax over the 3,706 items), one torch thread per worker. Prints samples/s
# of the training steps alone (evaluation excluded) for: a single process; 1 server + 1 worker;
# 1 server + 2 workers; and the distribution overhead of 1 + 1 against the single process.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
t2diff=${BUILD_DIR:-build}/launcher/t2diff
data=../shared/data/ml-1m/ml-1m_sequences.txt.gz
if [ ! -f "$data" ]; then echo "bench_train: $data not found; skipping"; exit 0; fi
export OMPI_MCA_plm=${OMPI_MCA_plm:-isolated}
work=$(mktemp -d /tmp/t2d-bench-train.XXXXXX)
trap 'rm -rf "$work"' EXIT
cfg=configs/examples/ml1m.textproto
common=(--set "data.dataset_dir=$work/data" --set "training.max_steps=$steps" --set training.log_every_steps=100000
        --set "training.output_dir=$work/out" --set training.epochs=1)
"$t2diff" prepare -c "$cfg" "${common[@]:0:2}" > /dev/null

rate() { sed -n 's/.*"samples_per_s": *\([0-9.e+]*\).*/\1/p' "$work/out/metrics.jsonl" | tail -1; }
run() {  # run NAME WORKERS [mpirun]
  rm -rf "$work/out"
  if [ "$2" = 0 ]; then
    "$t2diff" train -c "$cfg" "${common[@]}" > "$work/log" 2>&1
  else
    "$t2diff" launch -c "$cfg" "${common[@]}" --set cluster.num_servers=1 --set "cluster.num_workers=$2" > "$work/log" 2>&1
  fi
  rate
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc) cores"
echo "ML-1M, D=4 (2+2), n=50, batch 512 per worker, full softmax over 3706 items, $steps steps, 1 torch thread per worker"
single=$(run single 0)
one=$(run "1+1" 1)
two=$(run "1+2" 2)
printf '%-34s %10.0f samples/s\n' "single process, in-process tables" "$single" "1 server + 1 worker" "$one" "1 server + 2 workers" "$two"
awk -v s="$single" -v d="$one" 'BEGIN { printf "distribution overhead (1+1 vs single): %.1f%% (target <= 15%%)\n", 100 * (1 - d / s) }'

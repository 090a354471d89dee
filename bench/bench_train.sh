#!/usr/bin/env bash
# Training throughput: the distributed trainer against a single process with in-process tables.
#
#   bash bench/bench_train.sh [STEPS]      (after scripts/build.sh; needs ../shared/data)
#   environment: MODELS (T2DIFF) the model kinds to run, for example
#                "T2DIFF TWO_TOWER_MEAN SASREC T2DIFF_NO_DIFFUSION T2DIFF_NO_DRIFT"
#
# ML-1M (sequence file, clean protocol) at the authors' size (D = 4: 2 id + 2 tag dims, n = 50,
# batch 512, full softmax over the 3,706 items), one torch thread per worker. Prints, per model
# kind, samples/s of the training steps alone (evaluation excluded) for: a single process;
# 1 server + 1 worker; 1 server + 2 workers; then the distribution overhead of 1 + 1 against the
# single process (target <= 15 %) and two workers against the single process (target >= 1.6x),
# beside the most two workers could give on this machine's cores (the single process's CPU time
# over its wall time: it already builds batches on a second core).
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
# One thread a worker in every run (cluster.parallel_branches would give the single process a
# second one): the comparison is of data parallelism alone.
common=(--set "data.dataset_dir=$work/data" --set "training.max_steps=$steps" --set training.log_every_steps=100000
        --set "training.output_dir=$work/out" --set training.epochs=1 --set cluster.parallel_branches=false)
"$t2diff" prepare -c "$cfg" "${common[@]:0:2}" > /dev/null

field() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p" "$work/out/metrics.jsonl" | tail -1; }
rate() { field samples_per_s; }
run() {  # run KIND WORKERS (0: a single process)
  rm -rf "$work/out"
  if [ "$2" = 0 ]; then
    "$t2diff" train -c "$cfg" "${common[@]}" --set "model.kind=$1" > "$work/log" 2>&1
  else
    "$t2diff" launch -c "$cfg" "${common[@]}" --set "model.kind=$1" --set cluster.num_servers=1 \
      --set "cluster.num_workers=$2" > "$work/log" 2>&1
  fi || { cat "$work/log" >&2; echo "bench_train: $1 with $2 workers failed" >&2; exit 1; }
  rate
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc) cores"
echo "ML-1M, D=4 (2+2), n=50, batch 512 per worker, full softmax over 3706 items, $steps steps, 1 torch thread per worker"
for kind in ${MODELS:-T2DIFF}; do
  single=$(run "$kind" 0)
  # The cores the single process kept busy during its steps (its batch building runs beside the
  # step): on this machine's cores, two workers could reach at most cores / busy times its rate
  # even if distribution cost nothing.
  busy=$(awk -v c="$(field step_cpu_seconds)" -v s="$(field step_seconds)" 'BEGIN { printf "%.2f", c / s }')
  one=$(run "$kind" 1)
  two=$(run "$kind" 2)
  echo "model.kind $kind:"
  printf '  %-34s %10.0f samples/s\n' "single process, in-process tables" "$single" "1 server + 1 worker" "$one" \
    "1 server + 2 workers" "$two"
  awk -v b="$busy" -v n="$(nproc)" 'BEGIN {
    printf "  the single process kept %.2f cores busy during its steps: on %d cores two workers can reach at most %.2fx with no distribution cost\n", b, n, n / b }'
  awk -v s="$single" -v d="$one" -v t="$two" 'BEGIN {
    printf "  distribution overhead (1+1 vs single): %.1f%% (target <= 15%%: %s)\n", 100 * (1 - d / s), (d / s >= 0.85) ? "met" : "missed"
    printf "  two workers (1+2) against the single process: %.2fx (target >= 1.6x: %s)\n", t / s, (t / s >= 1.6) ? "met" : "missed" }'
done

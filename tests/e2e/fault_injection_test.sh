#!/usr/bin/env bash
# Fault injection under `t2diff launch --supervise`: TRIALS times, kill -9 a random rank
# (server or worker) of a sync 1 server + 2 worker job at a random step; every trial must end
# with exit status 0, a final checkpoint (dense state and every sparse shard) and test metrics
# (summary.json, full precision) bit-identical to an uninterrupted run's.
#
# usage: fault_injection_test.sh T2DIFF [TRIALS [SEED]]
# Prints one line per trial: the rank killed, the step it was killed at (worker 0's progress
# when the signal went out; the target it was aimed at), the restarts, and what matched.
set -uo pipefail
T2DIFF=$1
TRIALS=${2:-20}
RANDOM=${3:-12}  # reproducible choices
W=$(mktemp -d /tmp/t2d-fault.XXXXXX)
trap 'rm -rf "$W"' EXIT

cat > "$W/job.textproto" <<CFG
cluster { num_servers: 1 num_workers: 2 timeout_s: 60 consistency: SYNC supervise { max_restarts: 3 heartbeat_s: 3 } }
tables { name: "item_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "$W/data" max_seq_len: 20 session_len: 5 split: LAST_ITEM num_shards: 4
  generator { num_users: 300 num_items: 150 mean_seq_len: 25 }
}
model { diffusion_steps: 10 }
training { batch_size: 64 epochs: 2 log_every_steps: 1 replica_check_steps: 5 }
checkpoint { every_steps: 8 keep_last: 3 }
eval { k: [5, 10, 20] main_k: 10 batch_size: 128 }
CFG
run_dirs() { echo --set "checkpoint.dir=$1/ckpt" --set "training.output_dir=$1/out"; }
# The dense state and every sparse shard of two checkpoint folders are bit-identical.
same_checkpoint() {
  [ -n "$1" ] && [ "$(basename "$1")" = "$(basename "$2")" ] && cmp -s "$1/dense.t2dd" "$2/dense.t2dd" &&
    diff -q <(cd "$1/sparse" && ls) <(cd "$2/sparse" && ls) > /dev/null &&
    for f in "$1"/sparse/*; do cmp -s "$f" "$2/sparse/$(basename "$f")" || return 1; done
}
# The test metrics of a run's summary (everything from the selected epoch on: the model's and
# the popularity baseline's metrics at full precision), without its timings and losses.
metrics() { sed -n 's/.*\("best_epoch".*\)/\1/p' "$1/out/summary.json" 2> /dev/null; }

"$T2DIFF" prepare -c "$W/job.textproto" > "$W/prepare.log" 2>&1 || { cat "$W/prepare.log"; exit 1; }
# shellcheck disable=SC2046
"$T2DIFF" launch -c "$W/job.textproto" $(run_dirs "$W/base") > "$W/base.log" 2>&1 || { tail -30 "$W/base.log"; exit 1; }
base_ckpt=$(ls -d "$W"/base/ckpt/ckpt-* | tail -1)
base_metrics=$(metrics "$W/base")
total=$(sed -n 's/.*total_steps=\([0-9]*\).*/\1/p' "$W/base.log" | head -1)
[ -n "$base_metrics" ] && [ -n "$total" ] || { echo "baseline run incomplete"; exit 1; }
echo "uninterrupted run: $total steps, final checkpoint $(basename "$base_ckpt")"

roles=("server 0" "worker 0" "worker 1")
failures=0
for trial in $(seq "$TRIALS"); do
  T="$W/t$trial"
  rank=$((RANDOM % 3))
  target=$((1 + RANDOM % total))
  # shellcheck disable=SC2046
  "$T2DIFF" launch -c "$W/job.textproto" $(run_dirs "$T") --supervise > "$T.log" 2>&1 &
  sup=$!
  at="" pid=""
  while kill -0 "$sup" 2> /dev/null; do
    step=$(grep -o 'step [0-9]*/' "$T.log" 2> /dev/null | tail -1 | tr -dc 0-9)
    if [ -n "$step" ] && [ "$step" -ge "$target" ] && [ -s "$T/out/heartbeat/rank-$rank" ]; then
      pid=$(cut -d' ' -f1 "$T/out/heartbeat/rank-$rank")
      kill -9 "$pid" 2> /dev/null && at=$step
      break
    fi
    sleep 0.02
  done
  wait "$sup"
  rc=$?
  restarts=$(grep -c "supervise: restart" "$T.log")
  final=$(ls -d "$T"/ckpt/ckpt-* 2> /dev/null | tail -1)
  same_checkpoint "$final" "$base_ckpt" && ckpt=identical || ckpt=DIFFERENT
  [ "$(metrics "$T")" = "$base_metrics" ] && met=identical || met=DIFFERENT
  verdict=ok
  if [ -z "$at" ] || [ $rc -ne 0 ] || [ "$restarts" -lt 1 ] || [ $ckpt != identical ] || [ $met != identical ]; then
    verdict=FAIL
    failures=$((failures + 1))
  fi
  printf 'trial %2d: kill -9 world rank %d (%s) at step %s (target %d): rc %d, restarts %d, checkpoint %s, test metrics %s: %s\n' \
    "$trial" "$rank" "${roles[$rank]}" "${at:-never (the job ended first)}" "$target" "$rc" "$restarts" "$ckpt" "$met" "$verdict"
  if [ $verdict = FAIL ]; then
    grep -E "supervise|resumed|Error|ERROR|E[0-9]{4} " "$T.log" | tail -15
  fi
done
echo "$((TRIALS - failures)) of $TRIALS trials ok"
[ $failures -eq 0 ]

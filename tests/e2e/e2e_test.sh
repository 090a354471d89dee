#!/usr/bin/env bash
# End-to-end tests of the t2diff executable on a tiny synthetic data set, through mpiexec:
# bad configs and missing files, a 1 server + 2 worker run that must learn, resume equal to an
# uninterrupted run (bit for bit), distributed evaluation equal to a single-process one,
# export/retrieve agreeing with evaluation, a corrupt checkpoint falling back to the previous,
# launch's checks before a job starts (rank count, checkpoint folder, the command line), and a
# supervised job (launch --supervise) restarted after one of its ranks is stopped.
#
# usage: e2e_test.sh T2DIFF MPIEXEC [MPIEXEC FLAGS...]
set -uo pipefail
T2DIFF=$1
shift
MPI=("$@")
W=$(mktemp -d /tmp/t2d-e2e.XXXXXX)
trap 'rm -rf "$W"' EXIT
. "$(dirname "$0")/lib.sh"

cat > "$W/job.textproto" <<CFG
cluster { num_servers: 1 num_workers: 2 timeout_s: 60 }
tables { name: "item_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "$W/data" max_seq_len: 20 session_len: 5 split: LAST_ITEM num_shards: 4
  generator { num_users: 400 num_items: 200 mean_seq_len: 25 }
}
model { diffusion_steps: 10 }
training { batch_size: 64 epochs: 2 log_every_steps: 10 output_dir: "$W/out" replica_check_steps: 5 }
checkpoint { dir: "$W/ckpt" every_steps: 20 keep_last: 5 }
eval { k: [5, 10, 20] main_k: 10 batch_size: 128 }
CFG
cp "$W/job.textproto" "$W/resume.textproto"
sed -i "s#$W/ckpt#$W/ckpt2#; s#$W/out#$W/out2#" "$W/resume.textproto"

# --- Bad input -------------------------------------------------------------------------------
printf 'tables { name: "item_id" dim: 4 }\ntraining { batch_sise: 3 }\n' > "$W/bad.textproto"
"$T2DIFF" train -c "$W/bad.textproto" > "$W/bad.log" 2>&1
rc=$?
check "unknown config field is refused" test $rc -ne 0
check "the error names file, line and field" contains "$W/bad.log" "bad.textproto:2:22: Message type \"t2d.config.TrainingConfig\" has no field named \"batch_sise\""
"$T2DIFF" train -c "$W/job.textproto" --set training.batch_size=0 > "$W/range.log" 2>&1
check "out-of-range override is refused with the field named" contains "$W/range.log" "--set training.batch_size=0: training.batch_size: value 0 is out of range"
"$T2DIFF" train -c "$W/job.textproto" > "$W/nodata.log" 2>&1
rc=$?
check "training without a prepared data set fails" test $rc -ne 0
check "the error names the missing file" contains "$W/nodata.log" "$W/data/items.t2ds"

# --- Prepare and train -------------------------------------------------------------------------
"$T2DIFF" prepare -c "$W/job.textproto" > "$W/prepare.log" 2>&1
check "prepare" contains "$W/prepare.log" "kept: 400 users"
"$T2DIFF" prepare -c "$W/job.textproto" > "$W/prepare2.log" 2>&1
rc=$?
check "prepare refuses to overwrite without --force" test $rc -ne 0

"${MPI[@]}" -n 3 "$T2DIFF" train -c "$W/job.textproto" --export "$W/bundle" > "$W/train.log" 2>&1
rc=$?
check "1 server + 2 workers train" test $rc -eq 0
[ $rc -eq 0 ] || tail -30 "$W/train.log"
first=$(sed -n 's/.*first loss \([0-9.]*\), last loss \([0-9.]*\).*/\1/p' "$W/train.log")
last=$(sed -n 's/.*first loss \([0-9.]*\), last loss \([0-9.]*\).*/\2/p' "$W/train.log")
check "training reduces the loss ($first -> $last)" awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.8 * a) }'
model_r=$(sed -n 's/^test .*Recall@10=\([0-9.]*\).*/\1/p' "$W/train.log")
pop_r=$(sed -n 's/^popularity baseline:.*Recall@10=\([0-9.]*\).*/\1/p' "$W/train.log")
check "model beats popularity on test ($model_r vs $pop_r)" awk -v m="$model_r" -v p="$pop_r" 'BEGIN { exit !(m != "" && p != "" && m > p + 0.05) }'
check "metrics file written" contains "$W/out/metrics.jsonl" '"kind":"summary"'
# Training throughput counts the time of the training steps alone: samples/s x step seconds =
# steps x batch 64 x 2 workers (to the rounding of the printed seconds).
summary=$(grep '"kind":"summary"' "$W/out/metrics.jsonl")
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" <<< "$summary"; }
check "summary separates evaluation time ($(field eval_seconds) s of $(field train_seconds) s)" \
  awk -v e="$(field eval_seconds)" -v t="$(field train_seconds)" 'BEGIN { exit !(e > 0 && e < t) }'
check "samples/s counts training steps only ($(field samples_per_s))" \
  awk -v r="$(field samples_per_s)" -v t="$(field step_seconds)" -v s="$(field steps)" \
  'BEGIN { n = s * 64 * 2; d = r * t - n; if (d < 0) d = -d; exit !(d <= 0.02 * n) }'
check "summary written" contains "$W/out/summary.json" '"best_epoch":2'
SCRIPTS=$(cd "$(dirname "$0")/../../scripts" && pwd)
bash "$SCRIPTS/plot_metrics.sh" "$W/plots" 10 "$W/out/metrics.jsonl" > /dev/null 2>&1
check "metrics plots" test -s "$W/plots/loss.png" -a -s "$W/plots/eval.png"

# --- Launch: the command line, and checks before anything starts ------------------------------
"$T2DIFF" launch -c "$W/job.textproto" --dry-run --set training.max_steps=5 -- --resume > "$W/launch_set.log" 2>&1
check "launch takes --set before -- and passes train options after it" \
  contains "$W/launch_set.log" "--set training.max_steps=5 --resume"
check "a single-machine job stays on shared memory and loopback" \
  contains "$W/launch_set.log" "--mca btl self,vader --mca oob_tcp_if_include lo"
many=(--set cluster.num_servers=4096 --set cluster.num_workers=1000)
"$T2DIFF" launch -c "$W/job.textproto" "${many[@]}" --dry-run > "$W/many.log" 2>&1
rc=$?
check "launch refuses far more ranks than cores" test $rc -ne 0 -a -z "$(grep -F mpirun "$W/many.log")"
check "and names the flag that allows them" contains "$W/many.log" "pass --many-ranks"
"$T2DIFF" launch -c "$W/job.textproto" "${many[@]}" --many-ranks --dry-run > "$W/many2.log" 2>&1
check "unless asked to" contains "$W/many2.log" "mpirun -n 5096"
touch "$W/a_file"
"$T2DIFF" train -c "$W/job.textproto" --set "checkpoint.dir=$W/a_file/ckpt" --set checkpoint.every_steps=0 \
  --set "training.output_dir=$W/out_ckdir" > "$W/ckdir.log" 2>&1
rc=$?
check "an unwritable checkpoint.dir stops the run before training" \
  test $rc -ne 0 -a -z "$(grep -F 'training: workers=' "$W/ckdir.log")"
check "naming the folder" contains "$W/ckdir.log" "checkpoint.dir \"$W/a_file/ckpt\" cannot be created"

# --- Non-finite losses --------------------------------------------------------------------
blowup=(--set 'tables[item_id].optimizer.learning_rate=1e30' --set training.learning_rate=1e30 --set training.max_steps=5
        --set "training.output_dir=$W/out_nan" --set checkpoint.dir=)
"$T2DIFF" train -c "$W/job.textproto" "${blowup[@]}" > "$W/nan.log" 2>&1
rc=$?
check "a NaN loss stops the run (nonfinite_policy STOP)" test $rc -ne 0
check "and says so" contains "$W/nan.log" "non-finite loss or dense gradient on 1 worker(s) at step"
"$T2DIFF" train -c "$W/job.textproto" "${blowup[@]}" --set training.nonfinite_policy=SKIP > "$W/nan_skip.log" 2>&1
check "with SKIP the run completes" test $? -eq 0
check "and counts the skipped steps" grep -qE '"skipped_steps":[1-5],' "$W/out_nan/summary.json"

# --- Resume equals uninterrupted --------------------------------------------------------------
"${MPI[@]}" -n 3 "$T2DIFF" train -c "$W/resume.textproto" --set training.max_steps=17 > "$W/part1.log" 2>&1
check "interrupted run (17 steps)" test $? -eq 0
"${MPI[@]}" -n 3 "$T2DIFF" train -c "$W/resume.textproto" --resume > "$W/part2.log" 2>&1
check "resumed run" test $? -eq 0
check "resume started from step 17" contains "$W/part2.log" "at step 17"
final=$(ls -d "$W"/ckpt/ckpt-* | tail -1)
final2=$(ls -d "$W"/ckpt2/ckpt-* | tail -1)
check "same final step" test "$(basename "$final")" = "$(basename "$final2")"
check "dense parameters and optimizer state bit-identical" cmp -s "$final/dense.t2dd" "$final2/dense.t2dd"
check "sparse shards bit-identical" cmp -s "$final/sparse/item_id.shard-00000-of-00001.t2demb" "$final2/sparse/item_id.shard-00000-of-00001.t2demb"
check "test metrics identical" test "$(grep '^test ' "$W/train.log")" = "$(grep '^test ' "$W/part2.log")"

# --- Supervision: a stopped rank is found by its heartbeat within seconds, the job restarted -----
sup=(--set "checkpoint.dir=$W/ckpt_sup" --set "training.output_dir=$W/out_sup" --set cluster.supervise.heartbeat_s=2)
"$T2DIFF" launch -c "$W/job.textproto" "${sup[@]}" --supervise > "$W/sup.log" 2>&1 &
sup_pid=$!
beat="$W/out_sup/heartbeat/rank-2"  # world rank 2: worker 1
for _ in $(seq 600); do
  [ -s "$beat" ] && grep -q "step [2-9]0/" "$W/sup.log" && break
  sleep 0.1
done
stopped=$(cut -d' ' -f1 "$beat" 2> /dev/null)
listening=""
if command -v ss > /dev/null && [ -n "$stopped" ]; then
  listening=$(ss -ltnpH | grep -F "pid=$stopped," || true)
fi
check "a rank of a single-machine job listens on no TCP port" test -n "$stopped" -a -z "$listening"
[ -n "$stopped" ] && kill -STOP "$stopped"
wait $sup_pid
rc=$?
check "the supervised job completes after a stalled rank" test $rc -eq 0
check "the stall is named by world rank and role" contains "$W/sup.log" "world rank 2 (worker 1) (pid $stopped"
check "found by its heartbeat, well before cluster.timeout_s" grep -qE "stalled: no heartbeat for [2-5](\.[0-9]+)?s" "$W/sup.log"
check "the restart resumes" contains "$W/sup.log" "supervise: restart 1 of 3"
final_sup=$(ls -d "$W"/ckpt_sup/ckpt-* | tail -1)
same_checkpoint() {  # same_checkpoint A B: dense state and every sparse shard bit-identical
  [ "$(basename "$1")" = "$(basename "$2")" ] && cmp -s "$1/dense.t2dd" "$2/dense.t2dd" &&
    diff -q <(cd "$1/sparse" && ls) <(cd "$2/sparse" && ls) > /dev/null &&
    for f in "$1"/sparse/*; do cmp -s "$f" "$2/sparse/$(basename "$f")" || return 1; done
}
check "its final checkpoint equals the uninterrupted run's" same_checkpoint "$final" "$final_sup"
check "and its test metrics" test "$(grep '^test ' "$W/train.log")" = "$(grep '^test ' "$W/sup.log")"
kill -CONT "$stopped" 2> /dev/null  # gone already: the supervisor ended the job

# --- Async mode: prefetching the next batch within the staleness bound ------------------------
async=(--set cluster.consistency=ASYNC --set cluster.staleness=2 --set "checkpoint.dir=$W/ckpt_async"
       --set "training.output_dir=$W/out_async")
"${MPI[@]}" -n 3 "$T2DIFF" train -c "$W/job.textproto" "${async[@]}" --set training.max_steps=25 > "$W/async1.log" 2>&1
check "async run with prefetch (25 steps)" test $? -eq 0
"${MPI[@]}" -n 3 "$T2DIFF" train -c "$W/job.textproto" "${async[@]}" --resume > "$W/async2.log" 2>&1
check "async run resumed to the end" test $? -eq 0
check "async resume started from step 25" contains "$W/async2.log" "at step 25"
a_r=$(sed -n 's/^test .*Recall@10=\([0-9.]*\).*/\1/p' "$W/async2.log")
check "async training learns ($a_r vs popularity $pop_r)" awk -v m="$a_r" -v p="$pop_r" 'BEGIN { exit !(m != "" && m > p + 0.05) }'

# --- Distributed evaluation equals a single-process one ------------------------------------------
"${MPI[@]}" -n 3 "$T2DIFF" eval -c "$W/job.textproto" > "$W/eval_dist.log" 2>&1
check "distributed eval" test $? -eq 0
"$T2DIFF" eval -c "$W/job.textproto" --dump-ranks "$W/ranks" > "$W/eval_single.log" 2>&1
check "single-process eval" test $? -eq 0
check "eval numbers equal" test "$(grep '^test ' "$W/eval_dist.log")" = "$(grep '^test ' "$W/eval_single.log")"
check "eval printed metrics" contains "$W/eval_single.log" "Recall@10="

# --- Export / retrieve agree with evaluation --------------------------------------------------
n_items=200
# retrieve_agrees BUNDLE RANKS LINE...: retrieve ranks each dumped sample's target where
# evaluation did (ties aside, its position in retrieve's full ranking is its evaluation rank).
retrieve_agrees() {
  local bundle=$1 ranks=$2 line dumped target rank request pos ok=0
  shift 2
  for line in "$@"; do
    # A dumped sample is {"target":T,"rank":R, then the sample as a serving request}.
    dumped=$(sed -n "${line}p" "$ranks")
    target=$(sed -E 's/^\{"target":([0-9]+),.*/\1/' <<< "$dumped")
    rank=$(sed -E 's/^\{"target":[0-9]+,"rank":([0-9]+),.*/\1/' <<< "$dumped")
    request=$(sed -E "s/^\\{\"target\":[0-9]+,\"rank\":[0-9]+,/{\"k\":$n_items,/" <<< "$dumped")
    "$T2DIFF" retrieve --bundle "$bundle" --request "$request" > "$W/retrieve.log" 2>&1 || ok=1
    pos=$(awk -v t="$target" '$2 == "item" && $3 == t { print $1 }' "$W/retrieve.log")
    if [ -z "$pos" ] || [ "$pos" != "$rank" ]; then
      echo "$ranks line $line target $target: eval rank $rank, retrieve position '$pos'"
      ok=1
    fi
  done
  return $ok
}
check "retrieve's ranking equals evaluation's for 3 test users" retrieve_agrees "$W/bundle" "$W/ranks.test" 1 2 3
check "retrieve prints latency" contains "$W/retrieve.log" "latency: user tower"

# --- A user-id table through the parameter server, evaluation and the bundle --------------------
sed "s#$W/ckpt#$W/ckpt_u#; s#$W/out#$W/out_u#; s#^model {#model { user_id_table: \"user_id\"#" "$W/job.textproto" > "$W/user.textproto"
printf 'tables { name: "user_id" dim: 3 optimizer { kind: ADAGRAD learning_rate: 0.05 } }\n' >> "$W/user.textproto"
"${MPI[@]}" -n 3 "$T2DIFF" train -c "$W/user.textproto" --export "$W/bundle_u" > "$W/user.log" 2>&1
check "a job with a user table trains and exports" test $? -eq 0 || tail -30 "$W/user.log"
check "its bundle holds the trained user rows ($(npy_rows "$W/bundle_u/user_rows.npy"))" \
  test "$(npy_rows "$W/bundle_u/user_rows.npy")" -gt 0
"${MPI[@]}" -n 3 "$T2DIFF" eval -c "$W/user.textproto" > "$W/user_dist.log" 2>&1
"$T2DIFF" eval -c "$W/user.textproto" --dump-ranks "$W/ranks_u" > "$W/user_single.log" 2>&1
check "with a user table, distributed eval equals single-process eval" test -n "$(grep '^test ' "$W/user_dist.log")" -a \
  "$(grep '^test ' "$W/user_dist.log")" = "$(grep '^test ' "$W/user_single.log")"
check "with a user table, retrieve's ranking equals evaluation's for 3 test users" \
  retrieve_agrees "$W/bundle_u" "$W/ranks_u.test" 1 2 3

# --- Results as JSON (--json), for scripts --------------------------------------------------
"$T2DIFF" eval -c "$W/job.textproto" --json > "$W/eval.json" 2> /dev/null
check "eval --json prints one JSON line with both splits" \
  test "$(wc -l < "$W/eval.json")" -eq 1 -a -n "$(grep -F '"valid":{"split":"valid"' "$W/eval.json" | grep -F '"test":{"split":"test"')"
"$T2DIFF" retrieve --bundle "$W/bundle" --history "3 5 7" --times "100 200 300" --k 4 --json > "$W/retrieve.json" 2> /dev/null
check "retrieve --json prints the items and scores" grep -qE '^\{"id":null,"items":\[[0-9]+,[0-9]+,[0-9]+,[0-9]+\],"scores":\[' "$W/retrieve.json"
"$T2DIFF" prepare -c "$W/job.textproto" --set "data.dataset_dir=$W/data_json" --json > "$W/prepare.json" 2> /dev/null
check "prepare --json prints the summary" grep -qF '"users":"400"' "$W/prepare.json"

# --- Corrupt checkpoint ---------------------------------------------------------------------
newest=$(ls -d "$W"/ckpt/ckpt-* | tail -1)
previous=$(ls -d "$W"/ckpt/ckpt-* | tail -2 | head -1)
printf '\x00\x01' | dd of="$newest/dense.t2dd" bs=1 seek=100 conv=notrunc 2> /dev/null
"$T2DIFF" eval -c "$W/job.textproto" > "$W/corrupt.log" 2>&1
check "eval with a corrupt newest checkpoint still runs" test $? -eq 0
check "the corrupt file is named" contains "$W/corrupt.log" "$newest/dense.t2dd: checksum differs"
check "the previous checkpoint is loaded" contains "$W/corrupt.log" "from $previous"

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]

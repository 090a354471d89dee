#!/usr/bin/env bash
# The small version of the scale run: 10^5 users and 10^5 items from the generator, a user-id
# table and three user profile fields (one shared table), sampled softmax with logQ, 2 parameter servers + 2 workers, export, and distributed
# evaluation of a sample of the test users against the whole catalogue, exact and through an IVF
# index. Checks that it completes, that both servers carry the tables, that the bundle holds the
# trained user rows and profile value rows, and that evaluation and the index's recall are reported (about a minute).
#
# usage: scale_small_test.sh T2DIFF MPIEXEC [MPIEXEC FLAGS...]
set -uo pipefail
T2DIFF=$1
shift
MPI=("$@")
W=$(mktemp -d /tmp/t2d-scale.XXXXXX)
trap 'rm -rf "$W"' EXIT
. "$(dirname "$0")/lib.sh"

cat > "$W/job.textproto" <<CFG
cluster { num_servers: 2 num_workers: 2 timeout_s: 120 }
tables { name: "item_id" dim: 8 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "user_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } initializer { kind: ZEROS } }
tables { name: "user_profile" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "$W/data" max_seq_len: 10 session_len: 3 split: LAST_ITEM num_shards: 4
  generator { num_users: 100000 num_items: 100000 num_interests: 50 num_tags: 200 mean_seq_len: 12 min_seq_len: 5
              num_threads: 2 user_profile_fields: 3 user_profile_values: 40 }
}
model { diffusion_steps: 5 loss: SAMPLED_SOFTMAX num_negatives: 1024 user_id_table: "user_id"
        user_feature_table: "user_profile" }
training { batch_size: 256 epochs: 1 max_steps: 60 log_every_steps: 20 output_dir: "$W/out" }
checkpoint { dir: "$W/ckpt" every_steps: 0 }
eval { k: [10, 100] main_k: 100 max_samples: 2000 ann: true }
serving { exact_max_items: 10000 index_kind: IVF }
CFG
"$T2DIFF" generate -c "$W/job.textproto" > "$W/gen.log" 2>&1
check "10^5 users and 10^5 items generated" test $? -eq 0 || tail -5 "$W/gen.log"

"$T2DIFF" launch -c "$W/job.textproto" -- --export "$W/bundle" > "$W/train.log" 2>&1
check "2 servers + 2 workers train 60 steps with sampled softmax, a user table and profile fields, and export" test $? -eq 0 ||
  tail -30 "$W/train.log"
check "the run knows the whole catalogue" contains "$W/train.log" "catalogue=100000"
check "it says that no evaluation ran (60 steps end the run inside its first epoch)" \
  contains "$W/train.log" "no evaluation ran: the run ended before its first"
for s in 0 1; do
  pulled=$(sed -n "s/.*server stats: shard: $s .*pulled_rows: \([0-9]*\).*/\1/p" "$W/train.log")
  check "server $s served pulls (${pulled:-none} rows)" test "${pulled:-0}" -gt 10000
done
check "the bundle holds the trained user rows ($(npy_rows "$W/bundle/user_rows.npy"))" \
  test "$(npy_rows "$W/bundle/user_rows.npy")" -gt 1000
# 3 fields of 40 values: 120 keys, nearly all of them met in 60 steps of 256 users.
check "the bundle holds the trained profile value rows ($(npy_rows "$W/bundle/user_feature_rows.npy"))" \
  test "$(npy_rows "$W/bundle/user_feature_rows.npy")" -gt 100

"${MPI[@]}" -n 4 "$T2DIFF" eval -c "$W/job.textproto" > "$W/eval.log" 2>&1
check "distributed evaluation of 2,000 test users against 10^5 items" test $? -eq 0 || tail -30 "$W/eval.log"
model_r=$(sed -n 's/^test (2000 samples): .*Recall@100=\([0-9.]*\).*/\1/p' "$W/eval.log")
pop_r=$(sed -n 's/^test popularity baseline: .*Recall@100=\([0-9.]*\).*/\1/p' "$W/eval.log")
check "the model beats popularity after 60 steps (Recall@100 ${model_r:-none} vs ${pop_r:-none})" \
  awk -v m="$model_r" -v p="$pop_r" 'BEGIN { exit !(m != "" && p != "" && m > p) }'
found=$(sed -n 's/^test through the ivf index: .*the index finds \([0-9.]*\) of the exact top 100.*/\1/p' "$W/eval.log")
check "the IVF index is measured against exact top-100 (${found:-none})" \
  awk -v f="$found" 'BEGIN { exit !(f != "" && f >= 0.8) }'

echo "scale (small) e2e: $passes passed, $failures failed"
[ "$failures" -eq 0 ]

#!/usr/bin/env bash
# usage: run_jobs.sh T2DIFF OUT DATA_DIR   runs the identity-check jobs with one binary into OUT
# (scripts/identity/check.sh runs it for two binaries and compares).
set -uo pipefail
B=$1; O=$2; D=$3; rm -rf "$O"; mkdir -p "$O"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MPI=(mpiexec --oversubscribe --bind-to none --allow-run-as-root)
export OMPI_MCA_plm=isolated OMPI_MCA_btl_vader_single_copy_mechanism=none
cat > "$O/job.textproto" <<CFG
cluster { num_servers: 1 num_workers: 2 timeout_s: 60 }
tables { name: "item_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "$D/syn" max_seq_len: 20 session_len: 5 split: LAST_ITEM num_shards: 4
  generator { num_users: 400 num_items: 200 mean_seq_len: 25 }
}
model { diffusion_steps: 10 }
training { batch_size: 64 epochs: 2 log_every_steps: 10 output_dir: "$O/out" replica_check_steps: 5 }
checkpoint { dir: "$O/ckpt" every_steps: 20 keep_last: 5 }
eval { k: [5, 10, 20] main_k: 10 batch_size: 128 }
CFG
[ -d "$D/syn" ] || "$B" prepare -c "$O/job.textproto" > "$O/prepare.log" 2>&1
# A: sync, 1 server + 2 workers, export, eval with ranks dumped
"${MPI[@]}" -n 3 "$B" train -c "$O/job.textproto" --export "$O/bundle" > "$O/a.log" 2>&1; echo "A rc $?"
"$B" eval -c "$O/job.textproto" --dump-ranks "$O/ranks" > "$O/a_eval.log" 2>&1; echo "A eval rc $?"
"$B" retrieve --bundle "$O/bundle" --history "3 5 7 9 11" --k 5 --user 1 > "$O/a_ret.log" 2>&1; echo "A retrieve rc $?"
# B: async with prefetch (staleness 2), time-gap sessions off; single server
"${MPI[@]}" -n 3 "$B" train -c "$O/job.textproto" --set cluster.consistency=ASYNC --set cluster.staleness=2 \
  --set training.output_dir="$O/outB" --set checkpoint.dir="$O/ckptB" > "$O/b.log" 2>&1; echo "B rc $?"
# C: single process, sampled softmax, TWO_TOWER... keep T2Diff; resume after max_steps
"$B" train -c "$O/job.textproto" --set training.output_dir="$O/outC" --set checkpoint.dir="$O/ckptC" \
  --set training.max_steps=15 > "$O/c1.log" 2>&1; echo "C1 rc $?"
"$B" train -c "$O/job.textproto" --set training.output_dir="$O/outC" --set checkpoint.dir="$O/ckptC" \
  --resume > "$O/c2.log" 2>&1; echo "C2 rc $?"
# D: ML-1M (time order), 1 epoch, 1 server + 2 workers
if [ -f "$ROOT/../shared/data/ml-1m/ml-1m_sequences.txt.gz" ]; then
  cp "$ROOT/configs/examples/ml1m.textproto" "$O/ml1m.textproto"
  sed -i "s#\.\./shared/data#$ROOT/../shared/data#g; s#/tmp/t2d-data/ml1m#$D/ml1m#" "$O/ml1m.textproto"
  [ -d "$D/ml1m" ] || "$B" prepare -c "$O/ml1m.textproto" > "$O/prepare_ml1m.log" 2>&1
  "${MPI[@]}" -n 3 "$B" train -c "$O/ml1m.textproto" --set training.epochs=1 --set training.output_dir="$O/outD" \
    --set checkpoint.dir="$O/ckptD" > "$O/d.log" 2>&1; echo "D rc $?"
fi

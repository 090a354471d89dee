#!/usr/bin/env bash
# Training speed of t2diff against a plain PyTorch implementation of the same spec (the yardstick
# ../shared/reference/t2diff_ref.py, outside the project), side by side on the same machine.
#
#   bash bench/compare_pytorch.sh [ROUNDS]     (after scripts/build.sh; needs ../shared/data,
#                                               ../shared/reference and Debian's python3-torch)
#   environment: STEPS (200) steps per run at the authors' size; THREADS ("1"; "1 2" adds two
#   threads); BIG_STEPS (3) steps per run at the industrial size, 0 skips it; MODELS ("t2diff";
#   "t2diff meanpool nodiff" adds the mean-pooled two-tower and T2Diff without diffusion, the
#   yardstick's other models, at the authors' size); EVAL_ROUNDS (0) rounds of the evaluation
#   comparison: T2Diff at D = 16 (8 id + 8 tag dims) after 10 training steps, full-catalogue
#   ranking with all 50 reverse steps, users/s of evaluation alone on each side: the yardstick's
#   timed test evaluation (`test_eval_s`) against `t2diff eval --json` (both splits, the
#   `seconds` each split's evaluation took: user vectors, item tower and ranking; the process's
#   start-up and the checkpoint load, about a second, are left out as the yardstick's are).
#
# ML-1M at the authors' size (D = 4: 2 id + 2 tag dims, n = 50, k = 10, batch 512, full softmax
# over the 3,706 items, e_u = FFN(h_l, h_s)), the same thread count for both. The two alternate,
# ROUNDS rounds (default 3), so that load from other jobs hits both alike; only ratios within
# a round are meaningful. Each side reports samples/s of its training steps alone: the yardstick
# its `samples_per_s` (the training loop, data loading and evaluation excluded), t2diff the
# progress record that `train` writes to metrics.jsonl after the last step, before the final
# evaluation, which this script does not wait for. Then the industrial size as far as the
# yardstick can run it (D = 64, n = 200, batch 1024; its softmax is always full, so both use the
# full softmax over 3,706 items instead of 4,096 sampled negatives). Prints per round both
# rates and their ratio, then the median ratio and the target (>= 3x at one thread).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
steps=${STEPS:-200}
big_steps=${BIG_STEPS:-3}
threads_list=${THREADS:-1}
models=${MODELS-t2diff}  # empty: no training comparison
t2diff=${BUILD_DIR:-build}/launcher/t2diff
data=../shared/data/ml-1m/ml-1m_sequences.txt.gz
ref=../shared/reference/t2diff_ref.py
py=/usr/bin/python3  # Debian's python3-torch lives here, not in a pyenv python
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc) cores"
if [ ! -f "$data" ]; then echo "compare_pytorch: $data not found; skipping"; exit 0; fi
if [ ! -f "$ref" ]; then echo "compare_pytorch: $ref not found; skipping"; exit 0; fi
if ! "$py" -c 'import torch, numpy' 2> /dev/null; then
  echo "compare_pytorch: $py cannot import torch and numpy (apt-get install python3-torch python3-numpy); skipping"
  exit 0
fi
export OMPI_MCA_plm=${OMPI_MCA_plm:-isolated} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
work=$(mktemp -d /tmp/t2d-compare.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"' EXIT
cfg=configs/examples/ml1m.textproto

# The yardstick's model names and t2diff's model.kind for them.
declare -A kind_of=([t2diff]=T2DIFF [meanpool]=TWO_TOWER_MEAN [nodiff]=T2DIFF_NO_DIFFUSION)
model=t2diff

# ref N D_ID D_TAG BATCH THREADS STEPS -> samples/s of the yardstick's training steps ($model)
ref_rate() {
  "$py" "$ref" --model "$model" --user_ffn --epochs 1 --no_eval --max_steps "$6" --n "$1" --d_id "$2" --d_tag "$3" \
    --batch "$4" --threads "$5" --out "$work/ref.json" > "$work/ref.log" 2>&1 || { cat "$work/ref.log" >&2; exit 1; }
  "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["samples_per_s"])' "$work/ref.json"
}

# t2diff_rate N D_ID D_TAG BATCH THREADS STEPS -> samples/s of t2diff's training steps. The dataset
# for n is prepared once (prepare is not timed).
t2diff_rate() {
  local dir="$work/data-$1" out="$work/out"
  local sets=(--set "data.dataset_dir=$dir" --set "data.max_seq_len=$1" --set "tables[item_id].dim=$2"
              --set "tables[item_tag].dim=$3" --set "training.batch_size=$4" --set "cluster.torch_threads=$5"
              --set "training.max_steps=$6" --set training.epochs=1 --set training.log_every_steps=1000000
              --set "training.output_dir=$out" --set "model.kind=${kind_of[$model]}"
              --set cluster.parallel_branches=false)  # the same thread count as the yardstick
  [ -d "$dir" ] || "$t2diff" prepare -c "$cfg" "${sets[@]:0:4}" > "$work/prepare.log" 2>&1 \
    || { cat "$work/prepare.log" >&2; exit 1; }
  rm -rf "$out"
  "$t2diff" train -c "$cfg" "${sets[@]}" > "$work/t2diff.log" 2>&1 &
  pid=$!
  # The progress record of the last step comes before the final evaluation: stop there.
  local rec=
  while kill -0 "$pid" 2> /dev/null; do
    rec=$(grep -s "\"kind\":\"train\"" "$out/metrics.jsonl" | grep "\"step\":$6[,}]" || true)
    [ -n "$rec" ] && break
    sleep 0.2
  done
  kill "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  pid=
  [ -n "$rec" ] || rec=$(grep -s "\"kind\":\"train\"" "$out/metrics.jsonl" | grep "\"step\":$6[,}]" || true)
  if [ -z "$rec" ]; then cat "$work/t2diff.log" >&2; echo "compare_pytorch: t2diff train did not finish $6 steps" >&2; exit 1; fi
  sed -n 's/.*"samples_per_s": *\([0-9.e+]*\).*/\1/p' <<< "$rec"
}

# eval_rates THREADS -> "REF T2DIFF" users/s of evaluation (T2Diff, D = 16, n = 50)
eval_rates() {
  "$py" "$ref" --model t2diff --user_ffn --epochs 1 --max_steps 10 --n 50 --d_id 8 --d_tag 8 --batch 512 \
    --threads "$1" --out "$work/ref_eval.json" > "$work/ref.log" 2>&1 || { cat "$work/ref.log" >&2; exit 1; }
  local r
  r=$("$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["n_test"] / d["test_eval_s"])' "$work/ref_eval.json")
  local dir="$work/data-eval" out="$work/out-eval"
  local sets=(--set "data.dataset_dir=$dir" --set data.max_seq_len=50 --set "tables[item_id].dim=8"
              --set "tables[item_tag].dim=8" --set "cluster.torch_threads=$1" --set "training.output_dir=$out"
              --set "checkpoint.dir=$out/ckpt" --set model.kind=T2DIFF)
  [ -d "$dir" ] || "$t2diff" prepare -c "$cfg" "${sets[@]:0:8}" > "$work/prepare.log" 2>&1 \
    || { cat "$work/prepare.log" >&2; exit 1; }
  rm -rf "$out"
  "$t2diff" train -c "$cfg" "${sets[@]}" --set training.max_steps=10 --set training.epochs=1 \
    --set training.batch_size=512 > "$work/t2diff.log" 2>&1 || { cat "$work/t2diff.log" >&2; exit 1; }
  "$t2diff" eval -c "$cfg" "${sets[@]}" --json > "$work/eval.json" 2> "$work/eval.log" \
    || { cat "$work/eval.log" >&2; exit 1; }
  echo "$r $("$py" -c 'import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print("%.1f" % (sum(d[s]["model"]["users"] for s in ("valid", "test")) / sum(d[s]["seconds"] for s in ("valid", "test"))))' \
    "$work/eval.json")"
}

# compare LABEL N D_ID D_TAG BATCH THREADS STEPS TARGET: ROUNDS alternating rounds and their median ratio
compare() {
  echo "$1, $6 thread(s), $7 steps per run:"
  local ratios=() r t
  for ((i = 1; i <= rounds; i++)); do
    r=$(ref_rate "$2" "$3" "$4" "$5" "$6" "$7")
    t=$(t2diff_rate "$2" "$3" "$4" "$5" "$6" "$7")
    ratios+=("$(awk -v r="$r" -v t="$t" 'BEGIN { printf "%.3f", t / r }')")
    printf '  round %d: PyTorch reference %8.1f samples/s, t2diff %8.1f samples/s, ratio %.2fx\n' "$i" "$r" "$t" "${ratios[-1]}"
  done
  local median
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  if [ -n "$8" ]; then
    awk -v m="$median" -v g="$8" 'BEGIN { printf "  median ratio %.2fx (target >= %sx: %s)\n", m, g, (m >= g) ? "met" : "missed" }'
  else
    awk -v m="$median" 'BEGIN { printf "  median ratio %.2fx\n", m }'
  fi
}

declare -A label_of=([t2diff]="T2Diff" [meanpool]="Mean-pooled two-tower" [nodiff]="T2Diff without diffusion")
for model in $models; do
  [ -n "${kind_of[$model]:-}" ] || { echo "compare_pytorch: unknown model $model (t2diff, meanpool, nodiff)" >&2; exit 2; }
  for th in $threads_list; do
    target=
    if [ "$th" = 1 ]; then
      case $model in t2diff) target=3 ;; meanpool) target=2 ;; esac
    fi
    compare "${label_of[$model]}, authors' size (ML-1M, D=4 n=50 k=10 B=512, full softmax over 3706 items)" 50 2 2 512 \
      "$th" "$steps" "$target"
  done
done
model=t2diff
if [ "$big_steps" -gt 0 ]; then
  for th in $threads_list; do
    compare "T2Diff, industrial size as the reference runs it (ML-1M, D=64 n=200 B=1024, full softmax over 3706 items, not 4096 sampled negatives)" \
      200 32 32 1024 "$th" "$big_steps" ""
  done
fi
eval_rounds=${EVAL_ROUNDS:-0}
if [ "$eval_rounds" -gt 0 ]; then
  echo "T2Diff evaluation (ML-1M, D=16 n=50, all 50 reverse steps, full-catalogue ranking), 1 thread(s):"
  ratios=()
  for ((i = 1; i <= eval_rounds; i++)); do
    read -r r t <<< "$(eval_rates 1)"
    ratios+=("$(awk -v r="$r" -v t="$t" 'BEGIN { printf "%.3f", t / r }')")
    printf '  round %d: PyTorch reference %8.1f users/s, t2diff %8.1f users/s, ratio %.2fx\n' "$i" "$r" "$t" "${ratios[-1]}"
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  awk -v m="$median" 'BEGIN { printf "  median ratio %.2fx (target >= 2x: %s)\n", m, (m >= 2) ? "met" : "missed" }'
fi

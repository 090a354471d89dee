#!/usr/bin/env bash
# Turns training metrics files (metrics.jsonl, written by every `t2diff train`) into PNG plots:
#   OUT/loss.png     training loss (total, tower, diffusion) against the step
#   OUT/eval.png     validation Recall@K and NDCG@K against the epoch
# One line per input file, labelled with the file's folder name.
#
#   bash scripts/plot_metrics.sh OUT_DIR K metrics.jsonl [metrics.jsonl ...]
# Needs gnuplot (Debian: gnuplot-nox).
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 OUT_DIR K metrics.jsonl..." >&2; exit 2; fi
out=$1 k=$2
shift 2
command -v gnuplot > /dev/null || { echo "plot_metrics: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# extract KIND SPLIT "KEYS" FILE: for each record of KIND (and SPLIT), the numbers of KEYS. The
# records are one JSON object per line; spaces after ':' and ',' are dropped first so that both
# compact and spaced writers parse.
extract() {
  awk -v kind="$1" -v want="$2" -v keys="$3" '
    { s = $0; gsub(/":[ ]+/, "\":", s); gsub(/,[ ]+"/, ",\"", s) }
    index(s, "\"kind\":\"" kind "\"") && (want == "" || index(s, "\"split\":\"" want "\"")) {
      n = split(keys, ks, " "); line = "";
      for (i = 1; i <= n; i++) {
        p = index(s, "\"" ks[i] "\":"); if (p == 0) { line = ""; break; }
        v = substr(s, p + length(ks[i]) + 3); sub(/[,}].*/, "", v); line = line (i > 1 ? " " : "") v;
      }
      if (line != "") print line;
    }' "$4"
}
loss_plot="" eval_plot=""
i=0
for f in "$@"; do
  [ -f "$f" ] || { echo "plot_metrics: $f: no such file" >&2; exit 1; }
  i=$((i + 1))
  label=$(basename "$(dirname "$(readlink -f "$f")")")
  extract train "" "step loss tower_loss diffusion_loss" "$f" > "$tmp/train$i.dat"
  extract eval valid "epoch recall@$k ndcg@$k" "$f" > "$tmp/eval$i.dat"
  loss_plot+="${loss_plot:+, }'$tmp/train$i.dat' using 1:2 with lines title '$label total', '$tmp/train$i.dat' using 1:3 with lines dt 2 title '$label tower'"
  eval_plot+="${eval_plot:+, }'$tmp/eval$i.dat' using 1:2 with linespoints title '$label Recall@$k', '$tmp/eval$i.dat' using 1:3 with linespoints dt 2 title '$label NDCG@$k'"
done
have_eval=0
for d in "$tmp"/eval*.dat; do [ -s "$d" ] && have_eval=1; done
{
  echo "set terminal pngcairo size 900,500 noenhanced"
  echo "set key outside right"
  echo "set grid"
  echo "set output '$out/loss.png'"
  echo "set title 'training loss'"
  echo "set xlabel 'step'"
  echo "plot $loss_plot"
  if [ $have_eval = 1 ]; then
    echo "set output '$out/eval.png'"
    echo "set title 'validation'"
    echo "set xlabel 'epoch'"
    echo "plot $eval_plot"
  fi
} | gnuplot
echo "wrote $out/loss.png$([ $have_eval = 1 ] && echo " and $out/eval.png" || echo " (no validation results to plot)")"

#!/usr/bin/env bash
# The README's main job on the built-in default (configs/examples/default.textproto):
#   1. build t2diff;
#   2. generate the built-in synthetic data set (3,000 users, 1,000 items);
#   3. train T2Diff with 1 parameter server + 2 workers under mpirun: metrics per epoch,
#      checkpoints, and a serving bundle at the end;
#   4. evaluate the newest checkpoint again in a single process (the model against the
#      popularity baseline);
#   5. answer one retrieval from the bundle for a test user's history;
#   6. plot the training loss and the validation metrics per epoch.
# Everything it writes goes to t2diff-run/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
t2diff=${BUILD_DIR:-build}/launcher/t2diff
config=configs/examples/default.textproto
# Single machine: no ssh needed to start the ranks.
export OMPI_MCA_plm=${OMPI_MCA_plm:-isolated} OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
rm -rf t2diff-run
echo "== generate the built-in data set"
"$t2diff" generate -c "$config"
echo "== train: 1 server + 2 workers"
"$t2diff" launch -c "$config" -- --export t2diff-run/bundle
echo "== evaluate the newest checkpoint (single process)"
"$t2diff" eval -c "$config" --dump-ranks t2diff-run/ranks
echo "== retrieve for the first test user"
# Each dumped sample is {"target":T,"rank":R, then the sample as a serving request}: the same
# request, less target and rank, is what `t2diff serve` and `retrieve` answer.
dumped=$(head -1 t2diff-run/ranks.test)
target=$(sed -E 's/^\{"target":([0-9]+),.*/\1/' <<< "$dumped")
rank=$(sed -E 's/^\{"target":[0-9]+,"rank":([0-9]+),.*/\1/' <<< "$dumped")
request=$(sed -E 's/^\{"target":[0-9]+,"rank":[0-9]+,/{"k":10,/' <<< "$dumped")
echo "request: $request"
echo "actual next item $target (ranked $rank by evaluation)"
"$t2diff" retrieve --bundle t2diff-run/bundle --request "$request"
echo "== plots"
bash scripts/plot_metrics.sh t2diff-run/plots 20 t2diff-run/out/metrics.jsonl
echo "== done: metrics in t2diff-run/out/, plots in t2diff-run/plots/, checkpoints in t2diff-run/checkpoints/, bundle in t2diff-run/bundle/"

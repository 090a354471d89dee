#pragma once
// What the parts of a worker's run share, passed to each of them (row_fetcher, train_step,
// evaluator, run_state, run_report) so that none reaches back into trainer.cc: the job config,
// the embedding store, the workers' communicator, this worker's place among them, the item
// tables, and the deadline rule for collective calls. Also the result types the parts hand to
// each other and to the caller.
//
// Ownership: a RunContext points at objects it does not own; they must outlive every part that
// holds the context. Thread-safety: a plain value; the pointed-to objects state their own.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "configs/job_config.pb.h"
#include "embedding/embedding_store.h"
#include "trainer/metrics.h"

namespace t2d::trainer {

struct RunContext {
  const config::JobConfig* config = nullptr;   // not owned
  embedding::EmbeddingStore* store = nullptr;  // not owned
  comm::Communicator* workers = nullptr;       // not owned; the group of all workers
  int rank = 0;   // this worker's index among the workers
  int world = 1;  // number of workers
  int id_table = -1;   // index of model.item_id_table in config->tables()
  int tag_table = -1;  // index of model.item_tag_table; -1: no tag feature
  int user_table = -1; // index of model.user_id_table; -1: no user feature
  int user_feature_table = -1;  // index of model.user_feature_table; -1: no profile fields
  // Diffusion models: the diffusion loss's backward on a second thread (cluster.parallel_branches,
  // or when unset the trainer's choice: see ParallelBranches in trainer.cc).
  bool parallel_branches = false;

  const config::JobConfig& cfg() const { return *config; }
  // The deadline of a collective call started now (cluster.timeout_s).
  absl::Time Deadline() const { return absl::Now() + absl::Seconds(config->cluster().timeout_s()); }
};

// The cut-offs of eval.k (default 2, 10, 20, 50) and the one that selects epochs (eval.main_k
// when listed, else the largest).
std::vector<int> EvalKs(const config::EvalConfig& eval);
int MainK(const config::EvalConfig& eval);

struct EvalResult {
  std::string split;
  int epoch = 0;  // epochs trained when this evaluation ran (set by the trainer)
  RankingMetrics model{{}};
  RankingMetrics popularity{{}};
  double seconds = 0;
  // eval.ann: the model ranked through the serving index (a target the index does not return in
  // its top max(K) counts as missed), the index's recall of the exact top main_k (mean over
  // samples of the overlap / main_k), and the time of exact scoring and of index search (summed
  // over workers), plus building the index.
  bool has_ann = false;
  std::string ann_index;  // "flat", "ivf" or "hnsw"
  int ann_top_k = 0;      // main_k (at most the catalogue)
  RankingMetrics ann{{}};
  double ann_recall = 0;
  double exact_seconds = 0, ann_seconds = 0, ann_build_seconds = 0;
};

struct TrainResult {
  int64_t steps = 0;
  int64_t skipped_steps = 0;                // non-finite steps skipped (nonfinite_policy = SKIP)
  int workers = 1;
  int best_epoch = -1;                      // index of the validation-selected evaluation
                                            // (its epoch: test.epoch)
  bool selected_on_validation = false;      // false: no validation samples, the last evaluation
  std::vector<EvalResult> validation;       // one per evaluation
  EvalResult test;                          // at the best evaluation's parameters
  std::vector<double> test_best_over_epochs;  // the paper protocol: best test Recall per K
  double train_seconds = 0;       // the whole loop, evaluations and checkpoints included
  double eval_seconds = 0;        // of which evaluations and checkpoint saves
  double step_seconds = 0;        // reading + training steps only
  // This process's CPU time (all its threads) during those steps: over step_seconds, the cores
  // it kept busy. A worker's own; the servers' are not included.
  double step_cpu_seconds = 0;
  bool parallel_branches = false;  // whether the steps ran the diffusion backward on a second thread
  double samples_per_second = 0;  // training samples over the time spent in training steps
  double last_loss = 0;
  double first_loss = 0;
};

}  // namespace t2d::trainer

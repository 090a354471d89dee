#pragma once
// The worker side of a training job: the step loop, evaluation, checkpoints and export.
//
// One Trainer runs in every worker process (and alone in a single-process run). Per step:
//   1. read the worker's next batch (data/sample_reader.h) and build the model input and the
//      unique ids to pull (trainer/step_builder.h);
//   2. pull the rows from the EmbeddingStore (the parameter servers, or in-process tables);
//   3. forward + backward (model/model.h): dense gradients into the model's flat buffer, row
//      gradients onto the pulled rows;
//   4. one allreduce over the workers of [dense gradients | loss sums | non-finite flag], so
//      every worker sees the averaged gradient and whether any worker's loss was NaN/Inf;
//   5. push the row gradients (scaled by 1/W, so a step is the average over workers as for the
//      dense part) and take the same dense Adam step on every worker;
//   6. every `replica_check_steps`, worker 0 broadcasts the CRC of its dense parameters and
//      every worker compares: a divergence is an error, never silently trained through.
// Randomness (diffusion noise, sampled negatives) is derived from (seed, step, worker), so a
// run is a pure function of its config and world size and a resumed run needs no RNG state.
//
// Ownership: the store and the communicator are not owned and must outlive the trainer.
// Thread-safety: not thread-safe; one thread drives it.
// Errors: absl::Status; libtorch exceptions are caught inside the model.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "common/hash.h"
#include "configs/job_config.pb.h"
#include "embedding/embedding_store.h"
#include "trainer/metrics.h"

namespace t2d::trainer {

// Seed of the reverse diffusion process for `user`'s evaluation sample. Every sample has its
// own, so results do not depend on batching or the number of workers, and `t2diff retrieve
// --user U` reproduces exactly what evaluation computed for U.
inline uint64_t EvalSampleSeed(uint64_t eval_seed, int64_t user) {
  return HashCombine(eval_seed, static_cast<uint64_t>(user));
}

// The dense learning rate at `step` (0-based) of a run of `total_steps` (training.lr_*).
double LearningRateAt(const config::TrainingConfig& training, int64_t step, int64_t total_steps);

struct TrainerContext {
  config::JobConfig config;
  embedding::EmbeddingStore* store = nullptr;  // not owned
  comm::Communicator* workers = nullptr;       // not owned; the group of all workers
  // Where metrics.jsonl and summary.json go (worker 0 writes them); "" for none.
  std::string output_dir;
  // Called on worker 0 only, after every worker finished its step, to write the sparse
  // tables into a checkpoint's staging folder (store->Save for both store kinds).
  bool resume = false;
};

struct EvalResult {
  std::string split;
  RankingMetrics model{{}};
  RankingMetrics popularity{{}};
  double seconds = 0;
};

struct TrainResult {
  int64_t steps = 0;
  int best_epoch = -1;                      // by validation Recall@K_main
  std::vector<EvalResult> validation;       // one per epoch
  EvalResult test;                          // at the best epoch's parameters
  std::vector<double> test_best_over_epochs;  // the paper protocol: best test Recall per K
  double train_seconds = 0;       // the whole loop, evaluations and checkpoints included
  double eval_seconds = 0;        // of which evaluations and checkpoint saves
  double samples_per_second = 0;  // training samples over the time spent in training steps
  double last_loss = 0;
  double first_loss = 0;
};

class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainerContext& context);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains for config.training.epochs (from the newest checkpoint when context.resume),
  // validating after each epoch, checkpointing as configured, then tests at the end.
  absl::StatusOr<TrainResult> Train();

  // Ranks every sample of `split` against the whole catalogue (collective over the workers).
  // With `dump_path`, every worker also writes "user target rank | history..." per sample to
  // dump_path (".w<rank>" appended when there are several workers).
  absl::StatusOr<EvalResult> Evaluate(const std::string& split, const std::string& dump_path = "");

  // Loads the model (sparse rows and dense parameters) of the newest intact checkpoint in
  // checkpoint.dir, for evaluation or export. Collective over the workers.
  absl::Status LoadLatestModel();

  // Writes the serving bundle (collective; worker 0 writes): see docs/export.md.
  absl::Status Export(const std::string& dir);

  int64_t step() const;

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace t2d::trainer

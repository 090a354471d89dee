#pragma once
// The worker side of a training job: the epoch loop, and the entry points for evaluation and
// export. One Trainer runs in every worker process (and alone in a single-process run).
//
// The parts, each in its own file and each given the shared RunContext (trainer/run_context.h):
//   row_fetcher  pulls a step's embedding rows from the EmbeddingStore and pushes their gradients
//   train_step   one step: forward + backward, one allreduce, pushes, the dense Adam step,
//                replica checks
//   evaluator    full-catalogue ranking of a split (collective), with the popularity baseline
//   run_state    step counters and evaluation history, saved to and loaded from checkpoints
//   run_report   the progress line, metrics.jsonl and summary.json
// The loop (Train): read a batch, prepare its step (prefetching the next batch's rows in async
// mode within the staleness bound), run it, report progress, evaluate after every
// eval.every_epochs epochs, checkpoint every checkpoint.every_steps steps and at the end, and
// finally select the evaluation with the best validation Recall@main_k.
//
// Ownership: the store and the communicator are not owned and must outlive the trainer.
// Thread-safety: not thread-safe; one thread drives it.
// Errors: absl::Status; libtorch exceptions are caught inside the model and the evaluator.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "configs/job_config.pb.h"
#include "embedding/embedding_store.h"
#include "serving/bundle_writer.h"
#include "trainer/run_context.h"

namespace t2d::trainer {

struct TrainerContext {
  config::JobConfig config;
  embedding::EmbeddingStore* store = nullptr;  // not owned
  comm::Communicator* workers = nullptr;       // not owned; the group of all workers
  // Where metrics.jsonl and summary.json go (worker 0 writes them); "" for none.
  std::string output_dir;
  // Train from the newest checkpoint in checkpoint.dir (fresh when there is none). Without it,
  // Train refuses a checkpoint.dir that already holds checkpoints (trainer/checkpoint.h).
  bool resume = false;
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
  // With `dump_path`, every worker also writes per sample a JSON line: "target", "rank", then
  // the sample as a serving request (docs/serving.md), to dump_path (".w<rank>" appended when
  // there are several workers).
  absl::StatusOr<EvalResult> Evaluate(const std::string& split, const std::string& dump_path = "");

  // Loads the model (sparse rows and dense parameters) of the newest intact checkpoint in
  // checkpoint.dir, for evaluation or export. Collective over the workers.
  absl::Status LoadLatestModel();

  // Writes the serving bundle (collective; worker 0 writes): see docs/serving.md. With
  // `base_dir`, a delta against that full bundle instead (serving/bundle_writer.h), and its
  // counts in *delta when given.
  absl::Status Export(const std::string& dir, const std::string& base_dir = "", serving::DeltaStats* delta = nullptr);

  int64_t step() const;

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace t2d::trainer

#pragma once
// One synchronous training step of a worker, and what it needs around it:
//   1. Prepare: the model input of global step `at` from a batch (model/step_builder.h) and
//      the pull of its rows (sent now when prefetching, so they arrive while the previous step
//      computes);
//   2. Run: take the rows, forward + backward (model/model.h), ONE allreduce over the workers of
//      [dense gradients | total, tower, diffusion loss | non-finite flag], push the row
//      gradients, and the same dense Adam step on every worker at the scheduled learning rate;
//      a non-finite loss or gradient on any worker skips the step everywhere or stops the run
//      (training.nonfinite_policy);
//   3. CheckReplicas: worker 0 broadcasts the CRC of its dense parameters and every worker
//      compares, so a divergence is an error rather than silently trained through.
// Randomness (diffusion noise, sampled negatives) is derived from (seed, step, worker), so a run
// is a pure function of its config and world size and a resumed run needs no RNG state.
//
// Ownership: every pointer passed in is not owned and must outlive the step.
// Thread-safety: not thread-safe; one thread drives a worker (Build excepted, see there).
// Errors: absl::Status; collective calls fail with the communicator's error (a dead or silent
// worker), the model's errors come back as Internal.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/sample_reader.h"
#include "model/dense_optimizer.h"
#include "model/model.h"
#include "trainer/row_fetcher.h"
#include "trainer/run_context.h"
#include "model/step_builder.h"

namespace t2d::trainer {

// The dense learning rate at `step` (0-based) of a run of `total_steps` (training.lr_*).
double LearningRateAt(const config::TrainingConfig& training, int64_t step, int64_t total_steps);

class TrainStep {
 public:
  // A step whose input is built and whose rows are requested.
  struct Prepared {
    model::StepInput in;
    uint64_t seed = 0;
    RowFetcher::Pending rows;
  };
  struct Result {
    model::Model::Losses losses;  // averaged over the workers (0 for a skipped step)
    bool skipped = false;         // non-finite somewhere, nothing applied (nonfinite_policy = SKIP)
  };

  TrainStep(const RunContext* context, model::Model* model, model::DenseAdam* optimizer, model::StepBuilder* builder,
            RowFetcher* fetcher);

  // Builds the input of global step `at` from `batch` and requests its rows: Build, then Request.
  absl::Status Prepare(const data::SampleBatch& batch, int64_t at, Prepared* prepared);
  // The input alone. It uses the step builder and nothing else, so ONE other thread may run it
  // while Run trains the previous step (the trainer builds the next batch that way).
  absl::Status Build(const data::SampleBatch& batch, int64_t at, Prepared* prepared);
  // Requests the rows of a built input (in sync mode only after the previous step's pushes).
  absl::Status Request(Prepared* prepared);

  // Trains step `step` (0-based) of `total_steps` on a prepared input.
  absl::StatusOr<Result> Run(Prepared& prepared, int64_t step, int64_t total_steps);

  // Collective: compares every worker's dense parameters with worker 0's (after step `step`).
  absl::Status CheckReplicas(int64_t step);

 private:
  const RunContext& ctx_;
  model::Model* const model_;
  model::DenseAdam* const optimizer_;
  model::StepBuilder* const builder_;
  RowFetcher* const fetcher_;
  std::vector<float> sync_;  // the allreduce buffer, reused
};

}  // namespace t2d::trainer

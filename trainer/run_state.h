#pragma once
// A run's state that must outlive a process (the step counters and the evaluation history),
// saved to and restored from checkpoints together with the model. A checkpoint holds:
//   sparse/              the embedding tables (EmbeddingStore::Save, written by worker 0)
//   dense.t2dd           dense parameters and Adam state (model/dense_state.h, worker 0)
//   evals.textproto      the evaluation history (EvalHistory, trainer/checkpoint.proto, worker 0)
//   worker-<w>.textproto each worker's reader cursor and step counters (WorkerState)
//   job.textproto        the job config that wrote it (worker 0), to name what differs when a
//                        resume is refused as another run's (trainer/checkpoint.h)
// Saving is collective: worker 0 stages the folder, everyone writes, worker 0 commits; loading
// picks the newest checkpoint that verifies as this run's. The formats are documented in
// docs/formats.md.
//
// Ownership: every pointer passed in is not owned and must outlive the RunState.
// Thread-safety: not thread-safe; one thread drives a worker.
// Errors: a missing or damaged file is DataLoss naming it; a checkpoint of another run or of
// another number of workers is FailedPrecondition (a resumed run needs the same world size).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/sample_reader.h"
#include "model/dense_optimizer.h"
#include "model/model.h"
#include "trainer/checkpoint.pb.h"
#include "trainer/run_context.h"

namespace t2d::trainer {

class RunState {
 public:
  RunState(const RunContext* context, model::Model* model, model::DenseAdam* optimizer);

  int64_t step = 0;           // global steps done
  int64_t skipped_steps = 0;  // of which skipped (non-finite)
  std::vector<EvalResult> validation, test;  // one per evaluation, in order

  // Collective: writes a checkpoint of the current state into checkpoint.dir (no-op when it is
  // empty). `cursor`: this worker's reader position of the next step to train.
  absl::Status Save(int epoch, const data::ReaderCursor& cursor);

  // Collective: loads the model (tables and dense state) of the newest verified checkpoint, for
  // evaluation or export; sets `step`. NotFound when there is none.
  absl::Status LoadModel();

  // Collective: loads the newest verified checkpoint for training (model, counters, evaluation
  // history) and restores `reader` to its cursor. Returns false, having changed nothing, when
  // checkpoint.dir holds no checkpoint; fails (never starts fresh) when it holds some but none
  // verifies (DataLoss with every reason), or when the newest intact one is another run's.
  absl::StatusOr<bool> Resume(data::SampleReader* reader);

  // For a run that does not resume: FailedPrecondition naming checkpoint.dir when it already
  // holds checkpoints, so that a fresh run never overwrites or prunes another run's.
  absl::Status CheckFreshStart() const;

  // Collective, for a run that starts fresh: fills every table that names a folder in
  // `init_from` from that folder (the warm start). Errors name the table and the field.
  absl::Status InitTables();

  // The evaluation history as stored, and back (DataLoss when it does not match eval.k).
  EvalHistory History() const;
  absl::Status SetHistory(const EvalHistory& history, const std::string& where);

 private:
  // Loads tables and dense state from a verified checkpoint folder.
  absl::Status LoadFolder(const std::string& folder);

  const RunContext& ctx_;
  model::Model* const model_;
  model::DenseAdam* const optimizer_;
};

// Protobuf text files of a checkpoint: written atomically; reading one that is missing or does
// not parse is DataLoss naming the file.
absl::Status WriteTextProto(const std::string& path, const google::protobuf::Message& message);
absl::Status ReadTextProto(const std::string& path, google::protobuf::Message* message);

}  // namespace t2d::trainer

#pragma once
// The job runner of the t2diff executable (train, eval, export): what a server rank and a
// worker rank do in a job, or a single process alone. Called from launcher/main.cc only.
// Errors: reported on the log and as the exit status; a failing rank ends the whole job.

#include <string>

#include "absl/status/status.h"
#include "configs/job_config.pb.h"

namespace t2d::launcher {

struct RunOptions {
  enum Mode { kTrain, kEval, kExport } mode = kTrain;
  bool resume = false;
  std::string export_dir;  // train: export after training when set; export: the bundle folder
  std::string export_base;  // export: write a delta against this full bundle (serving/bundle_writer.h)
  std::string dump_ranks;  // eval: write per-sample ranks to <this>.<split>
  // Print the result on stdout as one JSON object (worker 0) instead of human-readable lines:
  // train: the run summary; eval: {"valid": ..., "test": ...}; export: the bundle written.
  bool json = false;
  // Set by `t2diff launch --supervise`: every rank beats into this folder (launcher/supervise.h).
  std::string heartbeat_dir;
};

// Creates checkpoint.dir (when set) and checks that files can be written there, so that a bad
// folder stops a run before training rather than at its first checkpoint (with
// checkpoint.every_steps: 0, after all of it). FailedPrecondition naming the field and folder.
absl::Status CheckCheckpointFolder(const config::JobConfig& config);

// Runs `config` as this process's part of the job: under mpirun with
// cluster.num_servers + cluster.num_workers ranks (servers first), or alone (one process with
// in-process tables). Returns the process exit status; a failing rank ends the whole job.
int RunJob(const config::JobConfig& config, const RunOptions& options, int* argc, char*** argv);

}  // namespace t2d::launcher

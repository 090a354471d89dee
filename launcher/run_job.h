#pragma once
// The job runner of the t2diff executable (train, eval, export): what a server rank and a
// worker rank do in a job, or a single process alone. Called from launcher/main.cc only.
// Errors: reported on the log and as the exit status; a failing rank ends the whole job.

#include <string>

#include "configs/job_config.pb.h"

namespace t2d::launcher {

struct RunOptions {
  enum Mode { kTrain, kEval, kExport } mode = kTrain;
  bool resume = false;
  std::string export_dir;  // train: export after training when set; export: the bundle folder
  std::string dump_ranks;  // eval: write per-sample ranks to <this>.<split>
  // Print the result on stdout as one JSON object (worker 0) instead of human-readable lines:
  // train: the run summary; eval: {"valid": ..., "test": ...}; export: the bundle written.
  bool json = false;
};

// Runs `config` as this process's part of the job: under mpirun with
// cluster.num_servers + cluster.num_workers ranks (servers first), or alone (one process with
// in-process tables). Returns the process exit status; a failing rank ends the whole job.
int RunJob(const config::JobConfig& config, const RunOptions& options, int* argc, char*** argv);

}  // namespace t2d::launcher

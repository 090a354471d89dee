#pragma once
// The role runners of the t2diff executable: what a server rank and a worker rank do in a job,
// and the serving-side retrieve command. Called from launcher/main.cc only.

#include <string>

#include "configs/job_config.pb.h"

namespace t2d::launcher {

struct RunOptions {
  enum Mode { kTrain, kEval, kExport } mode = kTrain;
  bool resume = false;
  std::string export_dir;  // train: export after training when set; export: the bundle folder
  std::string dump_ranks;  // eval: write per-sample ranks to <this>.<split>
};

// Runs `config` as this process's part of the job: under mpirun with
// cluster.num_servers + cluster.num_workers ranks (servers first), or alone (one process with
// in-process tables). Returns the process exit status; a failing rank ends the whole job.
int RunJob(const config::JobConfig& config, const RunOptions& options, int* argc, char*** argv);

struct RetrieveOptions {
  std::string bundle;
  std::string history;
  int k = 10;
  uint64_t seed = 1;
  // When set: use the reverse-process seed that evaluation used for this user id.
  int64_t user = -1;
};
int RunRetrieve(const RetrieveOptions& options);

}  // namespace t2d::launcher

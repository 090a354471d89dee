#pragma once
// `t2diff launch`: the mpirun command line for a job, built from its config. Pure; thread-safe.
//
// One mpirun job holds cluster.num_servers + cluster.num_workers ranks, servers first. On one
// machine (no hostfile) ranks may outnumber cores, so --oversubscribe is added; as root OpenMPI
// refuses to start without --allow-run-as-root. Every rank runs the same binary with the same
// arguments and finds its role from its rank (comm/roles.h).

#include <string>
#include <vector>

#include "configs/job_config.pb.h"

namespace t2d::launcher {

struct LaunchOptions {
  std::string mpirun = "mpirun";
  std::string binary;              // the t2diff executable every rank runs
  std::vector<std::string> args;   // its arguments, e.g. {"train", "--config", "job.textproto"}
  bool as_root = false;            // add --allow-run-as-root
};

std::vector<std::string> BuildMpirunCommand(const config::JobConfig& config, const LaunchOptions& options);

// The command as one shell-quoted line, for printing.
std::string ShellJoin(const std::vector<std::string>& argv);

}  // namespace t2d::launcher

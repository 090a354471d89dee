#pragma once
// `t2diff launch`: the mpirun command line for a job, built from its config. Pure; thread-safe.
//
// One mpirun job holds cluster.num_servers + cluster.num_workers ranks, servers first. On one
// machine (no hostfile) ranks may outnumber cores, so --oversubscribe is added, and the job is
// kept off the network: ranks talk through shared memory only (no TCP BTL, so no rank listens
// on a port) and mpirun's runtime advertises loopback only (docs/cluster.md says what remains
// open). As root OpenMPI refuses to start without --allow-run-as-root. Every rank runs the same
// binary with the same arguments and finds its role from its rank (comm/roles.h).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "configs/job_config.pb.h"

namespace t2d::launcher {

struct LaunchOptions {
  std::string mpirun = "mpirun";
  std::string binary;              // the t2diff executable every rank runs
  std::vector<std::string> args;   // its arguments, e.g. {"train", "--config", "job.textproto"}
  bool as_root = false;            // add --allow-run-as-root
};

std::vector<std::string> BuildMpirunCommand(const config::JobConfig& config, const LaunchOptions& options);

// A job may start at most kMaxRanksPerSlot ranks per slot unless the user asks for more
// (`t2diff launch --many-ranks`): far more ranks than cores is a typo (num_workers: 69631), and
// mpirun would start them all. Slots are this machine's cores without a hostfile, the
// hostfile's slots otherwise (HostfileSlots). FailedPrecondition naming the counts and the flag.
inline constexpr int kMaxRanksPerSlot = 8;
absl::Status CheckRankCount(const config::JobConfig& config, int slots, bool many_ranks);

// The slots of an OpenMPI hostfile's text: the sum of "slots=N" over its hosts; a host without
// one counts `default_slots` (mpirun gives it as many as it has cores). Comments (#) and blank
// lines are skipped.
int HostfileSlots(const std::string& text, int default_slots);

// The command as one shell-quoted line, for printing.
std::string ShellJoin(const std::vector<std::string>& argv);

}  // namespace t2d::launcher

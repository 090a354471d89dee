#pragma once
// `t2diff launch --supervise`: runs a job's mpirun command and, when a rank dies or stalls, ends
// the job and starts it again with --resume (from the newest verified checkpoint), up to a
// restart budget (cluster.supervise in configs/job_config.proto; docs/cluster.md).
//
// Stalls are found by heartbeats, not by the job's own deadlines (cluster.timeout_s, minutes):
// every rank's process runs a thread (HeartbeatWriter) that touches <dir>/rank-<world rank>
// every second; a stopped or hung process stops its threads too, so a heartbeat older than
// cluster.supervise.heartbeat_s is a stall. A rank that finished its part marks its file done
// and is no longer watched. The folder is passed to the ranks on the command line
// (`train --heartbeat-dir`); the supervisor must see it (one machine, or a shared file system).
//
// Deaths are what mpirun reports: it ends the job when a rank dies and prints which one.
//
// Ownership and threads: HeartbeatWriter owns its thread; Supervise runs in the calling thread,
// forks mpirun and installs SIGINT/SIGTERM handlers (a user's interrupt ends the job, no
// restart). Errors: the writer's folder problems are Status; Supervise returns an exit status.

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/roles.h"

namespace t2d::launcher {

// The heartbeat file of `world_rank` in `dir`.
std::string HeartbeatFile(const std::string& dir, int world_rank);

// A rank's side: from Start until destruction a thread rewrites the file's time every second.
class HeartbeatWriter {
 public:
  // Creates `dir` if needed and writes the file ("<pid> <host>"). Errors: Internal naming the file.
  static absl::StatusOr<std::unique_ptr<HeartbeatWriter>> Start(const std::string& dir, int world_rank);
  ~HeartbeatWriter();  // stops the thread; the file stays (a finished rank marked it done)
  HeartbeatWriter(const HeartbeatWriter&) = delete;
  HeartbeatWriter& operator=(const HeartbeatWriter&) = delete;

  // This rank's part of the job is over: the supervisor stops watching it.
  void MarkDone();

 private:
  struct State;
  explicit HeartbeatWriter(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// The supervisor's view of one rank's heartbeat file.
struct Heartbeat {
  bool present = false;  // the file exists (the rank got as far as starting its thread)
  bool done = false;     // the rank finished its part
  absl::Time time;       // last beat (the file's modification time)
  pid_t pid = 0;
  std::string host;
};
std::vector<Heartbeat> ReadHeartbeats(const std::string& dir, int world_size);

// The first rank that is stalled at `now`: a beat older than `heartbeat_timeout`, or no beat
// `startup_timeout` after `started`. Ranks marked done are not watched.
std::optional<int> FindStalledRank(const std::vector<Heartbeat>& beats, absl::Time now, absl::Time started,
                                   absl::Duration heartbeat_timeout, absl::Duration startup_timeout);

// What mpirun's output says about why a job ended, e.g. "world rank 2 (worker 1) was killed by
// signal 9 (Killed)" from "mpirun noticed that process rank 2 with PID 0 on node vm exited on
// signal 9 (Killed)."; nullopt for other lines.
std::optional<std::string> CauseFromMpirunLine(const std::string& line, const comm::RoleAssignment& roles);

// The command of a restart: `command` with --resume appended unless it holds one already.
std::vector<std::string> RestartCommand(std::vector<std::string> command);

struct SuperviseOptions {
  std::vector<std::string> command;  // the mpirun command line of the job (first start)
  comm::RoleAssignment roles;        // to name ranks in messages
  std::string heartbeat_dir;         // the folder the command passes to the ranks
  std::string checkpoint_dir;        // checkpoint.dir: to log which checkpoint a restart resumes
  int max_restarts = 3;
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration startup_timeout = absl::Seconds(120);  // cluster.timeout_s
  // After the local ranks are killed, how long mpirun may take to end before it is killed too.
  absl::Duration grace = absl::Seconds(5);
};

// Runs the job until it succeeds (returns 0) or fails with the restart budget spent (returns
// its last exit status), or until SIGINT/SIGTERM (ends the job, returns 128 + signal). Logs each
// restart with its cause.
int Supervise(const SuperviseOptions& options);

}  // namespace t2d::launcher

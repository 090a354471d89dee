#include "launcher/supervise.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/file_util.h"

namespace t2d::launcher {

std::string HeartbeatFile(const std::string& dir, int world_rank) { return absl::StrCat(dir, "/rank-", world_rank); }

// ---------------------------------------------------------------------------------------------
// The rank's side.

struct HeartbeatWriter::State {
  std::string file;
  std::string line;  // "<pid> <host>"
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;
};

HeartbeatWriter::HeartbeatWriter(std::unique_ptr<State> state) : state_(std::move(state)) {}

absl::StatusOr<std::unique_ptr<HeartbeatWriter>> HeartbeatWriter::Start(const std::string& dir, int world_rank) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  auto state = std::make_unique<State>();
  state->file = HeartbeatFile(dir, world_rank);
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  state->line = absl::StrCat(::getpid(), " ", host);
  if (absl::Status s = WriteFileAtomic(state->file, state->line + "\n"); !s.ok()) {
    return absl::InternalError(absl::StrCat("heartbeat file ", state->file, ": ", s.message()));
  }
  State* st = state.get();
  st->thread = std::thread([st] {
    std::unique_lock<std::mutex> lock(st->mu);
    while (!st->cv.wait_for(lock, std::chrono::seconds(1), [st] { return st->stop; })) {
      // Only the time matters; a failed touch shows up as a stall, which is what it is.
      ::utimensat(AT_FDCWD, st->file.c_str(), nullptr, 0);
    }
  });
  return std::unique_ptr<HeartbeatWriter>(new HeartbeatWriter(std::move(state)));
}

HeartbeatWriter::~HeartbeatWriter() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->cv.notify_all();
  state_->thread.join();
}

void HeartbeatWriter::MarkDone() {
  // Best effort: should it fail, the supervisor sees a stall of a rank that has finished, and
  // the restart resumes from the final checkpoint.
  (void)WriteFileAtomic(state_->file, state_->line + " done\n");
}

// ---------------------------------------------------------------------------------------------
// The supervisor's side: pure parts.

std::vector<Heartbeat> ReadHeartbeats(const std::string& dir, int world_size) {
  std::vector<Heartbeat> beats(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) {
    Heartbeat& b = beats[static_cast<size_t>(r)];
    const std::string file = HeartbeatFile(dir, r);
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) continue;
    auto text = ReadFileToString(file);
    if (!text.ok()) continue;  // replaced between stat and read: read next time
    b.present = true;
    b.time = absl::TimeFromTimespec(st.st_mtim);
    std::istringstream in(*text);
    std::string done;
    in >> b.pid >> b.host >> done;
    b.done = done == "done";
  }
  return beats;
}

std::optional<int> FindStalledRank(const std::vector<Heartbeat>& beats, absl::Time now, absl::Time started,
                                   absl::Duration heartbeat_timeout, absl::Duration startup_timeout) {
  for (size_t r = 0; r < beats.size(); ++r) {
    const Heartbeat& b = beats[r];
    if (b.done) continue;
    if (b.present ? now - b.time > heartbeat_timeout : now - started > startup_timeout) return static_cast<int>(r);
  }
  return std::nullopt;
}

std::optional<std::string> CauseFromMpirunLine(const std::string& line, const comm::RoleAssignment& roles) {
  // OpenMPI 4's words (orte/tools/orterun/help-orterun.txt, ompi/mpi/help-mpi-api.txt).
  static const std::regex kSignal(R"(process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)( \(([^)]*)\))?)");
  static const std::regex kAbort(R"(MPI_ABORT was invoked on rank (\d+))");
  std::smatch m;
  if (std::regex_search(line, m, kSignal)) {
    return absl::StrCat(roles.Describe(std::stoi(m[1])), " was killed by signal ", m[2].str(),
                        m[4].matched ? absl::StrCat(" (", m[4].str(), ")") : "");
  }
  if (std::regex_search(line, m, kAbort)) {
    return absl::StrCat(roles.Describe(std::stoi(m[1])), " ended the job (MPI_Abort)");
  }
  return std::nullopt;
}

std::vector<std::string> RestartCommand(std::vector<std::string> command) {
  if (std::find(command.begin(), command.end(), "--resume") == command.end()) command.push_back("--resume");
  return command;
}

// ---------------------------------------------------------------------------------------------
// Processes.

namespace {

volatile std::sig_atomic_t g_interrupt = 0;
extern "C" void OnInterrupt(int sig) { g_interrupt = sig; }

// Every process below `root` (its children, theirs, ...), read from /proc.
std::vector<pid_t> Descendants(pid_t root) {
  std::multimap<pid_t, pid_t> children;  // parent -> child
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    children.emplace(ppid, static_cast<pid_t>(std::stol(name)));
  }
  std::vector<pid_t> out;
  std::vector<pid_t> todo = {root};
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    auto [lo, hi] = children.equal_range(p);
    for (auto it = lo; it != hi; ++it) {
      out.push_back(it->second);
      todo.push_back(it->second);
    }
  }
  return out;
}

// One start of the job: mpirun with its stderr read through a pipe (forwarded as it comes,
// and scanned for mpirun's report of a dead rank).
class Attempt {
 public:
  Attempt(const SuperviseOptions& options, std::vector<std::string> command)
      : options_(options), command_(std::move(command)) {}

  // Starts mpirun; false (logged) when it cannot be started.
  bool Start() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      LOG(ERROR) << "pipe: " << std::strerror(errno);
      return false;
    }
    std::vector<char*> argv;
    for (auto& a : command_) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) {
      LOG(ERROR) << "fork: " << std::strerror(errno);
      return false;
    }
    if (pid_ == 0) {
      // mpirun in its own process group: a terminal's ^C reaches the supervisor only, which
      // ends the job itself.
      ::setpgid(0, 0);
      ::dup2(fds[1], STDERR_FILENO);
      ::execvp(argv[0], argv.data());
      std::fprintf(stderr, "cannot run %s: %s\n", argv[0], std::strerror(errno));
      ::_exit(127);
    }
    ::close(fds[1]);
    err_fd_ = fds[0];
    started_ = absl::Now();
    return true;
  }

  // Waits until mpirun ends, a rank stalls, or the user interrupts. Returns mpirun's exit
  // status (128 + signal if a signal ended it), having ended the job in every case.
  int Wait() {
    absl::Time next_check = absl::Now();
    while (true) {
      Pump(100);
      int status = 0;
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        Drain();
        EndJob(/*mpirun_alive=*/false);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (g_interrupt != 0) {
        cause_ = absl::StrCat("interrupted by signal ", static_cast<int>(g_interrupt));
        EndJob(true);
        return 128 + g_interrupt;
      }
      const absl::Time now = absl::Now();
      if (now < next_check) continue;
      next_check = now + absl::Milliseconds(500);
      const auto beats = ReadHeartbeats(options_.heartbeat_dir, options_.roles.world_size);
      const std::optional<int> stalled =
          FindStalledRank(beats, now, started_, options_.heartbeat_timeout, options_.startup_timeout);
      if (stalled.has_value()) {
        const Heartbeat& b = beats[static_cast<size_t>(*stalled)];
        const std::string who = options_.roles.Describe(*stalled);
        cause_ = b.present ? absl::StrCat(who, " (pid ", b.pid, " on ", b.host, ") stalled: no heartbeat for ",
                                          absl::FormatDuration(absl::Trunc(now - b.time, absl::Milliseconds(100))))
                           : absl::StrCat(who, " never started (no heartbeat after ",
                                          absl::FormatDuration(options_.startup_timeout), ")");
        LOG(WARNING) << cause_ << "; ending the job";
        EndJob(true);
        return 1;
      }
    }
  }

  // Why the job ended ("" when mpirun gave no reason).
  const std::string& cause() const { return cause_; }

 private:
  // Forwards what mpirun wrote to stderr within `timeout_ms`; false at end of file.
  bool Pump(int timeout_ms) {
    if (err_fd_ < 0) {
      absl::SleepFor(absl::Milliseconds(timeout_ms));  // the callers poll at this pace
      return false;
    }
    pollfd p{err_fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return true;
    char buf[65536];
    const ssize_t n = ::read(err_fd_, buf, sizeof(buf));
    if (n <= 0) {
      if (n < 0 && errno == EINTR) return true;
      ::close(err_fd_);
      err_fd_ = -1;
      return false;
    }
    (void)!::write(STDERR_FILENO, buf, static_cast<size_t>(n));
    pending_.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending_.find('\n')) != std::string::npos) {
      const std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      if (cause_.empty()) {
        if (auto c = CauseFromMpirunLine(line, options_.roles)) cause_ = *c;
      }
    }
    return true;
  }

  // Forwards the rest of mpirun's output: until end of file, at most a second (a process that
  // inherited the pipe must not hold the supervisor).
  void Drain() {
    const absl::Time deadline = absl::Now() + absl::Seconds(1);
    while (absl::Now() < deadline && Pump(100)) {
    }
  }

  // Ends whatever is left of the job. The ranks are not in mpirun's process group (OpenMPI
  // gives each its own), so the job is the process tree: the local ranks are killed at once
  // (a stalled job has nothing to save; checkpoints are the state), then mpirun is asked to
  // end (it tears down ranks on other machines) and killed after the grace period. The
  // supervisor is a subreaper, so ranks orphaned by mpirun's end stay in its tree.
  void EndJob(bool mpirun_alive) {
    for (pid_t p : Descendants(::getpid())) {
      if (p != pid_) ::kill(p, SIGKILL);
    }
    if (mpirun_alive) {
      ::kill(pid_, SIGTERM);
      const absl::Time deadline = absl::Now() + options_.grace;
      int status = 0;
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        Pump(100);
        if (absl::Now() > deadline) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
      }
    }
    Drain();
    // Reap everything else (orphaned ranks) until nothing of the job is left.
    const absl::Time deadline = absl::Now() + options_.grace;
    while (true) {
      for (pid_t p : Descendants(::getpid())) ::kill(p, SIGKILL);
      while (::waitpid(-1, nullptr, WNOHANG) > 0) {
      }
      if (Descendants(::getpid()).empty() || absl::Now() > deadline) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
  }

  const SuperviseOptions& options_;
  std::vector<std::string> command_;
  pid_t pid_ = -1;
  int err_fd_ = -1;
  std::string pending_;
  std::string cause_;
  absl::Time started_;
};

}  // namespace

int Supervise(const SuperviseOptions& options) {
  // Orphans of the job (ranks whose mpirun died) become our children, so EndJob finds them.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::vector<std::string> command = options.command;
  for (int restart = 0;; ++restart) {
    // Heartbeats of the previous start must not count for this one.
    std::error_code ec;
    std::filesystem::remove_all(options.heartbeat_dir, ec);
    Attempt attempt(options, command);
    if (!attempt.Start()) return 1;
    const int status = attempt.Wait();
    if (status == 0) {
      if (restart > 0) LOG(INFO) << "supervise: the job completed after " << restart << " restart(s)";
      return 0;
    }
    if (g_interrupt != 0) {
      LOG(WARNING) << "supervise: " << attempt.cause() << "; the job was ended";
      return status;
    }
    const std::string cause =
        attempt.cause().empty() ? absl::StrCat("mpirun exited with status ", status) : attempt.cause();
    if (restart >= options.max_restarts) {
      LOG(ERROR) << "supervise: " << cause << "; no restarts left (cluster.supervise.max_restarts = "
                 << options.max_restarts << "), giving up";
      return status;
    }
    // The ranks name the checkpoint they resume from (or that there is none yet).
    const std::string from =
        options.checkpoint_dir.empty()
            ? "no checkpoint.dir: starting again from the beginning"
            : absl::StrCat("resuming from the newest verified checkpoint in ", options.checkpoint_dir);
    LOG(WARNING) << "supervise: restart " << restart + 1 << " of " << options.max_restarts << ": " << cause << "; "
                 << from;
    // Without checkpoint.dir there is nothing to resume: the job starts again as it first did.
    if (!options.checkpoint_dir.empty()) command = RestartCommand(command);
  }
}

}  // namespace t2d::launcher

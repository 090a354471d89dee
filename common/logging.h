#pragma once
// Process-wide logging set-up on top of glog.
//
// Every log line carries the process role and rank ("[server 0]", "[worker 1]") so that the
// interleaved output of an mpirun job can be read. glog is process-global by nature; this is
// the only place that configures it, and only the composition root (launcher/) and test mains
// call it.
//
// Thread safety: call InitLogging once, before other threads log. Logging itself is thread-safe.

#include <string>

namespace t2d {

// Called on a fatal error (CHECK failure, LOG(FATAL)) after glog has printed the message.
// The launcher installs one that aborts the whole MPI job so that no rank hangs waiting for
// the dead one. Must not return.
using FatalHandler = void (*)();

struct LoggingOptions {
  std::string role = "main";  // "server", "worker", "main", "test"...
  int rank = -1;              // -1: no rank in the tag
  bool log_to_stderr = true;  // false: glog's per-process files under FLAGS_log_dir
  FatalHandler on_fatal = nullptr;
};

void InitLogging(const char* argv0, const LoggingOptions& options);

// The tag printed on every line, e.g. "worker 1". Exposed for tests and progress lines.
std::string LogTag();

}  // namespace t2d

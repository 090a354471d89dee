#pragma once
// Options shared by the shard server and the worker-side client (plain struct; filled from the
// job config's ClusterConfig by configs/job_options.h, so that ps/ code does not read configs).

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/roles.h"

namespace t2d::ps {

// See docs/ps-protocol.md, "Consistency".
enum class Consistency { kSync, kAsync };

struct PsOptions {
  comm::RoleAssignment roles;
  Consistency consistency = Consistency::kSync;
  // Async only: the staleness bound tau in push rounds.
  int staleness = 1;
  // Server: longest a deferred request or an incomplete sync round may wait for other workers
  // before the server gives up and names them. Worker: longest wait for any reply is twice
  // this, so that a stall is reported first by the server, which knows which worker is missing.
  absl::Duration timeout = absl::Seconds(120);
  // Server: longest time without any request before the server gives up.
  absl::Duration idle_timeout = absl::InfiniteDuration();
  // Largest message either side accepts or sends, in bytes.
  int64_t max_message_bytes = int64_t{1} << 30;
  // Worker: a pull asks each server for its rows in pieces of at most this many bytes of rows
  // (at least one row; never more than max_message_bytes allows), each its own request, so that
  // the server looks up the next piece while the worker receives and places the last one
  // (bench_ps prints the effect). 256 KiB: 1,024 rows of dim 64.
  int64_t pull_piece_bytes = int64_t{256} << 10;
};

}  // namespace t2d::ps

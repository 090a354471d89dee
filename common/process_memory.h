#pragma once
// The resident memory of this process, as the kernel counts it (/proc/self/status): what the
// parameter servers report in their stats and what the benchmarks print beside their tables'
// own accounting.
//
// Errors: Unavailable where /proc/self/status is missing or lacks the fields (not Linux).
// Thread-safety: safe to call from any thread.

#include <cstdint>

#include "absl/status/statusor.h"

namespace t2d {

struct ProcessMemory {
  int64_t rss_bytes = 0;       // VmRSS: resident now
  int64_t peak_rss_bytes = 0;  // VmHWM: the largest resident size so far
};

absl::StatusOr<ProcessMemory> ReadProcessMemory();

}  // namespace t2d

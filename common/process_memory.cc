#include "common/process_memory.h"

#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace t2d {

absl::StatusOr<ProcessMemory> ReadProcessMemory() {
  std::ifstream in("/proc/self/status");
  if (!in) return absl::UnavailableError("/proc/self/status cannot be read");
  ProcessMemory m;
  bool rss = false, peak = false;
  std::string line;
  while (std::getline(in, line)) {
    // "VmRSS:     123456 kB"
    absl::string_view v = line;
    int64_t* dst = nullptr;
    if (absl::ConsumePrefix(&v, "VmRSS:")) {
      dst = &m.rss_bytes;
      rss = true;
    } else if (absl::ConsumePrefix(&v, "VmHWM:")) {
      dst = &m.peak_rss_bytes;
      peak = true;
    } else {
      continue;
    }
    v = absl::StripAsciiWhitespace(v);
    int64_t kb = 0;
    if (!absl::ConsumeSuffix(&v, " kB") || !absl::SimpleAtoi(v, &kb)) {
      return absl::UnavailableError("/proc/self/status: cannot read \"" + line + "\"");
    }
    *dst = kb * 1024;
  }
  if (!rss || !peak) return absl::UnavailableError("/proc/self/status has no VmRSS or VmHWM line");
  return m;
}

}  // namespace t2d

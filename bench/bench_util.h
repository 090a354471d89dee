#pragma once
// Small helpers shared by the benchmarks: machine description and resident memory.

#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace t2d::bench {

// The first value of a /proc/cpuinfo field ("model name", "flags"), or "unknown".
inline std::string CpuInfo(const std::string& field) {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0 && line.find(':') != std::string::npos) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// The vector extensions that decide what a GEMM or a fused kernel can reach on this CPU, so
// figures from the project's different machines (EPYC, Xeon) can be read side by side.
inline std::string VectorExtensions() {
  std::istringstream flags(" " + CpuInfo("flags") + " ");
  std::set<std::string> have;
  for (std::string f; flags >> f;) have.insert(f);
  std::string out;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}) {
    out += (out.empty() ? "" : " ") + std::string(have.count(f) ? "" : "no-") + f;
  }
  return out;
}

// "<CPU model> x <N> cores [<vector extensions>]": every benchmark prints it with its figures.
inline std::string MachineDescription() {
  return CpuInfo("model name") + " x " + std::to_string(std::thread::hardware_concurrency()) + " cores [" +
         VectorExtensions() + "]";
}

// Resident set size of this process in bytes.
inline long long ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  long long pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace t2d::bench

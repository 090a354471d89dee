#pragma once
// Small helpers shared by the benchmarks: machine description, quantiles and resident memory.

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

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

// The p-quantile of `v` (0 <= p <= 1) as the element at index floor(p * size), clamped: the
// latency percentiles the benchmarks print. REQUIRES !v.empty().
inline double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// The median of `v` (the mean of the middle two for an even count). REQUIRES !v.empty().
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Resident set size of this process in bytes.
inline long long ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  long long pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace t2d::bench

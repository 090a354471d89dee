#pragma once
// Small helpers shared by the benchmarks: machine description and resident memory.

#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

namespace t2d::bench {

// "Intel(R) Xeon(R) ... x 2 cores" from /proc/cpuinfo.
inline std::string MachineDescription() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return model + " x " + std::to_string(std::thread::hardware_concurrency()) + " cores";
}

// Resident set size of this process in bytes.
inline long long ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  long long pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace t2d::bench

// What the operating system says about this process (Linux /proc): resident memory, for
// benchmarks and the workers' statistics.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace moerun {

// Resident set size in bytes (VmRSS), or -1 when /proc cannot tell.
inline int64_t resident_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

}  // namespace moerun

// Helpers shared by the unit tests (header-only; each test_*.cc is its own executable).
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"

namespace moerun::testing_util {

// A fresh directory path under the system temp dir (not created), removed with its contents
// when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "moerun-test") {
    path_ = std::filesystem::temp_directory_path() /
            (prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::remove_all(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

// The message of the moerun::Error that f throws, or "<no exception>".
inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const moerun::Error& e) {
    return e.what();
  }
  return "<no exception>";
}

// Deterministic test data, reproduced bit for bit by the Python generator quoted in
// ReferenceFingerprints: n/d in fp32 times a per-block power of two; every ~50th value is
// made tiny (×2^-20) so that blocks contain values that round to zero.
inline std::vector<float> gen_matrix(int rows, int cols, uint32_t seed, int block_rows,
                                     int block_cols) {
  std::vector<float> w(static_cast<size_t>(rows) * cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      uint32_t h =
          static_cast<uint32_t>(i) * 1000003u + static_cast<uint32_t>(j) * 7919u + seed * 104729u;
      h *= 2654435761u;
      h ^= h >> 15;
      const int n = static_cast<int>(h % 20001u) - 10000;
      const int d = 1 + static_cast<int>((h >> 16) % 13u);
      const int g =
          static_cast<int>(((i / block_rows) * 3 + (j / block_cols) * 5 + seed) % 25) - 12;
      float v = static_cast<float>(n) / static_cast<float>(d) * std::ldexp(1.0f, g);
      if ((h >> 8) % 50 == 0) v *= 0x1p-20f;
      w[static_cast<size_t>(i) * cols + j] = v;
    }
  }
  return w;
}

}  // namespace moerun::testing_util

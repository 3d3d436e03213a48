#include "common/error.h"

#include <unistd.h>

#include <atomic>
#include <cstring>

namespace moerun {
namespace {
std::atomic<int> g_rank{-1};
}

void set_process_rank(int rank) {
  g_rank.store(rank, std::memory_order_relaxed);
}
int process_rank() {
  return g_rank.load(std::memory_order_relaxed);
}

const std::string& process_host() {
  static const std::string host = [] {
    char buf[256] = {};
    if (gethostname(buf, sizeof(buf) - 1) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return host;
}

namespace detail {

std::string errno_string(int err) {
  char buf[256] = {};
  // GNU strerror_r may return a static string instead of filling buf.
  const char* s = strerror_r(err, buf, sizeof(buf));
  return s ? std::string(s) : std::string(buf);
}

std::string where(const char* file, int line) {
  const int rank = process_rank();
  if (rank >= 0) return fmt::format("{}:{} [rank {} on {}]", file, line, rank, process_host());
  return fmt::format("{}:{} [{}]", file, line, process_host());
}

void fail(const char* file, int line, std::string_view what) {
  throw Error(fmt::format("{}: {}", where(file, line), what));
}

void fail_library(const char* file, int line, std::string_view lib, long code,
                  std::string_view lib_message, std::string_view expr) {
  throw Error(
      fmt::format("{}: {} error {} ({}) in `{}`", where(file, line), lib, code, lib_message, expr));
}

}  // namespace detail
}  // namespace moerun

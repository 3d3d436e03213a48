// Errors and check macros shared by every moerun component.
//
// Inside a component we throw moerun::Error; process and API boundaries catch it and turn it
// into an exit status or a grpc::Status. Every message carries file:line, the MPI rank (once
// known) and the host name, so a failure in a 64-rank job says where it happened.
//
// The library-specific macros live beside their library so that nothing here drags in MPI,
// CUDA or gRPC headers: check_mpi.h, check_cuda.h (CUDA + NCCL), check_grpc.h.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace moerun {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Process identity printed in every error and log line. The rank is -1 until the worker
// knows it (after MPI_Init); the host name is read once.
void set_process_rank(int rank);
int process_rank();
const std::string& process_host();

namespace detail {
// "file.cc:42 [rank 3 on host-a]"
std::string where(const char* file, int line);
[[noreturn]] void fail(const char* file, int line, std::string_view what);
// For the library macros: "<lib> error <code> (<lib's error string>) in `<expr>`".
[[noreturn]] void fail_library(const char* file, int line, std::string_view lib, long code,
                               std::string_view lib_message, std::string_view expr);
std::string errno_string(int err);
}  // namespace detail

}  // namespace moerun

// Throws moerun::Error with a formatted message (fmt syntax).
#define MOERUN_THROW(...) ::moerun::detail::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))

// Checks an internal or input condition; the message says what was wrong in words.
#define MOERUN_CHECK(cond, ...)                                               \
  do {                                                                        \
    if (!(cond)) [[unlikely]]                                                 \
      ::moerun::detail::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

// System calls that return -1 and set errno. Evaluates `expr` once and yields its value.
#define MOERUN_CHECK_SYS(expr)                                                              \
  ([&]() {                                                                                  \
    auto moerun_sys_rc_ = (expr);                                                           \
    if (moerun_sys_rc_ == -1) [[unlikely]] {                                                \
      const int moerun_errno_ = errno;                                                      \
      ::moerun::detail::fail_library(__FILE__, __LINE__, "system", moerun_errno_,           \
                                     ::moerun::detail::errno_string(moerun_errno_), #expr); \
    }                                                                                       \
    return moerun_sys_rc_;                                                                  \
  }())

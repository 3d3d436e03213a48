// MOERUN_CHECK_MPI: checks an MPI call's return code; the message carries MPI_Error_string.
// Header-only so that only MPI users include <mpi.h>.
#pragma once

#include <mpi.h>

#include "common/error.h"

namespace moerun::detail {
inline std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "unknown MPI error";
  return std::string(buf, static_cast<size_t>(len));
}
}  // namespace moerun::detail

#define MOERUN_CHECK_MPI(expr)                                                                   \
  do {                                                                                           \
    int moerun_mpi_rc_ = (expr);                                                                 \
    if (moerun_mpi_rc_ != MPI_SUCCESS) [[unlikely]]                                              \
      ::moerun::detail::fail_library(__FILE__, __LINE__, "MPI", moerun_mpi_rc_,                  \
                                     ::moerun::detail::mpi_error_string(moerun_mpi_rc_), #expr); \
  } while (0)

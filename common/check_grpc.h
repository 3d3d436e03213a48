// MOERUN_CHECK_GRPC: checks a grpc::Status; the message carries the status code and text.
#pragma once

#include <grpcpp/support/status.h>

#include "common/error.h"

#define MOERUN_CHECK_GRPC(expr)                                                       \
  do {                                                                                \
    const ::grpc::Status moerun_grpc_st_ = (expr);                                    \
    if (!moerun_grpc_st_.ok()) [[unlikely]]                                           \
      ::moerun::detail::fail_library(__FILE__, __LINE__, "gRPC",                      \
                                     static_cast<long>(moerun_grpc_st_.error_code()), \
                                     moerun_grpc_st_.error_message(), #expr);         \
  } while (0)

// MOERUN_CHECK_CUDA / MOERUN_CHECK_NCCL: check CUDA runtime and NCCL return codes; messages
// carry cudaGetErrorString / ncclGetErrorString. Only CUDA-enabled targets include this.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "common/error.h"

#define MOERUN_CHECK_CUDA(expr)                                                   \
  do {                                                                            \
    cudaError_t moerun_cuda_rc_ = (expr);                                         \
    if (moerun_cuda_rc_ != cudaSuccess) [[unlikely]]                              \
      ::moerun::detail::fail_library(__FILE__, __LINE__, "CUDA",                  \
                                     static_cast<long>(moerun_cuda_rc_),          \
                                     cudaGetErrorString(moerun_cuda_rc_), #expr); \
  } while (0)

#define MOERUN_CHECK_NCCL(expr)                                                   \
  do {                                                                            \
    ncclResult_t moerun_nccl_rc_ = (expr);                                        \
    if (moerun_nccl_rc_ != ncclSuccess) [[unlikely]]                              \
      ::moerun::detail::fail_library(__FILE__, __LINE__, "NCCL",                  \
                                     static_cast<long>(moerun_nccl_rc_),          \
                                     ncclGetErrorString(moerun_nccl_rc_), #expr); \
  } while (0)

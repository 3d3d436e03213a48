#include "kernels/cuda/numfmt_kernels.h"

#include <cuda_runtime_api.h>

#include "common/check_cuda.h"

namespace moerun::cuda {
namespace {

// Decoded from the bit fields (not a table), so the CPU table in common/numfmt is checked
// against an independent formulation.
__device__ float decode_e4m3(uint8_t c) {
  const float sign = (c & 0x80) ? -1.0f : 1.0f;
  const int exp = (c >> 3) & 0xF, man = c & 0x7;
  if (exp == 0xF && man == 0x7) return __int_as_float(0x7FC00000);  // NaN
  if (exp == 0) return sign * ldexpf(static_cast<float>(man), -9);  // subnormal m·2^-9
  return sign * ldexpf(1.0f + man / 8.0f, exp - 7);
}

__device__ float decode_e2m1(uint8_t c) {
  const float sign = (c & 0x8) ? -1.0f : 1.0f;
  const int exp = (c >> 1) & 0x3, man = c & 0x1;
  if (exp == 0) return sign * 0.5f * man;
  return sign * ldexpf(1.0f + 0.5f * man, exp - 1);
}

__device__ float decode_e8m0(uint8_t c) {
  if (c == 0xFF) return __int_as_float(0x7FC00000);
  return ldexpf(1.0f, static_cast<int>(c) - 127);
}

__global__ void decode_kernel(CodeFormat format, const uint8_t* codes, size_t n, float* out) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  switch (format) {
    case CodeFormat::kE4m3:
      out[i] = decode_e4m3(codes[i]);
      break;
    case CodeFormat::kE2m1:
      out[i] = decode_e2m1(codes[i] & 0xF);
      break;
    case CodeFormat::kE8m0:
      out[i] = decode_e8m0(codes[i]);
      break;
  }
}

}  // namespace

void decode_codes(CodeFormat format, const uint8_t* codes, size_t n, float* out) {
  if (n == 0) return;
  uint8_t* d_codes = nullptr;
  float* d_out = nullptr;
  MOERUN_CHECK_CUDA(cudaMalloc(&d_codes, n));
  MOERUN_CHECK_CUDA(cudaMalloc(&d_out, n * sizeof(float)));
  MOERUN_CHECK_CUDA(cudaMemcpy(d_codes, codes, n, cudaMemcpyHostToDevice));
  constexpr int kThreads = 256;
  decode_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads>>>(format, d_codes,
                                                                                    n, d_out);
  MOERUN_CHECK_CUDA(cudaGetLastError());
  MOERUN_CHECK_CUDA(cudaMemcpy(out, d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
  MOERUN_CHECK_CUDA(cudaFree(d_codes));
  MOERUN_CHECK_CUDA(cudaFree(d_out));
}

}  // namespace moerun::cuda

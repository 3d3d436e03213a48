// Optimized GEMM and activation quantization (the hot ops), used by OptimizedKernels.
// Order contract: see GemmParams in kernels/kernels.h — results identical on every path.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/cpu/cpu_features.h"
#include "kernels/kernels.h"

namespace moerun::kernels {

std::unique_ptr<PackedWeight> opt_pack_weight(const WeightView& w);
void opt_gemm(const GemmParams& p, const CpuFeatures& f, int num_threads);
// Every GEMM of ps[0..n), each output bit for bit what opt_gemm gives it (Kernels::gemm_batch).
// The calls opt_gemm sends to the in-register decode path run together, their (call, panel)
// items in one OpenMP region; the others run one after another through opt_gemm.
void opt_gemm_batch(const GemmParams* ps, size_t n, const CpuFeatures& f, int num_threads);
void opt_quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                       const CpuFeatures& f, int num_threads);
void opt_quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                       const CpuFeatures& f, int num_threads);

}  // namespace moerun::kernels

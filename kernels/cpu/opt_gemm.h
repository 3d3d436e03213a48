// Optimized GEMM and activation quantization (the hot ops), used by OptimizedKernels.
// Order contract: see GemmParams in kernels/kernels.h — results identical on every path.
#pragma once

#include <memory>
#include <string>

#include "kernels/cpu/cpu_features.h"
#include "kernels/kernels.h"

namespace moerun::kernels {

std::unique_ptr<PackedWeight> opt_pack_weight(const WeightView& w);
void opt_gemm(const GemmParams& p, const CpuFeatures& f, int num_threads);
void opt_quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                       const CpuFeatures& f, int num_threads);
void opt_quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                       const CpuFeatures& f, int num_threads);

}  // namespace moerun::kernels

// The optimized CPU kernels: SIMD paths chosen at run time from the CPU's features
// (AMX-BF16 tiles, AVX-512-BF16, AVX-512F, AVX2+FMA, portable C++), OpenMP threads over
// output rows/columns (never over a reduction, so results do not depend on the thread count
// or the batch size). Numerics differ from the reference only in summation order/precision,
// within kernels/tolerance.h.
#pragma once

#include <memory>

#include "kernels/kernels.h"

namespace moerun::kernels {

std::unique_ptr<Kernels> make_optimized_kernels(int num_threads);

}  // namespace moerun::kernels

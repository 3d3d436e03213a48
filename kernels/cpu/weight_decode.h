// Decoding of checkpoint-format weight rows to fp32 (spec §3.3). Exact: every FP8/FP4 value
// times its power-of-two block scale, and every bf16 value, is an fp32 value. Used by the
// reference GEMM, by tests, and by optimized kernels for edge cases.
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace moerun::kernels {

// out[0..w.cols) = W[row][:], dequantized.
void decode_weight_row(const WeightView& w, int64_t row, float* out);

// Bytes of W's data / scales (for bandwidth figures and bounds checks).
int64_t weight_data_bytes(const WeightView& w);
int64_t weight_scale_bytes(const WeightView& w);

// Throws moerun::Error naming `what` if the view is malformed (null data, a format whose
// shape rules do not hold: FP4 cols % 32, missing scales).
void check_weight_view(const WeightView& w, const char* what);

}  // namespace moerun::kernels

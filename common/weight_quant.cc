// Weight quantization in the released checkpoint layouts (see weight_quant.h). Mirrors
// dsv4fmt.py quantize_fp8_weight / quantize_fp4_weight of the golden reference, which wrote the
// golden checkpoint, so a checkpoint written here has the same bytes for the same weights.
#include "common/weight_quant.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/numfmt.h"

namespace moerun::numfmt {
namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

void check_shape(int64_t out, int64_t in, const char* what) {
  MOERUN_CHECK(out >= 0 && in >= 0, "{}: shape [{}, {}] must be non-negative", what, out, in);
}

// The reference's encoder never emits a negative zero: a value that rounds to zero gets
// code 0 whatever its sign (the golden checkpoint holds no 0x80 e4m3 code and no 0x8 nibble).
uint8_t canonical_e4m3(uint8_t code) {
  return code == 0x80 ? uint8_t{0} : code;
}
uint8_t canonical_e2m1(uint8_t nibble) {
  return nibble == 0x8 ? uint8_t{0} : nibble;
}

// Block scale exponent; rejects non-finite weights by name instead of writing NaN scales.
int weight_scale_exponent(float amax, float inv_max, const char* what, int64_t row, int64_t col) {
  MOERUN_CHECK(std::isfinite(amax), "{}: non-finite weight in the block at [{}, {}]", what, row,
               col);
  return pow2_scale_exponent(amax, kWeightAmaxFloor, inv_max);
}

}  // namespace

void quantize_fp8_weight(const float* w, int64_t out, int64_t in, uint8_t* codes, uint8_t* scales) {
  check_shape(out, in, "quantize_fp8_weight");
  const int64_t num_col_blocks = ceil_div(in, kFp8WeightBlock);
  for (int64_t r0 = 0; r0 < out; r0 += kFp8WeightBlock) {
    const int64_t r1 = std::min<int64_t>(r0 + kFp8WeightBlock, out);
    for (int64_t c0 = 0; c0 < in; c0 += kFp8WeightBlock) {
      const int64_t c1 = std::min<int64_t>(c0 + kFp8WeightBlock, in);
      // Unlike act_quant's amax, a NaN is kept here so that the finiteness check rejects it.
      float amax = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          const float a = std::fabs(w[r * in + c]);
          amax = (a > amax || std::isnan(a)) ? a : amax;
        }
      }
      const int e = weight_scale_exponent(amax, act_quant_inv_max(), "quantize_fp8_weight", r0, c0);
      scales[(r0 / kFp8WeightBlock) * num_col_blocks + c0 / kFp8WeightBlock] =
          e8m0_from_exponent(e);
      const float s = std::ldexp(1.0f, e);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          // The reference clamps; it never bites, since fp32(1/448) > 1/448 keeps |w/s| ≤ 448.
          const float v = std::clamp(w[r * in + c] / s, -kE4m3Max, kE4m3Max);
          codes[r * in + c] = canonical_e4m3(f32_to_e4m3(v));
        }
      }
    }
  }
}

void dequantize_fp8_weight(const uint8_t* codes, const uint8_t* scales, int64_t out, int64_t in,
                           float* w) {
  check_shape(out, in, "dequantize_fp8_weight");
  const int64_t num_col_blocks = ceil_div(in, kFp8WeightBlock);
  for (int64_t r = 0; r < out; ++r) {
    const uint8_t* scale_row = scales + (r / kFp8WeightBlock) * num_col_blocks;
    for (int64_t c = 0; c < in; ++c) {
      // e4m3 × 2^k has at most 4 significant bits: exact unless it lands below fp32's
      // normal range, where the one fp32 rounding equals the reference's fp64→fp32 cast.
      w[r * in + c] = e4m3_to_f32(codes[r * in + c]) * e8m0_to_f32(scale_row[c / kFp8WeightBlock]);
    }
  }
}

void quantize_fp4_weight(const float* w, int64_t out, int64_t in, uint8_t* packed,
                         uint8_t* scales) {
  check_shape(out, in, "quantize_fp4_weight");
  MOERUN_CHECK(in % kFp4WeightBlock == 0, "quantize_fp4_weight: in = {} must be a multiple of {}",
               in, kFp4WeightBlock);
  const int64_t num_blocks = in / kFp4WeightBlock;
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t b = 0; b < num_blocks; ++b) {
      const float* x = w + r * in + b * kFp4WeightBlock;
      float amax = 0.0f;
      for (int i = 0; i < kFp4WeightBlock; ++i) {
        const float a = std::fabs(x[i]);
        amax = (a > amax || std::isnan(a)) ? a : amax;
      }
      const int e = weight_scale_exponent(amax, fp4_quant_inv_max(), "quantize_fp4_weight", r,
                                          b * kFp4WeightBlock);
      scales[r * num_blocks + b] = e8m0_from_exponent(e);
      const float s = std::ldexp(1.0f, e);
      uint8_t* dst = packed + r * (in / 2) + b * (kFp4WeightBlock / 2);
      for (int i = 0; i < kFp4WeightBlock; i += 2) {
        const uint8_t even = canonical_e2m1(f32_to_e2m1(std::clamp(x[i] / s, -kE2m1Max, kE2m1Max)));
        const uint8_t odd =
            canonical_e2m1(f32_to_e2m1(std::clamp(x[i + 1] / s, -kE2m1Max, kE2m1Max)));
        dst[i / 2] = fp4_pack(even, odd);
      }
    }
  }
}

void dequantize_fp4_weight(const uint8_t* packed, const uint8_t* scales, int64_t out, int64_t in,
                           float* w) {
  check_shape(out, in, "dequantize_fp4_weight");
  MOERUN_CHECK(in % kFp4WeightBlock == 0, "dequantize_fp4_weight: in = {} must be a multiple of {}",
               in, kFp4WeightBlock);
  const int64_t num_blocks = in / kFp4WeightBlock;
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t c = 0; c < in; c += 2) {
      const uint8_t byte = packed[r * (in / 2) + c / 2];
      const float s = e8m0_to_f32(scales[r * num_blocks + c / kFp4WeightBlock]);
      w[r * in + c] = e2m1_to_f32(fp4_even(byte)) * s;
      w[r * in + c + 1] = e2m1_to_f32(fp4_odd(byte)) * s;
    }
  }
}

}  // namespace moerun::numfmt

// Weight quantization and dequantization in the released checkpoint layouts (spec §3.3):
//   FP8 weight  W [out, in] e4m3 codes, scale S [ceil(out/128), ceil(in/128)] E8M0;
//   FP4 weight  W [out, in/2] packed e2m1 (low nibble = even column), scale S [out, in/32] E8M0.
// Used by moerun-mkmodel to write checkpoints and by tests and tools to read them back.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moerun::numfmt {

inline constexpr int kFp8WeightBlock = 128;  // 128×128 blocks
inline constexpr int kFp4WeightBlock = 32;   // 1×32 blocks along the input dimension

// Per 128×128 block: e = ceil(log2(amax/448)) from the fp32 bits (amax floored at 2^-126·448
// so that an all-zero block gets a finite scale), codes = e4m3(w · 2^-e).
// w: [out, in] fp32 row-major; codes: [out, in]; scales: [ceil(out/128), ceil(in/128)].
void quantize_fp8_weight(const float* w, int64_t out, int64_t in, uint8_t* codes,
                         uint8_t* scales);
void dequantize_fp8_weight(const uint8_t* codes, const uint8_t* scales, int64_t out,
                           int64_t in, float* w);

// Per 1×32 block: e = ceil(log2(amax/6)) (floored likewise), nibbles = e2m1(w · 2^-e).
// `in` must be a multiple of 32. packed: [out, in/2]; scales: [out, in/32].
void quantize_fp4_weight(const float* w, int64_t out, int64_t in, uint8_t* packed,
                         uint8_t* scales);
void dequantize_fp4_weight(const uint8_t* packed, const uint8_t* scales, int64_t out,
                           int64_t in, float* w);

}  // namespace moerun::numfmt

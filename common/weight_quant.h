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

// Floor of a weight block's amax, so that an all-zero block gets a finite scale (2^-108 for
// FP8, 2^-102 for FP4). 1e-30 is what dsv4fmt.py, which wrote the golden checkpoint, uses.
inline constexpr float kWeightAmaxFloor = 1e-30f;

// As dsv4fmt.py: codes never hold a negative zero (a weight that rounds to zero gets code 0
// whatever its sign), and edge blocks of shapes that are not multiples of the block size are
// ragged (their amax covers only the elements that exist). Throws moerun::Error on a
// non-finite weight.

// Per 128×128 block: e = pow2_scale_exponent(amax, kWeightAmaxFloor, fp32(1/448)), i.e.
// ceil(log2(amax/448)) from the fp32 bits, codes = e4m3(clamp(w / 2^e, ±448)).
// w: [out, in] fp32 row-major; codes: [out, in]; scales: [ceil(out/128), ceil(in/128)].
void quantize_fp8_weight(const float* w, int64_t out, int64_t in, uint8_t* codes, uint8_t* scales);
void dequantize_fp8_weight(const uint8_t* codes, const uint8_t* scales, int64_t out, int64_t in,
                           float* w);

// Per 1×32 block: e = pow2_scale_exponent(amax, kWeightAmaxFloor, fp32(1/6)),
// nibbles = e2m1(clamp(w / 2^e, ±6)).
// `in` must be a multiple of 32. packed: [out, in/2]; scales: [out, in/32].
void quantize_fp4_weight(const float* w, int64_t out, int64_t in, uint8_t* packed, uint8_t* scales);
void dequantize_fp4_weight(const uint8_t* packed, const uint8_t* scales, int64_t out, int64_t in,
                           float* w);

}  // namespace moerun::numfmt

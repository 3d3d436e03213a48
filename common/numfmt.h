// Number formats of DeepSeek-V4 checkpoints and activations (model spec §3.3 and §5):
// bf16, FP8 e4m3fn, E8M0 scales, FP4 e2m1, and the power-of-two block-scale rule of the
// reference's act_quant / fp4_act_quant. Everything here is exact: decoders are total over
// their codes, encoders round to nearest even, and the scale rule reproduces the reference's
// bit trick. The model kernels, the checkpoint tools and the tests all use these.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moerun::numfmt {

// ---- bf16 ----------------------------------------------------------------------------
float bf16_to_f32(uint16_t bits);
// Round to nearest, ties to even. NaN stays NaN (quiet, sign kept); ±inf stays ±inf.
uint16_t f32_to_bf16(float value);
// bf16 rounding of an fp32 value, returned as fp32.
float round_to_bf16(float value);
// Bulk, for values that must cross a boundary losslessly: dst[i] = the bf16 bits of src[i]
// [n], each of which must be exactly representable (low 16 bits zero; a NaN quiet, as
// f32_to_bf16 would quiet it). Returns the index of the first value that is not, or −1.
int64_t f32_to_bf16_exact(const float* src, int64_t n, uint16_t* dst);
// dst[i] = src[i] as fp32, [n].
void bf16_to_f32(const uint16_t* src, int64_t n, float* dst);

// ---- FP8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities -----------------
inline constexpr float kE4m3Max = 448.0f;
// All 256 codes: 0x7F/0xFF are NaN; exponent 0 is subnormal m·2^-9.
float e4m3_to_f32(uint8_t code);
// Round to nearest even. Finite values beyond ±448 saturate to ±448 (as CUDA's
// cvt.rn.satfinite; the reference clamps before converting so it never relies on this).
// NaN → 0x7F with the sign bit of the input; ±inf saturates like any large value.
// The sign is always kept, so −0 and negative values that round to zero give 0x80 (as
// cvt.rn.satfinite and torch's float8 cast; dsv4fmt.py's encoder gives 0x00 there, which only
// weight_quant.h reproduces, for checkpoint bytes).
uint8_t f32_to_e4m3(float value);

// ---- E8M0 scale byte: value 2^(e − 127); 0xFF is NaN; e = 0 → 2^-127 -------------------
float e8m0_to_f32(uint8_t code);
// Exponent of a power-of-two scale → E8M0 byte. Throws moerun::Error unless -127 ≤ exp ≤ 127.
uint8_t e8m0_from_exponent(int exponent);
// Inverse on valid codes (0..254): the power-of-two exponent e − 127.
int e8m0_exponent(uint8_t code);

// ---- FP4 e2m1: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa ------------------
inline constexpr float kE2m1Max = 6.0f;
// The 16 nibble values {0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, ..., -6}; only the low 4 bits of
// `nibble` are read.
float e2m1_to_f32(uint8_t nibble);
// Round to nearest even over {0, .5, 1, 1.5, 2, 3, 4, 6} (ties 0.25→0, 0.75→1, 1.25→1,
// 1.75→2, 2.5→2, 3.5→4, 5→4), saturating at ±6. NaN → 0x7 with the input's sign
// (e2m1 has no NaN; callers clamp first, as the reference does). Sign kept as for e4m3:
// −0 and negative values that round to zero give 0x8.
uint8_t f32_to_e2m1(float value);
// Packed FP4 byte: low nibble = even element, high nibble = odd element (torch float4_e2m1fn_x2).
inline uint8_t fp4_pack(uint8_t even_nibble, uint8_t odd_nibble) {
  return static_cast<uint8_t>((even_nibble & 0xF) | ((odd_nibble & 0xF) << 4));
}
inline uint8_t fp4_even(uint8_t byte) {
  return byte & 0xF;
}
inline uint8_t fp4_odd(uint8_t byte) {
  return byte >> 4;
}

// ---- power-of-two block scales (act_quant, fp4_act_quant) -------------------------------
// The reference computes s = 2^ceil(log2(max(amax, floor) · inv_max)) from the fp32 bit
// pattern of the product: exponent field − 127, plus 1 if the mantissa field is non-zero.
// Returns that exponent. `amax` must be ≥ 0 and finite (else throws moerun::Error). Like the
// reference, a subnormal product gives −126 (−127 for exactly 0), not its true ceil(log2);
// with the floors below the product is always normal.
int pow2_scale_exponent(float amax, float amax_floor, float inv_max);

// act_quant (e4m3, blocks of 128 before every FP8/FP4 GEMM, 64 for the KV nope dims):
// floor 1e-4, inv_max = fp32(1/448) = 0x3B124925.
inline constexpr float kActQuantAmaxFloor = 1e-4f;
float act_quant_inv_max();  // bit pattern 0x3B124925
int act_quant_scale_exponent(float amax);
// fp4_act_quant (e2m1, blocks of 32; indexer q and keys): floor 6·2^-126,
// inv_max = fp32(1/6) = 0x3E2AAAAB.
float fp4_quant_amax_floor();  // 6·2^-126
float fp4_quant_inv_max();     // bit pattern 0x3E2AAAAB
int fp4_quant_scale_exponent(float amax);

// Quantizes one block x[0..n) the way act_quant does: e = act_quant_scale_exponent(max|x|),
// codes[i] = f32_to_e4m3(clamp(x[i] / 2^e, −448, 448)). Returns e. NaN inputs are not
// expected (the model never produces them); they are left out of amax and quantize to NaN
// codes. An infinite input throws moerun::Error (its scale would not be finite).
int quantize_block_e4m3(const float* x, size_t n, uint8_t* codes);
// The same with fp4_quant_scale_exponent and e2m1 (clamp ±6); one nibble per output byte.
int quantize_block_e2m1(const float* x, size_t n, uint8_t* nibbles);
// In-place quant-dequant as the reference writes it back: y[i] = bf16(e4m3(x/s) · s)
// (resp. e2m1), returned as fp32 values that are exactly representable in bf16. A negative
// value that rounds to zero becomes −0 (numpy_ref.py writes +0; the two compare equal).
void fake_quant_block_e4m3(float* x, size_t n);
void fake_quant_block_e2m1(float* x, size_t n);

}  // namespace moerun::numfmt

// Number formats of DeepSeek-V4 (see numfmt.h): exact scalar encoders/decoders and the
// act_quant / fp4_act_quant block rules. This is the CPU reference the kernels and the
// checkpoint tools are tested against, so every function is written for exactness first:
// encoders work on the fp32 bit pattern with integer round-to-nearest-even, never on the
// current floating-point rounding mode.
#include "common/numfmt.h"

#include <array>
#include <bit>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/simd_clones.h"

namespace moerun::numfmt {
namespace {

constexpr uint32_t kF32SignBit = 0x80000000u;
constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;
constexpr uint32_t kF32ExpMask = 0x7F800000u;
constexpr uint32_t kF32MantMask = 0x007FFFFFu;
constexpr uint32_t kF32QuietBit = 0x00400000u;  // set in quiet NaNs
constexpr int kF32Bias = 127;
constexpr int kF32MantBits = 23;

constexpr uint8_t kE4m3NanCode = 0x7F;
constexpr uint8_t kE4m3MaxCode = 0x7E;  // 448
constexpr int kE4m3Bias = 7;
constexpr int kE4m3MantBits = 3;
constexpr float kE4m3MinNormal = 0x1p-6f;

constexpr uint8_t kE2m1MaxCode = 0x7;  // 6
constexpr uint8_t kE8m0NanCode = 0xFF;
constexpr int kE8m0Bias = 127;

// All 256 e4m3fn values. Built by halving/doubling in double, which is exact here, because
// std::ldexp is not constexpr; the decoder is then a single load.
constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) {
    const bool negative = (code & 0x80) != 0;
    const int exp_field = (code >> kE4m3MantBits) & 0xF;
    const int mant = code & 0x7;
    if (exp_field == 0xF && mant == 0x7) {
      table[code] = std::bit_cast<float>(negative ? 0xFFC00000u : 0x7FC00000u);
      continue;
    }
    // Subnormals are m·2^-9 = m/8 · 2^(1−7); normals (1 + m/8) · 2^(e−7).
    double value = exp_field == 0 ? mant / 8.0 : 1.0 + mant / 8.0;
    const int exponent = (exp_field == 0 ? 1 : exp_field) - kE4m3Bias;
    for (int i = 0; i < exponent; ++i) value *= 2.0;
    for (int i = 0; i > exponent; --i) value *= 0.5;
    table[code] = static_cast<float>(negative ? -value : value);
  }
  return table;
}
constexpr std::array<float, 256> kE4m3Table = make_e4m3_table();

constexpr std::array<float, 16> kE2m1Table = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                              4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                              -2.0f, -3.0f, -4.0f, -6.0f};

// Magnitude ≥ 0 of max|x| over a block, skipping NaN (a NaN never compares greater), so one
// NaN element becomes a NaN code instead of poisoning the whole block's scale.
float block_amax(const float* x, size_t n) {
  float amax = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > amax) amax = a;
  }
  return amax;
}

float clamp_keep_nan(float v, float limit) {
  if (v > limit) return limit;
  if (v < -limit) return -limit;
  return v;
}

}  // namespace

// ---- bf16 ----------------------------------------------------------------------------

float bf16_to_f32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t f32_to_bf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & kF32AbsMask) > kF32ExpMask) {
    // NaN: keep sign and the top of the payload, force the quiet bit so a payload that lived
    // only in the low 16 bits cannot turn into infinity.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Adding 0x7FFF plus the lsb of the kept half rounds to nearest, ties to even; a carry out
  // of the mantissa bumps the exponent, which is exactly right (up to +inf on overflow).
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

float round_to_bf16(float value) {
  return bf16_to_f32(f32_to_bf16(value));
}

MOERUN_SIMD_CLONES int64_t f32_to_bf16_exact(const float* src, int64_t n, uint16_t* dst) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = std::bit_cast<uint32_t>(src[i]);
    const bool signaling_nan = (bits & kF32AbsMask) > kF32ExpMask && (bits & kF32QuietBit) == 0;
    bad |= (bits & 0xFFFFu) | (signaling_nan ? 1u : 0u);
    dst[i] = static_cast<uint16_t>(bits >> 16);
  }
  if (bad == 0) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (std::bit_cast<uint32_t>(round_to_bf16(src[i])) != std::bit_cast<uint32_t>(src[i])) return i;
  return -1;
}

MOERUN_SIMD_CLONES void bf16_to_f32(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = std::bit_cast<float>(static_cast<uint32_t>(src[i]) << 16);
}

// ---- FP8 e4m3fn ----------------------------------------------------------------------

float e4m3_to_f32(uint8_t code) {
  return kE4m3Table[code];
}

uint8_t f32_to_e4m3(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint8_t sign = static_cast<uint8_t>((bits & kF32SignBit) >> 24);
  const uint32_t abs_bits = bits & kF32AbsMask;
  if (abs_bits > kF32ExpMask) return kE4m3NanCode | sign;
  const float a = std::bit_cast<float>(abs_bits);
  if (a >= kE4m3Max) return kE4m3MaxCode | sign;  // satfinite, covers +inf
  if (a < kE4m3MinNormal) {
    // Subnormal range: the code is round(a · 2^9) in [0, 8]; 8 is code 0x08 = 2^-6, the
    // smallest normal, so the carry needs no special case. a · 512 is exact in fp32.
    const float scaled = a * 512.0f;
    uint32_t m = static_cast<uint32_t>(scaled);
    const float frac = scaled - static_cast<float>(m);  // exact: same binade or below
    if (frac > 0.5f || (frac == 0.5f && (m & 1u) != 0)) ++m;
    return static_cast<uint8_t>(m) | sign;
  }
  // Normal range 2^-6 ≤ a < 448: keep 3 of 23 mantissa bits with round-to-nearest-even on
  // the bit pattern; a carry into the exponent field is the correct next binade.
  constexpr int kDrop = kF32MantBits - kE4m3MantBits;
  const uint32_t rounded =
      (abs_bits + ((1u << (kDrop - 1)) - 1u) + ((abs_bits >> kDrop) & 1u)) >> kDrop;
  const uint32_t rebias = static_cast<uint32_t>(kF32Bias - kE4m3Bias) << kE4m3MantBits;
  // a < 448 rounds to at most 448 (values in [432, 448) round up to it), so no overflow.
  return static_cast<uint8_t>(rounded - rebias) | sign;
}

// ---- E8M0 ----------------------------------------------------------------------------

float e8m0_to_f32(uint8_t code) {
  if (code == kE8m0NanCode) return std::numeric_limits<float>::quiet_NaN();
  // ldexp handles code 0 → 2^-127, an fp32 subnormal that a shift into the exponent field
  // cannot express.
  return std::ldexp(1.0f, static_cast<int>(code) - kE8m0Bias);
}

uint8_t e8m0_from_exponent(int exponent) {
  MOERUN_CHECK(exponent >= -kE8m0Bias && exponent <= kE8m0Bias,
               "E8M0 scale exponent {} out of range (allowed: -127..127)", exponent);
  return static_cast<uint8_t>(exponent + kE8m0Bias);
}

int e8m0_exponent(uint8_t code) {
  MOERUN_CHECK(code != kE8m0NanCode, "E8M0 scale byte 0xFF is NaN, not a power of two");
  return static_cast<int>(code) - kE8m0Bias;
}

// ---- FP4 e2m1 ------------------------------------------------------------------------

float e2m1_to_f32(uint8_t nibble) {
  return kE2m1Table[nibble & 0xF];
}

uint8_t f32_to_e2m1(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint8_t sign = static_cast<uint8_t>((bits & kF32SignBit) >> 28);
  const uint32_t abs_bits = bits & kF32AbsMask;
  if (abs_bits > kF32ExpMask) return kE2m1MaxCode | sign;
  const float a = std::bit_cast<float>(abs_bits);
  // The decision points are the midpoints of {0, .5, 1, 1.5, 2, 3, 4, 6}; the code is the
  // number of them below a. At a midpoint the even code wins, hence `>` where the lower
  // neighbour is even and `>=` where it is odd. Branch-free: random data mispredicts a chain.
  const auto code = static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) +
                                         (a > 2.5f) + (a >= 3.5f) + (a > 5.0f));
  return code | sign;
}

// ---- power-of-two block scales -------------------------------------------------------

int pow2_scale_exponent(float amax, float amax_floor, float inv_max) {
  MOERUN_CHECK(amax >= 0.0f && std::isfinite(amax), "block amax must be finite and >= 0, got {}",
               amax);
  const float floored = amax < amax_floor ? amax_floor : amax;
  // One fp32 rounding of the product, then kernel.py's fast_log2_ceil on its bits.
  const float product = floored * inv_max;
  const uint32_t bits = std::bit_cast<uint32_t>(product);
  const int exp_field = static_cast<int>((bits & kF32ExpMask) >> kF32MantBits);
  return exp_field - kF32Bias + ((bits & kF32MantMask) != 0 ? 1 : 0);
}

float act_quant_inv_max() {
  return 1.0f / kE4m3Max;
}

int act_quant_scale_exponent(float amax) {
  return pow2_scale_exponent(amax, kActQuantAmaxFloor, act_quant_inv_max());
}

float fp4_quant_amax_floor() {
  return std::ldexp(kE2m1Max, -126);
}

float fp4_quant_inv_max() {
  return 1.0f / kE2m1Max;
}

int fp4_quant_scale_exponent(float amax) {
  return pow2_scale_exponent(amax, fp4_quant_amax_floor(), fp4_quant_inv_max());
}

// The reference divides x by s in fp32 (`xb / s`); for a power of two that is the same
// correctly rounded result as a multiply, but dividing mirrors it literally.
int quantize_block_e4m3(const float* x, size_t n, uint8_t* codes) {
  const int e = act_quant_scale_exponent(block_amax(x, n));
  const float s = std::ldexp(1.0f, e);
  for (size_t i = 0; i < n; ++i) codes[i] = f32_to_e4m3(clamp_keep_nan(x[i] / s, kE4m3Max));
  return e;
}

int quantize_block_e2m1(const float* x, size_t n, uint8_t* nibbles) {
  const int e = fp4_quant_scale_exponent(block_amax(x, n));
  const float s = std::ldexp(1.0f, e);
  for (size_t i = 0; i < n; ++i) nibbles[i] = f32_to_e2m1(clamp_keep_nan(x[i] / s, kE2m1Max));
  return e;
}

void fake_quant_block_e4m3(float* x, size_t n) {
  const int e = act_quant_scale_exponent(block_amax(x, n));
  const float s = std::ldexp(1.0f, e);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t code = f32_to_e4m3(clamp_keep_nan(x[i] / s, kE4m3Max));
    x[i] = round_to_bf16(e4m3_to_f32(code) * s);
  }
}

void fake_quant_block_e2m1(float* x, size_t n) {
  const int e = fp4_quant_scale_exponent(block_amax(x, n));
  const float s = std::ldexp(1.0f, e);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t nibble = f32_to_e2m1(clamp_keep_nan(x[i] / s, kE2m1Max));
    x[i] = round_to_bf16(e2m1_to_f32(nibble) * s);
  }
}

}  // namespace moerun::numfmt

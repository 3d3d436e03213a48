// Tests of common/weight_quant: FP8 128×128 and FP4 1×32 weight quantization in the released
// checkpoint layouts. Scales and codes are checked element by element against oracles built
// from the spec's value formulas (ceil(log2) in double, brute-force nearest code), block
// mapping and nibble order against constructed matrices, and whole matrices against
// fingerprints of dsv4fmt.py, the numpy code that wrote the golden checkpoint.
#include "common/weight_quant.h"
#include "tests/unit/test_util.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/numfmt.h"

namespace moerun::numfmt {
using moerun::testing_util::gen_matrix;

namespace {

// fp32(1/448) and fp32(1/6) as the reference rounds them (spec §5).
constexpr float kInvE4m3Max = std::bit_cast<float>(0x3B124925u);
constexpr float kInvE2m1Max = std::bit_cast<float>(0x3E2AAAABu);

// e4m3fn value from its fields (spec §3.3).
double e4m3_oracle_value(int code) {
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  const int e = (code >> 3) & 0xF;
  const int m = code & 0x7;
  if (e == 0) return sign * m * std::pow(2.0, -9);
  return sign * (1.0 + m / 8.0) * std::pow(2.0, e - 7);
}

constexpr std::array<double, 16> kFp4SpecTable = {0,  0.5,  1,  1.5,  2,  3,  4,  6,
                                                  -0, -0.5, -1, -1.5, -2, -3, -4, -6};

// Brute-force nearest non-negative code to |v| (ties to the even code); as in dsv4fmt.py a
// result of zero is code 0 whatever the sign of v.
template <typename ValueOf>
uint8_t oracle_encode(double v, int num_pos, uint8_t sign_bit, ValueOf value_of) {
  const double a = std::fabs(v);
  // Far beyond the largest value the distances below are equal after rounding in double.
  if (a >= value_of(num_pos - 1)) {
    return static_cast<uint8_t>(num_pos - 1) | (std::signbit(v) ? sign_bit : 0);
  }
  int best = 0;
  for (int c = 1; c < num_pos; ++c) {
    const double d = std::fabs(value_of(c) - a);
    const double dbest = std::fabs(value_of(best) - a);
    if (d < dbest || (d == dbest && c % 2 == 0)) best = c;
  }
  return static_cast<uint8_t>(best) | (best != 0 && std::signbit(v) ? sign_bit : 0);
}

uint8_t e4m3_oracle_encode(double v) {
  return oracle_encode(v, 127, 0x80, [](int c) { return e4m3_oracle_value(c); });
}
uint8_t e2m1_oracle_encode(double v) {
  return oracle_encode(v, 8, 0x8, [](int c) { return kFp4SpecTable[c]; });
}

// Expected scale exponent: ceil(log2(fp32(max(amax, 1e-30) · fp32(1/qmax)))) in double.
int scale_oracle(float amax, float inv_max) {
  const float product = std::max(amax, 1e-30f) * inv_max;
  return static_cast<int>(std::ceil(std::log2(static_cast<double>(product))));
}

uint64_t fnv1a(const std::vector<uint8_t>& v) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : v) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

TEST(WeightQuant, InverseConstantsAreTheNumfmtOnes) {
  EXPECT_EQ(std::bit_cast<uint32_t>(kInvE4m3Max), 0x3B124925u);
  EXPECT_EQ(std::bit_cast<uint32_t>(kInvE2m1Max), 0x3E2AAAABu);
  EXPECT_EQ(kInvE4m3Max, act_quant_inv_max());
  EXPECT_EQ(kInvE2m1Max, fp4_quant_inv_max());
  EXPECT_EQ(kWeightAmaxFloor, 1e-30f);
}

// Quantizes an FP8 weight and checks every scale and code against the oracles, the round trip
// against the e4m3 error bound, and that no negative-zero code is written.
void check_fp8_against_oracle(const std::vector<float>& w, int64_t out, int64_t in,
                              bool expect_negative_zeros = true) {
  const int64_t nbr = (out + 127) / 128;
  const int64_t nbc = (in + 127) / 128;
  std::vector<uint8_t> codes(static_cast<size_t>(out * in));
  std::vector<uint8_t> scales(static_cast<size_t>(nbr * nbc));
  quantize_fp8_weight(w.data(), out, in, codes.data(), scales.data());
  std::vector<float> back(w.size());
  dequantize_fp8_weight(codes.data(), scales.data(), out, in, back.data());

  int64_t negative_zeros = 0;
  for (int64_t br = 0; br < nbr; ++br) {
    for (int64_t bc = 0; bc < nbc; ++bc) {
      float amax = 0.0f;  // over the elements that exist (ragged edge blocks)
      for (int64_t r = br * 128; r < std::min(out, br * 128 + 128); ++r) {
        for (int64_t c = bc * 128; c < std::min(in, bc * 128 + 128); ++c) {
          amax = std::max(amax, std::fabs(w[r * in + c]));
        }
      }
      const int e = scale_oracle(amax, kInvE4m3Max);
      ASSERT_EQ(scales[br * nbc + bc], e + 127) << "block " << br << "," << bc;
      int exp2 = 0;
      ASSERT_EQ(std::frexp(e8m0_to_f32(scales[br * nbc + bc]), &exp2), 0.5f);  // power of two
      for (int64_t r = br * 128; r < std::min(out, br * 128 + 128); ++r) {
        for (int64_t c = bc * 128; c < std::min(in, bc * 128 + 128); ++c) {
          const float x = w[r * in + c];
          const double q = std::clamp(std::ldexp(static_cast<double>(x), -e), -448.0, 448.0);
          const uint8_t want = e4m3_oracle_encode(q);
          ASSERT_EQ(codes[r * in + c], want) << "element " << r << "," << c << " w=" << x;
          const double got = back[r * in + c];
          ASSERT_EQ(got, std::ldexp(e4m3_oracle_value(want), e)) << r << "," << c;
          // e4m3 rounding error: half an ulp, 2^-4 relative (normals) or 2^-10·s (subnormals).
          const double bound = std::max(std::fabs(x) * 0x1p-4, std::ldexp(1.0, e - 10));
          ASSERT_LE(std::fabs(got - x), bound) << r << "," << c;
          if (x < 0 && want == 0) ++negative_zeros;
        }
      }
    }
  }
  EXPECT_EQ(std::count(codes.begin(), codes.end(), uint8_t{0x80}), 0);
  if (expect_negative_zeros) {
    EXPECT_GT(negative_zeros, 0) << "test data should contain negative values that round to 0";
  }
}

TEST(WeightQuant, Fp8RaggedShapeMatchesOracle) {
  // out=130, in=200: blocks of 128×128, 128×72, 2×128 and 2×72; the 2×128 one is all zero.
  std::vector<float> w = gen_matrix(130, 200, 1, 128, 128);
  for (int64_t r = 128; r < 130; ++r) std::fill_n(w.begin() + r * 200, 128, 0.0f);
  check_fp8_against_oracle(w, 130, 200);
}

TEST(WeightQuant, Fp8FullBlocksMatchOracle) {
  check_fp8_against_oracle(gen_matrix(256, 384, 2, 128, 128), 256, 384);
}

TEST(WeightQuant, Fp8SmallAndDegenerateShapes) {
  check_fp8_against_oracle(gen_matrix(1, 1, 3, 128, 128), 1, 1, false);
  check_fp8_against_oracle(gen_matrix(129, 1, 4, 128, 128), 129, 1, false);
  check_fp8_against_oracle(gen_matrix(3, 300, 5, 128, 128), 3, 300, false);
  // Empty matrices write nothing.
  quantize_fp8_weight(nullptr, 0, 5, nullptr, nullptr);
  dequantize_fp8_weight(nullptr, nullptr, 5, 0, nullptr);
}

TEST(WeightQuant, Fp8AllZeroBlockScaleIsTheFloor) {
  const std::vector<float> w(4, 0.0f);
  std::vector<uint8_t> codes(4, 0xAA);
  uint8_t scale = 0;
  quantize_fp8_weight(w.data(), 2, 2, codes.data(), &scale);
  EXPECT_EQ(scale, 127 - 108);  // ceil(log2(1e-30/448)) = −108
  EXPECT_EQ(codes, std::vector<uint8_t>(4, 0));
}

TEST(WeightQuant, Fp8DequantBlockMapping) {
  // Every code is 1.0 (0x38) and every block a distinct scale: each element must pick up the
  // scale of block [r/128][c/128], including the ragged ones.
  const int64_t out = 130, in = 300;
  std::vector<uint8_t> codes(out * in, 0x38);
  const std::vector<uint8_t> scales = {120, 121, 122, 130, 131, 0};
  std::vector<float> w(out * in);
  dequantize_fp8_weight(codes.data(), scales.data(), out, in, w.data());
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t c = 0; c < in; ++c) {
      const int s = scales[(r / 128) * 3 + c / 128];
      ASSERT_EQ(static_cast<double>(w[r * in + c]), std::ldexp(1.0, s - 127)) << r << "," << c;
    }
  }
  // Known values: 2·{1, −1, 2^-9, 448}; a subnormal scale 2^-127 stays exact.
  const uint8_t c4[] = {0x38, 0xB8, 0x01, 0x7E};
  const uint8_t s128 = 128;
  float y[4];
  dequantize_fp8_weight(c4, &s128, 1, 4, y);
  EXPECT_EQ(std::vector<float>(y, y + 4), (std::vector<float>{2.0f, -2.0f, 0x1p-8f, 896.0f}));
  const uint8_t s0 = 0;
  dequantize_fp8_weight(c4, &s0, 1, 4, y);
  EXPECT_EQ(std::vector<float>(y, y + 4),
            (std::vector<float>{0x1p-127f, -0x1p-127f, 0x1p-136f, 448.0f * 0x1p-127f}));
}

TEST(WeightQuant, Fp8RejectsNonFiniteWeights) {
  std::vector<uint8_t> codes(2);
  uint8_t scale = 0;
  const float inf_w[] = {1.0f, std::numeric_limits<float>::infinity()};
  const float nan_w[] = {std::numeric_limits<float>::quiet_NaN(), 1.0f};
  EXPECT_THROW(quantize_fp8_weight(inf_w, 1, 2, codes.data(), &scale), Error);
  EXPECT_THROW(quantize_fp8_weight(nan_w, 1, 2, codes.data(), &scale), Error);
  EXPECT_THROW(quantize_fp8_weight(inf_w, -1, 2, codes.data(), &scale), Error);
}

// FP4: same checks with 1×32 blocks and packed nibbles.
void check_fp4_against_oracle(const std::vector<float>& w, int64_t out, int64_t in) {
  const int64_t nb = in / 32;
  std::vector<uint8_t> packed(static_cast<size_t>(out * in / 2));
  std::vector<uint8_t> scales(static_cast<size_t>(out * nb));
  quantize_fp4_weight(w.data(), out, in, packed.data(), scales.data());
  std::vector<float> back(w.size());
  dequantize_fp4_weight(packed.data(), scales.data(), out, in, back.data());

  int64_t negative_zeros = 0;
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      float amax = 0.0f;
      for (int64_t c = b * 32; c < b * 32 + 32; ++c)
        amax = std::max(amax, std::fabs(w[r * in + c]));
      const int e = scale_oracle(amax, kInvE2m1Max);
      ASSERT_EQ(scales[r * nb + b], e + 127) << "row " << r << " block " << b;
      for (int64_t c = b * 32; c < b * 32 + 32; ++c) {
        const float x = w[r * in + c];
        const double q = std::clamp(std::ldexp(static_cast<double>(x), -e), -6.0, 6.0);
        const uint8_t want = e2m1_oracle_encode(q);
        const uint8_t byte = packed[r * (in / 2) + c / 2];
        const uint8_t nib = (c % 2 == 0) ? byte & 0xF : byte >> 4;
        ASSERT_EQ(nib, want) << "element " << r << "," << c << " w=" << x;
        const double got = back[r * in + c];
        ASSERT_EQ(got, std::ldexp(kFp4SpecTable[want], e)) << r << "," << c;
        // e2m1 rounding error: at most 1/4 relative above 1 (ulp 1/2 at [1, 2), 1 at [2, 4),
        // 2 at [4, 6]), at most 1/4·s absolute below 1.
        const double bound = std::max(std::fabs(x) * 0.25, std::ldexp(0.25, e));
        ASSERT_LE(std::fabs(got - x), bound) << r << "," << c;
        if (x < 0 && want == 0) ++negative_zeros;
      }
    }
  }
  for (uint8_t byte : packed) {
    ASSERT_NE(byte & 0xF, 0x8);
    ASSERT_NE(byte >> 4, 0x8);
  }
  EXPECT_GT(negative_zeros, 0) << "test data should contain negative values that round to 0";
}

TEST(WeightQuant, Fp4OddRowCountMatchesOracle) {
  check_fp4_against_oracle(gen_matrix(3, 96, 3, 1, 32), 3, 96);
}

TEST(WeightQuant, Fp4LargerMatrixMatchesOracle) {
  check_fp4_against_oracle(gen_matrix(64, 256, 4, 1, 32), 64, 256);
}

TEST(WeightQuant, Fp4NibbleOrderWithConstructedMatrix) {
  // w[r][c] = FP4_TABLE[(3c + r) mod 16]: every 32-block holds ±6, so its scale is 2^0 and
  // each value is a code exactly. Byte k of a row must be code(2k) | code(2k+1) << 4, with the
  // −0 code (8) written as 0.
  const int64_t out = 3, in = 64;
  std::vector<float> w(out * in);
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t c = 0; c < in; ++c)
      w[r * in + c] = static_cast<float>(kFp4SpecTable[(3 * c + r) % 16]);
  }
  std::vector<uint8_t> packed(out * in / 2);
  std::vector<uint8_t> scales(out * in / 32);
  quantize_fp4_weight(w.data(), out, in, packed.data(), scales.data());
  EXPECT_EQ(scales, std::vector<uint8_t>(scales.size(), 127));
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t k = 0; k < in / 2; ++k) {
      uint8_t even = static_cast<uint8_t>((3 * (2 * k) + r) % 16);
      uint8_t odd = static_cast<uint8_t>((3 * (2 * k + 1) + r) % 16);
      if (even == 8) even = 0;
      if (odd == 8) odd = 0;
      ASSERT_EQ(packed[r * (in / 2) + k], even | (odd << 4)) << r << "," << k;
    }
  }
  std::vector<float> back(w.size());
  dequantize_fp4_weight(packed.data(), scales.data(), out, in, back.data());
  for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(back[i], w[i]) << i;  // −0 == +0
}

TEST(WeightQuant, Fp4DequantKnownValues) {
  // Byte 0x7A: low nibble 0xA = −1 (even column), high nibble 7 = 6 (odd column); scale 2^-1.
  std::vector<uint8_t> packed(16, 0x00);
  packed[0] = 0x7A;
  packed[15] = 0x91;  // columns 30, 31: 0.5 and −0.5
  const uint8_t scale = 126;
  std::vector<float> w(32);
  dequantize_fp4_weight(packed.data(), &scale, 1, 32, w.data());
  EXPECT_EQ(w[0], -0.5f);
  EXPECT_EQ(w[1], 3.0f);
  EXPECT_EQ(w[2], 0.0f);
  EXPECT_EQ(w[30], 0.25f);
  EXPECT_EQ(w[31], -0.25f);
}

TEST(WeightQuant, Fp4RejectsBadShapesAndNonFinite) {
  std::vector<float> w(48, 1.0f);
  std::vector<uint8_t> packed(24);
  std::vector<uint8_t> scales(2);
  EXPECT_THROW(quantize_fp4_weight(w.data(), 1, 48, packed.data(), scales.data()), Error);
  EXPECT_THROW(dequantize_fp4_weight(packed.data(), scales.data(), 1, 48, w.data()), Error);
  w[5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_fp4_weight(w.data(), 1, 32, packed.data(), scales.data()), Error);
  w[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize_fp4_weight(w.data(), 1, 32, packed.data(), scales.data()), Error);
}

// Fingerprints of dsv4fmt.py quantize_fp8_weight / quantize_fp4_weight on the same inputs
// (gen written with np.float32 arithmetic; fnv = FNV-1a 64 of the code bytes):
//   w = gen(130, 200, 1, 128, 128); w[128:, :128] = 0; quantize_fp8_weight(w)
//   gen(256, 384, 2, 128, 128) → fp8;  gen(3, 96, 3, 1, 32), gen(64, 256, 4, 1, 32) → fp4.
TEST(WeightQuant, ReferenceFingerprints) {
  {
    std::vector<float> w = gen_matrix(130, 200, 1, 128, 128);
    for (int64_t r = 128; r < 130; ++r) std::fill_n(w.begin() + r * 200, 128, 0.0f);
    std::vector<uint8_t> codes(130 * 200), scales(4);
    quantize_fp8_weight(w.data(), 130, 200, codes.data(), scales.data());
    EXPECT_EQ(fnv1a(codes), 0x4c38a2a8c9e0642aull);
    EXPECT_EQ(scales, (std::vector<uint8_t>{121, 126, 19, 129}));
  }
  {
    const std::vector<float> w = gen_matrix(256, 384, 2, 128, 128);
    std::vector<uint8_t> codes(256 * 384), scales(6);
    quantize_fp8_weight(w.data(), 256, 384, codes.data(), scales.data());
    EXPECT_EQ(fnv1a(codes), 0x3ac60152ad90fff9ull);
    EXPECT_EQ(scales, (std::vector<uint8_t>{122, 127, 132, 125, 130, 135}));
  }
  {
    const std::vector<float> w = gen_matrix(3, 96, 3, 1, 32);
    std::vector<uint8_t> packed(3 * 48), scales(9);
    quantize_fp4_weight(w.data(), 3, 96, packed.data(), scales.data());
    EXPECT_EQ(fnv1a(packed), 0x9cf005fb29d9b930ull);
    EXPECT_EQ(scales, (std::vector<uint8_t>{128, 133, 139, 132, 136, 141, 135, 139, 145}));
  }
  {
    const std::vector<float> w = gen_matrix(64, 256, 4, 1, 32);
    std::vector<uint8_t> packed(64 * 128), scales(64 * 8);
    quantize_fp4_weight(w.data(), 64, 256, packed.data(), scales.data());
    EXPECT_EQ(fnv1a(packed), 0xcf74f3a6cd8ff049ull);
    EXPECT_EQ(fnv1a(scales), 0xfc3d15befd3068a3ull);
  }
}

}  // namespace
}  // namespace moerun::numfmt

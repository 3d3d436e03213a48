// Tests of common/numfmt: every decoder over all its codes and every encoder over large sweeps,
// each against an oracle built differently from the code under test (value formulas evaluated
// in double, brute-force nearest-code search, std::log2), plus hand-computed blocks and
// fingerprints of the golden numpy reference (dsv4fmt.py) on deterministic inputs.
#include "common/numfmt.h"
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

namespace moerun::numfmt {
using moerun::testing_util::gen_matrix;

namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

float from_bits(uint32_t bits) {
  return std::bit_cast<float>(bits);
}
uint32_t to_bits(float v) {
  return std::bit_cast<uint32_t>(v);
}

// ---- independent oracles -----------------------------------------------------------------

// bf16 value from its fields, in double. Infinity is returned as ±inf.
double bf16_oracle_value(uint16_t code) {
  const double sign = (code & 0x8000) ? -1.0 : 1.0;
  const int e = (code >> 7) & 0xFF;
  const int m = code & 0x7F;
  if (e == 0xFF) return m == 0 ? sign * HUGE_VAL : std::nan("");
  if (e == 0) return sign * std::ldexp(m, -126 - 7);
  return sign * std::ldexp(128 + m, e - 127 - 7);
}

// Positive bf16 magnitudes of codes 0..0x7F80 in increasing order; 0x7F80 (inf) is placed at
// 2^128, where the next binade would start, which is what round-to-nearest compares against.
const std::vector<double>& bf16_positive_table() {
  static const std::vector<double> table = [] {
    std::vector<double> t(0x7F81);
    for (int c = 0; c < 0x7F80; ++c) t[c] = bf16_oracle_value(static_cast<uint16_t>(c));
    t[0x7F80] = std::ldexp(1.0, 128);
    return t;
  }();
  return table;
}

// Nearest bf16 to a finite fp32 value by searching the table (ties to the even code).
uint16_t bf16_oracle_round(float v) {
  const auto& t = bf16_positive_table();
  const double a = std::fabs(static_cast<double>(v));
  const auto it = std::upper_bound(t.begin(), t.end(), a);  // first > a
  size_t lo = static_cast<size_t>(it - t.begin()) - 1;      // t[lo] <= a
  size_t code = lo;
  if (t[lo] != a && lo + 1 < t.size()) {
    const double dlo = a - t[lo];
    const double dhi = t[lo + 1] - a;
    if (dhi < dlo || (dhi == dlo && (lo + 1) % 2 == 0)) code = lo + 1;
  }
  return static_cast<uint16_t>(code | (std::signbit(v) ? 0x8000u : 0u));
}

// e4m3fn value from sign, exponent and mantissa fields (spec §3.3).
double e4m3_oracle_value(int code) {
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  const int e = (code >> 3) & 0xF;
  const int m = code & 0x7;
  if (e == 0xF && m == 0x7) return std::nan("");
  if (e == 0) return sign * m * std::pow(2.0, -9);
  return sign * (1.0 + m / 8.0) * std::pow(2.0, e - 7);
}

// Nearest of the 127 non-negative finite codes to |v| (ties to the even code), sign of v
// attached; NaN → 0x7F with sign. Beyond 448 the nearest is 448, which is the saturation.
uint8_t nearest_code(double v, const double* pos_values, int num_pos, uint8_t sign_bit,
                     uint8_t nan_code) {
  const uint8_t sign = std::signbit(v) ? sign_bit : 0;
  if (std::isnan(v)) return nan_code | sign;
  const double a = std::fabs(v);
  // Far beyond the largest value the distances below are equal after rounding in double.
  if (a >= pos_values[num_pos - 1]) return static_cast<uint8_t>(num_pos - 1) | sign;
  int best = 0;
  for (int c = 1; c < num_pos; ++c) {
    const double d = std::fabs(pos_values[c] - a);
    const double dbest = std::fabs(pos_values[best] - a);
    if (d < dbest || (d == dbest && c % 2 == 0)) best = c;
  }
  return static_cast<uint8_t>(best) | sign;
}

const std::array<double, 127>& e4m3_positive_values() {
  static const std::array<double, 127> values = [] {
    std::array<double, 127> v{};
    for (int c = 0; c < 127; ++c) v[c] = e4m3_oracle_value(c);
    return v;
  }();
  return values;
}

uint8_t e4m3_oracle_encode(double v) {
  return nearest_code(v, e4m3_positive_values().data(), 127, 0x80, 0x7F);
}

// The FP4 table exactly as printed in the spec (§3.3).
constexpr std::array<double, 16> kFp4SpecTable = {0,  0.5,  1,  1.5,  2,  3,  4,  6,
                                                  -0, -0.5, -1, -1.5, -2, -3, -4, -6};

uint8_t e2m1_oracle_encode(double v) {
  return nearest_code(v, kFp4SpecTable.data(), 8, 0x8, 0x7);
}

// ceil(log2(max(amax, floor) · inv_max)) with the product rounded once to fp32 as the
// reference does, and the logarithm taken in double.
int pow2_oracle(float amax, float amax_floor, float inv_max) {
  const float product = std::max(amax, amax_floor) * inv_max;
  return static_cast<int>(std::ceil(std::log2(static_cast<double>(product))));
}

uint64_t fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// Hash of fp32 bit patterns (little-endian bytes) with −0 folded into +0, because the numpy
// reference writes +0 where the sign-keeping encoder gives −0.
uint64_t fnv1a_floats(const std::vector<float>& v) {
  std::vector<uint8_t> bytes;
  bytes.reserve(v.size() * 4);
  for (float f : v) {
    const uint32_t b = to_bits(f + 0.0f);
    for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<uint8_t>(b >> (8 * k)));
  }
  return fnv1a(bytes.data(), bytes.size());
}

// ---- bf16 --------------------------------------------------------------------------------

TEST(NumfmtBf16, DecodeAll65536Codes) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const auto code = static_cast<uint16_t>(c);
    const float got = bf16_to_f32(code);
    const double want = bf16_oracle_value(code);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << "code " << c;
      ASSERT_EQ(std::signbit(got), (c & 0x8000) != 0) << "code " << c;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << "code " << c;
    ASSERT_EQ(std::signbit(got), (c & 0x8000) != 0) << "code " << c;
  }
}

TEST(NumfmtBf16, RoundTripAll65536Codes) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const auto code = static_cast<uint16_t>(c);
    const uint16_t back = f32_to_bf16(bf16_to_f32(code));
    const bool nan = (c & 0x7F80) == 0x7F80 && (c & 0x7F) != 0;
    // A NaN comes back quiet (bit 6 set) with its sign and payload; all else is unchanged.
    ASSERT_EQ(back, nan ? static_cast<uint16_t>(c | 0x40) : code) << "code " << c;
  }
}

// Checks one fp32 bit pattern against the table-search oracle (NaNs against the NaN rule).
void expect_bf16_round(uint32_t bits) {
  const float v = from_bits(bits);
  const uint16_t got = f32_to_bf16(v);
  if (std::isnan(v)) {
    ASSERT_EQ(got, static_cast<uint16_t>((bits >> 16) | 0x40)) << std::hex << "bits 0x" << bits;
    ASSERT_TRUE(std::isnan(bf16_to_f32(got)));
    return;
  }
  ASSERT_EQ(got, bf16_oracle_round(v)) << std::hex << "bits 0x" << bits;
  ASSERT_EQ(to_bits(round_to_bf16(v)), static_cast<uint32_t>(got) << 16)
      << std::hex << "bits 0x" << bits;
}

TEST(NumfmtBf16, RoundStridedSweepOfAllFp32Patterns) {
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 997) expect_bf16_round(static_cast<uint32_t>(b));
}

TEST(NumfmtBf16, RoundNeighboursAndMidpointsOfEveryCode) {
  // For every bf16 code: the value itself, just above it, just below / at / just above the
  // midpoint to the next code, and the last fp32 value before the next code.
  const uint32_t offsets[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF};
  for (uint32_t c = 0; c < 65536; ++c) {
    for (uint32_t off : offsets) expect_bf16_round((c << 16) | off);
  }
}

// The bulk conversions agree with the scalar ones on every bf16 code: decoding all 65536, and
// the exact encoding of every decoded value (signalling NaNs cannot survive it: f32_to_bf16
// quiets them, so they are reported, like any value with low bits set).
TEST(NumfmtBf16, BulkConversionsMatchScalarForEveryCode) {
  std::vector<uint16_t> codes(65536), back(65536);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint16_t>(i);
  std::vector<float> values(codes.size());
  bf16_to_f32(codes.data(), static_cast<int64_t>(codes.size()), values.data());
  std::vector<float> quiet;  // every value that must cross exactly
  std::vector<uint16_t> quiet_codes;
  for (size_t i = 0; i < codes.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(values[i]), std::bit_cast<uint32_t>(bf16_to_f32(codes[i])))
        << "code " << i;
    if (f32_to_bf16(values[i]) == codes[i]) {
      quiet.push_back(values[i]);
      quiet_codes.push_back(codes[i]);
    }
  }
  EXPECT_EQ(quiet.size(), 65536u - 2 * 63u);  // all but the 2 × 63 signalling NaN codes
  back.resize(quiet.size());
  EXPECT_EQ(f32_to_bf16_exact(quiet.data(), static_cast<int64_t>(quiet.size()), back.data()), -1);
  EXPECT_EQ(back, quiet_codes);
  // The first value that is not exact is reported: low bits set, then a signalling NaN.
  std::vector<float> bad = {1.0f, std::bit_cast<float>(0x3F800001u), 2.0f,
                            std::bit_cast<float>(0x7F810000u)};
  std::vector<uint16_t> out(bad.size());
  EXPECT_EQ(f32_to_bf16_exact(bad.data(), 4, out.data()), 1);
  EXPECT_EQ(f32_to_bf16_exact(bad.data() + 2, 2, out.data()), 1);
  EXPECT_EQ(f32_to_bf16_exact(bad.data(), 1, out.data()), -1);
}

TEST(NumfmtBf16, KnownValues) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808000)), 0x3F80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(from_bits(0x7F7FFFFF)), 0x7F80);  // max fp32 rounds to +inf
  EXPECT_EQ(f32_to_bf16(from_bits(0xFF7F7FFF)), 0xFF7F);  // just under the overflow tie
  EXPECT_EQ(f32_to_bf16(kInf), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-kInf), 0xFF80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001)), 0x0000);  // smallest subnormal → 0
  EXPECT_EQ(f32_to_bf16(from_bits(0x00008000)), 0x0000);  // tie to even 0
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000)), 0x0002);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7F800001)), 0x7FC0);  // signalling NaN → quiet
  EXPECT_EQ(f32_to_bf16(from_bits(0xFFC00000)), 0xFFC0);  // sign kept
}

// ---- e4m3 --------------------------------------------------------------------------------

TEST(NumfmtE4m3, DecodeAll256CodesMatchFieldFormula) {
  for (int c = 0; c < 256; ++c) {
    const float got = e4m3_to_f32(static_cast<uint8_t>(c));
    const double want = e4m3_oracle_value(c);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << "code " << c;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << "code " << c;
    ASSERT_EQ(std::signbit(got), c >= 0x80) << "code " << c;
  }
}

TEST(NumfmtE4m3, DecodeKnownValues) {
  EXPECT_EQ(e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0xFE), -448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), 0x1p-9f);
  EXPECT_EQ(e4m3_to_f32(0x07), 7 * 0x1p-9f);
  EXPECT_EQ(e4m3_to_f32(0x08), 0x1p-6f);
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_f32(0x3C), 1.5f);
  EXPECT_EQ(e4m3_to_f32(0x77), 240.0f);
  EXPECT_EQ(e4m3_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3_to_f32(0x80)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xFF)));
  EXPECT_EQ(e4m3_to_f32(0x78), 256.0f);  // exponent 15 is finite in e4m3fn
  for (int c = 0; c < 0x7E; ++c) {
    EXPECT_LT(e4m3_to_f32(static_cast<uint8_t>(c)), e4m3_to_f32(static_cast<uint8_t>(c + 1)));
  }
}

void expect_e4m3_encode(float v) {
  const uint8_t got = f32_to_e4m3(v);
  const uint8_t want = e4m3_oracle_encode(static_cast<double>(v));
  ASSERT_EQ(got, want) << "value " << v << std::hex << " bits 0x" << to_bits(v);
}

TEST(NumfmtE4m3, EncodeEveryCodeAndEveryMidpoint) {
  const auto& pos = e4m3_positive_values();
  for (int c = 0; c < 127; ++c) {
    for (float sign : {1.0f, -1.0f}) {
      const auto v = static_cast<float>(pos[c]);
      expect_e4m3_encode(sign * v);
      expect_e4m3_encode(sign * std::nextafter(v, kInf));
      expect_e4m3_encode(sign * std::nextafter(v, 0.0f));
      if (c + 1 < 127) {
        // The midpoint of two e4m3 values has 5 significant bits: exact in fp32.
        const auto mid = static_cast<float>((pos[c] + pos[c + 1]) / 2);
        ASSERT_EQ(static_cast<double>(mid), (pos[c] + pos[c + 1]) / 2);
        expect_e4m3_encode(sign * mid);
        expect_e4m3_encode(sign * std::nextafter(mid, kInf));
        expect_e4m3_encode(sign * std::nextafter(mid, 0.0f));
      }
    }
  }
}

TEST(NumfmtE4m3, EncodeStridedSweepOfAllFp32Patterns) {
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 7919) {
    expect_e4m3_encode(from_bits(static_cast<uint32_t>(b)));
  }
  // Denser over [2^-12, 512), where the codes live: every 127th pattern, both signs.
  for (uint32_t b = 0x39800000u; b < 0x44000000u; b += 127) {
    expect_e4m3_encode(from_bits(b));
    expect_e4m3_encode(from_bits(b | 0x80000000u));
  }
}

TEST(NumfmtE4m3, EncodeSpecialValues) {
  EXPECT_EQ(f32_to_e4m3(1.0f), 0x38);
  EXPECT_EQ(f32_to_e4m3(0x1p-10f), 0x00);        // tie between 0 and 2^-9 → 0
  EXPECT_EQ(f32_to_e4m3(0x1.8p-10f), 0x01);      // nearer 2^-9
  EXPECT_EQ(f32_to_e4m3(7.5f * 0x1p-9f), 0x08);  // tie between 0x07 and 0x08 → even
  EXPECT_EQ(f32_to_e4m3(432.0f), 0x7E);          // tie 416|448 → 448 (even mantissa)
  EXPECT_EQ(f32_to_e4m3(17.0f), 0x58);           // tie 16|18 → 16
  EXPECT_EQ(f32_to_e4m3(19.0f), 0x5A);           // tie 18|20 → 20
  EXPECT_EQ(f32_to_e4m3(449.0f), 0x7E);          // saturation
  EXPECT_EQ(f32_to_e4m3(464.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(1e30f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::max()), 0x7E);
  EXPECT_EQ(f32_to_e4m3(kInf), 0x7E);
  EXPECT_EQ(f32_to_e4m3(-kInf), 0xFE);
  EXPECT_EQ(f32_to_e4m3(-500.0f), 0xFE);
  EXPECT_EQ(f32_to_e4m3(0.0f), 0x00);
  EXPECT_EQ(f32_to_e4m3(-0.0f), 0x80);  // sign kept (cvt.rn semantics)
  EXPECT_EQ(f32_to_e4m3(-1e-30f), 0x80);
  EXPECT_EQ(f32_to_e4m3(from_bits(0x00000001)), 0x00);
  EXPECT_EQ(f32_to_e4m3(kNan), 0x7F);
  EXPECT_EQ(f32_to_e4m3(-kNan), 0xFF);
  EXPECT_EQ(f32_to_e4m3(from_bits(0x7F800001)), 0x7F);
}

// ---- E8M0 --------------------------------------------------------------------------------

TEST(NumfmtE8m0, AllCodes) {
  for (int c = 0; c < 256; ++c) {
    const float got = e8m0_to_f32(static_cast<uint8_t>(c));
    if (c == 255) {
      EXPECT_TRUE(std::isnan(got));
      EXPECT_THROW(e8m0_exponent(0xFF), Error);
      continue;
    }
    // Compare in double against 2^(c−127) built by repeated halving/doubling of 1.
    double want = 1.0;
    for (int k = 0; k < c - 127; ++k) want *= 2.0;
    for (int k = 0; k > c - 127; --k) want *= 0.5;
    ASSERT_EQ(static_cast<double>(got), want) << "code " << c;
    ASSERT_EQ(e8m0_exponent(static_cast<uint8_t>(c)), c - 127);
    ASSERT_EQ(e8m0_from_exponent(c - 127), c);
  }
  EXPECT_EQ(to_bits(e8m0_to_f32(0)), 0x00400000u);  // 2^-127: an fp32 subnormal
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(254), 0x1p127f);
  EXPECT_THROW(e8m0_from_exponent(-128), Error);
  EXPECT_THROW(e8m0_from_exponent(128), Error);
}

// ---- e2m1 --------------------------------------------------------------------------------

TEST(NumfmtE2m1, DecodeAll16NibblesAndHighBitsIgnored) {
  for (int c = 0; c < 256; ++c) {
    const float got = e2m1_to_f32(static_cast<uint8_t>(c));
    ASSERT_EQ(static_cast<double>(got), kFp4SpecTable[c & 0xF]) << "code " << c;
    ASSERT_EQ(std::signbit(got), (c & 0x8) != 0) << "code " << c;
  }
  // Field formula: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa.
  for (int c = 0; c < 16; ++c) {
    const int e = (c >> 1) & 3;
    const int m = c & 1;
    const double mag = e == 0 ? m * 0.5 : (1.0 + m * 0.5) * std::pow(2.0, e - 1);
    EXPECT_EQ(static_cast<double>(e2m1_to_f32(static_cast<uint8_t>(c))), (c & 8) ? -mag : mag);
  }
}

TEST(NumfmtE2m1, EncodeTieTable) {
  struct Tie {
    float in;
    float out;
  };
  const Tie ties[] = {{0.25f, 0.0f}, {0.75f, 1.0f}, {1.25f, 1.0f}, {1.75f, 2.0f},
                      {2.5f, 2.0f},  {3.5f, 4.0f},  {5.0f, 4.0f}};
  for (const Tie& t : ties) {
    EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(t.in)), t.out) << t.in;
    EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(-t.in)), -t.out) << -t.in;
  }
  EXPECT_EQ(f32_to_e2m1(6.5f), 0x7);
  EXPECT_EQ(f32_to_e2m1(1e30f), 0x7);
  EXPECT_EQ(f32_to_e2m1(kInf), 0x7);
  EXPECT_EQ(f32_to_e2m1(-kInf), 0xF);
  EXPECT_EQ(f32_to_e2m1(kNan), 0x7);
  EXPECT_EQ(f32_to_e2m1(-kNan), 0xF);
  EXPECT_EQ(f32_to_e2m1(0.0f), 0x0);
  EXPECT_EQ(f32_to_e2m1(-0.0f), 0x8);
  EXPECT_EQ(f32_to_e2m1(-0.1f), 0x8);
}

void expect_e2m1_encode(float v) {
  ASSERT_EQ(f32_to_e2m1(v), e2m1_oracle_encode(static_cast<double>(v)))
      << "value " << v << std::hex << " bits 0x" << to_bits(v);
}

TEST(NumfmtE2m1, EncodeEveryCodeMidpointAndSweep) {
  for (int c = 0; c < 8; ++c) {
    for (float sign : {1.0f, -1.0f}) {
      const auto v = static_cast<float>(kFp4SpecTable[c]);
      expect_e2m1_encode(sign * v);
      expect_e2m1_encode(sign * std::nextafter(v, kInf));
      expect_e2m1_encode(sign * std::nextafter(v, 0.0f));
      const auto mid =
          static_cast<float>((kFp4SpecTable[c] + kFp4SpecTable[c + 1 < 8 ? c + 1 : c]) / 2);
      expect_e2m1_encode(sign * mid);
      expect_e2m1_encode(sign * std::nextafter(mid, kInf));
      expect_e2m1_encode(sign * std::nextafter(mid, 0.0f));
    }
  }
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 7919) {
    expect_e2m1_encode(from_bits(static_cast<uint32_t>(b)));
  }
  // Dense sweep of [-7, 7] in steps of 2^-10.
  for (int k = -7 * 1024; k <= 7 * 1024; ++k) expect_e2m1_encode(static_cast<float>(k) * 0x1p-10f);
}

TEST(NumfmtE2m1, PackNibbleOrder) {
  EXPECT_EQ(fp4_pack(0x3, 0xC), 0xC3);
  EXPECT_EQ(fp4_even(0xC3), 0x3);
  EXPECT_EQ(fp4_odd(0xC3), 0xC);
  EXPECT_EQ(fp4_pack(0xF3, 0xFC), 0xC3);  // only low 4 bits of each nibble argument
}

// ---- power-of-two scales -----------------------------------------------------------------

TEST(NumfmtScale, ConstantsHaveReferenceBitPatterns) {
  EXPECT_EQ(to_bits(act_quant_inv_max()), 0x3B124925u);
  EXPECT_EQ(to_bits(fp4_quant_inv_max()), 0x3E2AAAABu);
  EXPECT_EQ(fp4_quant_amax_floor(), 6.0f * 0x1p-126f);
  EXPECT_EQ(static_cast<double>(fp4_quant_amax_floor()), 6.0 * std::pow(2.0, -126));
  EXPECT_EQ(kActQuantAmaxFloor, 1e-4f);
  EXPECT_EQ(kE4m3Max, 448.0f);
  EXPECT_EQ(kE2m1Max, 6.0f);
}

std::vector<float> interesting_amaxes() {
  std::vector<float> v = {0.0f,
                          1e-4f,
                          6.0f * 0x1p-126f,
                          448.0f,
                          6.0f,
                          1.0f,
                          3.0f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(),
                          from_bits(1)};
  for (int k = -149; k <= 127; ++k) {
    for (float base : {1.0f, 448.0f, 6.0f, 1e-4f, 3.0f}) {
      const float p = std::ldexp(base, k);
      if (!std::isfinite(p) || p == 0.0f) continue;
      v.push_back(p);
      v.push_back(std::nextafter(p, kInf));
      v.push_back(std::nextafter(p, 0.0f));
    }
  }
  // Log-uniform pseudo-random values over the whole fp32 range.
  uint64_t state = 12345;
  for (int i = 0; i < 20000; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const uint32_t bits = static_cast<uint32_t>(state >> 33) & 0x7F7FFFFFu;
    v.push_back(from_bits(bits));
  }
  return v;
}

TEST(NumfmtScale, Pow2ExponentMatchesCeilLog2) {
  const struct {
    float floor;
    float inv;
  } configs[] = {{kActQuantAmaxFloor, act_quant_inv_max()},
                 {fp4_quant_amax_floor(), fp4_quant_inv_max()},
                 {1e-30f, act_quant_inv_max()},
                 {1e-30f, fp4_quant_inv_max()}};
  for (float amax : interesting_amaxes()) {
    if (!std::isfinite(amax)) continue;
    for (const auto& cfg : configs) {
      const int got = pow2_scale_exponent(amax, cfg.floor, cfg.inv);
      ASSERT_EQ(got, pow2_oracle(amax, cfg.floor, cfg.inv))
          << "amax " << amax << " floor " << cfg.floor << " inv " << cfg.inv;
      // The scale covers the block: max(amax, floor) / 2^e ≤ 1/inv (448 or 6).
      const double qmax = cfg.inv == act_quant_inv_max() ? 448.0 : 6.0;
      ASSERT_LE(std::max<double>(amax, cfg.floor) / std::ldexp(1.0, got), qmax) << amax;
    }
    ASSERT_EQ(act_quant_scale_exponent(amax),
              pow2_oracle(amax, kActQuantAmaxFloor, act_quant_inv_max()));
    ASSERT_EQ(fp4_quant_scale_exponent(amax),
              pow2_oracle(amax, fp4_quant_amax_floor(), fp4_quant_inv_max()));
  }
}

TEST(NumfmtScale, KnownExponents) {
  EXPECT_EQ(act_quant_scale_exponent(0.0f), -22);  // floor 1e-4: ceil(log2(1e-4/448))
  EXPECT_EQ(act_quant_scale_exponent(1e-4f), -22);
  EXPECT_EQ(act_quant_scale_exponent(448.0f), 0);
  EXPECT_EQ(act_quant_scale_exponent(449.0f), 1);
  EXPECT_EQ(act_quant_scale_exponent(std::nextafter(448.0f, kInf)), 1);
  EXPECT_EQ(act_quant_scale_exponent(1.0f), -8);
  EXPECT_EQ(act_quant_scale_exponent(3.0f), -7);
  EXPECT_EQ(fp4_quant_scale_exponent(0.0f), -126);
  EXPECT_EQ(fp4_quant_scale_exponent(6.0f), 0);
  EXPECT_EQ(fp4_quant_scale_exponent(std::nextafter(6.0f, kInf)), 1);
  EXPECT_EQ(fp4_quant_scale_exponent(3.0f), -1);
  EXPECT_EQ(fp4_quant_scale_exponent(1.0f), -2);
}

TEST(NumfmtScale, SubnormalProductFollowsTheBitTrick) {
  // kernel.py's fast_log2_ceil reads exponent field 0 as −127: +1 for any non-zero mantissa.
  EXPECT_EQ(pow2_scale_exponent(0.0f, 0.0f, 1.0f), -127);
  EXPECT_EQ(pow2_scale_exponent(0x1p-140f, 0.0f, 1.0f), -126);
  EXPECT_EQ(pow2_scale_exponent(0x1p-126f, 0.0f, 1.0f), -126);
}

TEST(NumfmtScale, RejectsNegativeAndNonFiniteAmax) {
  EXPECT_THROW(pow2_scale_exponent(-1.0f, 1e-4f, 1.0f), Error);
  EXPECT_THROW(pow2_scale_exponent(kNan, 1e-4f, 1.0f), Error);
  EXPECT_THROW(pow2_scale_exponent(kInf, 1e-4f, 1.0f), Error);
}

// ---- blocks ------------------------------------------------------------------------------

TEST(NumfmtBlock, E4m3HandComputedBlocks) {
  {
    // amax 3 → e = ceil(log2(3/448)) = −7; x·128 = {128, −256, 64, 384}, all exact.
    const float x[] = {1.0f, -2.0f, 0.5f, 3.0f};
    uint8_t codes[4];
    EXPECT_EQ(quantize_block_e4m3(x, 4, codes), -7);
    EXPECT_EQ(std::vector<uint8_t>(codes, codes + 4),
              (std::vector<uint8_t>{0x70, 0xF8, 0x68, 0x7C}));
    float y[] = {1.0f, -2.0f, 0.5f, 3.0f};
    fake_quant_block_e4m3(y, 4);
    EXPECT_EQ(std::vector<float>(y, y + 4), std::vector<float>(x, x + 4));
  }
  {
    // amax 448 → e = 0: plain rounding, ties to even, values that round to (−)zero.
    const float x[] = {448.0f, 17.0f, 19.0f, -0.0004f, 0x1p-10f, 0x1.8p-10f, 447.0f, -3.3f};
    uint8_t codes[8];
    EXPECT_EQ(quantize_block_e4m3(x, 8, codes), 0);
    EXPECT_EQ(std::vector<uint8_t>(codes, codes + 8),
              (std::vector<uint8_t>{0x7E, 0x58, 0x5A, 0x80, 0x00, 0x01, 0x7E, 0xC5}));
    float y[8];
    std::copy(x, x + 8, y);
    fake_quant_block_e4m3(y, 8);
    const float want[] = {448.0f, 16.0f, 20.0f, -0.0f, 0.0f, 0x1p-9f, 448.0f, -3.25f};
    for (int i = 0; i < 8; ++i) {
      EXPECT_EQ(y[i], want[i]) << i;
      EXPECT_EQ(std::signbit(y[i]), std::signbit(want[i])) << i;
    }
  }
  {
    // amax 1000 → e = 2 (s = 4): 250 → 256, −0.175 → −0.171875.
    float x[] = {1000.0f, -0.7f};
    uint8_t codes[2];
    EXPECT_EQ(quantize_block_e4m3(x, 2, codes), 2);
    EXPECT_EQ(codes[0], 0x78);
    EXPECT_EQ(codes[1], 0xA3);
    fake_quant_block_e4m3(x, 2);
    EXPECT_EQ(x[0], 1024.0f);
    EXPECT_EQ(x[1], -0.6875f);
  }
  {
    float zeros[3] = {0.0f, 0.0f, 0.0f};
    uint8_t codes[3];
    EXPECT_EQ(quantize_block_e4m3(zeros, 3, codes), -22);
    EXPECT_EQ(codes[0] | codes[1] | codes[2], 0);
    fake_quant_block_e4m3(zeros, 3);
    EXPECT_EQ(zeros[0], 0.0f);
  }
  {
    // A NaN element is left out of amax and becomes a NaN code; an infinity throws.
    float x[] = {kNan, 1.0f};
    uint8_t codes[2];
    EXPECT_EQ(quantize_block_e4m3(x, 2, codes), -8);
    EXPECT_EQ(codes[0], 0x7F);
    EXPECT_EQ(codes[1], 0x78);
    fake_quant_block_e4m3(x, 2);
    EXPECT_TRUE(std::isnan(x[0]));
    EXPECT_EQ(x[1], 1.0f);
    const float bad[] = {kInf, 1.0f};
    EXPECT_THROW(quantize_block_e4m3(bad, 2, codes), Error);
  }
}

TEST(NumfmtBlock, E2m1HandComputedBlocks) {
  {
    const float x[] = {6.0f, -0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, -5.1f, 0.3f};
    uint8_t nib[10];
    EXPECT_EQ(quantize_block_e2m1(x, 10, nib), 0);
    EXPECT_EQ(std::vector<uint8_t>(nib, nib + 10),
              (std::vector<uint8_t>{0x7, 0x8, 0x2, 0x2, 0x4, 0x4, 0x6, 0x6, 0xF, 0x1}));
    float y[10];
    std::copy(x, x + 10, y);
    fake_quant_block_e2m1(y, 10);
    const float want[] = {6.0f, -0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, -6.0f, 0.5f};
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(y[i], want[i]) << i;
      EXPECT_EQ(std::signbit(y[i]), std::signbit(want[i])) << i;
    }
  }
  {
    // amax 3: 3·fp32(1/6) rounds to exactly 0.5, so e = −1 and 3 maps to 6.
    float x[] = {3.0f, -1.0f};
    uint8_t nib[2];
    EXPECT_EQ(quantize_block_e2m1(x, 2, nib), -1);
    EXPECT_EQ(nib[0], 0x7);
    EXPECT_EQ(nib[1], 0xC);
    fake_quant_block_e2m1(x, 2);
    EXPECT_EQ(x[0], 3.0f);
    EXPECT_EQ(x[1], -1.0f);
  }
  {
    // amax 0.1 → e = −5: 3.2 → 3, 0.64 → 0.5.
    float x[] = {0.1f, 0.02f};
    uint8_t nib[2];
    EXPECT_EQ(quantize_block_e2m1(x, 2, nib), -5);
    EXPECT_EQ(nib[0], 0x5);
    EXPECT_EQ(nib[1], 0x1);
    fake_quant_block_e2m1(x, 2);
    EXPECT_EQ(x[0], 0.09375f);
    EXPECT_EQ(x[1], 0.015625f);
  }
  {
    float zeros[2] = {0.0f, -0.0f};
    uint8_t nib[2];
    EXPECT_EQ(quantize_block_e2m1(zeros, 2, nib), -126);
    EXPECT_EQ(nib[0], 0x0);
    EXPECT_EQ(nib[1], 0x8);
  }
}

// Random blocks against the oracles: e from ceil(log2) in double, codes by brute-force search
// of x / 2^e computed in double (exact), fake-quant values from the field formulas.
TEST(NumfmtBlock, RandomBlocksMatchOracles) {
  const std::vector<float> data = gen_matrix(48, 512, 11, 1, 32);
  for (size_t block : {size_t{128}, size_t{64}, size_t{32}, size_t{7}}) {
    for (size_t start = 0; start + block <= data.size(); start += block * 3) {
      const float* x = data.data() + start;
      float amax = 0.0f;
      for (size_t i = 0; i < block; ++i) amax = std::max(amax, std::fabs(x[i]));
      std::vector<uint8_t> codes(block);
      std::vector<float> y(x, x + block);

      const int e8 = quantize_block_e4m3(x, block, codes.data());
      ASSERT_EQ(e8, pow2_oracle(amax, 1e-4f, act_quant_inv_max())) << start;
      fake_quant_block_e4m3(y.data(), block);
      for (size_t i = 0; i < block; ++i) {
        const double q = std::clamp(std::ldexp(static_cast<double>(x[i]), -e8), -448.0, 448.0);
        const uint8_t want = e4m3_oracle_encode(q);
        ASSERT_EQ(codes[i], want) << "block at " << start << " element " << i;
        ASSERT_EQ(static_cast<double>(y[i]), std::ldexp(e4m3_oracle_value(want), e8));
      }

      std::copy(x, x + block, y.begin());
      const int e4 = quantize_block_e2m1(x, block, codes.data());
      ASSERT_EQ(e4, pow2_oracle(amax, 6.0f * 0x1p-126f, fp4_quant_inv_max())) << start;
      fake_quant_block_e2m1(y.data(), block);
      for (size_t i = 0; i < block; ++i) {
        const double q = std::clamp(std::ldexp(static_cast<double>(x[i]), -e4), -6.0, 6.0);
        const uint8_t want = e2m1_oracle_encode(q);
        ASSERT_EQ(codes[i], want) << "block at " << start << " element " << i;
        ASSERT_EQ(static_cast<double>(y[i]), std::ldexp(kFp4SpecTable[want], e4));
      }
    }
  }
}

// Fingerprints of dsv4fmt.py (the golden numpy reference) on gen_matrix data, computed with
//   x = gen(16, 512, 5, 1, 128); fnv(act_quant_np(x, 128)[0])      (and seed 7, block 64)
//   x = gen(16, 256, 6, 1, 32);  fnv(fp4_act_quant_np(x, 32))
// where gen is gen_matrix written with np.float32 arithmetic and fnv is fnv1a_floats.
void fake_quant_rows(std::vector<float>& x, size_t block, bool fp4) {
  for (size_t start = 0; start < x.size(); start += block) {
    if (fp4) {
      fake_quant_block_e2m1(x.data() + start, block);
    } else {
      fake_quant_block_e4m3(x.data() + start, block);
    }
  }
}

TEST(NumfmtBlock, ReferenceFingerprints) {
  std::vector<float> a = gen_matrix(16, 512, 5, 1, 128);
  fake_quant_rows(a, 128, false);
  EXPECT_EQ(fnv1a_floats(a), 0x05c73109ffba05bcull);

  std::vector<float> b = gen_matrix(16, 512, 7, 1, 64);
  fake_quant_rows(b, 64, false);
  EXPECT_EQ(fnv1a_floats(b), 0xc9ffa0add9bafd60ull);

  std::vector<float> c = gen_matrix(16, 256, 6, 1, 32);
  fake_quant_rows(c, 32, true);
  EXPECT_EQ(fnv1a_floats(c), 0x421f9c6a8b46692dull);
}

}  // namespace
}  // namespace moerun::numfmt

// Loads ../shared/golden/dsv4-tiny/checkpoint (written by an independent implementation) and
// checks every tensor's dequantized values against tensor_stats.json: sum, sum of squares,
// first values and last value after FP8 / FP4 block dequantization; E8M0 exponent ranges and
// byte sums; tid2eid sums. A loader that reproduces these reads every tensor correctly.
#include <cmath>
#include <cstring>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/checkpoint_schema.h"
#include "common/numfmt.h"
#include "common/safetensors.h"
#include "common/weight_quant.h"

namespace {

const std::filesystem::path kGolden = MOERUN_GOLDEN_DIR;

std::vector<float> dequantized(const moerun::Checkpoint& ckpt, const moerun::TensorSpec& spec) {
  const auto bytes = ckpt.data(spec.name);
  const auto* u8 = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<float> out;
  switch (spec.format) {
    case moerun::TensorFormat::kFp8Weight:
    case moerun::TensorFormat::kFp4Weight: {
      const std::string base = spec.name.substr(0, spec.name.rfind('.'));
      const auto* scales = reinterpret_cast<const uint8_t*>(ckpt.data(base + ".scale").data());
      const int64_t rows = spec.shape[0];
      if (spec.format == moerun::TensorFormat::kFp8Weight) {
        out.resize(static_cast<size_t>(rows * spec.shape[1]));
        moerun::numfmt::dequantize_fp8_weight(u8, scales, rows, spec.shape[1], out.data());
      } else {
        out.resize(static_cast<size_t>(rows * spec.shape[1] * 2));
        moerun::numfmt::dequantize_fp4_weight(u8, scales, rows, spec.shape[1] * 2, out.data());
      }
      break;
    }
    case moerun::TensorFormat::kPlain:
      out.resize(static_cast<size_t>(spec.numel()));
      for (size_t i = 0; i < out.size(); ++i) {
        if (spec.dtype == moerun::DType::kBF16) {
          uint16_t b;
          std::memcpy(&b, u8 + 2 * i, 2);
          out[i] = moerun::numfmt::bf16_to_f32(b);
        } else {
          std::memcpy(&out[i], u8 + 4 * i, 4);
        }
      }
      break;
    default:
      ADD_FAILURE() << spec.name << " has no float values";
  }
  return out;
}

TEST(GoldenTiny, EveryTensorMatchesItsStatistics) {
  const auto dir = kGolden / "dsv4-tiny/checkpoint";
  std::ifstream f(kGolden / "dsv4-tiny/tensor_stats.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json stats = nlohmann::json::parse(f);
  const moerun::ModelConfig config = moerun::ModelConfig::load(dir / "config.json");
  const moerun::CheckpointSchema schema(config);
  const moerun::Checkpoint ckpt = moerun::Checkpoint::open(dir);
  ASSERT_EQ(stats.size(), ckpt.num_tensors());

  int checked_values = 0, checked_scales = 0, checked_tables = 0;
  for (const moerun::TensorSpec& spec : schema.tensors()) {
    SCOPED_TRACE(spec.name);
    ASSERT_TRUE(stats.contains(spec.name));
    const nlohmann::json& s = stats[spec.name];
    EXPECT_EQ(s["dtype"].get<std::string>(), moerun::dtype_name(spec.dtype));
    EXPECT_EQ(s["shape"].get<std::vector<int64_t>>(), spec.shape);
    const auto bytes = ckpt.data(spec.name);
    const auto* u8 = reinterpret_cast<const uint8_t*>(bytes.data());

    if (spec.format == moerun::TensorFormat::kFp8Scale ||
        spec.format == moerun::TensorFormat::kFp4Scale) {
      int lo = 1000, hi = -1000;
      int64_t sum = 0;
      for (size_t i = 0; i < bytes.size(); ++i) {
        const int e = moerun::numfmt::e8m0_exponent(u8[i]);
        // The decoded scale is exactly 2^e.
        EXPECT_EQ(moerun::numfmt::e8m0_to_f32(u8[i]), std::ldexp(1.0f, e));
        lo = std::min(lo, e);
        hi = std::max(hi, e);
        sum += u8[i];
      }
      EXPECT_EQ(lo, s["min_exponent"].get<int>());
      EXPECT_EQ(hi, s["max_exponent"].get<int>());
      EXPECT_EQ(sum, s["sum_codes"].get<int64_t>());
      ++checked_scales;
      continue;
    }
    if (spec.format == moerun::TensorFormat::kHashTable) {
      std::vector<int64_t> v(bytes.size() / 8);
      std::memcpy(v.data(), bytes.data(), bytes.size());
      int64_t sum = 0;
      for (int64_t x : v) sum += x;
      EXPECT_EQ(sum, s["sum"].get<int64_t>());
      const auto first = s["first"].get<std::vector<int64_t>>();
      for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(v[i], first[i]);
      ++checked_tables;
      continue;
    }
    const std::vector<float> v = dequantized(ckpt, spec);
    double sum = 0, sum_sq = 0;
    for (float x : v) {
      sum += x;
      sum_sq += static_cast<double>(x) * x;
    }
    const double want_sq = s["sum_sq"].get<double>();
    // Sums of up to 10^5 exact terms: float64 rounding differs by order only.
    EXPECT_NEAR(sum, s["sum"].get<double>(), 1e-9 * (want_sq + 1.0));
    EXPECT_NEAR(sum_sq, want_sq, 1e-9 * (want_sq + 1.0));
    const auto first = s["first"].get<std::vector<double>>();
    for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(static_cast<double>(v[i]), first[i]) << i;
    EXPECT_EQ(static_cast<double>(v.back()), s["last"].get<double>());
    ++checked_values;
  }
  EXPECT_EQ(checked_values + checked_scales + checked_tables, 796);
  EXPECT_EQ(checked_tables, 2);
}

}  // namespace

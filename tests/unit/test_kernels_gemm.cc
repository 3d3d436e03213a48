// Tests of the optimized GEMM and activation quantization (kernels/cpu/opt_gemm.h):
//   - the order contract: every non-AMX SIMD path this CPU has gives, bit for bit, what a
//     scalar loop of the contract computes (fp32 accumulator from +0, exact products added for
//     k = 0, 1, ... with one rounding each; fma for fp32 weights), for all weight formats, odd
//     sizes, slices, strides, bf16 rounding on/off, packed or not, 1 and 2 threads;
//   - closeness to the reference kernels (double sums) within kernels/tolerance.h;
//   - batch invariance: a row computed in a batch equals the row computed alone;
//   - the AMX path (its own order, where AMX is usable): close to the reference, every row of
//     batches of 1..300 rows equal to the row alone, threads and packing irrelevant;
//   - act_quant / fp4_act_quant bit-exact against the reference;
//   - MOERUN_CPU_FEATURES parsing.
// Data are realistic (model spec §3.3, §5): weights ~N(0, 1/k) quantized with the checkpoint
// rules, activations ~N(0, 1) through act_quant. The bf16 hardware paths flush subnormal
// inputs and results to zero, which such data never reach; synthetic subnormal data would be
// the one documented exception to the contract.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/numfmt.h"
#include "common/weight_quant.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/opt_gemm.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/weight_decode.h"
#include "kernels/kernels.h"
#include "kernels/tolerance.h"

namespace moerun::kernels {
namespace {

// ---- feature levels --------------------------------------------------------------------

struct Level {
  std::string name;
  CpuFeatures features;
};

// Every level the CPU (as capped by MOERUN_CPU_FEATURES) offers, lowest first.
std::vector<Level> available_levels() {
  const CpuFeatures& f = cpu_features();
  std::vector<Level> levels;
  CpuFeatures c;
  levels.push_back({"portable", c});
  if (f.avx2) {
    c.avx2 = true;
    levels.push_back({"avx2", c});
  }
  if (f.avx512f) {
    c.avx512f = true;
    c.avx512_vbmi = f.avx512_vbmi;
    levels.push_back({"avx512", c});
  }
  if (f.avx512_bf16) {
    c.avx512_bf16 = true;
    if (c.avx512_vbmi) {  // the FP8 decoder without byte tables too (Cooper Lake)
      c.avx512_vbmi = false;
      levels.push_back({"avx512bf16-novbmi", c});
      c.avx512_vbmi = true;
    }
    levels.push_back({"avx512bf16", c});
  }
  if (f.amx_usable) {
    c.amx_bf16 = c.amx_usable = true;
    levels.push_back({"amx", c});
  }
  return levels;
}

// ---- test data ---------------------------------------------------------------------------

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kBf16:
      return "bf16";
    case WeightFormat::kFp8:
      return "fp8";
    case WeightFormat::kFp4:
      return "fp4";
  }
  return "?";
}

// A weight in checkpoint layout with the buffers it points into.
struct TestWeight {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  std::vector<uint8_t> codes;
  std::vector<uint8_t> scales;
  WeightView view;
};

std::unique_ptr<TestWeight> make_weight(WeightFormat format, int64_t rows, int64_t cols,
                                        uint32_t seed) {
  auto t = std::make_unique<TestWeight>();
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& x : w) x = normal(rng);
  // A few tiny weights, for e4m3 subnormal codes and zeros.
  for (size_t i = 0; i < w.size(); i += 97) w[i] *= 1e-4f;
  t->view.format = format;
  t->view.rows = rows;
  t->view.cols = cols;
  switch (format) {
    case WeightFormat::kF32:
      t->f32 = w;
      t->view.data = t->f32.data();
      break;
    case WeightFormat::kBf16:
      t->bf16.resize(w.size());
      for (size_t i = 0; i < w.size(); ++i) t->bf16[i] = numfmt::f32_to_bf16(w[i]);
      t->view.data = t->bf16.data();
      break;
    case WeightFormat::kFp8:
      t->codes.resize(w.size());
      t->scales.resize(static_cast<size_t>(((rows + 127) / 128) * ((cols + 127) / 128)));
      numfmt::quantize_fp8_weight(w.data(), rows, cols, t->codes.data(), t->scales.data());
      t->view.data = t->codes.data();
      t->view.scales = t->scales.data();
      break;
    case WeightFormat::kFp4:
      t->codes.resize(w.size() / 2);
      t->scales.resize(static_cast<size_t>(rows * (cols / 32)));
      numfmt::quantize_fp4_weight(w.data(), rows, cols, t->codes.data(), t->scales.data());
      t->view.data = t->codes.data();
      t->view.scales = t->scales.data();
      break;
  }
  return t;
}

// Activations [m, lda]: ~N(0, 1); act_quant'ed (1×128 e4m3) for FP8/FP4 weights, bf16 for
// bf16 weights (the GEMM's input contract), left fp32 for fp32 weights. Padding is NaN so
// that reading past cols shows.
std::vector<float> make_activations(WeightFormat format, int64_t m, int64_t cols, int64_t lda,
                                    uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> a(static_cast<size_t>(m * lda), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < cols; ++k) a[i * lda + k] = normal(rng);
  if (format == WeightFormat::kFp8 || format == WeightFormat::kFp4) {
    EXPECT_EQ(cols % 32, 0);
    const int64_t block = cols % 128 == 0 ? 128 : 32;
    ReferenceKernels().quantize_e4m3(a.data(), m, lda, cols, block);
  } else if (format == WeightFormat::kBf16) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t k = 0; k < cols; ++k) a[i * lda + k] = numfmt::round_to_bf16(a[i * lda + k]);
  }
  return a;
}

// The contract, written out: fp32 accumulator from +0, fma over k in order (an exact product
// makes fma the same as multiply-then-add), then bf16 rounding if asked.
std::vector<float> contract_gemm(const GemmParams& p) {
  std::vector<float> out(static_cast<size_t>(p.m * p.ldo), 0.0f);
  std::vector<float> wrow(static_cast<size_t>(p.w.cols));
  for (int64_t j = 0; j < p.n; ++j) {
    decode_weight_row(p.w, p.row_begin + j, wrow.data());
    for (int64_t i = 0; i < p.m; ++i) {
      const float* a = p.a + i * p.lda;
      float acc = 0.0f;
      for (int64_t k = 0; k < p.w.cols; ++k) acc = std::fma(a[k], wrow[k], acc);
      out[i * p.ldo + j] = p.round_bf16 ? numfmt::round_to_bf16(acc) : acc;
    }
  }
  return out;
}

uint32_t bits(float x) {
  uint32_t b = 0;
  std::memcpy(&b, &x, 4);
  return b;
}

// "" when out equals want bit for bit on the m×n outputs; else the first mismatches.
std::string first_mismatches(const std::vector<float>& out, const std::vector<float>& want,
                             int64_t m, int64_t n, int64_t ldo) {
  std::string msg;
  int count = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float got = out[i * ldo + j];
      const float exp = want[i * ldo + j];
      if (bits(got) == bits(exp)) continue;
      if (count < 8)
        msg +=
            fmt::format("  [i={}, j={}] got {:a} ({}) want {:a} ({})\n", i, j, got, got, exp, exp);
      ++count;
    }
  if (count > 0) msg = fmt::format("{} of {} outputs differ:\n", count, m * n) + msg;
  return msg;
}

// A row's error against the reference, as kernels/tolerance.h measures it: the worst element
// relative to the row's largest magnitude, and the relative L2 error.
struct RowError {
  double rel_max = 0;
  double rel_l2 = 0;
};
RowError row_error(const float* got, const float* ref, int64_t n) {
  double max_ref = 0, max_err = 0, sum_err = 0, sum_ref = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double r = ref[j];
    const double e = std::fabs(static_cast<double>(got[j]) - r);
    max_ref = std::max(max_ref, std::fabs(r));
    max_err = std::max(max_err, e);
    sum_err += e * e;
    sum_ref += r * r;
  }
  return {max_err / std::max(max_ref, 1e-30), std::sqrt(sum_err / std::max(sum_ref, 1e-60))};
}

// A call over rows [row_begin, row_begin + n) of w with a dense output (sentinel-filled).
GemmParams gemm_params(const TestWeight& w, const std::vector<float>& a, int64_t lda, int64_t m,
                       int64_t row_begin, int64_t n, bool round_bf16, std::vector<float>& out) {
  out.assign(static_cast<size_t>(m * n), -12345.0f);
  GemmParams p;
  p.a = a.data();
  p.lda = lda;
  p.m = m;
  p.w = w.view;
  p.row_begin = row_begin;
  p.n = n;
  p.out = out.data();
  p.ldo = n;
  p.round_bf16 = round_bf16;
  return p;
}

// One GEMM call's shape and options.
struct Case {
  int64_t m = 1;
  int64_t n = 1;
  int64_t row_begin = 0;
  int64_t lda_pad = 0;
  int64_t ldo_pad = 0;
  bool round_bf16 = false;
  bool packed = true;
  int threads = 1;
  RowPhase phase = RowPhase::kPrefill;
};

std::string describe_case(const Level& level, WeightFormat f, int64_t cols, const Case& c) {
  return fmt::format(
      "{} {} cols={} m={} n={} row_begin={} lda+{} ldo+{} round_bf16={} packed={} "
      "threads={}",
      level.name, format_name(f), cols, c.m, c.n, c.row_begin, c.lda_pad, c.ldo_pad, c.round_bf16,
      c.packed, c.threads);
}

// Runs opt_gemm for `c` and checks it against the contract loop; returns the outputs.
void check_case(const Level& level, const TestWeight& w, const PackedWeight* pack, const Case& c,
                uint32_t seed) {
  const int64_t cols = w.view.cols;
  const int64_t lda = cols + c.lda_pad;
  const int64_t ldo = c.n + c.ldo_pad;
  const std::vector<float> a = make_activations(w.view.format, c.m, cols, lda, seed);
  GemmParams p;
  p.a = a.data();
  p.lda = lda;
  p.m = c.m;
  p.w = w.view;
  p.row_begin = c.row_begin;
  p.n = c.n;
  p.ldo = ldo;
  p.round_bf16 = c.round_bf16;
  p.packed = c.packed ? pack : nullptr;
  p.phase = c.phase;
  // Sentinel in the padding columns, which must stay untouched.
  std::vector<float> out(static_cast<size_t>(c.m * ldo), -12345.0f);
  p.out = out.data();
  opt_gemm(p, level.features, c.threads);
  std::vector<float> want = contract_gemm(p);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = c.n; j < ldo; ++j) want[i * ldo + j] = -12345.0f;
  const std::string diff = first_mismatches(out, want, c.m, ldo, ldo);
  EXPECT_TRUE(diff.empty()) << describe_case(level, w.view.format, cols, c) << "\n" << diff;
}

struct FormatCols {
  WeightFormat format;
  int64_t small_cols;  // the full size sweep
  int64_t large_cols;  // more than one reduction chunk (1024), a few sizes
};

constexpr FormatCols kFormats[] = {
    {WeightFormat::kF32, 200, 1027},
    {WeightFormat::kBf16, 200, 1027},
    {WeightFormat::kFp8, 256, 1152},
    {WeightFormat::kFp4, 96, 1056},
};

constexpr int64_t kWeightRows = 512;
constexpr int64_t kSweepM[] = {1, 2, 3, 7, 16, 17, 33, 256};
constexpr int64_t kSweepN[] = {1, 15, 16, 17, 129, 300};
constexpr int64_t kRowBegins[] = {0, 5, 64, 131};

class GemmContract : public ::testing::TestWithParam<int> {};

// (a) Every path equals the contract loop bit for bit. The options rotate over the sweep so
// that each is seen with many shapes.
TEST_P(GemmContract, EveryPathMatchesTheScalarOrder) {
  const FormatCols fc = kFormats[GetParam()];
  for (const bool large : {false, true}) {
    const int64_t cols = large ? fc.large_cols : fc.small_cols;
    const auto w = make_weight(fc.format, kWeightRows, cols, 17 + static_cast<uint32_t>(cols));
    const auto pack = opt_pack_weight(w->view);
    ASSERT_NE(pack, nullptr);
    EXPECT_GE(pack->bytes(), weight_data_bytes(w->view));
    for (const Level& level : available_levels()) {
      // AMX has its own order for prefill rows (GemmAmx below); decode rows never use it, so
      // on an AMX CPU this sweep checks that decode rows follow the sequential order.
      const RowPhase phase = level.features.amx_usable && fc.format != WeightFormat::kF32
                                 ? RowPhase::kDecode
                                 : RowPhase::kPrefill;
      int idx = 0;
      for (const int64_t m : kSweepM) {
        for (const int64_t n : kSweepN) {
          if (large && !(m == 1 || m == 7 || m == 17) && !(n == 17 || n == 129)) continue;
          Case c;
          c.m = m;
          c.n = n;
          c.row_begin = kRowBegins[idx % 4];
          c.lda_pad = (idx % 3 == 1) ? 5 : 0;
          c.ldo_pad = (idx % 3 == 2) ? 3 : 0;
          c.phase = phase;
          c.round_bf16 = idx % 2 == 1;
          c.packed = idx % 5 != 3;
          c.threads = 1 + (idx / 2) % 2;
          check_case(level, *w, pack.get(), c, static_cast<uint32_t>(1000 + idx));
          ++idx;
        }
      }
      if (HasFailure()) return;
    }
  }
}

// A lone fp32 panel at decode sizes (the mHC projections: 24 rows) computes only the 16-lane
// groups with real rows and splits them over threads; the outputs keep the scalar order.
TEST(GemmContractF32, SinglePanelLaneGroups) {
  constexpr int64_t kCols = 1027;  // more than one reduction chunk
  for (const int64_t rows : {1, 15, 16, 17, 24, 33, 48, 63}) {
    const auto w = make_weight(WeightFormat::kF32, rows, kCols, 300 + static_cast<uint32_t>(rows));
    const auto pack = opt_pack_weight(w->view);
    ASSERT_NE(pack, nullptr);
    for (const Level& level : available_levels()) {
      int idx = 0;
      for (const int64_t m : {1, 2, 4}) {
        for (const int threads : {1, 2}) {
          Case c;
          c.m = m;
          c.n = rows;
          c.threads = threads;
          c.round_bf16 = idx % 2 == 1;
          c.packed = idx % 3 != 2;
          c.ldo_pad = idx % 4 == 3 ? 3 : 0;
          check_case(level, *w, pack.get(), c, static_cast<uint32_t>(5000 + rows * 16 + idx));
          if (rows > 2) {  // a slice starting mid-panel
            c.row_begin = rows / 2;
            c.n = rows - rows / 2;
            check_case(level, *w, pack.get(), c, static_cast<uint32_t>(7000 + rows * 16 + idx));
          }
          ++idx;
        }
      }
      if (HasFailure()) return;
    }
  }
}

// (c) A row of a batch equals the same row computed alone, on every path.
TEST_P(GemmContract, BatchInvariance) {
  const FormatCols fc = kFormats[GetParam()];
  const int64_t cols = fc.small_cols;
  const auto w = make_weight(fc.format, kWeightRows, cols, 99);
  const auto pack = opt_pack_weight(w->view);
  for (const Level& level : available_levels()) {
    for (const int64_t m : {int64_t{5}, int64_t{37}, int64_t{256}}) {
      const std::vector<float> a = make_activations(fc.format, m, cols, cols, 7);
      const int64_t n = 300;
      std::vector<float> batch;
      GemmParams p = gemm_params(*w, a, cols, m, 3, n, true, batch);
      p.packed = pack.get();
      opt_gemm(p, level.features, 2);
      for (int64_t i = 0; i < m; i += (m > 40 ? 13 : 1)) {
        std::vector<float> alone(static_cast<size_t>(n));
        GemmParams q = p;
        q.a = a.data() + i * cols;
        q.m = 1;
        q.out = alone.data();
        opt_gemm(q, level.features, 1);
        const std::vector<float> row(batch.begin() + i * n, batch.begin() + (i + 1) * n);
        const std::string diff = first_mismatches(alone, row, 1, n, n);
        ASSERT_TRUE(diff.empty()) << level.name << " " << format_name(fc.format) << " m=" << m
                                  << " row " << i << "\n"
                                  << diff;
      }
    }
  }
}

// The optimized GEMM at `features` against the reference (double sums) within the GEMM
// tolerances, for both reductions of `fc`, with fp32 and bf16 outputs, rows [100, 357) of the
// weight; worst[round_bf16] collects the largest {rel_max, rel_l2} seen.
void expect_close_to_reference(const FormatCols& fc, const CpuFeatures& features, int64_t m,
                               const std::string& label, double worst[2][2]) {
  for (const int64_t cols : {fc.small_cols, fc.large_cols}) {
    const auto w = make_weight(fc.format, kWeightRows, cols, 5);
    const auto pack = opt_pack_weight(w->view);
    for (const bool round_bf16 : {false, true}) {
      const int64_t n = 257;
      const std::vector<float> a = make_activations(fc.format, m, cols, cols, 11);
      std::vector<float> got, ref;
      GemmParams p = gemm_params(*w, a, cols, m, 100, n, round_bf16, ref);
      ReferenceKernels().gemm(p);
      p = gemm_params(*w, a, cols, m, 100, n, round_bf16, got);
      p.packed = pack.get();
      opt_gemm(p, features, 2);
      const tolerance::Tolerance tol =
          round_bf16 ? tolerance::kGemmBf16Out : tolerance::kGemmF32Out;
      for (int64_t i = 0; i < m; ++i) {
        const auto [rel_max, rel_l2] = row_error(got.data() + i * n, ref.data() + i * n, n);
        worst[round_bf16][0] = std::max(worst[round_bf16][0], rel_max);
        worst[round_bf16][1] = std::max(worst[round_bf16][1], rel_l2);
        EXPECT_LE(rel_max, tol.rel_max)
            << label << " " << format_name(fc.format) << " cols=" << cols << " row " << i
            << " round_bf16=" << round_bf16;
        EXPECT_LE(rel_l2, tol.rel_l2) << label << " " << format_name(fc.format) << " cols=" << cols
                                      << " row " << i << " round_bf16=" << round_bf16;
      }
    }
  }
}

// (b) Against the reference (double sums) within kernels/tolerance.h.
TEST_P(GemmContract, CloseToReference) {
  const Level best = available_levels().back();
  double worst[2][2] = {};
  expect_close_to_reference(kFormats[GetParam()], best.features, 19, best.name, worst);
}

INSTANTIATE_TEST_SUITE_P(Formats, GemmContract, ::testing::Range(0, 4),
                         [](const ::testing::TestParamInfo<int>& param) {
                           return std::string(format_name(kFormats[param.param].format));
                         });

// ---- the AMX path ---------------------------------------------------------------------------

// The CPU's features with AMX on (the GEMM then uses it for bf16/FP8/FP4 weights).
CpuFeatures amx_features() {
  return available_levels().back().features;
}

// The bf16-hardware formats with a small and a large reduction (odd k-pair counts, a partial
// last K tile, more than one decode chunk of kAmxChunkPairs pairs).
constexpr FormatCols kAmxFormats[] = {
    {WeightFormat::kBf16, 200, 1027},
    {WeightFormat::kFp8, 256, 1152},
    {WeightFormat::kFp4, 96, 1056},
};

class GemmAmx : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!cpu_features().amx_usable) GTEST_SKIP() << "no usable AMX on this CPU";
  }
};

// Against the reference (double sums) within the GEMM tolerances, with the worst errors printed
// (they are what kernels/tolerance.h quotes for AMX).
TEST_P(GemmAmx, CloseToReference) {
  const FormatCols fc = kAmxFormats[GetParam()];
  double worst[2][2] = {};  // [round_bf16][rel_max, rel_l2]
  expect_close_to_reference(fc, amx_features(), 37, "amx", worst);
  std::printf(
      "[ amx      ] %s worst: f32 out rel_max %.2e rel_l2 %.2e; bf16 out rel_max %.2e "
      "rel_l2 %.2e\n",
      format_name(fc.format), worst[0][0], worst[0][1], worst[1][0], worst[1][1]);
}

// Every row of batches of 1..300 rows (odd n, a slice starting mid-panel, a padded lda) equals
// the row computed alone, bit for bit; the whole batch is the same with 1, 2 or 3 threads and
// with or without the pack.
TEST_P(GemmAmx, BatchInvariance) {
  const FormatCols fc = kAmxFormats[GetParam()];
  for (const int64_t cols : {fc.small_cols, fc.large_cols}) {
    const auto w = make_weight(fc.format, kWeightRows, cols, 23);
    const auto pack = opt_pack_weight(w->view);
    const int64_t total = 300;
    const int64_t lda = cols + 3;
    const int64_t row_begin = 37;
    const int64_t n = 129;
    const std::vector<float> a = make_activations(fc.format, total, cols, lda, 31);
    // Each row alone (m = 1), the oracle of this test.
    std::vector<float> alone(static_cast<size_t>(total * n));
    for (int64_t i = 0; i < total; ++i) {
      std::vector<float> row;
      GemmParams q = gemm_params(*w, a, lda, 1, row_begin, n, true, row);
      q.a = a.data() + i * lda;
      q.packed = pack.get();
      opt_gemm(q, amx_features(), 1);
      std::copy(row.begin(), row.end(), alone.begin() + i * n);
    }
    // Batches of every size class at various offsets, packed or not, 1 to 3 threads.
    struct Batch {
      int64_t first, m;
      int threads;
      bool packed;
    };
    const Batch batches[] = {{0, 300, 2, true},  {0, 300, 1, false}, {0, 300, 3, true},
                             {5, 1, 2, true},    {7, 2, 1, true},    {9, 15, 2, false},
                             {3, 16, 2, true},   {11, 17, 3, true},  {40, 31, 2, true},
                             {41, 32, 1, true},  {42, 33, 2, false}, {1, 100, 2, true},
                             {13, 255, 3, true}, {44, 256, 2, true}, {299, 1, 1, false}};
    for (const Batch& b : batches) {
      std::vector<float> out;
      GemmParams p = gemm_params(*w, a, lda, b.m, row_begin, n, true, out);
      p.a = a.data() + b.first * lda;
      p.packed = b.packed ? pack.get() : nullptr;
      opt_gemm(p, amx_features(), b.threads);
      const std::vector<float> want(alone.begin() + b.first * n,
                                    alone.begin() + (b.first + b.m) * n);
      const std::string diff = first_mismatches(out, want, b.m, n, n);
      ASSERT_TRUE(diff.empty()) << format_name(fc.format) << " cols=" << cols << " rows ["
                                << b.first << ", " << b.first + b.m << ") threads=" << b.threads
                                << " packed=" << b.packed << "\n"
                                << diff;
    }
  }
}

// fp32 outputs (no bf16 rounding) too: 1 thread with the pack vs 2 threads without, bit for bit.
TEST_P(GemmAmx, ThreadsAndPackingDoNotMatter) {
  const FormatCols fc = kAmxFormats[GetParam()];
  const int64_t cols = fc.large_cols;
  const auto w = make_weight(fc.format, kWeightRows, cols, 41);
  const auto pack = opt_pack_weight(w->view);
  for (const int64_t m : {int64_t{1}, int64_t{3}, int64_t{50}}) {
    const std::vector<float> a = make_activations(fc.format, m, cols, cols, 43);
    std::vector<float> one, two;
    GemmParams p = gemm_params(*w, a, cols, m, 131, 301, false, one);
    p.packed = pack.get();
    opt_gemm(p, amx_features(), 1);
    p = gemm_params(*w, a, cols, m, 131, 301, false, two);
    opt_gemm(p, amx_features(), 2);
    const std::string diff = first_mismatches(two, one, m, 301, 301);
    EXPECT_TRUE(diff.empty()) << format_name(fc.format) << " m=" << m << "\n" << diff;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, GemmAmx, ::testing::Range(0, 3),
                         [](const ::testing::TestParamInfo<int>& param) {
                           return std::string(format_name(kAmxFormats[param.param].format));
                         });

// ---- gemm_batch ------------------------------------------------------------------------------

// A mixed list of GEMM calls as a decode step issues them (several calls sharing an input),
// with the buffers they point into. Each call writes its own output buffer, whose padding
// columns hold a sentinel.
struct BatchList {
  std::vector<std::unique_ptr<TestWeight>> weights;
  std::vector<std::unique_ptr<PackedWeight>> packs;
  std::vector<std::vector<float>> inputs;
  std::vector<GemmParams> calls;
  std::vector<int64_t> out_sizes;
};

BatchList make_batch_list() {
  struct WeightSpec {
    WeightFormat format;
    int64_t rows, cols;
  };
  // Multi-panel and single-panel weights of every format; reductions below and above one
  // chunk (1024), odd for bf16/f32 (an odd last k-pair).
  const WeightSpec specs[] = {
      {WeightFormat::kBf16, 300, 200}, {WeightFormat::kFp8, 300, 256},
      {WeightFormat::kFp4, 300, 96},   {WeightFormat::kF32, 300, 200},
      {WeightFormat::kBf16, 32, 1027}, {WeightFormat::kF32, 24, 1027},
      {WeightFormat::kFp8, 40, 1152},  {WeightFormat::kFp4, 16, 1056},
  };
  BatchList list;
  for (const WeightSpec& s : specs) {
    list.weights.push_back(
        make_weight(s.format, s.rows, s.cols, 71 + static_cast<uint32_t>(list.weights.size())));
    list.packs.push_back(opt_pack_weight(list.weights.back()->view));
  }
  int idx = 0;
  for (const int64_t m : {int64_t{1}, int64_t{2}, int64_t{4}, int64_t{7}, int64_t{33}}) {
    for (size_t wi = 0; wi < list.weights.size(); ++wi) {
      const TestWeight& w = *list.weights[wi];
      const int64_t cols = w.view.cols;
      const int64_t lda = cols + (idx % 3 == 1 ? 5 : 0);
      // One input per (m, weight), shared by the slices below (like w1/w3 sharing x).
      list.inputs.push_back(
          make_activations(w.view.format, m, cols, lda, static_cast<uint32_t>(500 + idx)));
      // Slices: the whole weight, an odd one starting mid-panel, one from the second panel.
      struct Slice {
        int64_t row_begin, n;
      };
      std::vector<Slice> slices = {{0, w.view.rows}, {5, std::min<int64_t>(17, w.view.rows - 5)}};
      if (w.view.rows > 200) slices.push_back({131, 129});
      for (const Slice& sl : slices) {
        GemmParams p;
        p.a = list.inputs.back().data();
        p.lda = lda;
        p.m = m;
        p.w = w.view;
        p.row_begin = sl.row_begin;
        p.n = sl.n;
        p.ldo = sl.n + (idx % 4 == 2 ? 3 : 0);
        p.round_bf16 = idx % 2 == 1;
        p.packed = idx % 5 != 3 ? list.packs[wi].get() : nullptr;
        p.phase = idx % 3 == 0 ? RowPhase::kPrefill : RowPhase::kDecode;
        list.calls.push_back(p);
        list.out_sizes.push_back(m * p.ldo);
        ++idx;
      }
    }
  }
  // Calls with nothing to do.
  GemmParams empty = list.calls.front();
  empty.n = 0;
  list.calls.push_back(empty);
  list.out_sizes.push_back(0);
  empty = list.calls.front();
  empty.m = 0;
  list.calls.push_back(empty);
  list.out_sizes.push_back(0);
  return list;
}

// Output buffers (sentinel-filled) for every call of `list`, pointed to by `calls`.
std::vector<std::vector<float>> attach_outputs(const BatchList& list,
                                               std::vector<GemmParams>& calls) {
  calls = list.calls;
  std::vector<std::vector<float>> outs;
  for (size_t i = 0; i < calls.size(); ++i) {
    outs.emplace_back(static_cast<size_t>(std::max<int64_t>(list.out_sizes[i], 1)), -12345.0f);
    calls[i].out = outs.back().data();
  }
  return outs;
}

std::string describe_call(const GemmParams& p) {
  return fmt::format("{} [{}, {}] m={} row_begin={} n={} ldo={} round_bf16={} packed={} {}",
                     format_name(p.w.format), p.w.rows, p.w.cols, p.m, p.row_begin, p.n, p.ldo,
                     p.round_bf16, p.packed != nullptr,
                     p.phase == RowPhase::kDecode ? "decode" : "prefill");
}

// Every call's output of the batch equals its own call's, bit for bit (sentinels included).
void expect_same_outputs(const std::string& what, const std::vector<GemmParams>& calls,
                         const std::vector<std::vector<float>>& got,
                         const std::vector<std::vector<float>>& want) {
  for (size_t i = 0; i < calls.size(); ++i) {
    const GemmParams& p = calls[i];
    if (p.m == 0 || p.n == 0) {
      EXPECT_EQ(bits(got[i][0]), bits(-12345.0f)) << what << " call " << i << " wrote";
      continue;
    }
    const std::string diff = first_mismatches(got[i], want[i], p.m, p.ldo, p.ldo);
    EXPECT_TRUE(diff.empty()) << what << " call " << i << ": " << describe_call(p) << "\n" << diff;
  }
}

// Kernels::gemm_batch of both kernel sets equals gemm on each call; the optimized one with 1
// and 2 threads, which also agree with each other.
TEST(GemmBatch, KernelSetsMatchSingleCalls) {
  const BatchList list = make_batch_list();
  ASSERT_GT(list.calls.size(), 80u);
  std::vector<std::vector<float>> single_opt;  // optimized, 1 thread, one call at a time
  for (const auto& [impl, threads] :
       {std::pair{KernelImpl::kReference, 1}, std::pair{KernelImpl::kOptimized, 1},
        std::pair{KernelImpl::kOptimized, 2}}) {
    const std::unique_ptr<Kernels> k = make_kernels(impl, threads);
    const std::string what = k->describe();
    // The reference kernels ignore packs; give them none.
    BatchList own = make_batch_list();
    if (impl == KernelImpl::kReference)
      for (GemmParams& p : own.calls) p.packed = nullptr;
    std::vector<GemmParams> single_calls, batch_calls;
    const auto single = attach_outputs(own, single_calls);
    const auto batch = attach_outputs(own, batch_calls);
    for (const GemmParams& p : single_calls) k->gemm(p);
    k->gemm_batch(batch_calls.data(), batch_calls.size());
    expect_same_outputs(what, batch_calls, batch, single);
    if (impl == KernelImpl::kOptimized) {
      if (single_opt.empty())
        single_opt = single;
      else
        expect_same_outputs(what + " vs 1 thread", batch_calls, batch, single_opt);
    }
    // A second batch through the same (now warm) scratch gives the same again.
    std::vector<GemmParams> again_calls;
    const auto again = attach_outputs(own, again_calls);
    k->gemm_batch(again_calls.data(), again_calls.size());
    expect_same_outputs(what + " (second batch)", again_calls, again, single);
  }
}

// opt_gemm_batch at every feature level (the lower ones have no decode path: every call goes
// through opt_gemm), 1 to 3 threads, against opt_gemm one call at a time with 1 thread.
TEST(GemmBatch, EveryLevelMatchesSingleCalls) {
  const BatchList list = make_batch_list();
  for (const Level& level : available_levels()) {
    std::vector<GemmParams> single_calls;
    const auto single = attach_outputs(list, single_calls);
    for (const GemmParams& p : single_calls) opt_gemm(p, level.features, 1);
    for (const int threads : {1, 2, 3}) {
      std::vector<GemmParams> batch_calls;
      const auto batch = attach_outputs(list, batch_calls);
      opt_gemm_batch(batch_calls.data(), batch_calls.size(), level.features, threads);
      expect_same_outputs(fmt::format("{} threads={}", level.name, threads), batch_calls, batch,
                          single);
    }
    if (HasFailure()) return;
  }
  // An empty list does nothing.
  opt_gemm_batch(nullptr, 0, cpu_features(), 2);
}

// Only decode calls at m ≤ 4 (the batched path alone), many single-panel ones, in one list.
TEST(GemmBatch, DecodeOnlyList) {
  const BatchList list = make_batch_list();
  BatchList decode;
  for (size_t i = 0; i < list.calls.size(); ++i) {
    GemmParams p = list.calls[i];
    if (p.m > 4) continue;
    p.phase = RowPhase::kDecode;
    decode.calls.push_back(p);
    decode.out_sizes.push_back(list.out_sizes[i]);
  }
  const CpuFeatures& f = cpu_features();
  std::vector<GemmParams> single_calls;
  const auto single = attach_outputs(decode, single_calls);
  for (const GemmParams& p : single_calls) opt_gemm(p, f, 2);
  for (const int threads : {1, 2}) {
    std::vector<GemmParams> batch_calls;
    const auto batch = attach_outputs(decode, batch_calls);
    opt_gemm_batch(batch_calls.data(), batch_calls.size(), f, threads);
    expect_same_outputs(fmt::format("decode only, threads={}", threads), batch_calls, batch,
                        single);
  }
}

// A bad call anywhere in the list throws before any call runs.
TEST(GemmBatch, BadCallThrowsBeforeRunning) {
  const auto w = make_weight(WeightFormat::kBf16, 128, 256, 3);
  const auto other = make_weight(WeightFormat::kBf16, 128, 384, 3);
  const auto pack = opt_pack_weight(w->view);
  const auto other_pack = opt_pack_weight(other->view);
  const std::vector<float> a = make_activations(WeightFormat::kBf16, 1, 256, 256, 5);
  std::vector<float> out0(128, -12345.0f), out1(128, -12345.0f);
  GemmParams ps[2];
  ps[0].a = a.data();
  ps[0].lda = 256;
  ps[0].m = 1;
  ps[0].w = w->view;
  ps[0].n = 128;
  ps[0].out = out0.data();
  ps[0].ldo = 128;
  ps[0].packed = pack.get();
  ps[0].phase = RowPhase::kDecode;
  ps[1] = ps[0];
  ps[1].out = out1.data();
  ps[1].packed = other_pack.get();  // does not match the view
  EXPECT_THROW(opt_gemm_batch(ps, 2, cpu_features(), 2), moerun::Error);
  ps[1].phase = RowPhase::kPrefill;
  ps[1].m = 7;  // through opt_gemm: checked up front as well
  EXPECT_THROW(opt_gemm_batch(ps, 2, cpu_features(), 2), moerun::Error);
  ps[1].packed = pack.get();
  ps[1].row_begin = 1;  // rows [1, 129) outside the weight
  EXPECT_THROW(opt_gemm_batch(ps, 2, cpu_features(), 2), moerun::Error);
  EXPECT_EQ(bits(out0[0]), bits(-12345.0f));
  EXPECT_EQ(bits(out1[0]), bits(-12345.0f));
}

TEST(GemmPack, RejectsForeignShapes) {
  const auto w = make_weight(WeightFormat::kFp8, 256, 256, 1);
  const auto other = make_weight(WeightFormat::kFp8, 256, 384, 1);
  const auto pack = opt_pack_weight(other->view);
  std::vector<float> a(256, 0.0f), out(4, 0.0f);
  GemmParams p;
  p.a = a.data();
  p.lda = 256;
  p.m = 1;
  p.w = w->view;
  p.n = 4;
  p.out = out.data();
  p.ldo = 4;
  p.packed = pack.get();
  EXPECT_THROW(opt_gemm(p, cpu_features(), 1), moerun::Error);
  p.packed = nullptr;
  p.row_begin = 253;
  EXPECT_THROW(opt_gemm(p, cpu_features(), 1), moerun::Error);
}

// ---- activation quantization -------------------------------------------------------------

// Values that exercise every branch: zeros of both signs, the ±448 / ±6 clamps and rounding
// boundaries after scaling, e4m3 subnormals, blocks whose amax sits under the floor, NaN.
std::vector<float> quant_input(int64_t rows, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * ld));
  for (size_t i = 0; i < x.size(); ++i) {
    float v = normal(rng) * std::ldexp(1.0f, static_cast<int>(i / 32 % 13) - 6);
    switch (i % 41) {
      case 0:
        v = 0.0f;
        break;
      case 1:
        v = -0.0f;
        break;
      case 2:
        v = 448.0f;
        break;
      case 3:
        v = -447.9f;
        break;
      case 4:
        v = 464.0f;
        break;  // a tie above 448 before scaling
      case 5:
        v = 1e-7f;
        break;  // e4m3 subnormal after scaling
      case 6:
        v = -3e-6f;
        break;
      case 7:
        v = 5.0f;
        break;  // e2m1 tie 5 → 4 under scale 1
      case 8:
        v = 0.25f;
        break;
      default:
        break;
    }
    x[i] = v;
  }
  // A block far below the act_quant floor and one entirely zero.
  for (int64_t k = 0; k < 32 && k < ld; ++k) x[static_cast<size_t>(k)] = 1e-9f * (k - 16);
  if (rows > 1)
    for (int64_t k = 0; k < 128 && k < ld; ++k) x[static_cast<size_t>(ld + k)] = 0.0f;
  if (rows > 2) x[static_cast<size_t>(2 * ld + 7)] = std::numeric_limits<float>::quiet_NaN();
  if (rows > 2) x[static_cast<size_t>(2 * ld + 9)] = -std::numeric_limits<float>::quiet_NaN();
  return x;
}

TEST(Quantize, BitExactAgainstReference) {
  for (const Level& level : available_levels()) {
    for (const int64_t block : {32, 64, 128}) {
      for (const bool e4m3 : {true, false}) {
        const int64_t rows = 9;
        const int64_t cols = 512;
        const int64_t ld = cols + 16;
        std::vector<float> got = quant_input(rows, ld, static_cast<uint32_t>(block));
        std::vector<float> want = got;
        if (e4m3) {
          ReferenceKernels().quantize_e4m3(want.data(), rows, ld, cols, block);
          opt_quantize_e4m3(got.data(), rows, ld, cols, block, level.features, 2);
        } else {
          ReferenceKernels().quantize_e2m1(want.data(), rows, ld, cols, block);
          opt_quantize_e2m1(got.data(), rows, ld, cols, block, level.features, 2);
        }
        const std::string diff = first_mismatches(got, want, rows, ld, ld);
        EXPECT_TRUE(diff.empty()) << level.name << (e4m3 ? " e4m3" : " e2m1") << " block " << block
                                  << "\n"
                                  << diff;
      }
    }
  }
}

TEST(Quantize, InfiniteInputThrows) {
  for (const Level& level : available_levels()) {
    std::vector<float> x(256, 1.0f);
    x[130] = std::numeric_limits<float>::infinity();
    EXPECT_THROW(opt_quantize_e4m3(x.data(), 2, 128, 128, 128, level.features, 2), moerun::Error)
        << level.name;
    EXPECT_THROW(opt_quantize_e2m1(x.data(), 2, 128, 128, 32, level.features, 2), moerun::Error)
        << level.name;
  }
}

// ---- feature detection -------------------------------------------------------------------

TEST(CpuFeatures, DescribeNamesTheLevel) {
  const CpuFeatures& f = cpu_features();
  const std::string d = describe(f);
  if (f.avx512_bf16) {
    EXPECT_EQ(d.rfind("avx512-bf16", 0), 0u) << d;
  }
  EXPECT_EQ(describe(CpuFeatures{}), "portable");
  // The GEMM uses AMX wherever amx_usable is set, and needs BF16 and VBMI for it.
  if (f.amx_usable) {
    EXPECT_EQ(d, "avx512-bf16+amx");
    EXPECT_TRUE(f.avx512_bf16 && f.avx512_vbmi);
  }
  EXPECT_FALSE(f.amx_usable && !f.amx_bf16);
  EXPECT_FALSE(f.avx512f && !f.avx2);
}

// A fresh process per case (threadsafe death tests re-run the binary), since detection
// happens once per process.
TEST(CpuFeaturesDeathTest, EnvironmentCap) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("MOERUN_CPU_FEATURES", "sse9", 1);
        try {
          cpu_features();
        } catch (const moerun::Error& e) {
          fprintf(stderr, "%s\n", e.what());
          std::exit(3);
        }
        std::exit(0);
      },
      ::testing::ExitedWithCode(3), "sse9.*portable, avx2, avx512, avx512bf16, amx");
  EXPECT_EXIT(
      {
        setenv("MOERUN_CPU_FEATURES", "portable", 1);
        fprintf(stderr, "level=%s\n", describe(cpu_features()).c_str());
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "level=portable");
  // The level a mixed cluster agrees on: no AMX, whatever the CPU has.
  EXPECT_EXIT(
      {
        setenv("MOERUN_CPU_FEATURES", "avx512bf16", 1);
        const CpuFeatures& f = cpu_features();
        const std::string d = describe(f);
        fprintf(stderr, "amx_usable=%d level=%s\n", f.amx_usable ? 1 : 0, d.c_str());
        std::exit(d.find("amx") == std::string::npos ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "amx_usable=0 level=");
  // Not cpu_features(): the re-run child must reach its case with detection not yet done.
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has_avx2) {
    EXPECT_EXIT(
        {
          setenv("MOERUN_CPU_FEATURES", "avx2", 1);
          fprintf(stderr, "level=%s\n", describe(cpu_features()).c_str());
          std::exit(0);
        },
        ::testing::ExitedWithCode(0), "level=avx2");
  }
}

}  // namespace
}  // namespace moerun::kernels

// The non-GEMM kernel ops: the optimized kernels against the reference on model-shaped random
// data (within kernels/tolerance.h), batch invariance (a row computed inside a batch equals
// the row computed alone, bit for bit, for both implementations), thread-count invariance of
// the optimized kernels, and independent checks of the reference itself where an exact answer
// is cheap (Hadamard involution, Sinkhorn column sums, hand-made routing, sampling statistics,
// RoPE at position 0, one-key attention).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/numfmt.h"
#include "kernels/cpu/sampling.h"
#include "kernels/kernels.h"
#include "kernels/tolerance.h"

namespace moerun::kernels {
namespace {

using tolerance::Tolerance;

// ---- shared fixtures --------------------------------------------------------------------

struct KernelSets {
  std::unique_ptr<Kernels> ref = make_kernels(KernelImpl::kReference);
  std::unique_ptr<Kernels> opt = make_kernels(KernelImpl::kOptimized, 2);
  std::unique_ptr<Kernels> opt1 = make_kernels(KernelImpl::kOptimized, 1);
};

KernelSets& sets() {
  static KernelSets s;
  return s;
}

float bf16(float x) {
  return numfmt::round_to_bf16(x);
}

// n values ~ N(0, sigma²), rounded to bf16 when `round` (the model's bf16 activations).
std::vector<float> randn(size_t n, float sigma, uint32_t seed, bool round = true) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = round ? bf16(dist(gen)) : dist(gen);
  return v;
}

std::vector<float> uniform(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// The worst errors seen per op over the whole run, printed at the end (the numbers
// tolerance.h is tuned to).
struct Worst {
  double rel_max = 0, rel_l2 = 0, frac_differ = 0;
  int64_t differ = 0, count = 0;  // over the whole run, for the bf16 differ fraction
};
std::map<std::string, Worst>& worst_table() {
  static std::map<std::string, Worst> t;
  return t;
}

class WorstPrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    std::printf("\n%-22s %12s %12s %12s\n", "op (opt vs ref)", "rel_max", "rel_l2", "frac_differ");
    for (const auto& [name, w] : worst_table())
      std::printf("%-22s %12.3e %12.3e %12.3e\n", name.c_str(), w.rel_max, w.rel_l2, w.frac_differ);
  }
};
const auto* const kWorstPrinter = ::testing::AddGlobalTestEnvironment(new WorstPrinter);

// Compares `rows` rows of `cols` values (row stride ld) per kernels/tolerance.h: per row,
// max |opt − ref| / max |ref row| and ‖opt − ref‖ / ‖ref‖. Prints the first mismatches.
void expect_close(const std::string& op, const float* ref, const float* opt, int64_t rows,
                  int64_t cols, int64_t ld, const Tolerance& tol) {
  Worst& w = worst_table()[op];
  int64_t differ = 0, printed = 0;
  for (int64_t i = 0; i < rows; ++i) {
    double ref_max = 0, err_max = 0, ref_sq = 0, err_sq = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double r = ref[i * ld + j], o = opt[i * ld + j];
      ref_max = std::max(ref_max, std::fabs(r));
      err_max = std::max(err_max, std::fabs(o - r));
      ref_sq += r * r;
      err_sq += (o - r) * (o - r);
      differ += (r != o) || (std::isnan(r) != std::isnan(o));
    }
    ref_max = std::max(ref_max, 1e-30);
    const double rel_max = err_max / ref_max;
    const double rel_l2 = ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : std::sqrt(err_sq);
    w.rel_max = std::max(w.rel_max, rel_max);
    w.rel_l2 = std::max(w.rel_l2, rel_l2);
    const bool ok = std::isfinite(rel_max) && rel_max <= tol.rel_max && rel_l2 <= tol.rel_l2;
    EXPECT_TRUE(ok) << op << " row " << i << ": rel_max " << rel_max << " (tol " << tol.rel_max
                    << "), rel_l2 " << rel_l2 << " (tol " << tol.rel_l2 << ")";
    if (!ok) {
      for (int64_t j = 0; j < cols && printed < 8; ++j) {
        const float r = ref[i * ld + j], o = opt[i * ld + j];
        if (std::fabs(static_cast<double>(o) - r) > tol.rel_max * ref_max || std::isnan(o)) {
          ADD_FAILURE() << op << " mismatch at [" << i << "][" << j << "]: ref " << r << " opt "
                        << o;
          ++printed;
        }
      }
    }
  }
  w.differ += differ;
  w.count += rows * cols;
  if (rows * cols > 0)
    w.frac_differ =
        std::max(w.frac_differ, static_cast<double>(differ) / static_cast<double>(rows * cols));
}

// For ops with bf16 outputs: few outputs may differ at all (tolerance.h), over every call of
// `op` so far in this process.
void expect_few_differ(const std::string& op) {
  const Worst& w = worst_table()[op];
  ASSERT_GT(w.count, 0) << op;
  const double frac = static_cast<double>(w.differ) / static_cast<double>(w.count);
  EXPECT_LE(frac, tolerance::kBf16DifferFraction)
      << op << ": " << w.differ << " of " << w.count << " bf16 outputs differ";
}

// Bit-for-bit equality of two buffers, reporting the first differing elements.
template <typename T>
void expect_bitwise(const std::string& what, const std::vector<T>& a, const std::vector<T>& b) {
  ASSERT_EQ(a.size(), b.size()) << what;
  int printed = 0;
  for (size_t j = 0; j < a.size(); ++j) {
    if (std::memcmp(&a[j], &b[j], sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": element " << j << " differs: " << a[j] << " vs " << b[j];
      if (++printed == 8) break;
    }
  }
}

const int64_t kRowCounts[] = {1, 3, 17};

// ---- rmsnorm / rms_rsqrt ----------------------------------------------------------------

TEST(KernelsOps, RmsNorm) {
  for (int64_t rows : kRowCounts)
    for (int64_t cols : {64, 128, 200, 512, 1024, 4096}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " cols " + std::to_string(cols));
      const int64_t ld = cols + 3;
      const auto x = randn(rows * ld, 0.7f, 11 + cols);
      const auto weight = uniform(cols, 0.2f, 2.0f, 12);
      for (bool with_weight : {true, false}) {
        std::vector<float> y_ref(rows * ld, -1.0f), y_opt(rows * ld, -1.0f);
        const float* w = with_weight ? weight.data() : nullptr;
        sets().ref->rmsnorm(x.data(), ld, rows, cols, w, 1e-6f, y_ref.data(), ld);
        sets().opt->rmsnorm(x.data(), ld, rows, cols, w, 1e-6f, y_opt.data(), ld);
        expect_close("rmsnorm", y_ref.data(), y_opt.data(), rows, cols, ld,
                     tolerance::kBf16Elementwise);
        std::vector<float> y1(rows * ld, -1.0f);
        sets().opt1->rmsnorm(x.data(), ld, rows, cols, w, 1e-6f, y1.data(), ld);
        expect_bitwise("rmsnorm 1 vs 2 threads", y_opt, y1);
        for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
          const auto& batch = k == sets().ref.get() ? y_ref : y_opt;
          for (int64_t i = 0; i < rows; ++i) {
            std::vector<float> alone(cols);
            k->rmsnorm(x.data() + i * ld, ld, 1, cols, w, 1e-6f, alone.data(), cols);
            expect_bitwise(
                k->describe() + " rmsnorm row alone",
                std::vector<float>(batch.begin() + i * ld, batch.begin() + i * ld + cols), alone);
          }
        }
      }
    }
  expect_few_differ("rmsnorm");
}

TEST(KernelsOps, RmsRsqrt) {
  for (int64_t rows : kRowCounts)
    for (int64_t cols : {64, 200, 512, 16384}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " cols " + std::to_string(cols));
      const auto x = randn(rows * cols, 1.3f, 21 + cols);
      std::vector<float> r_ref(rows), r_opt(rows), r1(rows);
      sets().ref->rms_rsqrt(x.data(), cols, rows, cols, 1e-6f, r_ref.data());
      sets().opt->rms_rsqrt(x.data(), cols, rows, cols, 1e-6f, r_opt.data());
      sets().opt1->rms_rsqrt(x.data(), cols, rows, cols, 1e-6f, r1.data());
      // Each r[i] is a row of its own for the error measure.
      expect_close("rms_rsqrt", r_ref.data(), r_opt.data(), rows, 1, 1, tolerance::kF32Elementwise);
      expect_bitwise("rms_rsqrt 1 vs 2 threads", r_opt, r1);
      for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
        const auto& batch = k == sets().ref.get() ? r_ref : r_opt;
        for (int64_t i = 0; i < rows; ++i) {
          std::vector<float> alone(1);
          k->rms_rsqrt(x.data() + i * cols, cols, 1, cols, 1e-6f, alone.data());
          expect_bitwise(k->describe() + " rms_rsqrt alone", std::vector<float>{batch[i]}, alone);
        }
      }
    }
}

// ---- head_rms_scale_bf16 ----------------------------------------------------------------

TEST(KernelsOps, HeadRmsScale) {
  for (int64_t rows : kRowCounts)
    for (int64_t heads : {1, 4, 7})
      for (int64_t dim : {64, 128, 200, 512}) {
        SCOPED_TRACE("rows " + std::to_string(rows) + " heads " + std::to_string(heads) + " dim " +
                     std::to_string(dim));
        const auto q = randn(rows * heads * dim, 0.05f, 31 + dim + heads);
        auto q_ref = q, q_opt = q, q1 = q;
        sets().ref->head_rms_scale_bf16(q_ref.data(), rows, heads, dim, 1e-6f);
        sets().opt->head_rms_scale_bf16(q_opt.data(), rows, heads, dim, 1e-6f);
        sets().opt1->head_rms_scale_bf16(q1.data(), rows, heads, dim, 1e-6f);
        expect_close("head_rms_scale_bf16", q_ref.data(), q_opt.data(), rows * heads, dim, dim,
                     tolerance::kBf16Elementwise);
        expect_bitwise("head_rms 1 vs 2 threads", q_opt, q1);
        for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
          const auto& batch = k == sets().ref.get() ? q_ref : q_opt;
          const int64_t i = rows - 1;
          std::vector<float> alone(q.begin() + i * heads * dim, q.begin() + (i + 1) * heads * dim);
          k->head_rms_scale_bf16(alone.data(), 1, heads, dim, 1e-6f);
          expect_bitwise(k->describe() + " head_rms alone",
                         std::vector<float>(batch.begin() + i * heads * dim,
                                            batch.begin() + (i + 1) * heads * dim),
                         alone);
        }
      }
  expect_few_differ("head_rms_scale_bf16");
}

// ---- rope -------------------------------------------------------------------------------

struct RopeTable {
  int64_t half;
  std::vector<float> cos, sin;
};
// θ[t][i] = t · base^(−2i/rope_dim) in fp32, as the model's tables (§2.4).
RopeTable make_rope_table(int64_t max_pos, int64_t rope_dim) {
  RopeTable t{rope_dim / 2, {}, {}};
  t.cos.resize(max_pos * t.half);
  t.sin.resize(max_pos * t.half);
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < t.half; ++i) {
      const float f = static_cast<float>(std::pow(10000.0, -2.0 * i / rope_dim));
      const float theta = static_cast<float>(p) * f;
      t.cos[p * t.half + i] = std::cos(theta);
      t.sin[p * t.half + i] = std::sin(theta);
    }
  return t;
}

TEST(KernelsOps, Rope) {
  const int64_t max_pos = 4096;
  for (int64_t rope_dim : {64, 2, 30}) {
    const RopeTable table = make_rope_table(max_pos, rope_dim);
    for (int64_t rows : kRowCounts)
      for (int64_t heads : {1, 4, 7})
        for (bool inverse : {false, true}) {
          SCOPED_TRACE("rows " + std::to_string(rows) + " heads " + std::to_string(heads) +
                       " rope_dim " + std::to_string(rope_dim) + (inverse ? " inverse" : ""));
          // Rows of heads × 512 with the rope slice at 448 (the model's q layout).
          const int64_t head_stride = 512, row_stride = heads * head_stride + 5;
          const auto x = randn(rows * row_stride, 1.0f, 41 + heads + rows);
          std::vector<int32_t> pos(rows);
          std::mt19937 gen(7);
          for (auto& p : pos) p = static_cast<int32_t>(gen() % max_pos);
          auto run = [&](Kernels* k, std::vector<float>& buf, int64_t r0, int64_t n) {
            RopeParams p;
            p.x = buf.data() + r0 * row_stride + 448;
            p.rows = n;
            p.heads = heads;
            p.row_stride = row_stride;
            p.head_stride = head_stride;
            p.rope_dim = rope_dim;
            p.positions = pos.data() + r0;
            p.cos = table.cos.data();
            p.sin = table.sin.data();
            p.inverse = inverse;
            k->rope(p);
          };
          auto x_ref = x, x_opt = x, x1 = x;
          run(sets().ref.get(), x_ref, 0, rows);
          run(sets().opt.get(), x_opt, 0, rows);
          run(sets().opt1.get(), x1, 0, rows);
          // Compare each head's rope slice as a row.
          std::vector<float> s_ref, s_opt;
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t h = 0; h < heads; ++h) {
              const int64_t o = i * row_stride + h * head_stride + 448;
              s_ref.insert(s_ref.end(), x_ref.begin() + o, x_ref.begin() + o + rope_dim);
              s_opt.insert(s_opt.end(), x_opt.begin() + o, x_opt.begin() + o + rope_dim);
            }
          expect_close("rope", s_ref.data(), s_opt.data(), rows * heads, rope_dim, rope_dim,
                       tolerance::kBf16Elementwise);
          expect_bitwise("rope untouched elements + 1 vs 2 threads", x_opt, x1);
          for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
            const auto& batch = k == sets().ref.get() ? x_ref : x_opt;
            auto alone = x;
            run(k, alone, rows - 1, 1);
            const int64_t o = (rows - 1) * row_stride;
            expect_bitwise(k->describe() + " rope alone",
                           std::vector<float>(batch.begin() + o, batch.begin() + o + row_stride),
                           std::vector<float>(alone.begin() + o, alone.begin() + o + row_stride));
          }
        }
  }
  expect_few_differ("rope");
}

TEST(KernelsOps, RopeReferenceAtPositionZeroIsIdentity) {
  const RopeTable table = make_rope_table(4, 64);
  const auto x = randn(3 * 64, 1.0f, 5);
  for (bool inverse : {false, true}) {
    auto y = x;
    std::vector<int32_t> pos(3, 0);
    RopeParams p;
    p.x = y.data();
    p.rows = 3;
    p.row_stride = 64;
    p.head_stride = 64;
    p.rope_dim = 64;
    p.positions = pos.data();
    p.cos = table.cos.data();
    p.sin = table.sin.data();
    p.inverse = inverse;
    sets().ref->rope(p);
    expect_bitwise("reference rope at position 0", x, y);
    y = x;
    sets().opt->rope(p);
    expect_bitwise("optimized rope at position 0", x, y);
  }
}

// ---- hadamard ---------------------------------------------------------------------------

TEST(KernelsOps, Hadamard) {
  for (int64_t rows : kRowCounts)
    for (int64_t n : {1, 2, 4, 64, 128, 512}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " n " + std::to_string(n));
      const auto x = randn(rows * n, 0.5f, 51 + n);
      auto x_ref = x, x_opt = x, x1 = x;
      sets().ref->hadamard(x_ref.data(), rows, n);
      sets().opt->hadamard(x_opt.data(), rows, n);
      sets().opt1->hadamard(x1.data(), rows, n);
      expect_close("hadamard", x_ref.data(), x_opt.data(), rows, n, n, tolerance::kBf16Elementwise);
      expect_bitwise("hadamard 1 vs 2 threads", x_opt, x1);
      for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
        const auto& batch = k == sets().ref.get() ? x_ref : x_opt;
        std::vector<float> alone(x.begin() + (rows - 1) * n, x.end());
        k->hadamard(alone.data(), 1, n);
        expect_bitwise(k->describe() + " hadamard alone",
                       std::vector<float>(batch.begin() + (rows - 1) * n, batch.end()), alone);
      }
    }
  expect_few_differ("hadamard");
}

TEST(KernelsOps, HadamardReferenceHandComputed4) {
  // H4/2 · (1, 2, 3, 4): rows of H4 are (+ + + +), (+ − + −), (+ + − −), (+ − − +).
  std::vector<float> x = {1, 2, 3, 4};
  const std::vector<float> expected = {5, -1, -2, 0};
  for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
    auto y = x;
    k->hadamard(y.data(), 1, 4);
    expect_bitwise(k->describe() + " hadamard 4x4", expected, y);
  }
}

TEST(KernelsOps, HadamardReferenceIsAnInvolution) {
  // H/√n is orthogonal and symmetric: applied twice it is the identity, up to the two bf16
  // roundings (each ≤ 2^-9 relative per element, spread over the row by the orthogonal map).
  for (int64_t n : {64, 128, 512}) {
    const auto x = randn(n, 1.0f, 61 + n);
    auto y = x;
    sets().ref->hadamard(y.data(), 1, n);
    sets().ref->hadamard(y.data(), 1, n);
    double err = 0, norm = 0;
    for (int64_t j = 0; j < n; ++j) {
      err += (y[j] - x[j]) * (y[j] - x[j]);
      norm += x[j] * x[j];
    }
    EXPECT_LT(std::sqrt(err / norm), 2.0 * 0x1p-9) << "n " << n;
  }
}

// ---- sinkhorn ---------------------------------------------------------------------------

struct SinkhornData {
  std::vector<float> mixes, scale, base;
};
SinkhornData make_sinkhorn_data(int64_t m, int64_t hc, uint32_t seed) {
  const int64_t mix = (2 + hc) * hc;
  // mixes are RMS-normalized projections (O(1)); the checkpoint's scales are small and its
  // bases O(1).
  return {
      randn(m * mix, 1.0f, seed, false), {0.05f, 0.08f, 0.6f}, randn(mix, 0.8f, seed + 1, false)};
}

struct SinkhornOut {
  std::vector<float> pre, post, comb;
};
SinkhornOut run_sinkhorn(Kernels* k, const SinkhornData& d, int64_t first, int64_t m, int64_t hc) {
  const int64_t mix = (2 + hc) * hc;
  SinkhornOut o{std::vector<float>(m * hc), std::vector<float>(m * hc),
                std::vector<float>(m * hc * hc)};
  SinkhornParams p;
  p.mixes = d.mixes.data() + first * mix;
  p.m = m;
  p.hc = hc;
  p.scale = d.scale.data();
  p.base = d.base.data();
  p.pre = o.pre.data();
  p.post = o.post.data();
  p.comb = o.comb.data();
  k->sinkhorn(p);
  return o;
}

TEST(KernelsOps, Sinkhorn) {
  for (int64_t m : kRowCounts)
    for (int64_t hc : {4, 2, 3}) {
      SCOPED_TRACE("m " + std::to_string(m) + " hc " + std::to_string(hc));
      const auto d = make_sinkhorn_data(m, hc, 71 + m + hc);
      const auto r = run_sinkhorn(sets().ref.get(), d, 0, m, hc);
      const auto o = run_sinkhorn(sets().opt.get(), d, 0, m, hc);
      const auto o1 = run_sinkhorn(sets().opt1.get(), d, 0, m, hc);
      expect_close("sinkhorn pre", r.pre.data(), o.pre.data(), m, hc, hc,
                   tolerance::kF32Elementwise);
      expect_close("sinkhorn post", r.post.data(), o.post.data(), m, hc, hc,
                   tolerance::kF32Elementwise);
      expect_close("sinkhorn comb", r.comb.data(), o.comb.data(), m, hc * hc, hc * hc,
                   tolerance::kF32Elementwise);
      expect_bitwise("sinkhorn comb 1 vs 2 threads", o.comb, o1.comb);
      expect_bitwise("sinkhorn pre 1 vs 2 threads", o.pre, o1.pre);
      for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
        const auto& batch = k == sets().ref.get() ? r : o;
        const auto alone = run_sinkhorn(k, d, m - 1, 1, hc);
        expect_bitwise(k->describe() + " sinkhorn alone",
                       std::vector<float>(batch.comb.end() - hc * hc, batch.comb.end()),
                       alone.comb);
        expect_bitwise(k->describe() + " sinkhorn post alone",
                       std::vector<float>(batch.post.end() - hc, batch.post.end()), alone.post);
      }
    }
}

TEST(KernelsOps, SinkhornReferenceIsDoublyStochastic) {
  const int64_t m = 5, hc = 4;
  const auto d = make_sinkhorn_data(m, hc, 81);
  const auto r = run_sinkhorn(sets().ref.get(), d, 0, m, hc);
  for (int64_t i = 0; i < m; ++i) {
    // The last step is a column normalization (sum + eps in the denominator): columns sum to
    // 1 − O(eps); rows are within the Sinkhorn convergence after 20 iterations.
    for (int64_t k = 0; k < hc; ++k) {
      double col = 0, row = 0;
      for (int64_t j = 0; j < hc; ++j) {
        col += r.comb[(i * hc + j) * hc + k];
        row += r.comb[(i * hc + k) * hc + j];
        EXPECT_GT(r.comb[(i * hc + j) * hc + k], 0.0f);
      }
      EXPECT_NEAR(col, 1.0, 1e-5) << "token " << i << " column " << k;
      EXPECT_NEAR(row, 1.0, 1e-2) << "token " << i << " row " << k;
    }
    for (int64_t j = 0; j < hc; ++j) {
      const float z0 = d.mixes[i * 24 + j] * d.scale[0] + d.base[j];
      EXPECT_FLOAT_EQ(r.pre[i * hc + j], static_cast<float>(1.0 / (1.0 + std::exp(-z0))) + 1e-6f);
    }
  }
}

// ---- hc_collapse / hc_expand ------------------------------------------------------------

TEST(KernelsOps, HcCollapse) {
  for (int64_t m : kRowCounts)
    for (int64_t hc : {4, 1, 3})
      for (int64_t dim : {64, 200, 4096}) {
        SCOPED_TRACE("m " + std::to_string(m) + " hc " + std::to_string(hc) + " dim " +
                     std::to_string(dim));
        const auto h = randn(m * hc * dim, 1.0f, 91 + dim);
        const auto pre = uniform(m * hc, 0.0f, 1.0f, 92);
        std::vector<float> y_ref(m * dim), y_opt(m * dim), y1(m * dim);
        sets().ref->hc_collapse(h.data(), pre.data(), m, hc, dim, y_ref.data());
        sets().opt->hc_collapse(h.data(), pre.data(), m, hc, dim, y_opt.data());
        sets().opt1->hc_collapse(h.data(), pre.data(), m, hc, dim, y1.data());
        expect_close("hc_collapse", y_ref.data(), y_opt.data(), m, dim, dim,
                     tolerance::kBf16Elementwise);
        expect_bitwise("hc_collapse 1 vs 2 threads", y_opt, y1);
        for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
          const auto& batch = k == sets().ref.get() ? y_ref : y_opt;
          std::vector<float> alone(dim);
          k->hc_collapse(h.data() + (m - 1) * hc * dim, pre.data() + (m - 1) * hc, 1, hc, dim,
                         alone.data());
          expect_bitwise(k->describe() + " hc_collapse alone",
                         std::vector<float>(batch.end() - dim, batch.end()), alone);
        }
      }
  expect_few_differ("hc_collapse");
}

TEST(KernelsOps, HcExpand) {
  for (int64_t m : kRowCounts)
    for (int64_t hc : {4, 1, 3})
      for (int64_t dim : {64, 200, 4096}) {
        SCOPED_TRACE("m " + std::to_string(m) + " hc " + std::to_string(hc) + " dim " +
                     std::to_string(dim));
        const auto f = randn(m * dim, 1.0f, 101 + dim);
        const auto res = randn(m * hc * dim, 1.0f, 102 + dim);
        const auto post = uniform(m * hc, 0.0f, 2.0f, 103);
        const auto comb = uniform(m * hc * hc, 0.0f, 1.0f, 104);
        std::vector<float> o_ref(m * hc * dim), o_opt(m * hc * dim), o1(m * hc * dim);
        sets().ref->hc_expand(f.data(), res.data(), post.data(), comb.data(), m, hc, dim,
                              o_ref.data());
        sets().opt->hc_expand(f.data(), res.data(), post.data(), comb.data(), m, hc, dim,
                              o_opt.data());
        sets().opt1->hc_expand(f.data(), res.data(), post.data(), comb.data(), m, hc, dim,
                               o1.data());
        expect_close("hc_expand", o_ref.data(), o_opt.data(), m * hc, dim, dim,
                     tolerance::kBf16Elementwise);
        expect_bitwise("hc_expand 1 vs 2 threads", o_opt, o1);
        for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
          const auto& batch = k == sets().ref.get() ? o_ref : o_opt;
          const int64_t i = m - 1;
          std::vector<float> alone(hc * dim);
          k->hc_expand(f.data() + i * dim, res.data() + i * hc * dim, post.data() + i * hc,
                       comb.data() + i * hc * hc, 1, hc, dim, alone.data());
          expect_bitwise(k->describe() + " hc_expand alone",
                         std::vector<float>(batch.end() - hc * dim, batch.end()), alone);
        }
      }
  expect_few_differ("hc_expand");
}

// ---- attention --------------------------------------------------------------------------

struct AttnData {
  int64_t m, heads, dim, max_keys;
  std::vector<float> q, kv, sink;
  std::vector<const float*> keys;
  std::vector<int32_t> num_keys;
};

// A pool of bf16 kv rows; query i attends to num_keys[i] of them in a scrambled order
// (the kernels must follow the list, not memory order).
AttnData make_attn_data(int64_t m, int64_t heads, int64_t dim, int64_t max_keys, uint32_t seed) {
  AttnData d{m, heads, dim, max_keys, {}, {}, {}, {}, {}};
  const int64_t pool_rows = max_keys + 7;
  d.q = randn(m * heads * dim, 1.0f, seed);
  d.kv = randn(pool_rows * dim, 1.0f, seed + 1);
  d.sink = randn(heads, 1.0f, seed + 2, false);
  std::mt19937 gen(seed + 3);
  d.keys.resize(m * max_keys);
  d.num_keys.resize(m);
  for (int64_t i = 0; i < m; ++i) {
    // Mostly full lists, some shorter, one empty when there are several queries.
    d.num_keys[i] = static_cast<int32_t>(i % 3 == 2 ? gen() % (max_keys + 1) : max_keys);
    if (m > 3 && i == 1) d.num_keys[i] = 0;
    for (int64_t t = 0; t < max_keys; ++t)
      d.keys[i * max_keys + t] = d.kv.data() + (gen() % pool_rows) * dim;
  }
  return d;
}

std::vector<float> run_attention(Kernels* k, const AttnData& d, int64_t first, int64_t m,
                                 float scale) {
  std::vector<float> out(m * d.heads * d.dim, -7.0f);
  AttentionParams p;
  p.q = d.q.data() + first * d.heads * d.dim;
  p.m = m;
  p.num_heads = d.heads;
  p.head_dim = d.dim;
  p.keys = d.keys.data() + first * d.max_keys;
  p.num_keys = d.num_keys.data() + first;
  p.max_keys = d.max_keys;
  p.sink = d.sink.data();
  p.scale = scale;
  p.out = out.data();
  k->attention(p);
  return out;
}

TEST(KernelsOps, Attention) {
  for (int64_t m : kRowCounts)
    for (int64_t heads : {1, 4, 7})
      for (int64_t dim : {64, 512, 200})
        for (int64_t max_keys : {1, 5, 64, 129}) {
          SCOPED_TRACE("m " + std::to_string(m) + " heads " + std::to_string(heads) + " dim " +
                       std::to_string(dim) + " keys " + std::to_string(max_keys));
          // The model's scale 512^-0.5 with q, kv of unit RMS gives logits of O(√dim·scale);
          // ×4 makes the softmax peaked as well.
          const float scale = 4.0f / std::sqrt(static_cast<float>(dim));
          const auto d = make_attn_data(m, heads, dim, max_keys, 111 + m + heads + max_keys);
          const auto o_ref = run_attention(sets().ref.get(), d, 0, m, scale);
          const auto o_opt = run_attention(sets().opt.get(), d, 0, m, scale);
          const auto o1 = run_attention(sets().opt1.get(), d, 0, m, scale);
          expect_close("attention", o_ref.data(), o_opt.data(), m * heads, dim, dim,
                       tolerance::kAttention);
          expect_bitwise("attention 1 vs 2 threads", o_opt, o1);
          for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
            const auto& batch = k == sets().ref.get() ? o_ref : o_opt;
            for (int64_t i : {int64_t{0}, m / 2, m - 1}) {
              const auto alone = run_attention(k, d, i, 1, scale);
              expect_bitwise(k->describe() + " attention alone",
                             std::vector<float>(batch.begin() + i * heads * dim,
                                                batch.begin() + (i + 1) * heads * dim),
                             alone);
            }
          }
        }
  expect_few_differ("attention");
}

TEST(KernelsOps, AttentionOneKeyReturnsTheKeyScaledBySink) {
  // One key: e = 1, den = 1 + exp(sink − s), o = bf16(kv / den).
  const int64_t heads = 3, dim = 64;
  auto d = make_attn_data(1, heads, dim, 1, 131);
  const float scale = 0.125f;
  for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
    const auto o = run_attention(k, d, 0, 1, scale);
    for (int64_t h = 0; h < heads; ++h) {
      double s = 0;
      for (int64_t c = 0; c < dim; ++c) s += static_cast<double>(d.q[h * dim + c]) * d.keys[0][c];
      const double den = 1.0 + std::exp(d.sink[h] - s * scale);
      for (int64_t c = 0; c < dim; ++c) {
        const double want = d.keys[0][c] / den;
        // Exact up to the final bf16 rounding (and fp32 ulps of the denominator).
        EXPECT_NEAR(o[h * dim + c], want, std::fabs(want) * 0x1p-8 + 1e-30)
            << k->describe() << " head " << h << " c " << c;
      }
    }
  }
}

// ---- indexer_scores ---------------------------------------------------------------------

TEST(KernelsOps, IndexerScores) {
  for (int64_t m : kRowCounts)
    for (int64_t heads : {1, 4, 7, 64})
      for (int64_t n_keys : {1, 5, 64, 129}) {
        const int64_t dim = 128;
        SCOPED_TRACE("m " + std::to_string(m) + " heads " + std::to_string(heads) + " keys " +
                     std::to_string(n_keys));
        const auto q = randn(m * heads * dim, 1.0f, 141 + heads);
        // weights_proj output × 128^-0.5 · 64^-0.5, signed.
        const auto w = randn(m * heads, 0.1f, 142 + heads);
        const auto kv = randn(n_keys * dim, 1.0f, 143 + n_keys);
        std::vector<const float*> keys(n_keys);
        for (int64_t j = 0; j < n_keys; ++j) keys[j] = kv.data() + ((j * 7) % n_keys) * dim;
        std::vector<int32_t> limit(m);
        for (int64_t i = 0; i < m; ++i)
          limit[i] = static_cast<int32_t>(i == 0 ? n_keys : (n_keys * (i + 1)) / m);
        auto run = [&](Kernels* k, int64_t first, int64_t rows) {
          std::vector<float> scores(rows * n_keys, -5.0f);
          IndexerScoreParams p;
          p.q = q.data() + first * heads * dim;
          p.m = rows;
          p.num_heads = heads;
          p.dim = dim;
          p.weights = w.data() + first * heads;
          p.keys = keys.data();
          p.n_keys = n_keys;
          p.key_limit = limit.data() + first;
          p.scores = scores.data();
          k->indexer_scores(p);
          return scores;
        };
        const auto s_ref = run(sets().ref.get(), 0, m);
        const auto s_opt = run(sets().opt.get(), 0, m);
        const auto s1 = run(sets().opt1.get(), 0, m);
        expect_close("indexer_scores", s_ref.data(), s_opt.data(), m, n_keys, n_keys,
                     tolerance::kIndexerScores);
        expect_bitwise("indexer_scores 1 vs 2 threads", s_opt, s1);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = limit[i]; j < n_keys; ++j)
            ASSERT_EQ(s_opt[i * n_keys + j], -5.0f) << "untouched beyond key_limit: " << i;
        for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
          const auto& batch = k == sets().ref.get() ? s_ref : s_opt;
          const auto alone = run(k, m - 1, 1);
          expect_bitwise(k->describe() + " indexer alone",
                         std::vector<float>(batch.end() - n_keys, batch.end()), alone);
        }
      }
  expect_few_differ("indexer_scores");
}

// ---- pool -------------------------------------------------------------------------------

TEST(KernelsOps, Pool) {
  for (int64_t n_terms : {1, 8, 128})
    for (int64_t dim : {128, 512, 200}) {
      SCOPED_TRACE("terms " + std::to_string(n_terms) + " dim " + std::to_string(dim));
      const auto kv = randn(n_terms * dim, 1.0f, 151 + n_terms, false);
      auto g = randn(n_terms * dim, 2.0f, 152 + dim, false);
      // The ratio-4 compressor's first block: the previous block's terms are (0, −∞).
      std::vector<float> kv_masked = kv;
      if (n_terms == 8)
        for (int64_t c = 0; c < 4 * dim; ++c) {
          g[c] = -std::numeric_limits<float>::infinity();
          kv_masked[c] = 0.0f;
        }
      std::vector<const float*> kvp(n_terms), gp(n_terms);
      for (int64_t t = 0; t < n_terms; ++t) {
        kvp[t] = kv_masked.data() + t * dim;
        gp[t] = g.data() + t * dim;
      }
      auto run = [&](Kernels* k) {
        std::vector<float> out(dim);
        PoolParams p;
        p.kv = kvp.data();
        p.score = gp.data();
        p.n_terms = n_terms;
        p.dim = dim;
        p.out = out.data();
        k->pool(p);
        return out;
      };
      const auto o_ref = run(sets().ref.get());
      const auto o_opt = run(sets().opt.get());
      expect_close("pool", o_ref.data(), o_opt.data(), 1, dim, dim, tolerance::kF32Elementwise);
      expect_bitwise("pool 1 vs 2 threads", o_opt, run(sets().opt1.get()));
    }
}

// ---- route ------------------------------------------------------------------------------

struct RouteOut {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};
RouteOut run_route(Kernels* k, const float* logits, int64_t m, int64_t ne, int64_t top,
                   const float* bias, const int32_t* table, int64_t table_cols,
                   const int32_t* tokens) {
  RouteOut o{std::vector<int32_t>(m * top, -1), std::vector<float>(m * top)};
  RouteParams p;
  p.logits = logits;
  p.m = m;
  p.num_experts = ne;
  p.k = top;
  p.bias = bias;
  p.hash_table = table;
  p.table_cols = table_cols;
  p.tokens = tokens;
  p.ids = o.ids.data();
  p.weights = o.weights.data();
  k->route(p);
  return o;
}

TEST(KernelsOps, Route) {
  for (int64_t m : kRowCounts)
    for (int64_t ne : {8, 64, 256})
      for (int64_t top : {1, 6}) {
        SCOPED_TRACE("m " + std::to_string(m) + " experts " + std::to_string(ne) + " k " +
                     std::to_string(top));
        // Gate logits O(1) with a tail beyond softplus' threshold; biases O(0.1).
        auto z = randn(m * ne, 2.0f, 161 + ne, false);
        z[0] = 25.0f;
        const auto bias = randn(ne, 0.1f, 162, false);
        const int64_t vocab = 50, cols = 8;
        std::vector<int32_t> table(vocab * cols), tokens(m);
        std::mt19937 gen(163);
        for (auto& t : table) t = static_cast<int32_t>(gen() % ne);
        for (auto& t : tokens) t = static_cast<int32_t>(gen() % vocab);
        for (bool hash : {false, true}) {
          const float* b = hash ? nullptr : bias.data();
          const int32_t* tb = hash ? table.data() : nullptr;
          const auto r =
              run_route(sets().ref.get(), z.data(), m, ne, top, b, tb, cols, tokens.data());
          const auto o =
              run_route(sets().opt.get(), z.data(), m, ne, top, b, tb, cols, tokens.data());
          const auto o1 =
              run_route(sets().opt1.get(), z.data(), m, ne, top, b, tb, cols, tokens.data());
          // Random fp32 scores are never within fp32 noise of each other at the k-th place
          // (checked: a mismatch below would print the ids), so the ids must match exactly.
          expect_bitwise(std::string("route ids opt vs ref") + (hash ? " hash" : ""), r.ids, o.ids);
          expect_close("route weights", r.weights.data(), o.weights.data(), m, top, top,
                       tolerance::kF32Elementwise);
          expect_bitwise("route ids 1 vs 2 threads", o.ids, o1.ids);
          expect_bitwise("route weights 1 vs 2 threads", o.weights, o1.weights);
          for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
            const auto& batch = k == sets().ref.get() ? r : o;
            const auto alone = run_route(k, z.data() + (m - 1) * ne, 1, ne, top, b, tb, cols,
                                         tokens.data() + m - 1);
            expect_bitwise(k->describe() + " route alone",
                           std::vector<int32_t>(batch.ids.end() - top, batch.ids.end()), alone.ids);
            expect_bitwise(k->describe() + " route weights alone",
                           std::vector<float>(batch.weights.end() - top, batch.weights.end()),
                           alone.weights);
          }
        }
      }
}

TEST(KernelsOps, RouteHandMadeCases) {
  // 6 experts, k = 3. Equal logits → equal scores: ties go to the lower id. A bias that
  // lifts expert 5 selects it first, but its weight comes from the unbiased score.
  const int64_t ne = 6, top = 3;
  const std::vector<float> z = {1.0f, 1.0f, 1.0f,  1.0f, 1.0f, 1.0f,   // token 0: all tied
                                0.5f, 2.0f, -1.0f, 2.0f, 0.0f, 0.5f};  // token 1
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const std::vector<float> bias5 = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 10.0f};
  const std::vector<int32_t> table = {4, 0, 2, 5, 5, 1};  // 2 tokens × 3 columns
  const std::vector<int32_t> tokens = {1, 0};
  auto sc = [](float x) { return std::sqrt(std::log1p(std::exp(static_cast<double>(x)))); };
  for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
    SCOPED_TRACE(k->describe());
    const auto a = run_route(k, z.data(), 2, ne, top, bias.data(), nullptr, 0, nullptr);
    EXPECT_EQ(a.ids, (std::vector<int32_t>{0, 1, 2, 1, 3, 0}));
    for (int64_t j = 0; j < top; ++j) EXPECT_NEAR(a.weights[j], 0.5f, 1e-6f);
    const double s1 = sc(2.0f), s0 = sc(0.5f);
    EXPECT_NEAR(a.weights[3], 1.5 * s1 / (2 * s1 + s0), 1e-6);
    EXPECT_NEAR(a.weights[5], 1.5 * s0 / (2 * s1 + s0), 1e-6);
    const auto b = run_route(k, z.data(), 2, ne, top, bias5.data(), nullptr, 0, nullptr);
    EXPECT_EQ(b.ids, (std::vector<int32_t>{5, 0, 1, 5, 1, 3}));
    EXPECT_NEAR(b.weights[3], 1.5 * s0 / (2 * s1 + s0), 1e-6);
    const auto h = run_route(k, z.data(), 2, ne, top, nullptr, table.data(), 3, tokens.data());
    EXPECT_EQ(h.ids, (std::vector<int32_t>{5, 5, 1, 4, 0, 2}));
    for (int64_t i = 0; i < 2; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < top; ++j) sum += h.weights[i * top + j];
      EXPECT_NEAR(sum, 1.5, 1e-6) << "token " << i;
    }
    // Token 0 has equal logits, so its three (table row 1) weights are equal.
    for (int64_t j = 0; j < top; ++j) EXPECT_NEAR(h.weights[j], 1.5 / 3, 1e-6);
  }
}

// ---- swiglu -----------------------------------------------------------------------------

TEST(KernelsOps, Swiglu) {
  for (int64_t m : kRowCounts)
    for (int64_t n : {64, 200, 2048}) {
      SCOPED_TRACE("m " + std::to_string(m) + " n " + std::to_string(n));
      const int64_t ld = n + 9;
      // w1/w3 outputs: bf16, mostly O(1) with tails past the clamp limit 10.
      const auto gate = randn(m * ld, 4.0f, 171 + n);
      const auto up = randn(m * ld, 4.0f, 172 + n);
      const auto rw = uniform(m, 0.05f, 0.6f, 173);
      for (bool weighted : {true, false}) {
        auto run = [&](Kernels* k, int64_t first, int64_t rows, bool in_place) {
          std::vector<float> g(gate.begin() + first * ld, gate.begin() + (first + rows) * ld);
          std::vector<float> out(rows * ld, -3.0f);
          SwigluParams p;
          p.gate = g.data();
          p.up = up.data() + first * ld;
          p.ld = ld;
          p.m = rows;
          p.n = n;
          p.row_weight = weighted ? rw.data() + first : nullptr;
          p.out = in_place ? g.data() : out.data();
          k->swiglu(p);
          if (in_place)
            for (int64_t i = 0; i < rows; ++i)
              std::copy(g.begin() + i * ld, g.begin() + i * ld + n, out.begin() + i * ld);
          return out;
        };
        const auto o_ref = run(sets().ref.get(), 0, m, false);
        const auto o_opt = run(sets().opt.get(), 0, m, false);
        expect_close("swiglu", o_ref.data(), o_opt.data(), m, n, ld, tolerance::kBf16Elementwise);
        expect_bitwise("swiglu in place", o_opt, run(sets().opt.get(), 0, m, true));
        expect_bitwise("swiglu 1 vs 2 threads", o_opt, run(sets().opt1.get(), 0, m, false));
        for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
          const auto& batch = k == sets().ref.get() ? o_ref : o_opt;
          const auto alone = run(k, m - 1, 1, false);
          expect_bitwise(k->describe() + " swiglu alone",
                         std::vector<float>(batch.end() - ld, batch.end()), alone);
        }
      }
    }
  expect_few_differ("swiglu");
}

// ---- sampling (shared by both sets; checked against independent expectations) ------------

TEST(KernelsOps, SamplingGreedy) {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  for (Kernels* k : {sets().ref.get(), sets().opt.get()}) {
    SamplingParams p;
    EXPECT_EQ(k->sample(logits.data(), 5, p), 1);  // temperature 0: lowest index of the max
    p.temperature = 1.0f;
    p.top_k = 1;
    for (uint64_t step = 0; step < 20; ++step) {
      p.step = step;
      EXPECT_EQ(k->sample(logits.data(), 5, p), 1);
    }
  }
}

TEST(KernelsOps, SamplingIsDeterministicPerSeedAndStep) {
  const auto logits = randn(1000, 2.0f, 181, false);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  p.seed = 1234;
  int changes = 0;
  int32_t prev = -1;
  for (uint64_t step = 0; step < 50; ++step) {
    p.step = step;
    const int32_t a = sets().ref->sample(logits.data(), 1000, p);
    EXPECT_EQ(a, sets().ref->sample(logits.data(), 1000, p));
    EXPECT_EQ(a, sets().opt->sample(logits.data(), 1000, p));
    changes += a != prev;
    prev = a;
  }
  EXPECT_GT(changes, 5) << "the draw does not depend on the step";
}

TEST(KernelsOps, SamplingFrequenciesMatchSoftmax) {
  // 5 tokens, temperature 0.7: the counts over N steps against N·softmax(logits/T), Pearson
  // chi-square with 4 degrees of freedom; 18.47 is its 0.999 quantile.
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 1.3f, 0.0f};
  const double t = 0.7;
  std::vector<double> prob(5);
  double sum = 0;
  for (int i = 0; i < 5; ++i) sum += prob[i] = std::exp(logits[i] / t);
  for (auto& v : prob) v /= sum;
  const int n = 20000;
  std::vector<int> count(5, 0);
  SamplingParams p;
  p.temperature = static_cast<float>(t);
  p.seed = 99;
  for (int s = 0; s < n; ++s) {
    p.step = static_cast<uint64_t>(s);
    const int32_t tok = sample_token(logits.data(), 5, p);
    ASSERT_GE(tok, 0);
    ASSERT_LT(tok, 5);
    ++count[tok];
  }
  double chi2 = 0;
  for (int i = 0; i < 5; ++i) {
    const double e = n * prob[i];
    chi2 += (count[i] - e) * (count[i] - e) / e;
  }
  EXPECT_LT(chi2, 18.47) << "counts " << count[0] << " " << count[1] << " " << count[2] << " "
                         << count[3] << " " << count[4];
}

TEST(KernelsOps, SamplingTopPAndTopKRestrictCandidates) {
  // Probabilities at T = 1 ∝ e^{3}, e^{2}, e^{1}, e^{0}, e^{-1} for tokens 3, 0, 4, 1, 2:
  // ≈ 0.636, 0.234, 0.086, 0.032, 0.012. top_p 0.8 keeps {3, 0}; top_k 3 keeps {3, 0, 4}.
  const std::vector<float> logits = {2.0f, 0.0f, -1.0f, 3.0f, 1.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.8f;
  std::vector<int> seen(5, 0);
  for (uint64_t step = 0; step < 2000; ++step) {
    p.step = step;
    ++seen[sample_token(logits.data(), 5, p)];
  }
  EXPECT_EQ(seen[1] + seen[2] + seen[4], 0);
  EXPECT_GT(seen[0], 300);  // 0.234 / 0.870 of 2000 ≈ 538
  EXPECT_GT(seen[3], 1200);
  p.top_p = 1.0f;
  p.top_k = 3;
  std::fill(seen.begin(), seen.end(), 0);
  for (uint64_t step = 0; step < 2000; ++step) {
    p.step = step;
    ++seen[sample_token(logits.data(), 5, p)];
  }
  EXPECT_EQ(seen[1] + seen[2], 0);
  EXPECT_GT(seen[4], 100);  // 0.086 / 0.956 of 2000 ≈ 180
}

TEST(KernelsOps, Describe) {
  EXPECT_EQ(sets().ref->describe(), "reference");
  EXPECT_EQ(sets().opt->impl(), KernelImpl::kOptimized);
  const std::string d = sets().opt->describe();
  EXPECT_EQ(d.rfind("optimized (", 0), 0u) << d;
  EXPECT_NE(d.find(", 2 threads)"), std::string::npos) << d;
}

}  // namespace
}  // namespace moerun::kernels

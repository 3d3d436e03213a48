// Throughput of the optimized GEMM (kernels/cpu/opt_gemm.h) against ceilings measured in the
// same run: the fp32 FMA, vdpbf16ps and (where usable) AMX TDPBF16PS peaks of this CPU
// (instruction loops with independent accumulators, the AMX one on register-resident tiles),
// and the streaming-read memory bandwidth (1 GiB, past the last-level cache).
// Prefill: FP8 4096×4096 and FP4 2048×4096 (Flash's shapes) at M = 256, as GFLOP/s and as a
// fraction of the peak of the path it takes (AMX where usable, else the best SIMD peak).
// Decode: M = 1 (bf16 weights 2048×4096, FP8 4096×4096, FP4 2048×4096) over a set of distinct
// packed weights larger than the L3, as GB/s of weight bytes (data + scales) and as a fraction of
// the stream bandwidth. Where AMX is usable the same GEMMs also run with it capped off, for
// comparison. Each with 1, 2 and (if more are allowed) OMP_NUM_THREADS threads. Every GEMM is
// validated before it is timed: bit for bit against a scalar loop of the order contract, or for AMX
// (its own order) within kernels/tolerance.h.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "bench/stream_bandwidth.h"
#include "common/numfmt.h"
#include "common/weight_quant.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/opt_gemm.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/weight_decode.h"
#include "kernels/tolerance.h"

namespace moerun::kernels {
namespace {

using Clock = std::chrono::steady_clock;

// Horizontal sum by a store (GCC 12's _mm512_reduce_* trip -Wuninitialized in its headers).
__attribute__((target("avx512f"))) float lane_sum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0;
  for (const float x : lanes) s += x;
  return s;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- peaks -----------------------------------------------------------------------------

constexpr int64_t kPeakIters = 20'000'000;

// 12 independent chains hide the 4-cycle latency on two FMA ports.
__attribute__((target("avx512f"))) double fma_loop(int64_t iters) {
  __m512 acc[12];
  for (int r = 0; r < 12; ++r) acc[r] = _mm512_set1_ps(static_cast<float>(r));
  const __m512 x = _mm512_set1_ps(1.0000001f);
  const __m512 y = _mm512_set1_ps(0.9999999f);
  for (int64_t i = 0; i < iters; ++i)
    for (int r = 0; r < 12; ++r) acc[r] = _mm512_fmadd_ps(x, acc[r], y);
  float sum = 0;
  for (int r = 0; r < 12; ++r) sum += lane_sum(acc[r]);
  return sum;
}

__attribute__((target("avx512f,avx512bf16"))) double dpbf16_loop(int64_t iters) {
  __m512 acc[12];
  for (int r = 0; r < 12; ++r) acc[r] = _mm512_set1_ps(static_cast<float>(r));
  const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3F80));
  const __m512bh y = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3380));
  for (int64_t i = 0; i < iters; ++i)
    for (int r = 0; r < 12; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], x, y);
  float sum = 0;
  for (int r = 0; r < 12; ++r) sum += lane_sum(acc[r]);
  return sum;
}

// TDPBF16PS on tiles loaded once: C tiles 0-3 += A tiles 4-5 × B tiles 6-7 (all 16 × 64 bytes),
// four independent accumulators, as in the GEMM's 2×2 block without its loads.
constexpr int64_t kAmxPeakIters = 1'000'000;
struct alignas(64) TileConfig {
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
constexpr TileConfig make_tile_config() {
  TileConfig t;
  t.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    t.colsb[i] = 64;
    t.rows[i] = 16;
  }
  return t;
}
constexpr TileConfig kTileConfig = make_tile_config();

__attribute__((target("amx-tile,amx-bf16"))) double amx_loop(int64_t iters) {
  alignas(64) uint16_t src[16 * 32];
  for (int i = 0; i < 16 * 32; ++i) src[i] = i % 2 == 0 ? 0x3F80 : 0x3380;  // 1, 2^-24
  alignas(64) float out[16 * 16];
  // GCC's tile intrinsics do not name the memory they read: make src visible to them.
  __asm__ volatile("" ::: "memory");
  _tile_loadconfig(&kTileConfig);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, src, 64);
  _tile_loadd(5, src, 64);
  _tile_loadd(6, src, 64);
  _tile_loadd(7, src, 64);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

// GFLOP/s of `loop` on `threads` threads; flops_per_iter counts a multiply-add as 2.
double peak_gflops(double (*loop)(int64_t), double flops_per_iter, int threads,
                   int64_t iters = kPeakIters) {
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {  // best of 5: the 2-core VM shares its cores
    double sink = 0;
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += loop(iters);
    const double t = seconds_since(t0);
    if (sink == 12345.0) std::printf(" ");
    best = std::max(best, flops_per_iter * static_cast<double>(iters) * threads / t * 1e-9);
  }
  return best;
}

// ---- GEMM data -----------------------------------------------------------------------------

struct Weight {
  std::vector<uint8_t> codes;
  std::vector<uint8_t> scales;
  WeightView view;
};

Weight make_weight(WeightFormat format, int64_t rows, int64_t cols) {
  Weight w;
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  std::vector<float> f(static_cast<size_t>(rows * cols));
  for (float& x : f) x = normal(rng);
  w.view.format = format;
  w.view.rows = rows;
  w.view.cols = cols;
  if (format == WeightFormat::kBf16) {
    w.codes.resize(f.size() * 2);
    uint16_t* bits = reinterpret_cast<uint16_t*>(w.codes.data());
    for (size_t i = 0; i < f.size(); ++i) bits[i] = numfmt::f32_to_bf16(f[i]);
  } else if (format == WeightFormat::kFp8) {
    w.codes.resize(f.size());
    w.scales.resize(static_cast<size_t>((rows + 127) / 128 * ((cols + 127) / 128)));
    numfmt::quantize_fp8_weight(f.data(), rows, cols, w.codes.data(), w.scales.data());
  } else {
    w.codes.resize(f.size() / 2);
    w.scales.resize(static_cast<size_t>(rows * (cols / 32)));
    numfmt::quantize_fp4_weight(f.data(), rows, cols, w.codes.data(), w.scales.data());
  }
  w.view.data = w.codes.data();
  w.view.scales = w.scales.data();
  return w;
}

std::vector<float> make_activations(int64_t m, int64_t cols) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> a(static_cast<size_t>(m * cols));
  for (float& x : a) x = normal(rng);
  ReferenceKernels().quantize_e4m3(a.data(), m, cols, cols, 128);
  return a;
}

// AMX (its own order): rows [0, check_rows) of out within kGemmBf16Out of double sums.
bool validate_amx(const GemmParams& p, int64_t check_rows) {
  std::vector<float> wrow(static_cast<size_t>(p.w.cols));
  std::vector<double> ref(static_cast<size_t>(check_rows * p.n));
  for (int64_t j = 0; j < p.n; ++j) {
    decode_weight_row(p.w, p.row_begin + j, wrow.data());
    for (int64_t i = 0; i < std::min(check_rows, p.m); ++i) {
      double acc = 0;
      for (int64_t k = 0; k < p.w.cols; ++k)
        acc += static_cast<double>(p.a[i * p.lda + k]) * static_cast<double>(wrow[k]);
      ref[i * p.n + j] = acc;
    }
  }
  for (int64_t i = 0; i < std::min(check_rows, p.m); ++i) {
    double max_ref = 0;
    double max_err = 0;
    for (int64_t j = 0; j < p.n; ++j) {
      max_ref = std::max(max_ref, std::fabs(ref[i * p.n + j]));
      max_err = std::max(max_err, std::fabs(p.out[i * p.ldo + j] - ref[i * p.n + j]));
    }
    if (max_err > tolerance::kGemmBf16Out.rel_max * max_ref) {
      std::printf("VALIDATION FAILED (AMX) in row %lld: max error %.3g, row max %.3g\n",
                  static_cast<long long>(i), max_err, max_ref);
      return false;
    }
  }
  return true;
}

// Checks rows [0, check_rows) of out against the contract loop; false on any difference.
bool validate(const GemmParams& p, int64_t check_rows, const CpuFeatures& f) {
  if (f.amx_usable) return validate_amx(p, check_rows);
  std::vector<float> wrow(static_cast<size_t>(p.w.cols));
  for (int64_t j = 0; j < p.n; ++j) {
    decode_weight_row(p.w, p.row_begin + j, wrow.data());
    for (int64_t i = 0; i < std::min(check_rows, p.m); ++i) {
      float acc = 0.0f;
      for (int64_t k = 0; k < p.w.cols; ++k) acc = std::fma(p.a[i * p.lda + k], wrow[k], acc);
      if (p.round_bf16) acc = numfmt::round_to_bf16(acc);
      uint32_t got = 0, want = 0;
      std::memcpy(&got, &p.out[i * p.ldo + j], 4);
      std::memcpy(&want, &acc, 4);
      if (got != want) {
        std::printf("VALIDATION FAILED at i=%lld j=%lld: got %a want %a\n",
                    static_cast<long long>(i), static_cast<long long>(j), p.out[i * p.ldo + j],
                    acc);
        return false;
      }
    }
  }
  return true;
}

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kBf16:
      return "BF16";
    case WeightFormat::kFp8:
      return "FP8";
    default:
      return "FP4";
  }
}

// The feature sets to time: the CPU's, and where it has AMX the same without it.
struct Variant {
  const char* name;
  CpuFeatures features;
  const std::vector<double>* peaks;  // per entry of thread_counts
};

// Best-of-N seconds of one GEMM call.
double time_gemm(const GemmParams& p, const CpuFeatures& f, int threads, int reps) {
  opt_gemm(p, f, threads);  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    opt_gemm(p, f, threads);
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

bool bench_prefill(WeightFormat format, int64_t n, int64_t k, const std::vector<int>& thread_counts,
                   const std::vector<Variant>& variants) {
  const int64_t m = 256;
  const Weight w = make_weight(format, n, k);
  const auto pack = opt_pack_weight(w.view);
  const std::vector<float> a = make_activations(m, k);
  std::vector<float> out(static_cast<size_t>(m * n));
  GemmParams p;
  p.a = a.data();
  p.lda = k;
  p.m = m;
  p.w = w.view;
  p.n = n;
  p.out = out.data();
  p.ldo = n;
  p.round_bf16 = true;
  p.packed = pack.get();
  for (const Variant& v : variants) {
    std::fill(out.begin(), out.end(), 0.0f);
    opt_gemm(p, v.features, 2);
    if (!validate(p, 3, v.features)) return false;
    for (size_t t_idx = 0; t_idx < thread_counts.size(); ++t_idx) {
      const int threads = thread_counts[t_idx];
      const double t = time_gemm(p, v.features, threads, 5);
      const double gflops = 2.0 * m * n * k / t * 1e-9;
      std::printf(
          "  %s prefill M=%lld N=%lld K=%lld %-7s %2d thr: %8.3f ms  %7.1f GFLOP/s  %.2f of "
          "its peak\n",
          format_name(format), static_cast<long long>(m), static_cast<long long>(n),
          static_cast<long long>(k), v.name, threads, t * 1e3, gflops, gflops / (*v.peaks)[t_idx]);
    }
  }
  return true;
}

// M = 1 over `copies` distinct packs of the same weight (together past the L3), one call per
// pack in turn, so every call streams its weight from memory.
bool bench_decode(WeightFormat format, int64_t n, int64_t k, const std::vector<int>& thread_counts,
                  const std::vector<double>& bandwidth, const std::vector<Variant>& variants) {
  constexpr int64_t kTargetBytes = int64_t{768} << 20;
  const Weight w = make_weight(format, n, k);
  const int64_t bytes = weight_data_bytes(w.view) + weight_scale_bytes(w.view);
  const int64_t copies = std::max<int64_t>(2, kTargetBytes / bytes);
  std::vector<std::unique_ptr<PackedWeight>> packs;
  for (int64_t c = 0; c < copies; ++c) packs.push_back(opt_pack_weight(w.view));
  const std::vector<float> a = make_activations(1, k);
  std::vector<float> out(static_cast<size_t>(n));
  GemmParams p;
  p.a = a.data();
  p.lda = k;
  p.m = 1;
  p.w = w.view;
  p.n = n;
  p.out = out.data();
  p.ldo = n;
  p.round_bf16 = true;
  for (const Variant& v : variants) {
    p.packed = packs.back().get();
    std::fill(out.begin(), out.end(), 0.0f);
    opt_gemm(p, v.features, 1);
    if (!validate(p, 1, v.features)) return false;
    for (size_t t_idx = 0; t_idx < thread_counts.size(); ++t_idx) {
      const int threads = thread_counts[t_idx];
      double best = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = Clock::now();
        for (const auto& pk : packs) {
          p.packed = pk.get();
          opt_gemm(p, v.features, threads);
        }
        best = std::min(best, seconds_since(t0));
      }
      const double gbps = static_cast<double>(bytes) * copies / best * 1e-9;
      std::printf(
          "  %s decode  M=1 N=%lld K=%lld %-7s %2d thr: %8.3f ms/call  %6.1f GB/s  %.2f of "
          "stream (%lld packs, %.0f MiB)\n",
          format_name(format), static_cast<long long>(n), static_cast<long long>(k), v.name,
          threads, best / copies * 1e3, gbps, gbps / bandwidth[t_idx],
          static_cast<long long>(copies), static_cast<double>(bytes * copies) / (1 << 20));
    }
  }
  return true;
}

int run() {
  const CpuFeatures& f = cpu_features();
  std::printf("bench_gemm: optimized GEMM, CPU level %s, %d OpenMP threads available\n",
              describe(f).c_str(), omp_get_max_threads());
  if (!f.avx512f) {
    std::printf("no AVX-512 on this CPU: the peak loops need it; nothing measured\n");
    return 0;
  }
  std::vector<int> thread_counts = {1, 2};
  if (omp_get_max_threads() > 2) thread_counts.push_back(omp_get_max_threads());
  std::vector<double> simd_peaks;
  std::vector<double> amx_peaks;
  std::printf("peaks (same run):\n");
  for (const int threads : thread_counts) {
    const double fma = peak_gflops(fma_loop, 12 * 16 * 2, threads);
    std::printf("  fp32 FMA zmm        %2d thr: %8.1f GFLOP/s\n", threads, fma);
    double best = fma;
    if (f.avx512_bf16) {
      const double dp = peak_gflops(dpbf16_loop, 12 * 16 * 4, threads);
      std::printf("  vdpbf16ps zmm       %2d thr: %8.1f GFLOP/s\n", threads, dp);
      best = std::max(best, dp);
    }
    simd_peaks.push_back(best);
    if (f.amx_usable) {
      const double amx = peak_gflops(amx_loop, 4.0 * 16 * 16 * 32 * 2, threads, kAmxPeakIters);
      std::printf("  AMX tdpbf16ps       %2d thr: %8.1f GFLOP/s\n", threads, amx);
      amx_peaks.push_back(amx);
    }
  }
  // The GEMM takes AMX wherever it is usable (FP8/FP4 here); "simd" is the same call with AMX
  // capped off, as MOERUN_CPU_FEATURES=avx512bf16 would.
  std::vector<Variant> variants;
  if (f.amx_usable) {
    variants.push_back({"amx", f, &amx_peaks});
    CpuFeatures simd = f;
    simd.amx_usable = false;
    variants.push_back({"simd", simd, &simd_peaks});
  } else {
    variants.push_back({"simd", f, &simd_peaks});
  }

  const int64_t n_floats = (int64_t{1} << 30) / 4;
  float* buf = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(n_floats) * 4));
  for (int64_t i = 0; i < n_floats; ++i) buf[i] = static_cast<float>(i & 1023);
  std::vector<double> bandwidth;
  std::printf("streaming read (1 GiB):");
  for (const int threads : thread_counts) {
    bandwidth.push_back(
        moerun::bench::stream_read_gbps(buf, static_cast<size_t>(n_floats) * 4, threads));
    std::printf(" %d thr %.1f GB/s;", threads, bandwidth.back());
  }
  std::printf("\n");
  std::free(buf);

  std::printf(
      "prefill (ratios against the peak of the path: amx = AMX tile loop, simd = best of "
      "FMA / vdpbf16ps):\n");
  if (!bench_prefill(WeightFormat::kFp8, 4096, 4096, thread_counts, variants)) return 1;
  if (!bench_prefill(WeightFormat::kFp4, 2048, 4096, thread_counts, variants)) return 1;
  std::printf("decode:\n");
  if (!bench_decode(WeightFormat::kBf16, 2048, 4096, thread_counts, bandwidth, variants)) return 1;
  if (!bench_decode(WeightFormat::kFp8, 4096, 4096, thread_counts, bandwidth, variants)) return 1;
  if (!bench_decode(WeightFormat::kFp4, 2048, 4096, thread_counts, bandwidth, variants)) return 1;
  return 0;
}

}  // namespace
}  // namespace moerun::kernels

int main() {
  return moerun::kernels::run();
}

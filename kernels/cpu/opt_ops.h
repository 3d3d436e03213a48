// Internal to the optimized CPU kernels: the non-GEMM ops (opt_elementwise.cc,
// opt_attention.cc) as free functions that OptimizedKernels forwards to, and the fp32
// building blocks they share. Portable C++ written so that GCC vectorizes it, compiled per
// ISA (MOERUN_OPT_CLONES below) with the same results on every x86-64.
//
// Batch invariance: every reduction below has an order fixed by its length alone — dot
// products and sums use kLanes fp32 partial sums (element k goes to lane k % kLanes) folded
// by a fixed pairwise tree — and OpenMP splits rows / heads / keys, never a reduction.
#pragma once

#include <bit>
#include <cstdint>

#include "kernels/kernels.h"

namespace moerun::kernels::opt {

// The row/task kernels of the ops are compiled for AVX-512, AVX2 and baseline x86-64 and
// picked when the library loads (GCC function multiversioning). Their files are built without
// fp contraction (kernels/CMakeLists.txt), and every reduction's order is explicit, so each
// clone rounds the same operations in the same order: the results do not depend on the CPU.
// Kernels called from OpenMP loops are separate functions so that the clone choice covers
// the loop bodies.
#ifndef MOERUN_OPT_CLONES  // -DMOERUN_OPT_CLONES= builds the baseline code only
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MOERUN_OPT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOERUN_OPT_CLONES
#endif
#endif

// ---- fp32 building blocks ---------------------------------------------------------------

inline constexpr int kLanes = 16;

// Round to bf16, nearest even (numfmt::round_to_bf16 bit for bit, NaN kept quiet), inline
// and branch-free so that loops using it vectorize.
inline float bf16(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  const uint32_t quiet_nan = (b & 0xFFFF0000u) | 0x00400000u;
  return std::bit_cast<float>((b & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

// e^x in fp32 (Cephes expf: Cody–Waite reduction by ln 2, degree-6 polynomial), within ~1 ulp
// of the correctly rounded value; 0 below −104, +inf above ~88.72, NaN stays NaN. Inline and
// branch-free for vectorization; 2^n is applied in two halves so that subnormal results are
// still right.
inline float exp_f32(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 9 significant bits: n · kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 · 2^23: adding it rounds to an integer
  x = x < -104.0f ? -104.0f : x;
  x = x > 88.8f ? 88.8f : x;
  const float t = x * kLog2e + kRoundMagic;
  const float n = t - kRoundMagic;
  // The integer sits in the low mantissa bits of t (bit arithmetic: no float→int UB on NaN).
  const int32_t ni = static_cast<int32_t>(std::bit_cast<uint32_t>(t) - 0x4B400000u);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t n1 = ni / 2;
  const int32_t n2 = ni - n1;
  const float s1 = std::bit_cast<float>(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = std::bit_cast<float>(static_cast<uint32_t>(n2 + 127) << 23);
  return y * s1 * s2;
}

inline float sigmoid_f32(float x) {
  return 1.0f / (1.0f + exp_f32(-x));
}

// Folds kLanes partial sums pairwise (lane l + w into lane l, w = 8, 4, 2, 1).
inline float fold_lanes(float* acc) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// Σ a[k]·b[k] in fp32, order fixed by n (lanes, then the tree).
inline float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += a[k + l] * b[k + l];
  }
  for (int l = 0; k + l < n; ++l) acc[l] += a[k + l] * b[k + l];
  return fold_lanes(acc);
}

// Σ x[k] in fp32, order fixed by n.
inline float sum_f32(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += x[k + l];
  }
  for (int l = 0; k + l < n; ++l) acc[l] += x[k + l];
  return fold_lanes(acc);
}

// ---- the ops (semantics: kernels/kernels.h); num_threads ≥ 1 -----------------------------

void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t cols, const float* weight,
             float eps, float* y, int64_t ldy, int num_threads);
void rms_rsqrt(const float* x, int64_t ldx, int64_t rows, int64_t cols, float eps, float* r,
               int num_threads);
void head_rms_scale_bf16(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                         int num_threads);
void rope(const RopeParams& p, int num_threads);
void hadamard(float* x, int64_t rows, int64_t n, int num_threads);
void sinkhorn(const SinkhornParams& p, int num_threads);
void hc_collapse(const float* h, const float* pre, int64_t m, int64_t hc, int64_t dim, float* y,
                 int num_threads);
void hc_expand(const float* f, const float* res, const float* post, const float* comb, int64_t m,
               int64_t hc, int64_t dim, float* out, int num_threads);
void swiglu(const SwigluParams& p, int num_threads);
void route(const RouteParams& p, int num_threads);

void attention(const AttentionParams& p, int num_threads);
void indexer_scores(const IndexerScoreParams& p, int num_threads);
void pool(const PoolParams& p, int num_threads);

}  // namespace moerun::kernels::opt

// AVX2+FMA microkernel of the optimized GEMM's fp32 family (opt_gemm_internal.h): lanes are
// 16 weight rows (2 ymm) at a time, a register block of up to 6 activation rows, one fma per
// k in k order for every output (the order contract). Compiled with -mavx2 -mfma and only
// called when cpu_features() reports AVX2.
#include <immintrin.h>

#include "kernels/cpu/opt_gemm_internal.h"

namespace moerun::kernels::gemm_detail {
namespace {

template <int MR>
void block_f32(const float* a, int64_t lda, const float* w, int64_t kc, float* c, bool init) {
  __m256 acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < 2; ++q)
      acc[r][q] = init ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * kPanel + q * 8);
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_loadu_ps(w + k * kPanel);
    const __m256 w1 = _mm256_loadu_ps(w + k * kPanel + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(b, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(b, w1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < 2; ++q) _mm256_storeu_ps(c + r * kPanel + q * 8, acc[r][q]);
}

}  // namespace

void micro_f32_avx2(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc, float* c,
                    bool init, int64_t g0, int64_t ng) {
  for (int64_t g = g0 * kGroupLanes; g < (g0 + ng) * kGroupLanes; g += kGroupLanes) {
    int64_t i = 0;
    for (; i + kMaxRowsBlock <= rows; i += kMaxRowsBlock)
      block_f32<kMaxRowsBlock>(a + i * lda, lda, w + g, kc, c + i * kPanel + g, init);
    const float* ar = a + i * lda;
    float* cr = c + i * kPanel + g;
    switch (rows - i) {
      case 5:
        block_f32<5>(ar, lda, w + g, kc, cr, init);
        break;
      case 4:
        block_f32<4>(ar, lda, w + g, kc, cr, init);
        break;
      case 3:
        block_f32<3>(ar, lda, w + g, kc, cr, init);
        break;
      case 2:
        block_f32<2>(ar, lda, w + g, kc, cr, init);
        break;
      case 1:
        block_f32<1>(ar, lda, w + g, kc, cr, init);
        break;
      default:
        break;
    }
  }
}

}  // namespace moerun::kernels::gemm_detail

// AVX-512F/BW/DQ/VL pieces of the optimized GEMM (opt_gemm_internal.h): the fp32 FMA
// microkernel (lanes = 64 weight rows in 4 zmm, or a range of those zmm, a register block of up to
// 6 activation rows), the packed-weight → fp32 conversion, activations → bf16 pairs, and act_quant
// / fp4_act_quant row by row. Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl and only
// called when cpu_features() reports AVX-512.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "common/numfmt.h"
#include "kernels/cpu/opt_gemm_internal.h"

namespace moerun::kernels::gemm_detail {
namespace {

constexpr int kLaneVecs = static_cast<int>(kLaneGroups);  // zmm per panel row

// NV zmm of lanes (the panel's 16-lane groups the caller offset w and c to).
template <int MR, int NV>
void block_f32(const float* a, int64_t lda, const float* w, int64_t kc, float* c, bool init) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q)
      acc[r][q] = init ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * kPanel + q * 16);
  for (int64_t k = 0; k < kc; ++k) {
    const float* wk = w + k * kPanel;
    __m512 wv[NV];
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) wv[q] = _mm512_load_ps(wk + q * 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 b = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) acc[r][q] = _mm512_fmadd_ps(b, wv[q], acc[r][q]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) _mm512_storeu_ps(c + r * kPanel + q * 16, acc[r][q]);
}

// e8m0 bytes (16 lanes, zero-extended) → fp32 2^(s−127); s = 0 is the subnormal 2^-127.
__m512 e8m0_to_f32x16(__m512i s) {
  const __m512i normal = _mm512_slli_epi32(s, 23);
  const __mmask16 zero = _mm512_testn_epi32_mask(s, s);
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(normal, zero, _mm512_set1_epi32(0x00400000)));
}

// The e4m3 byte at bit `Shift` of each dword → fp32 (exact). Normals: the 7 magnitude bits
// shifted under the fp32 exponent and rebiased by 127 − 7; subnormals m·2^-9 from a table
// (never through an fp32 subnormal, whose operand assists would cost ~100 cycles each). NaN
// codes (never in checkpoints) decode as 480.
template <int Shift>
__m512 e4m3_to_f32x16(__m512i d, __m512 subnormal) {
  const __m512i mag = _mm512_and_si512(_mm512_srli_epi32(d, Shift), _mm512_set1_epi32(0x7F));
  const __m512i normal = _mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23));
  const __mmask16 is_sub = _mm512_testn_epi32_mask(d, _mm512_set1_epi32(0x78 << Shift));
  const __m512 v = _mm512_mask_permutexvar_ps(_mm512_castsi512_ps(normal), is_sub, mag, subnormal);
  const __m512i sign = _mm512_and_si512(_mm512_slli_epi32(d, 24 - Shift),
                                        _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign));
}

// Rows in register blocks of up to kMaxRowsBlock, NV zmm of lanes each.
template <int NV>
void micro_rows(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc, float* c,
                bool init) {
  int64_t i = 0;
  for (; i + kMaxRowsBlock <= rows; i += kMaxRowsBlock)
    block_f32<kMaxRowsBlock, NV>(a + i * lda, lda, w, kc, c + i * kPanel, init);
  const float* ar = a + i * lda;
  float* cr = c + i * kPanel;
  switch (rows - i) {
    case 5:
      block_f32<5, NV>(ar, lda, w, kc, cr, init);
      break;
    case 4:
      block_f32<4, NV>(ar, lda, w, kc, cr, init);
      break;
    case 3:
      block_f32<3, NV>(ar, lda, w, kc, cr, init);
      break;
    case 2:
      block_f32<2, NV>(ar, lda, w, kc, cr, init);
      break;
    case 1:
      block_f32<1, NV>(ar, lda, w, kc, cr, init);
      break;
    default:
      break;
  }
}

}  // namespace

void micro_f32_avx512(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc,
                      float* c, bool init, int64_t g0, int64_t ng) {
  w += g0 * kGroupLanes;
  c += g0 * kGroupLanes;
  switch (ng) {
    case 4:
      micro_rows<4>(a, lda, rows, w, kc, c, init);
      break;
    case 3:
      micro_rows<3>(a, lda, rows, w, kc, c, init);
      break;
    case 2:
      micro_rows<2>(a, lda, rows, w, kc, c, init);
      break;
    case 1:
      micro_rows<1>(a, lda, rows, w, kc, c, init);
      break;
    default:
      break;
  }
}

void convert_f32_avx512(const PackedView& pw, int64_t panel, int64_t k0, int64_t kc, float* w) {
  const uint8_t* data = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  // k0 is a multiple of kChunkK, so pairs start at k0; an odd cols writes one zero row past kc,
  // still inside the kChunkK-row buffer.
  const int64_t kp0 = k0 / 2;
  const int64_t kp1 = kp0 + (kc + 1) / 2;
  switch (pw.format) {
    case WeightFormat::kF32:
      std::memcpy(w, reinterpret_cast<const float*>(data) + k0 * kPanel,
                  sizeof(float) * static_cast<size_t>(kc * kPanel));
      return;
    case WeightFormat::kBf16: {
      const uint32_t* src = reinterpret_cast<const uint32_t*>(data);
      for (int64_t kp = kp0; kp < kp1; ++kp) {
        float* dk = w + (2 * kp - k0) * kPanel;
        for (int q = 0; q < kLaneVecs; ++q) {
          const __m512i d = _mm512_loadu_si512(src + kp * kPanel + q * 16);
          const __m512i even =
              _mm512_and_si512(d, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
          const __m512i odd = _mm512_slli_epi32(d, 16);
          _mm512_store_ps(dk + q * 16, _mm512_castsi512_ps(even));
          _mm512_store_ps(dk + kPanel + q * 16, _mm512_castsi512_ps(odd));
        }
      }
      return;
    }
    case WeightFormat::kFp8: {
      alignas(64) float table[16] = {};
      for (int t = 0; t < 8; ++t) table[t] = numfmt::e4m3_to_f32(static_cast<uint8_t>(t));
      const __m512 subnormal = _mm512_load_ps(table);
      for (int64_t kp = kp0; kp < kp1; ++kp) {
        const __m512 scale = _mm512_set1_ps(numfmt::e8m0_to_f32(scales[2 * kp / kFp8Block]));
        float* dk = w + (2 * kp - k0) * kPanel;
        for (int q = 0; q < kLaneVecs; ++q) {
          const __m512i d = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(data + (kp * kPanel + q * 16) * 2)));
          // Each lane's pair is {k+1 in bits 0-7, k in bits 8-15}.
          _mm512_store_ps(dk + q * 16, _mm512_mul_ps(e4m3_to_f32x16<8>(d, subnormal), scale));
          _mm512_store_ps(dk + kPanel + q * 16,
                          _mm512_mul_ps(e4m3_to_f32x16<0>(d, subnormal), scale));
        }
      }
      return;
    }
    case WeightFormat::kFp4: {
      alignas(64) float table[16];
      for (int t = 0; t < 16; ++t) table[t] = numfmt::e2m1_to_f32(static_cast<uint8_t>(t));
      const __m512 tab = _mm512_load_ps(table);
      for (int64_t kp = kp0; kp < kp1; ++kp) {
        const uint8_t* srow = scales + (2 * kp / kFp4Block) * kPanel;
        float* dk = w + (2 * kp - k0) * kPanel;
        for (int q = 0; q < kLaneVecs; ++q) {
          const __m512 scale = e8m0_to_f32x16(_mm512_cvtepu8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(srow + q * 16))));
          const __m512i d = _mm512_cvtepu8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(data + kp * kPanel + q * 16)));
          // vpermps reads the low 4 bits of each index: the low nibble is element k.
          const __m512 even = _mm512_permutexvar_ps(d, tab);
          const __m512 odd = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), tab);
          _mm512_store_ps(dk + q * 16, _mm512_mul_ps(even, scale));
          _mm512_store_ps(dk + kPanel + q * 16, _mm512_mul_ps(odd, scale));
        }
      }
      return;
    }
  }
}

void pairs_from_f32_avx512(const float* a, int64_t lda, int64_t m, int64_t cols, int64_t kpairs,
                           uint32_t* out) {
  // The activations are bf16 values, so keeping the top 16 bits of each fp32 is exact.
  for (int64_t i = 0; i < m; ++i) {
    const float* row = a + i * lda;
    uint32_t* dst = out + i * kpairs;
    int64_t kp = 0;
    for (; 2 * kp + 16 <= cols; kp += 8) {
      const __m512i q = _mm512_loadu_si512(row + 2 * kp);  // 8 qwords {a[k], a[k+1]}
      const __m512i d = _mm512_or_si512(_mm512_srli_epi64(q, 48),
                                        _mm512_and_si512(q, _mm512_set1_epi64(0xFFFF0000)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kp), _mm512_cvtepi64_epi32(d));
    }
    for (; kp < kpairs; ++kp) {
      uint32_t lo = 0;
      uint32_t hi = 0;
      std::memcpy(&lo, row + 2 * kp, 4);
      if (2 * kp + 1 < cols) std::memcpy(&hi, row + 2 * kp + 1, 4);
      dst[kp] = (hi >> 16) | (lo & 0xFFFF0000u);
    }
  }
}

// ---- act_quant / fp4_act_quant ----------------------------------------------------------

namespace {

// The fake-quant of one block, vectorized, bit for bit numfmt::fake_quant_block_*:
// Fmt::kLimit clamp, round-to-nearest-even onto the format's grid, times the scale. The
// grid value times a power-of-two scale is already a bf16 value (at most 4 significant bits,
// and the scale floors keep it above bf16's subnormal range or on a bf16 subnormal), so the
// final bf16 rounding of the reference changes nothing and is left out.
struct E4m3 {
  static constexpr float kLimit = numfmt::kE4m3Max;
  static constexpr float kMinNormal = 0x1p-6f;
  static constexpr float kSubnormalMagic = 0x1p14f;  // ulp 2^-9 = e4m3 subnormal step
  static constexpr int kDropBits = 20;               // 23 − 3 mantissa bits
  static int exponent(float amax) { return numfmt::act_quant_scale_exponent(amax); }
  // NaN keeps its sign and becomes the canonical quiet NaN (e4m3 NaN code, bf16 rounding).
  static constexpr uint32_t kNanBits = 0x7FC00000u;
  static constexpr bool kNanIsMax = false;
};
struct E2m1 {
  static constexpr float kLimit = numfmt::kE2m1Max;
  static constexpr float kMinNormal = 1.0f;
  static constexpr float kSubnormalMagic = 0x1p22f;  // ulp 0.5
  static constexpr int kDropBits = 22;               // 23 − 1 mantissa bit
  static int exponent(float amax) { return numfmt::fp4_quant_scale_exponent(amax); }
  static constexpr uint32_t kNanBits = 0;
  static constexpr bool kNanIsMax = true;  // e2m1 has no NaN: numfmt saturates it to ±6
};

template <class Fmt>
__m512 fake_quant16(__m512 x, __m512 inv_scale, __m512 scale) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  __m512 v = _mm512_mul_ps(x, inv_scale);  // x / s exactly: s is a power of two
  // min/max return their second operand when one is NaN, so NaN passes the clamp.
  v = _mm512_min_ps(_mm512_set1_ps(Fmt::kLimit), v);
  v = _mm512_max_ps(_mm512_set1_ps(-Fmt::kLimit), v);
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i sign = _mm512_andnot_si512(abs_mask, bits);
  const __m512i abs_bits = _mm512_and_si512(bits, abs_mask);
  const __m512 abs_v = _mm512_castsi512_ps(abs_bits);
  // Normal range: integer round-to-nearest-even of the fp32 pattern to the format's mantissa.
  const __m512i half = _mm512_set1_epi32((1 << (Fmt::kDropBits - 1)) - 1);
  const __m512i lsb =
      _mm512_and_si512(_mm512_srli_epi32(abs_bits, Fmt::kDropBits), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(abs_bits, half), lsb),
                       _mm512_set1_epi32(static_cast<int>(~((1u << Fmt::kDropBits) - 1u))));
  // Subnormal range: adding a magic power of two rounds to the subnormal step (RNE).
  const __m512 magic = _mm512_set1_ps(Fmt::kSubnormalMagic);
  const __m512 sub = _mm512_sub_ps(_mm512_add_ps(abs_v, magic), magic);
  const __mmask16 is_sub = _mm512_cmp_ps_mask(abs_v, _mm512_set1_ps(Fmt::kMinNormal), _CMP_LT_OQ);
  __m512 q = _mm512_mask_mov_ps(_mm512_castsi512_ps(rounded), is_sub, sub);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  if (Fmt::kNanIsMax) q = _mm512_mask_mov_ps(q, nan, _mm512_set1_ps(Fmt::kLimit));
  __m512 y = _mm512_mul_ps(q, scale);
  y = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
  if (!Fmt::kNanIsMax)
    y = _mm512_mask_mov_ps(y, nan,
                           _mm512_castsi512_ps(_mm512_or_si512(
                               sign, _mm512_set1_epi32(static_cast<int>(Fmt::kNanBits)))));
  return y;
}

template <class Fmt>
bool quantize_row(float* x, int64_t cols, int64_t block) {
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  for (int64_t b = 0; b < cols; b += block) {
    float* xb = x + b;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t t = 0; t < block; t += 16) {
      const __mmask16 mask =
          block - t >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (block - t)) - 1);
      const __m512 v = _mm512_and_ps(_mm512_maskz_loadu_ps(mask, xb + t), abs_mask);
      amax = _mm512_max_ps(v, amax);  // a NaN element returns amax: NaN is left out
    }
    const float block_max = _mm512_reduce_max_ps(amax);
    if (!std::isfinite(block_max)) return false;
    const int e = Fmt::exponent(block_max);
    const __m512 scale = _mm512_set1_ps(std::ldexp(1.0f, e));
    const __m512 inv_scale = _mm512_set1_ps(std::ldexp(1.0f, -e));
    for (int64_t t = 0; t < block; t += 16) {
      const __mmask16 mask =
          block - t >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (block - t)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(mask, xb + t);
      _mm512_mask_storeu_ps(xb + t, mask, fake_quant16<Fmt>(v, inv_scale, scale));
    }
  }
  return true;
}

}  // namespace

bool quantize_row_e4m3_avx512(float* x, int64_t cols, int64_t block) {
  return quantize_row<E4m3>(x, cols, block);
}

bool quantize_row_e2m1_avx512(float* x, int64_t cols, int64_t block) {
  return quantize_row<E2m1>(x, cols, block);
}

}  // namespace moerun::kernels::gemm_detail

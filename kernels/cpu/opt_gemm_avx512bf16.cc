// AVX-512-BF16 pieces of the optimized GEMM (opt_gemm_internal.h): FP8/FP4 weights decoded
// to bf16 in registers (block scales folded into the exponent, which is exact), and
// vdpbf16ps microkernels whose lanes are 64 weight rows (4 zmm).
//
// Why this matches the scalar order bit for bit: per lane vdpbf16ps does
// acc += a[odd]·w[odd]; acc += a[even]·w[even], each an fp32 add of an exact product with
// round-to-nearest-even (the products of two bf16 values are exact in fp32). Weights and
// activations are stored odd-first ({k+1, k}), so it adds k, then k+1 — the contract's order.
// It also treats subnormal inputs and results as zero; the model's data never gets there
// (weights ~1e-3..1, activations ~1, the products and sums far above 2^-126).
// Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/numfmt.h"
#include "kernels/cpu/opt_gemm_internal.h"

namespace moerun::kernels::gemm_detail {
namespace {

constexpr int kLaneVecs = kPanel / 16;
constexpr int64_t kFp8BlockPairs = kFp8Block / 2;
constexpr int64_t kFp4BlockPairs = kFp4Block / 2;
// Decode streams each panel once from memory; software prefetch this far ahead keeps more
// lines in flight than the hardware prefetcher alone does while the core decodes.
constexpr int64_t kPrefetchBytes = 2048;

// Prefetches the `bytes` (a multiple of 64) that the step kPrefetchBytes ahead will read.
inline void prefetch_ahead(const uint8_t* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + off), _MM_HINT_T0);
}

// bf16 bits of the e4m3 subnormals m·2^-9 (m = 0..7), indexed by the magnitude bits, and of
// the 16 e2m1 values (32 entries: vpermw reads 5 index bits, the fifth is a neighbour's).
// And for the VBMI decoder the low and high bytes of the bf16 of every e4m3 magnitude (the
// sign goes into the high byte separately); code 0x7F is NaN there, as in the checkpoint.
struct Tables {
  alignas(64) std::array<uint16_t, 32> e4m3_subnormal{};
  alignas(64) std::array<uint16_t, 32> e2m1{};
  alignas(64) std::array<uint8_t, 128> e4m3_low{};
  alignas(64) std::array<uint8_t, 128> e4m3_high{};
  alignas(64) std::array<uint8_t, 64> interleave0{};  // word t = {low[t], high[t]}, t < 32
  alignas(64) std::array<uint8_t, 64> interleave1{};  // word t = {low[32+t], high[32+t]}
};
const Tables& tables() {
  static const Tables t = [] {
    Tables r;
    for (int m = 0; m < 128; ++m) {
      const uint16_t b = numfmt::f32_to_bf16(numfmt::e4m3_to_f32(static_cast<uint8_t>(m)));
      r.e4m3_low[m] = static_cast<uint8_t>(b & 0xFF);
      r.e4m3_high[m] = static_cast<uint8_t>(b >> 8);
    }
    for (int w = 0; w < 32; ++w) {
      r.interleave0[2 * w] = static_cast<uint8_t>(w);
      r.interleave0[2 * w + 1] = static_cast<uint8_t>(64 + w);
      r.interleave1[2 * w] = static_cast<uint8_t>(32 + w);
      r.interleave1[2 * w + 1] = static_cast<uint8_t>(96 + w);
    }
    for (int m = 0; m < 8; ++m)
      r.e4m3_subnormal[m] = numfmt::f32_to_bf16(numfmt::e4m3_to_f32(static_cast<uint8_t>(m)));
    for (int x = 0; x < 32; ++x)
      r.e2m1[x] = numfmt::f32_to_bf16(numfmt::e2m1_to_f32(static_cast<uint8_t>(x & 15)));
    return r;
  }();
  return t;
}

// Per-thread buffer of scaled activation pairs (grows only).
uint32_t* thread_pairs(size_t count) {
  thread_local std::vector<uint32_t> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

__m512bh as_bh(__m512i v) {
  return reinterpret_cast<__m512bh>(v);
}

// The exponent offset (s − 127) << 7 that multiplies a bf16 by the E8M0 scale s, per word.
__m512i scale_delta(int scale) {
  return _mm512_set1_epi16(static_cast<int16_t>((scale - 127) << 7));
}

// 32 e4m3 codes (16 lanes × {k+1, k}) → bf16 values times the block scale. Normals: the
// 7 magnitude bits shifted under the bf16 exponent and rebiased (+120 << 7); subnormals from
// the table; then the scale is added to the exponent of every non-zero value and the sign put
// back. NaN codes (never in checkpoints) decode as 480·scale.
struct Fp8Decoder {
  __m512i subnormal;
  __m512i decode(const uint8_t* src, __m512i delta) const {
    const __m512i w =
        _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
    const __m512i mag = _mm512_and_si512(w, _mm512_set1_epi16(0x7F));
    __m512i v = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(0x3C00));
    const __mmask32 is_sub = _mm512_testn_epi16_mask(w, _mm512_set1_epi16(0x78));
    v = _mm512_mask_permutexvar_epi16(v, is_sub, mag, subnormal);
    const __mmask32 nonzero = _mm512_test_epi16_mask(w, _mm512_set1_epi16(0x7F));
    v = _mm512_mask_add_epi16(v, nonzero, v, delta);
    // v | (w << 8 & 0x8000): the sign bit 7 of the code becomes bit 15.
    return _mm512_ternarylogic_epi32(v, _mm512_slli_epi16(w, 8),
                                     _mm512_set1_epi16(static_cast<int16_t>(0x8000)), 0xF8);
  }
};

// 16 FP4 bytes (16 lanes, low nibble k, high nibble k+1) → 16 odd-first bf16 pairs times the
// lanes' scales (delta: per-word exponent offsets).
struct Fp4Decoder {
  __m512i table;
  __m512i decode(const uint8_t* src, __m512i delta) const {
    const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    // Low word indexes the high nibble (k+1), high word the low nibble (k).
    const __m512i idx = _mm512_or_si512(_mm512_srli_epi32(d, 4), _mm512_slli_epi32(d, 16));
    const __m512i v = _mm512_permutexvar_epi16(idx, table);
    const __mmask32 nonzero = _mm512_test_epi16_mask(v, _mm512_set1_epi16(0x7FFF));
    return _mm512_mask_add_epi16(v, nonzero, v, delta);
  }
  // Per-word scale offsets of 16 lanes from their E8M0 bytes.
  static __m512i lane_delta(const uint8_t* scales) {
    const __m512i s =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    const __m512i both = _mm512_or_si512(s, _mm512_slli_epi32(s, 16));
    return _mm512_slli_epi16(_mm512_sub_epi16(both, _mm512_set1_epi16(127)), 7);
  }
};

// ---- decode kernels: weights converted in registers, the whole reduction at once ----------

template <int MR>
struct Acc {
  __m512 v[MR][kLaneVecs];
  Acc() {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q) v[r][q] = _mm512_setzero_ps();
  }
  void step(const uint32_t* a, int64_t lda, int64_t kp, const __m512i (&wv)[kLaneVecs]) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(static_cast<int>(a[r * lda + kp]));
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q)
        v[r][q] = _mm512_dpbf16_ps(v[r][q], as_bh(b), as_bh(wv[q]));
    }
  }
  void store(float* c) const {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q) _mm512_storeu_ps(c + r * kPanel + q * 16, v[r][q]);
  }
};

template <int MR>
void direct_bf16w(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t lda, float* c) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(pw.panel(panel));
  Acc<MR> acc;
  for (int64_t kp = 0; kp < pw.kpairs; ++kp) {
    prefetch_ahead(reinterpret_cast<const uint8_t*>(w + kp * kPanel), kPanel * 4);
    __m512i wv[kLaneVecs];
#pragma GCC unroll 4
    for (int q = 0; q < kLaneVecs; ++q) wv[q] = _mm512_load_si512(w + kp * kPanel + q * 16);
    acc.step(a, lda, kp, wv);
  }
  acc.store(c);
}

template <int MR>
void direct_fp8(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t lda, float* c) {
  const uint8_t* w = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  const Fp8Decoder dec{_mm512_load_si512(tables().e4m3_subnormal.data())};
  Acc<MR> acc;
  for (int64_t kb = 0; kb < pw.kpairs; kb += kFp8BlockPairs) {
    const __m512i delta = scale_delta(scales[kb / kFp8BlockPairs]);
    const int64_t kend = std::min(pw.kpairs, kb + kFp8BlockPairs);
    for (int64_t kp = kb; kp < kend; ++kp) {
      prefetch_ahead(w + kp * kPanel * 2, kPanel * 2);
      __m512i wv[kLaneVecs];
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q) wv[q] = dec.decode(w + (kp * kPanel + q * 16) * 2, delta);
      acc.step(a, lda, kp, wv);
    }
  }
  acc.store(c);
}

// Activation pairs times the panel's FP8 block scales (one per 128 columns): moving the
// power of two from the weight to the activation keeps every product the same exact value.
// out: [rows][kpairs]; zero words stay zero.
void scale_pairs(const uint32_t* a, int64_t lda, int64_t rows, const uint8_t* scales,
                 int64_t kpairs, uint32_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t kp = 0; kp < kpairs; kp += 16) {
      const __mmask16 mask =
          kpairs - kp >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (kpairs - kp)) - 1);
      const __m512i v = _mm512_maskz_loadu_epi32(mask, a + r * lda + kp);
      const __mmask32 nonzero = _mm512_test_epi16_mask(v, _mm512_set1_epi16(0x7FFF));
      // 16 pairs never straddle a 128-column block: 64 pairs per block.
      const __m512i scaled =
          _mm512_mask_add_epi16(v, nonzero, v, scale_delta(scales[kp / kFp8BlockPairs]));
      _mm512_mask_storeu_epi32(out + r * kpairs + kp, mask, scaled);
    }
  }
}

// FP8 with VBMI: 64 codes (32 lanes × {k+1, k}) per two vpermi2b table lookups (low and high
// bf16 bytes of the magnitude), the sign or-ed into the high byte, and two byte permutes that
// interleave them into 2 × 16 bf16 pairs. The block scales ride on the activations.
template <int MR>
__attribute__((target("avx512vbmi"))) void direct_fp8_vbmi(const PackedView& pw, int64_t panel,
                                                           const uint32_t* a, int64_t lda,
                                                           float* c) {
  const Tables& t = tables();
  const __m512i low0 = _mm512_load_si512(t.e4m3_low.data());
  const __m512i low1 = _mm512_load_si512(t.e4m3_low.data() + 64);
  const __m512i high0 = _mm512_load_si512(t.e4m3_high.data());
  const __m512i high1 = _mm512_load_si512(t.e4m3_high.data() + 64);
  const __m512i inter0 = _mm512_load_si512(t.interleave0.data());
  const __m512i inter1 = _mm512_load_si512(t.interleave1.data());
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  uint32_t* as = thread_pairs(static_cast<size_t>(MR * pw.kpairs));
  scale_pairs(a, lda, MR, pw.panel_scales(panel), pw.kpairs, as);
  const uint8_t* w = pw.panel(panel);
  Acc<MR> acc;
  for (int64_t kp = 0; kp < pw.kpairs; ++kp) {
    prefetch_ahead(w + kp * kPanel * 2, kPanel * 2);
    __m512i wv[kLaneVecs];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i x = _mm512_load_si512(w + (kp * kPanel + h * 32) * 2);
      const __m512i lo = _mm512_permutex2var_epi8(low0, x, low1);
      // high byte | (x & 0x80): the lookup ignores bit 7, the sign.
      const __m512i hi =
          _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(high0, x, high1), x, sign_bit, 0xF8);
      wv[2 * h] = _mm512_permutex2var_epi8(lo, inter0, hi);
      wv[2 * h + 1] = _mm512_permutex2var_epi8(lo, inter1, hi);
    }
    acc.step(as, pw.kpairs, kp, wv);
  }
  acc.store(c);
}

template <int MR>
void direct_fp4(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t lda, float* c) {
  const uint8_t* w = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  const Fp4Decoder dec{_mm512_load_si512(tables().e2m1.data())};
  Acc<MR> acc;
  for (int64_t kb = 0; kb < pw.kpairs; kb += kFp4BlockPairs) {
    const uint8_t* srow = scales + kb / kFp4BlockPairs * kPanel;
    __m512i delta[kLaneVecs];
#pragma GCC unroll 4
    for (int q = 0; q < kLaneVecs; ++q) delta[q] = Fp4Decoder::lane_delta(srow + q * 16);
    for (int64_t kp = kb; kp < kb + kFp4BlockPairs; ++kp) {
      prefetch_ahead(w + kp * kPanel, kPanel);
      __m512i wv[kLaneVecs];
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q) wv[q] = dec.decode(w + kp * kPanel + q * 16, delta[q]);
      acc.step(a, lda, kp, wv);
    }
  }
  acc.store(c);
}

template <int MR>
void direct_rows(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t lda, bool vbmi,
                 float* c) {
  switch (pw.format) {
    case WeightFormat::kBf16:
      direct_bf16w<MR>(pw, panel, a, lda, c);
      return;
    case WeightFormat::kFp8:
      if (vbmi)
        direct_fp8_vbmi<MR>(pw, panel, a, lda, c);
      else
        direct_fp8<MR>(pw, panel, a, lda, c);
      return;
    case WeightFormat::kFp4:
      direct_fp4<MR>(pw, panel, a, lda, c);
      return;
    case WeightFormat::kF32:
      return;  // the fp32 family handles fp32 weights
  }
}

}  // namespace

void direct_bf16_avx512bf16(const PackedView& pw, int64_t panel, const uint32_t* a,
                            int64_t lda_pairs, int64_t rows, bool vbmi, float* c) {
  switch (rows) {
    case 1:
      direct_rows<1>(pw, panel, a, lda_pairs, vbmi, c);
      return;
    case 2:
      direct_rows<2>(pw, panel, a, lda_pairs, vbmi, c);
      return;
    case 3:
      direct_rows<3>(pw, panel, a, lda_pairs, vbmi, c);
      return;
    case 4:
      direct_rows<4>(pw, panel, a, lda_pairs, vbmi, c);
      return;
    default:
      return;
  }
}

}  // namespace moerun::kernels::gemm_detail

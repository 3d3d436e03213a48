// AVX-512-BF16 pieces of the optimized GEMM (opt_gemm_internal.h): FP8/FP4 weights decoded
// to bf16 in registers (block scales folded into the exponent, which is exact), and
// vdpbf16ps microkernels whose lanes are 64 weight rows (4 zmm). The decoders themselves are in
// opt_gemm_bf16_decode.h (shared with the AMX path).
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
#include <cmath>
#include <vector>

#include "common/numfmt.h"
#include "kernels/cpu/opt_gemm_bf16_decode.h"
#include "kernels/cpu/opt_gemm_internal.h"

namespace moerun::kernels::gemm_detail {
namespace {

constexpr int kLaneVecs = kPanel / 16;
// Per-thread buffer of scaled activation pairs (grows only).
uint32_t* thread_pairs(size_t count) {
  thread_local std::vector<uint32_t> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

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

// Activation pairs times the panel's FP8 block scales (one per 128 columns) and 2^extra: moving
// the power of two from the weight to the activation keeps every product the same exact value.
// out: [rows][kpairs]; zero words stay zero.
void scale_pairs(const uint32_t* a, int64_t lda, int64_t rows, const uint8_t* scales,
                 int64_t kpairs, int extra, uint32_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t kp = 0; kp < kpairs; kp += 16) {
      const __mmask16 mask =
          kpairs - kp >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (kpairs - kp)) - 1);
      const __m512i v = _mm512_maskz_loadu_epi32(mask, a + r * lda + kp);
      const __mmask32 nonzero = _mm512_test_epi16_mask(v, _mm512_set1_epi16(0x7FFF));
      // 16 pairs never straddle a 128-column block: 64 pairs per block.
      const __m512i scaled =
          _mm512_mask_add_epi16(v, nonzero, v, scale_delta(scales[kp / kFp8BlockPairs] + extra));
      _mm512_mask_storeu_epi32(out + r * kpairs + kp, mask, scaled);
    }
  }
}

// FP8 for VBMI CPUs, without byte tables: the 64 bytes of one half k-pair (32 lanes ×
// {k+1, k}) are spread into words with the code in the high byte by vpunpck{l,h}bw against
// zero, which keeps each lane's two codes together: of the 128-bit chunk c, the low unpack gets
// lanes 8c..8c+3 and the high one lanes 8c+4..8c+7 (restored at the store). One arithmetic
// shift right by 4 then puts the sign at bit 15 (copies in 11-14) and the 7 magnitude bits under
// the bf16 exponent (bits 4-10), and one ternary-logic op keeps those bits and ors in exponent
// bits 11-13 (kFp8OrExp = 112 = 127 − 15): for normal codes that is the bf16 word of the weight
// times 2^-8, exactly (exponent field 112 + e). 2^8 and the block scale ride on the
// activations. Codes with exponent 0 (zeros and subnormals m·2^-9) are the rare exception: a
// byte test per k-pair sends those k-pairs to a fix-up that overwrites their words from a
// vpermw table (bf16 of m·2^-17) and puts the sign back. NaN codes (never in checkpoints)
// decode as 480·scale, as Fp8Decoder does.
constexpr int kFp8OrExpBits = 0x3800;  // exponent field bits 11-13: 112 << 7
constexpr int kFp8ExtraExp = 8;        // the decoded words are the weights times 2^-8

struct Fp8SubnormalTable {
  alignas(64) std::array<uint16_t, 32> words{};  // index: the code's low 5 bits (e = 0: m)
};
const Fp8SubnormalTable& fp8_subnormal_table() {
  static const Fp8SubnormalTable t = [] {
    Fp8SubnormalTable r;
    for (int m = 0; m < 8; ++m)
      r.words[m] = numfmt::f32_to_bf16(
          std::ldexp(numfmt::e4m3_to_f32(static_cast<uint8_t>(m)), -kFp8ExtraExp));
    return r;
  }();
  return t;
}

template <int MR>
__attribute__((target("avx512vbmi"))) void direct_fp8_vbmi(const PackedView& pw, int64_t panel,
                                                           const uint32_t* a, int64_t lda,
                                                           float* c) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i keep = _mm512_set1_epi16(static_cast<int16_t>(0x87F0));  // sign, magnitude
  const __m512i or_exp = _mm512_set1_epi16(kFp8OrExpBits);
  const __m512i exp_bits = _mm512_set1_epi8(0x78);
  uint32_t* as = thread_pairs(static_cast<size_t>(MR * pw.kpairs));
  scale_pairs(a, lda, MR, pw.panel_scales(panel), pw.kpairs, kFp8ExtraExp, as);
  const uint8_t* w = pw.panel(panel);
  Acc<MR> acc;
  for (int64_t kp = 0; kp < pw.kpairs; ++kp) {
    prefetch_ahead(w + kp * kPanel * 2, kPanel * 2);
    const __m512i x0 = _mm512_load_si512(w + kp * kPanel * 2);
    const __m512i x1 = _mm512_load_si512(w + kp * kPanel * 2 + 64);
    const __m512i g[kLaneVecs] = {_mm512_unpacklo_epi8(zero, x0), _mm512_unpackhi_epi8(zero, x0),
                                  _mm512_unpacklo_epi8(zero, x1), _mm512_unpackhi_epi8(zero, x1)};
    __m512i wv[kLaneVecs];
#pragma GCC unroll 4
    for (int q = 0; q < kLaneVecs; ++q)  // (g >>s 4) & keep | or_exp
      wv[q] = _mm512_ternarylogic_epi32(_mm512_srai_epi16(g[q], 4), keep, or_exp, 0xEA);
    const __mmask64 sub =
        _kor_mask64(_mm512_testn_epi8_mask(x0, exp_bits), _mm512_testn_epi8_mask(x1, exp_bits));
    if (__builtin_expect(!_kortestz_mask64_u8(sub, sub), 0)) {
      const __m512i table = _mm512_load_si512(fp8_subnormal_table().words.data());
      const __m512i exp_word = _mm512_set1_epi16(0x7800);
      const __m512i sign = _mm512_set1_epi16(static_cast<int16_t>(0x8000));
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q) {
        const __mmask32 is_sub = _mm512_testn_epi16_mask(g[q], exp_word);
        const __m512i v =
            _mm512_mask_permutexvar_epi16(wv[q], is_sub, _mm512_srli_epi16(g[q], 8), table);
        wv[q] = _mm512_ternarylogic_epi32(v, g[q], sign, 0xF8);  // v | (g & sign)
      }
    }
    acc.step(as, pw.kpairs, kp, wv);
  }
  // Lanes back in order: vector 2h + v, element 4t + u is lane 32h + 8t + 4v + u.
  alignas(64) float t[MR * kPanel];
  acc.store(t);
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < kLaneVecs; ++q)
      for (int e = 0; e < 16; ++e)
        c[r * kPanel + 32 * (q / 2) + 8 * (e / 4) + 4 * (q % 2) + e % 4] =
            t[r * kPanel + q * 16 + e];
}

// FP4 without shuffles to spread the bytes: accumulator vector q holds the lanes 4j + q
// (j < 16), so that the byte of lane 4j + q is byte q of dword j of the 64 loaded bytes and the
// vpermw indices come from shifts alone; the end of direct_fp4 puts the lanes back in order.
// The table holds each code's bf16 magnitude plus kFp4Bias (the sign in bit 15 above it; ±0
// codes are 0), and a saturating subtract of kFp4Bias − (scale − 127) << 7 per lane both adds
// the scale to the exponent and keeps the zeros zero (0 − d saturates at 0): no mask, no test.
// For the scales of real weights (1 ≤ s ≤ 253) this gives the same words as Fp4Decoder except
// that −0 decodes as +0, which adds nothing either way (the accumulator, from +0, never is −0).
constexpr int kFp4Bias = 16128;  // 126 << 7: bf16 magnitudes ≤ 6.0 (0x40C0) stay below 0x8000

struct Fp4BiasedTable {
  alignas(64) std::array<uint16_t, 32> words{};  // index: 5 bits, the fifth a neighbour's
};
const Fp4BiasedTable& fp4_biased_table() {
  static const Fp4BiasedTable t = [] {
    Fp4BiasedTable r;
    for (int x = 0; x < 32; ++x) {
      const int code = x & 15;
      if ((code & 7) == 0) continue;  // ±0
      const uint16_t mag = numfmt::f32_to_bf16(numfmt::e2m1_to_f32(static_cast<uint8_t>(code & 7)));
      r.words[x] = static_cast<uint16_t>((code & 8 ? 0x8000 : 0) | (mag + kFp4Bias));
    }
    return r;
  }();
  return t;
}

// Per-word subtrahends kFp4Bias − (s − 127) << 7 of the lanes 4j + q, from 64 E8M0 bytes.
inline void fp4_lane_sub(const uint8_t* scales, __m512i (&d)[kLaneVecs]) {
  const __m512i s = _mm512_loadu_si512(scales);
  const __m512i byte = _mm512_set1_epi32(0xFF);
  const __m512i base = _mm512_set1_epi16(static_cast<int16_t>(kFp4Bias + (127 << 7)));
#pragma GCC unroll 4
  for (int q = 0; q < kLaneVecs; ++q) {
    const __m512i b = _mm512_and_si512(_mm512_srli_epi32(s, 8 * q), byte);
    const __m512i both = _mm512_or_si512(b, _mm512_slli_epi32(b, 16));
    d[q] = _mm512_sub_epi16(base, _mm512_slli_epi16(both, 7));
  }
}

// 64 FP4 bytes (one k-pair of the panel) → the 4 vectors of odd-first bf16 pairs, lanes 4j + q.
inline void fp4_decode_remap(const uint8_t* src, __m512i table, const __m512i (&d)[kLaneVecs],
                             __m512i (&wv)[kLaneVecs]) {
  constexpr __mmask32 kLowWords = 0x55555555;
  const __m512i x = _mm512_load_si512(src);
  const __m512i xs = _mm512_srli_epi32(x, 16);
  // Low word: the high nibble (k+1) in bits 0-3; high word: the low nibble (k) in bits 16-19.
  __m512i idx[kLaneVecs];
  idx[0] = _mm512_mask_srli_epi16(_mm512_slli_epi32(x, 16), kLowWords, x, 4);
  idx[1] = _mm512_mask_srli_epi16(_mm512_slli_epi32(x, 8), kLowWords, x, 12);
  idx[2] = _mm512_mask_srli_epi16(x, kLowWords, xs, 4);
  idx[3] = _mm512_mask_srli_epi16(_mm512_srli_epi32(x, 8), kLowWords, xs, 12);
#pragma GCC unroll 4
  for (int q = 0; q < kLaneVecs; ++q)
    wv[q] = _mm512_subs_epu16(_mm512_permutexvar_epi16(idx[q], table), d[q]);
}

template <int MR>
void direct_fp4(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t lda, float* c) {
  const uint8_t* w = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  const __m512i table = _mm512_load_si512(fp4_biased_table().words.data());
  Acc<MR> acc;
  for (int64_t kb = 0; kb < pw.kpairs; kb += kFp4BlockPairs) {
    __m512i d[kLaneVecs];
    fp4_lane_sub(scales + kb / kFp4BlockPairs * kPanel, d);
    for (int64_t kp = kb; kp < kb + kFp4BlockPairs; ++kp) {
      prefetch_ahead(w + kp * kPanel, kPanel);
      __m512i wv[kLaneVecs];
      fp4_decode_remap(w + kp * kPanel, table, d, wv);
      acc.step(a, lda, kp, wv);
    }
  }
  // Lanes back in order: vector q, element j is lane 4j + q.
  alignas(64) float t[MR * kPanel];
  acc.store(t);
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < kLaneVecs; ++q)
      for (int j = 0; j < 16; ++j) c[r * kPanel + 4 * j + q] = t[r * kPanel + q * 16 + j];
}

// FP4 with VBMI: the same words, but the indices come from one vpmultishiftqb per vector
// (port 5) instead of shifts (port 0, which vdpbf16ps keeps busy). vpmultishiftqb reads within
// a qword, so vector q holds the lanes 8t + 2q + u (element 2t + u, u < 2).
// vpmultishiftqb control of vector q: in element 2t + u, byte 0 ← the 8 bits from offset
// 8·(2q+u) + high, byte 2 ← from offset 8·(2q+u) (bytes 1 and 3: vpermw ignores them).
__attribute__((target("avx512vbmi"))) inline __m512i fp4_multishift_ctrl(int q, int64_t high) {
  const int64_t b0 = 8 * (2 * q);
  const int64_t b1 = 8 * (2 * q + 1);
  return _mm512_set1_epi64((b0 + high) | (b0 << 16) | ((b1 + high) << 32) | (b1 << 48));
}

// fp4_lane_sub for the lanes of direct_fp4_vbmi.
__attribute__((target("avx512vbmi"))) inline void fp4_lane_sub_vbmi(const uint8_t* scales,
                                                                    __m512i (&d)[kLaneVecs]) {
  const __m512i s = _mm512_loadu_si512(scales);
  const __m512i low_bytes = _mm512_set1_epi16(0xFF);
  const __m512i base = _mm512_set1_epi16(static_cast<int16_t>(kFp4Bias + (127 << 7)));
#pragma GCC unroll 4
  for (int q = 0; q < kLaneVecs; ++q) {
    const __m512i b =
        _mm512_and_si512(_mm512_multishift_epi64_epi8(fp4_multishift_ctrl(q, 0), s), low_bytes);
    d[q] = _mm512_sub_epi16(base, _mm512_slli_epi16(b, 7));
  }
}

template <int MR>
__attribute__((target("avx512vbmi"))) void direct_fp4_vbmi(const PackedView& pw, int64_t panel,
                                                           const uint32_t* a, int64_t lda,
                                                           float* c) {
  const uint8_t* w = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  const __m512i table = _mm512_load_si512(fp4_biased_table().words.data());
  __m512i ctrl[kLaneVecs];
#pragma GCC unroll 4
  for (int q = 0; q < kLaneVecs; ++q) ctrl[q] = fp4_multishift_ctrl(q, 4);
  Acc<MR> acc;
  for (int64_t kb = 0; kb < pw.kpairs; kb += kFp4BlockPairs) {
    __m512i d[kLaneVecs];
    fp4_lane_sub_vbmi(scales + kb / kFp4BlockPairs * kPanel, d);
    for (int64_t kp = kb; kp < kb + kFp4BlockPairs; ++kp) {
      prefetch_ahead(w + kp * kPanel, kPanel);
      const __m512i x = _mm512_load_si512(w + kp * kPanel);
      __m512i wv[kLaneVecs];
#pragma GCC unroll 4
      for (int q = 0; q < kLaneVecs; ++q)
        wv[q] = _mm512_subs_epu16(
            _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(ctrl[q], x), table), d[q]);
      acc.step(a, lda, kp, wv);
    }
  }
  // Lanes back in order: vector q, element 2t + u is lane 8t + 2q + u.
  alignas(64) float t[MR * kPanel];
  acc.store(t);
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < kLaneVecs; ++q)
      for (int e = 0; e < 16; ++e)
        c[r * kPanel + 8 * (e / 2) + 2 * q + e % 2] = t[r * kPanel + q * 16 + e];
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
      if (vbmi)
        direct_fp4_vbmi<MR>(pw, panel, a, lda, c);
      else
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

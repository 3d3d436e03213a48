// The bf16 weight decoders shared by the AVX-512-BF16 and AMX paths of the optimized GEMM
// (opt_gemm_internal.h): FP8 (e4m3) and FP4 (e2m1) codes to bf16 with the power-of-two block
// scale added to the exponent, which is exact for the model's weights. Include only from files
// compiled with at least -mavx512f -mavx512bw (the per-ISA GEMM files); everything here has
// internal linkage, so each such file gets its own copy built with its own flags.
#pragma once

#include <immintrin.h>

#include <array>
#include <cstdint>

#include "common/numfmt.h"
#include "kernels/cpu/opt_gemm_internal.h"

namespace moerun::kernels::gemm_detail {
namespace {

constexpr int64_t kFp8BlockPairs = kFp8Block / 2;
constexpr int64_t kFp4BlockPairs = kFp4Block / 2;
// Decode streams each panel once from memory; software prefetch this far ahead keeps more
// lines in flight than the hardware prefetcher alone does while the core decodes.
constexpr int64_t kPrefetchBytes = 2048;

// Prefetches the `bytes` (a multiple of 64) that the step `distance` bytes ahead will read.
inline void prefetch_ahead(const uint8_t* p, int64_t bytes, int64_t distance = kPrefetchBytes) {
  for (int64_t off = 0; off < bytes; off += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + distance + off), _MM_HINT_T0);
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
inline const Tables& tables() {
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

inline __m512bh as_bh(__m512i v) {
  return reinterpret_cast<__m512bh>(v);
}

// The exponent offset (s − 127) << 7 that multiplies a bf16 by the E8M0 scale s, per word.
inline __m512i scale_delta(int scale) {
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

}  // namespace
}  // namespace moerun::kernels::gemm_detail

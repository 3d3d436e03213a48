// AMX-BF16 path of the optimized GEMM (opt_gemm_internal.h), used for every m where AMX tiles
// are usable: one 64-row weight panel at a time, its FP8/FP4/bf16 values decoded into bf16 B
// tiles (block scales added to the exponent, exact for the model's weights) in a small
// per-thread scratch, kAmxChunkPairs k-pairs at a time, and TDPBF16PS over 16-row A tiles of
// activation pairs.
//
// Why rows are batch-invariant although TDPBF16PS does not follow the sequential order: each
// C element depends only on its own A row, its own B column and the K tiles it is fed, and the
// K tiles are fixed by cols alone (kAmxTilePairs pairs each, zero-padded at the end, always
// added in ascending order to one accumulator from +0; a C tile stored to memory between
// chunks and loaded back is exact). How many rows a tile holds, which tile a row lands in, the
// zero rows padding the last A tile and the thread that runs the item change nothing.
// Compiled with -mamx-tile -mamx-bf16 -mavx512f -mavx512bw -mavx512vl -mavx512bf16
// -mavx512vbmi; called only when cpu_features().amx_usable (which implies BF16 and VBMI).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/opt_gemm_bf16_decode.h"
#include "kernels/cpu/opt_gemm_internal.h"

namespace moerun::kernels::gemm_detail {
namespace {

// Bytes between consecutive k-pairs of one lane in a panel / the B scratch, and between C rows.
constexpr int64_t kPairRowBytes = kPanel * 4;
constexpr int64_t kLaneBytes = kPanel * 4;
// Decode reads a panel once from memory, K tile by K tile with tile work in between: prefetch
// further ahead than the register-only decoders do (two FP8 K tiles).
constexpr int64_t kPrefetchDistance = 4096;

// LDTILECFG's 64-byte operand, palette 1: tiles 0-3 accumulate C, 4-5 hold A, 6-7 hold B; all
// 16 rows × 64 bytes (padding rows are zero data, so one configuration serves every m).
struct alignas(64) TileConfig {
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

constexpr TileConfig make_tile_config() {
  TileConfig t;
  t.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    t.colsb[i] = static_cast<uint16_t>(kAmxTilePairs * 4);
    t.rows[i] = static_cast<uint8_t>(kAmxTileRows);
  }
  return t;
}
constexpr TileConfig kTileConfig = make_tile_config();

// The tile intrinsics of GCC 12 are asm statements that do not tell the compiler which memory
// a tile load reads; this keeps the scratch stores in front of the loads that read them.
inline void compiler_fence() {
  __asm__ volatile("" ::: "memory");
}

// The 64 lanes of pair kp of an FP8 panel (128 codes, {k+1, k} per lane) → 64 bf16 pairs times
// the block scale: two byte-table lookups for the low and high bf16 bytes of each magnitude
// (the sign or-ed into the high byte), two byte permutes interleaving them into pairs, then
// the scale added to the exponent of every non-zero value.
struct Fp8VbmiDecoder {
  __m512i low0, low1, high0, high1, inter0, inter1;
  Fp8VbmiDecoder() {
    const Tables& t = tables();
    low0 = _mm512_load_si512(t.e4m3_low.data());
    low1 = _mm512_load_si512(t.e4m3_low.data() + 64);
    high0 = _mm512_load_si512(t.e4m3_high.data());
    high1 = _mm512_load_si512(t.e4m3_high.data() + 64);
    inter0 = _mm512_load_si512(t.interleave0.data());
    inter1 = _mm512_load_si512(t.interleave1.data());
  }
  void decode(const uint8_t* src, __m512i delta, uint32_t* dst) const {
    const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
    const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i x = _mm512_loadu_si512(src + h * 64);
      const __m512i lo = _mm512_permutex2var_epi8(low0, x, low1);
      // high byte | (x & 0x80): the lookup ignores bit 7, the sign.
      const __m512i hi =
          _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(high0, x, high1), x, sign_bit, 0xF8);
      __m512i v0 = _mm512_permutex2var_epi8(lo, inter0, hi);
      __m512i v1 = _mm512_permutex2var_epi8(lo, inter1, hi);
      v0 = _mm512_mask_add_epi16(v0, _mm512_test_epi16_mask(v0, magnitude), v0, delta);
      v1 = _mm512_mask_add_epi16(v1, _mm512_test_epi16_mask(v1, magnitude), v1, delta);
      _mm512_storeu_si512(dst + h * 32, v0);
      _mm512_storeu_si512(dst + h * 32 + 16, v1);
    }
  }
};

// Pairs [kp0, kp1) of an FP8 panel into b (row kp − kp0 of 64 lanes).
void decode_fp8(const PackedView& pw, int64_t panel, int64_t kp0, int64_t kp1, uint32_t* b) {
  const uint8_t* w = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  const Fp8VbmiDecoder dec;
  for (int64_t kb = kp0; kb < kp1;) {
    const int64_t kend = std::min(kp1, (kb / kFp8BlockPairs + 1) * kFp8BlockPairs);
    const __m512i delta = scale_delta(scales[kb / kFp8BlockPairs]);
    for (int64_t kp = kb; kp < kend; ++kp) {
      prefetch_ahead(w + kp * kPanel * 2, kPanel * 2, kPrefetchDistance);
      dec.decode(w + kp * kPanel * 2, delta, b + (kp - kp0) * kPanel);
    }
    kb = kend;
  }
}

// Pairs [kp0, kp1) of an FP4 panel into b; scales per lane per 16 pairs.
void decode_fp4(const PackedView& pw, int64_t panel, int64_t kp0, int64_t kp1, uint32_t* b) {
  const uint8_t* w = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  const Fp4Decoder dec{_mm512_load_si512(tables().e2m1.data())};
  for (int64_t kb = kp0; kb < kp1; kb += kFp4BlockPairs) {
    const uint8_t* srow = scales + kb / kFp4BlockPairs * kPanel;
    __m512i delta[kPanel / 16];
#pragma GCC unroll 4
    for (int q = 0; q < kPanel / 16; ++q) delta[q] = Fp4Decoder::lane_delta(srow + q * 16);
    const int64_t kend = std::min(kp1, kb + kFp4BlockPairs);
    for (int64_t kp = kb; kp < kend; ++kp) {
      prefetch_ahead(w + kp * kPanel, kPanel, kPrefetchDistance);
      uint32_t* dst = b + (kp - kp0) * kPanel;
#pragma GCC unroll 4
      for (int q = 0; q < kPanel / 16; ++q)
        _mm512_storeu_si512(dst + q * 16, dec.decode(w + kp * kPanel + q * 16, delta[q]));
    }
  }
}

// The B tiles of pairs [kp0, kp0 + kc) of a panel (kc a multiple of kAmxTilePairs), pairs past
// the weight's kpairs zero: bf16 panels are read in place where the chunk is whole, the rest is
// decoded into b.
const uint32_t* b_chunk(const PackedView& pw, int64_t panel, int64_t kp0, int64_t kc, uint32_t* b) {
  const int64_t kp1 = std::min(pw.kpairs, kp0 + kc);
  switch (pw.format) {
    case WeightFormat::kBf16:
      if (kp1 == kp0 + kc) return reinterpret_cast<const uint32_t*>(pw.panel(panel)) + kp0 * kPanel;
      std::memcpy(b, reinterpret_cast<const uint32_t*>(pw.panel(panel)) + kp0 * kPanel,
                  static_cast<size_t>((kp1 - kp0) * kPairRowBytes));
      break;
    case WeightFormat::kFp8:
      decode_fp8(pw, panel, kp0, kp1, b);
      break;
    case WeightFormat::kFp4:
      decode_fp4(pw, panel, kp0, kp1, b);
      break;
    case WeightFormat::kF32:
      break;  // the fp32 family handles fp32 weights
  }
  std::memset(b + (kp1 - kp0) * kPanel, 0, static_cast<size_t>((kp0 + kc - kp1) * kPairRowBytes));
  return b;
}

// A tile (row tile r, K tile kt) of the blocked activations: 16 rows of 64 bytes, contiguous.
constexpr int64_t kATileWords = kAmxTileRows * kAmxTilePairs;
constexpr int64_t kATileStride = kAmxTilePairs * 4;

// 32 rows × 32 lanes (lanes 32·half ..): C tiles 0-1 (first 16 rows) and 2-3 (next 16), A tiles
// 4-5, B tiles 6-7, over nk K tiles, from +0 when init, else continuing the sums in c.
// a: the block's first A tile at the chunk's first K tile; row_tile: words between row tiles;
// b: the chunk's B tiles.
void tile_block_2x2(const uint32_t* a, int64_t row_tile, const uint32_t* b, int64_t nk, float* c,
                    int half, bool init) {
  float* c0 = c + half * 32;
  float* c1 = c0 + kAmxTileRows * kPanel;
  if (init) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c0, kLaneBytes);
    _tile_loadd(1, c0 + 16, kLaneBytes);
    _tile_loadd(2, c1, kLaneBytes);
    _tile_loadd(3, c1 + 16, kLaneBytes);
  }
  const uint32_t* bh = b + half * 32;
  for (int64_t kt = 0; kt < nk; ++kt) {
    const uint32_t* bk = bh + kt * kAmxTilePairs * kPanel;
    const uint32_t* ak = a + kt * kATileWords;
    _tile_loadd(6, bk, kPairRowBytes);
    _tile_loadd(7, bk + 16, kPairRowBytes);
    _tile_loadd(4, ak, kATileStride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, ak + row_tile, kATileStride);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c0, kLaneBytes);
  _tile_stored(1, c0 + 16, kLaneBytes);
  _tile_stored(2, c1, kLaneBytes);
  _tile_stored(3, c1 + 16, kLaneBytes);
}

// One K tile of 16 rows × all 64 lanes into C tiles 0-3: A tile 4, B tiles 5-7 with the fourth
// column group reloading 5 — four accumulators, so consecutive TDPBF16PS do not wait for each
// other's results. a: the A tile; b: the K tile's 16 pair rows of the B scratch or panel.
inline void tile_step_1x4(const uint32_t* a, const uint32_t* b) {
  _tile_loadd(4, a, kATileStride);
  _tile_loadd(5, b, kPairRowBytes);
  _tile_dpbf16ps(0, 4, 5);
  _tile_loadd(6, b + 16, kPairRowBytes);
  _tile_dpbf16ps(1, 4, 6);
  _tile_loadd(7, b + 32, kPairRowBytes);
  _tile_dpbf16ps(2, 4, 7);
  _tile_loadd(5, b + 48, kPairRowBytes);
  _tile_dpbf16ps(3, 4, 5);
}

void zero_c_tiles() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

void load_c_1x4(const float* c) {
  _tile_loadd(0, c, kLaneBytes);
  _tile_loadd(1, c + 16, kLaneBytes);
  _tile_loadd(2, c + 32, kLaneBytes);
  _tile_loadd(3, c + 48, kLaneBytes);
}

void store_c_1x4(float* c) {
  _tile_stored(0, c, kLaneBytes);
  _tile_stored(1, c + 16, kLaneBytes);
  _tile_stored(2, c + 32, kLaneBytes);
  _tile_stored(3, c + 48, kLaneBytes);
}

// 16 rows × 64 lanes over nk K tiles of a decoded chunk (a lone last row tile of a prefill item).
void tile_block_1x4(const uint32_t* a, const uint32_t* b, int64_t nk, float* c, bool init) {
  if (init)
    zero_c_tiles();
  else
    load_c_1x4(c);
  for (int64_t kt = 0; kt < nk; ++kt)
    tile_step_1x4(a + kt * kATileWords, b + kt * kAmxTilePairs * kPanel);
  store_c_1x4(c);
}

// Items of one row tile (decode): the C tiles stay in registers over the whole reduction, and
// each K tile is decoded just before its TDPBF16PS into one of two alternating 4 KiB slots of b,
// so the vector units decode the next K tile while the tile unit multiplies this one.
void panel_one_row_tile(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t kp_pad,
                        uint32_t* b, float* c) {
  zero_c_tiles();
  for (int64_t kt = 0; kt < kp_pad / kAmxTilePairs; ++kt) {
    uint32_t* slot = b + (kt % 2) * kAmxTilePairs * kPanel;
    const uint32_t* bk = b_chunk(pw, panel, kt * kAmxTilePairs, kAmxTilePairs, slot);
    compiler_fence();
    tile_step_1x4(a + kt * kATileWords, bk);
  }
  store_c_1x4(c);
  compiler_fence();
}

}  // namespace

void amx_begin() {
  compiler_fence();
  _tile_loadconfig(&kTileConfig);
}

void amx_end() {
  _tile_release();
}

void amx_pairs_row(const float* row, int64_t cols, int64_t kp_pad, int64_t i, uint32_t* a) {
  uint32_t* base = a + (i / kAmxTileRows) * kAmxTileRows * kp_pad + (i % kAmxTileRows) * 16;
  // Pair kp of this row; 8 consecutive pairs from a multiple of 8 stay in one tile row.
  const auto at = [base](int64_t kp) { return base + (kp / 16) * kATileWords + kp % 16; };
  int64_t kp = 0;
  if (row != nullptr) {
    // The activations are bf16 values, so keeping the top 16 bits of each fp32 is exact.
    for (; 2 * kp + 16 <= cols; kp += 8) {
      const __m512i q = _mm512_loadu_si512(row + 2 * kp);  // 8 qwords {a[k], a[k+1]}
      const __m512i d = _mm512_or_si512(_mm512_srli_epi64(q, 48),
                                        _mm512_and_si512(q, _mm512_set1_epi64(0xFFFF0000)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(at(kp)), _mm512_cvtepi64_epi32(d));
    }
    for (; 2 * kp < cols; ++kp) {
      uint32_t lo = 0;
      uint32_t hi = 0;
      std::memcpy(&lo, row + 2 * kp, 4);
      if (2 * kp + 1 < cols) std::memcpy(&hi, row + 2 * kp + 1, 4);
      *at(kp) = (hi >> 16) | (lo & 0xFFFF0000u);
    }
  }
  for (; kp < kp_pad; ++kp) *at(kp) = 0;
}

void amx_panel(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t kp_pad, int64_t rows,
               uint32_t* b, float* c) {
  if (rows == kAmxTileRows) {
    panel_one_row_tile(pw, panel, a, kp_pad, b, c);
    return;
  }
  const int64_t row_tile = kAmxTileRows * kp_pad;
  for (int64_t kp0 = 0; kp0 < kp_pad; kp0 += kAmxChunkPairs) {
    const int64_t kc = std::min(kAmxChunkPairs, kp_pad - kp0);
    const uint32_t* bc = b_chunk(pw, panel, kp0, kc, b);
    compiler_fence();
    const int64_t nk = kc / kAmxTilePairs;
    for (int64_t i = 0; i < rows; i += 2 * kAmxTileRows) {
      const uint32_t* ai = a + (i / kAmxTileRows) * row_tile + kp0 / kAmxTilePairs * kATileWords;
      float* ci = c + i * kPanel;
      if (rows - i >= 2 * kAmxTileRows) {
        tile_block_2x2(ai, row_tile, bc, nk, ci, 0, kp0 == 0);
        tile_block_2x2(ai, row_tile, bc, nk, ci, 1, kp0 == 0);
      } else {
        tile_block_1x4(ai, bc, nk, ci, kp0 == 0);
      }
    }
    compiler_fence();
  }
}

void amx_store_rows(const float* c, int64_t rows, int64_t count, bool round_bf16, float* out,
                    int64_t ldo) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i inf_bits = _mm512_set1_epi32(0x7F800000);
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t i = 0; i < rows; ++i) {
    const float* src = c + i * kPanel;
    float* dst = out + i * ldo;
    for (int64_t j = 0; j < count; j += 16) {
      const __mmask16 mask =
          count - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (count - j)) - 1);
      __m512i v = _mm512_maskz_loadu_epi32(mask, src + j);
      if (round_bf16) {
        // numfmt::round_to_bf16 lane by lane: + 0x7FFF + lsb of the kept half rounds to
        // nearest even; NaN keeps its top half with the quiet bit forced.
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
        const __m512i rounded =
            _mm512_add_epi32(v, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(v, abs_mask), inf_bits);
        const __m512i quiet = _mm512_or_si512(v, _mm512_set1_epi32(0x00400000));
        v = _mm512_and_si512(_mm512_mask_blend_epi32(nan, rounded, quiet), high_half);
      }
      _mm512_mask_storeu_epi32(dst + j, mask, v);
    }
  }
}

}  // namespace moerun::kernels::gemm_detail

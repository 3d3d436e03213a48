// Internals of the optimized GEMM shared by opt_gemm.cc (packing, dispatch, threads, the
// portable path) and the per-ISA files opt_gemm_{avx2,avx512,avx512bf16,amx}.cc, each
// compiled with its own -m flags and called only after cpu_features() says the ISA is there.
//
// Packed layout: the weight rows are cut into panels of kPanel = 64 rows (row r is lane
// r % 64 of panel r / 64; rows past W.rows are zero), and inside a panel the reduction runs
// outermost so that one k (or k-pair) of all 64 lanes is contiguous:
//   kF32   float    [cols][64]
//   kBf16  uint16   [kpairs][64][2]   pair = {W[k+1], W[k]}  (k = 2·kp; W[cols] = 0)
//   kFp8   uint8    [kpairs][64][2]   pair = {W[k+1], W[k]}, e4m3 codes
//          scales   [ceil(cols/128)]  one E8M0 byte per 128-column block (64 | 128, so a
//                                     panel never straddles a 128-row scale block)
//   kFp4   uint8    [kpairs][64]      the checkpoint byte (low nibble k, high nibble k+1)
//          scales   [cols/32][64]     E8M0, one per lane per 32 columns
// The pairs are stored odd-first because vdpbf16ps adds the odd product of a pair before the
// even one (see the order contract in kernels.h): storing {k+1, k} makes it add k first.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace moerun::kernels::gemm_detail {

inline constexpr int64_t kPanel = 64;      // weight rows per panel (lanes of 4 zmm)
inline constexpr int64_t kFp8Block = 128;  // FP8 scale block (rows and columns)
inline constexpr int64_t kFp4Block = 32;   // FP4 scale block (columns)
inline constexpr int64_t kChunkK = 1024;   // reduction chunk converted at a time
inline constexpr int kMaxRowsBlock = 6;    // rows per register block (microkernels)
inline constexpr int kMaxDirectRows = 4;   // rows handled by the in-register decode kernels

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// A view of one packed weight (owned by PackedGemmWeight in opt_gemm.cc, or by a temporary
// pack of the rows a call needs when GemmParams::packed is null).
struct PackedView {
  WeightFormat format = WeightFormat::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t kpairs = 0;       // ceil(cols / 2)
  int64_t first_panel = 0;  // panel index of data's first panel (0 for a full pack)
  int64_t num_panels = 0;
  const uint8_t* data = nullptr;
  int64_t panel_bytes = 0;
  const uint8_t* scales = nullptr;
  int64_t panel_scale_bytes = 0;

  const uint8_t* panel(int64_t p) const { return data + (p - first_panel) * panel_bytes; }
  const uint8_t* panel_scales(int64_t p) const {
    return scales + (p - first_panel) * panel_scale_bytes;
  }
};

// ---- fp32 family (portable, AVX2, AVX-512F; all paths for kF32 weights) ----------------
// w[kk][lane] = W[panel row lane][k0 + kk] · scale for kk < kc, as fp32 (exact).
using ConvertF32Fn = void (*)(const PackedView& pw, int64_t panel, int64_t k0, int64_t kc,
                              float* w);
// c[i][lane] (ldc = 64) = fma-chain over k0..k0+kc of a[i][k]·w[k][lane], starting from c
// (or +0 when init), for i < rows and the lanes of 16-lane groups [g0, g0 + ng) only (the
// whole panel: g0 = 0, ng = kLaneGroups; other lanes of c are left alone); a points at column
// k0 of row 0, w and c at lane 0 of the panel. Each lane's chain is the same whatever the
// group range.
inline constexpr int64_t kGroupLanes = 16;                    // lanes per group (one zmm)
inline constexpr int64_t kLaneGroups = kPanel / kGroupLanes;  // groups per panel
using MicroF32Fn = void (*)(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc,
                            float* c, bool init, int64_t g0, int64_t ng);

void convert_f32_portable(const PackedView& pw, int64_t panel, int64_t k0, int64_t kc, float* w);
void micro_f32_portable(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc,
                        float* c, bool init, int64_t g0, int64_t ng);
void micro_f32_avx2(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc, float* c,
                    bool init, int64_t g0, int64_t ng);
void convert_f32_avx512(const PackedView& pw, int64_t panel, int64_t k0, int64_t kc, float* w);
void micro_f32_avx512(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc,
                      float* c, bool init, int64_t g0, int64_t ng);

// ---- decode (AVX-512-BF16) -----------------------------------------------------------------
// Activations as bf16 pairs, one uint32 per k-pair, odd-first like the weights:
// {a[k+1], a[k]}. Rows of `kpairs` entries, the last pair zero-padded for odd cols.
void pairs_from_f32_avx512(const float* a, int64_t lda, int64_t m, int64_t cols, int64_t kpairs,
                           uint32_t* out);
// rows ≤ kMaxDirectRows: c[i][lane] (ldc = 64) = the whole reduction of one panel by
// vdpbf16ps chains, the weights decoded in registers (vbmi: the byte-table FP8 decoder).
void direct_bf16_avx512bf16(const PackedView& pw, int64_t panel, const uint32_t* a,
                            int64_t lda_pairs, int64_t rows, bool vbmi, float* c);

// ---- AMX-BF16 (every m, bf16/FP8/FP4 weights, where cpu_features().amx_usable) ---------
// TDPBF16PS does not add a K tile's 32 products in the sequential order (see kernels.h), so
// this path keeps its own fixed order instead: every tile is 16 rows × 64 bytes, the
// reduction is cut into K tiles of kAmxTilePairs pairs (zero-padded past cols), and each
// output adds them in ascending order into one fp32 accumulator from +0. Nothing of that
// depends on m, the row's place or the thread split, so rows stay batch-invariant.
inline constexpr int64_t kAmxTileRows = 16;     // A rows, B k-pairs and C rows per tile
inline constexpr int64_t kAmxTilePairs = 16;    // k-pairs per K tile (one 64-byte tile row)
inline constexpr int64_t kAmxChunkPairs = 128;  // k-pairs of a panel decoded at a time

// Per OpenMP thread, around its share of the work: load the tile configuration (palette 1)
// and release the tile state afterwards (so the thread's context switches stay cheap).
void amx_begin();
void amx_end();
// Activations as A tiles: bf16 pairs {a[k+1], a[k]} (the packed weights' order), kp_pad pairs
// per row (kpairs rounded up to kAmxTilePairs, zero from k = cols on), blocked so that each
// tile is 1 KiB of contiguous memory: pair kp of row i at
//   a[(i / 16) · 16·kp_pad + (kp / 16) · 256 + (i % 16) · 16 + kp % 16].
// Writes row i from `row`, or zeros when row == nullptr (padding rows of the last tile).
void amx_pairs_row(const float* row, int64_t cols, int64_t kp_pad, int64_t i, uint32_t* a);
// c[i][lane] (ldc = 64) for i < rows (a multiple of kAmxTileRows) = one panel's whole
// reduction by tiles; a: the first row tile of those rows in amx_pairs_row's layout; b:
// per-thread scratch of kAmxChunkPairs × 64 pairs (the decoded B tiles, block scales applied).
// Call between amx_begin and amx_end.
void amx_panel(const PackedView& pw, int64_t panel, const uint32_t* a, int64_t kp_pad, int64_t rows,
               uint32_t* b, float* c);
// out[i][t] = c[i][t] (ldc = 64), or numfmt::round_to_bf16 of it, for i < rows, t < count.
void amx_store_rows(const float* c, int64_t rows, int64_t count, bool round_bf16, float* out,
                    int64_t ldo);

// ---- activation quantization (AVX-512F) --------------------------------------------------
// Returns false (and leaves the rest of the row untouched) if a block has an infinite value,
// for the caller to report through numfmt's error.
bool quantize_row_e4m3_avx512(float* x, int64_t cols, int64_t block);
bool quantize_row_e2m1_avx512(float* x, int64_t cols, int64_t block);

}  // namespace moerun::kernels::gemm_detail

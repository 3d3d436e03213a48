// The optimized GEMM's front end (opt_gemm.h): weight packing, the choice of SIMD path, the
// OpenMP split of the work and the portable C++ path; the per-ISA inner loops live in
// opt_gemm_{avx2,avx512,avx512bf16,amx}.cc.
//
// Every non-AMX path computes each output the same way (the order contract of GemmParams): an
// fp32 accumulator from +0 that adds the exact products for k = 0, 1, ... one rounding at a
// time. The AMX path has its own order, fixed by cols alone (opt_gemm_internal.h), and is used
// for every m where it is used at all. Either way the work is split only over outputs: threads
// take (64-row weight panel, row chunk) items (a lone fp32-family panel at decode sizes: ranges
// of its 16-lane groups), and the reduction is cut into chunks whose partial sums go through
// memory as fp32, which changes nothing. SIMD lanes and tile columns are weight rows, never k.
#include "kernels/cpu/opt_gemm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/numfmt.h"
#include "kernels/cpu/opt_gemm_internal.h"
#include "kernels/cpu/weight_decode.h"

namespace moerun::kernels {
namespace {

using gemm_detail::ceil_div;
using gemm_detail::kChunkK;
using gemm_detail::kFp4Block;
using gemm_detail::kFp8Block;
using gemm_detail::kMaxDirectRows;
using gemm_detail::kMaxRowsBlock;
using gemm_detail::kPanel;
using gemm_detail::PackedView;

// Rows of activations per work item: bounds the fp32 partial-sum buffer and lets a call with
// few panels still use every thread.
constexpr int64_t kMaxItemRows = 256;
// AMX items: a thread's consecutive items are consecutive panels of one row chunk, whose A tiles
// (128 rows × K bf16, 1 MiB at K = 4096) then stay in its L2 instead of coming from L3 each time.
constexpr int64_t kMaxAmxItemRows = 128;
constexpr size_t kAlign = 64;

// 64-byte aligned scratch that only grows; one per thread (thread_local), so the hot path
// allocates only when a call is bigger than every call before it on that thread.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(ptr_); }
  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(ptr_);
      size_ = (bytes + kAlign - 1) / kAlign * kAlign;
      ptr_ = std::aligned_alloc(kAlign, size_);
      if (ptr_ == nullptr) throw std::bad_alloc();
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

template <typename T>
T* thread_scratch(int slot, size_t count) {
  // 0: partial sums, 1: converted weights, 2: activation pairs, 3: gemm_batch's activation
  // pairs of every decode call (the calling thread's, read by every thread of the region)
  thread_local Scratch slots[4];
  return static_cast<T*>(slots[slot].get(count * sizeof(T)));
}

// Owns the re-blocked copy of a weight (see opt_gemm_internal.h for the layout).
class PackedGemmWeight final : public PackedWeight {
 public:
  PackedGemmWeight(const WeightView& w, int64_t first_panel, int64_t end_panel);
  int64_t bytes() const override { return data_bytes_ + static_cast<int64_t>(scales_.size()); }
  const PackedView& view() const { return view_; }

 private:
  PackedView view_;
  Scratch data_;  // 64-byte aligned, so panels start on cache lines
  int64_t data_bytes_ = 0;
  std::vector<uint8_t> scales_;
};

PackedGemmWeight::PackedGemmWeight(const WeightView& w, int64_t first_panel, int64_t end_panel) {
  PackedView& v = view_;
  v.format = w.format;
  v.rows = w.rows;
  v.cols = w.cols;
  v.kpairs = ceil_div(w.cols, 2);
  v.first_panel = first_panel;
  v.num_panels = end_panel - first_panel;
  const int64_t cols = w.cols;
  const int64_t kp_n = v.kpairs;
  switch (w.format) {
    case WeightFormat::kF32:
      v.panel_bytes = cols * kPanel * 4;
      break;
    case WeightFormat::kBf16:
      v.panel_bytes = kp_n * kPanel * 4;
      break;
    case WeightFormat::kFp8:
      v.panel_bytes = kp_n * kPanel * 2;
      v.panel_scale_bytes = ceil_div(cols, kFp8Block);
      break;
    case WeightFormat::kFp4:
      v.panel_bytes = kp_n * kPanel;
      v.panel_scale_bytes = cols / kFp4Block * kPanel;
      break;
  }
  data_bytes_ = v.panel_bytes * v.num_panels;
  uint8_t* data = static_cast<uint8_t*>(data_.get(static_cast<size_t>(data_bytes_)));
  std::memset(data, 0, static_cast<size_t>(data_bytes_));
  scales_.assign(static_cast<size_t>(v.panel_scale_bytes * v.num_panels), 127);  // 127 = 2^0
  for (int64_t p = first_panel; p < end_panel; ++p) {
    uint8_t* dst = data + (p - first_panel) * v.panel_bytes;
    uint8_t* sdst = scales_.data() + (p - first_panel) * v.panel_scale_bytes;
    const int64_t lanes = std::min(kPanel, w.rows - p * kPanel);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const int64_t row = p * kPanel + lane;
      switch (w.format) {
        case WeightFormat::kF32: {
          const float* src = static_cast<const float*>(w.data) + row * cols;
          float* d = reinterpret_cast<float*>(dst);
          for (int64_t k = 0; k < cols; ++k) d[k * kPanel + lane] = src[k];
          break;
        }
        case WeightFormat::kBf16: {
          const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * cols;
          uint16_t* d = reinterpret_cast<uint16_t*>(dst);
          for (int64_t k = 0; k < cols; ++k)
            d[((k / 2) * kPanel + lane) * 2 + (1 - k % 2)] = src[k];
          break;
        }
        case WeightFormat::kFp8: {
          const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * cols;
          for (int64_t k = 0; k < cols; ++k)
            dst[((k / 2) * kPanel + lane) * 2 + (1 - k % 2)] = src[k];
          break;
        }
        case WeightFormat::kFp4: {
          const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * (cols / 2);
          for (int64_t kp = 0; kp < kp_n; ++kp) dst[kp * kPanel + lane] = src[kp];
          const uint8_t* ssrc = w.scales + row * (cols / kFp4Block);
          for (int64_t b = 0; b < cols / kFp4Block; ++b) sdst[b * kPanel + lane] = ssrc[b];
          break;
        }
      }
    }
    if (w.format == WeightFormat::kFp8) {
      const uint8_t* ssrc = w.scales + (p * kPanel / kFp8Block) * v.panel_scale_bytes;
      std::memcpy(sdst, ssrc, static_cast<size_t>(v.panel_scale_bytes));
    }
  }
  v.data = data;
  v.scales = scales_.data();
}

enum class Path { kPortable, kAvx2, kAvx512, kAvx512Bf16, kAmx };

Path choose_path(const CpuFeatures& f, WeightFormat format, RowPhase phase) {
  // kF32 weights need fp32 products (fma), which only the fp32 family computes. AMX, where
  // usable, takes every m of the prefill phase: rows stay batch-invariant only if the path
  // does not change with m (its sums differ from the sequential order's in the last bits).
  // Decode rows stream the weights once and are faster decoded in registers (vdpbf16ps).
  if (f.amx_usable && format != WeightFormat::kF32 && phase == RowPhase::kPrefill)
    return Path::kAmx;
  if (f.avx512_bf16 && format != WeightFormat::kF32) return Path::kAvx512Bf16;
  if (f.avx512f) return Path::kAvx512;
  if (f.avx2) return Path::kAvx2;
  return Path::kPortable;
}

struct WorkSplit {
  int64_t first_panel = 0;
  int64_t num_panels = 0;
  int64_t row_chunk = 0;
  int64_t num_row_chunks = 0;
};

// The weight panels [first, end) that hold rows [row_begin, row_begin + n) of a call.
int64_t first_panel_of(const GemmParams& p) {
  return p.row_begin / kPanel;
}
int64_t end_panel_of(const GemmParams& p) {
  return ceil_div(p.row_begin + p.n, kPanel);
}

// How many row chunks to cut m into: items of at most max_item_rows rows, and with too few
// panels to keep every thread busy twice over, finer (down to min_item_rows rows), which
// duplicates only the weight conversion.
int64_t row_chunk_count(const GemmParams& p, int64_t num_panels, int threads, int64_t max_item_rows,
                        int64_t min_item_rows) {
  int64_t chunks = ceil_div(p.m, max_item_rows);
  if (num_panels * chunks < 2 * threads) {
    const int64_t want = ceil_div(2 * threads, num_panels);
    chunks = std::max<int64_t>(chunks, std::min(want, ceil_div(p.m, min_item_rows)));
  }
  return chunks;
}

WorkSplit split_work(const GemmParams& p, int threads) {
  WorkSplit s;
  s.first_panel = first_panel_of(p);
  s.num_panels = end_panel_of(p) - s.first_panel;
  const int64_t chunks = row_chunk_count(p, s.num_panels, threads, kMaxItemRows, kMaxRowsBlock);
  int64_t rows = ceil_div(p.m, chunks);
  if (rows > kMaxDirectRows) rows = ceil_div(rows, kMaxRowsBlock) * kMaxRowsBlock;
  s.row_chunk = rows;
  s.num_row_chunks = ceil_div(p.m, rows);
  return s;
}

// Writes the item's fp32 sums c[i][lane] to the outputs its lanes own (of lanes
// [lane_lo, lane_hi) only, when given).
void store_outputs(const GemmParams& p, int64_t panel, int64_t i0, int64_t rows, const float* c,
                   int64_t lane_lo = 0, int64_t lane_hi = kPanel) {
  const int64_t r0 = std::max(panel * kPanel + lane_lo, p.row_begin);
  const int64_t r1 = std::min(panel * kPanel + lane_hi, p.row_begin + p.n);
  if (r1 <= r0) return;
  const size_t count = static_cast<size_t>(r1 - r0);
  for (int64_t i = 0; i < rows; ++i) {
    float* out = p.out + (i0 + i) * p.ldo + (r0 - p.row_begin);
    const float* crow = c + i * kPanel + (r0 - panel * kPanel);
    if (p.round_bf16) {
      for (size_t t = 0; t < count; ++t) out[t] = numfmt::round_to_bf16(crow[t]);
    } else {
      std::memcpy(out, crow, sizeof(float) * count);
    }
  }
}

int resolve_threads(int num_threads) {
  return num_threads > 0 ? num_threads : omp_get_max_threads();
}

// The fp32 family's sums of one panel: c [rows, kPanel] over every K chunk in order, for
// lane groups [g0, g0 + ng). fp32 weights are read in place, the others converted per chunk.
void panel_sums(const PackedView& pw, int64_t panel, gemm_detail::ConvertF32Fn convert,
                gemm_detail::MicroF32Fn micro, const float* a, int64_t lda, int64_t rows,
                int64_t g0, int64_t ng, float* c) {
  float* wbuf = thread_scratch<float>(1, static_cast<size_t>(kChunkK * kPanel));
  for (int64_t k0 = 0; k0 < pw.cols; k0 += kChunkK) {
    const int64_t kc = std::min(kChunkK, pw.cols - k0);
    const float* w = wbuf;
    if (pw.format == WeightFormat::kF32)
      w = reinterpret_cast<const float*>(pw.panel(panel)) + k0 * kPanel;
    else
      convert(pw, panel, k0, kc, wbuf);
    micro(a + k0, lda, rows, w, kc, c, k0 == 0, g0, ng);
  }
}

// One panel at decode sizes (m ≤ kMaxDirectRows, e.g. the mHC projections: 24 rows): only the
// 16-lane groups holding rows the call writes are computed (lanes past W.rows are padding),
// and with threads ≥ 2 those groups are split over threads as items, every item all m rows.
// Which groups run together, and on which thread, changes no lane's fma chain.
void gemm_f32_lane_groups(const GemmParams& p, const PackedView& pw,
                          gemm_detail::ConvertF32Fn convert, gemm_detail::MicroF32Fn micro,
                          int64_t panel, int threads) {
  using gemm_detail::kGroupLanes;
  const int64_t lane_lo = std::max(p.row_begin - panel * kPanel, int64_t{0});
  const int64_t lane_hi = std::min(p.row_begin + p.n - panel * kPanel, kPanel);
  const int64_t g_begin = lane_lo / kGroupLanes;
  const int64_t groups = ceil_div(lane_hi, kGroupLanes) - g_begin;
  const int64_t items = std::min<int64_t>(groups, threads);
  const auto run_item = [&](int64_t item) {
    const int64_t g0 = g_begin + item * groups / items;
    const int64_t ng = g_begin + (item + 1) * groups / items - g0;
    float* c = thread_scratch<float>(0, static_cast<size_t>(p.m * kPanel));
    panel_sums(pw, panel, convert, micro, p.a, p.lda, p.m, g0, ng, c);
    store_outputs(p, panel, 0, p.m, c, g0 * kGroupLanes, (g0 + ng) * kGroupLanes);
  };
  // One item: no parallel region, whose start and barrier cost more than the item.
  if (items == 1) {
    run_item(0);
    return;
  }
  const int region_threads = static_cast<int>(items);
#pragma omp parallel for num_threads(region_threads) schedule(static)
  for (int64_t item = 0; item < items; ++item) run_item(item);
}

void gemm_f32_family(const GemmParams& p, const PackedView& pw, Path path, int threads) {
  gemm_detail::ConvertF32Fn convert = gemm_detail::convert_f32_portable;
  gemm_detail::MicroF32Fn micro = gemm_detail::micro_f32_portable;
  if (path == Path::kAvx2) micro = gemm_detail::micro_f32_avx2;
  if (path == Path::kAvx512) {
    convert = gemm_detail::convert_f32_avx512;
    micro = gemm_detail::micro_f32_avx512;
  }
  const WorkSplit s = split_work(p, threads);
  if (s.num_panels == 1 && p.m <= kMaxDirectRows) {
    gemm_f32_lane_groups(p, pw, convert, micro, s.first_panel, threads);
    return;
  }
  const int64_t items = s.num_panels * s.num_row_chunks;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t panel = s.first_panel + item % s.num_panels;
    const int64_t i0 = item / s.num_panels * s.row_chunk;
    const int64_t rows = std::min(s.row_chunk, p.m - i0);
    float* c = thread_scratch<float>(0, static_cast<size_t>(rows * kPanel));
    panel_sums(pw, panel, convert, micro, p.a + i0 * p.lda, p.lda, rows, 0,
               gemm_detail::kLaneGroups, c);
    store_outputs(p, panel, i0, rows, c);
  }
}

// Decode (m ≤ kMaxDirectRows): vdpbf16ps with the weights decoded in registers, so each
// weight byte is read once and never written back.
void gemm_bf16_direct(const GemmParams& p, const PackedView& pw, bool vbmi, int threads) {
  const int64_t kp_n = pw.kpairs;
  uint32_t* a_pairs = thread_scratch<uint32_t>(2, static_cast<size_t>(p.m * kp_n));
  gemm_detail::pairs_from_f32_avx512(p.a, p.lda, p.m, pw.cols, kp_n, a_pairs);
  const int64_t first_panel = first_panel_of(p);
  const int64_t num_panels = end_panel_of(p) - first_panel;
  const auto run_panel = [&](int64_t idx) {
    const int64_t panel = first_panel + idx;
    float* c = thread_scratch<float>(0, static_cast<size_t>(p.m * kPanel));
    gemm_detail::direct_bf16_avx512bf16(pw, panel, a_pairs, kp_n, p.m, vbmi, c);
    store_outputs(p, panel, 0, p.m, c);
  };
  // One panel (or one thread): no parallel region, whose start and barrier cost more than a
  // small decode GEMM (the other threads would only wait).
  if (num_panels == 1 || threads == 1) {
    for (int64_t idx = 0; idx < num_panels; ++idx) run_panel(idx);
    return;
  }
  // Static: each thread streams a contiguous run of panels. (Dynamic scheduling looked a few
  // percent faster on a 2-vCPU VM but coincided with 16-thread decode on the device going from
  // 16 to 35 ms/token; contiguous runs are the known-good choice.)
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t idx = 0; idx < num_panels; ++idx) run_panel(idx);
}

// AMX: items of up to kMaxAmxItemRows rows, the row chunk a multiple of one A tile (16) or of
// the 2-tile block (32), so that only the last chunk has padding rows.
WorkSplit split_work_amx(const GemmParams& p, int threads) {
  constexpr int64_t kTile = gemm_detail::kAmxTileRows;
  WorkSplit s;
  s.first_panel = first_panel_of(p);
  s.num_panels = end_panel_of(p) - s.first_panel;
  const int64_t chunks = row_chunk_count(p, s.num_panels, threads, kMaxAmxItemRows, 2 * kTile);
  const int64_t rows = ceil_div(p.m, chunks);
  s.row_chunk = rows <= kTile ? kTile : ceil_div(rows, 2 * kTile) * 2 * kTile;
  s.num_row_chunks = ceil_div(p.m, s.row_chunk);
  return s;
}

// AMX-BF16 tiles for every m (opt_gemm_amx.cc). The activations are converted once to bf16
// pairs, padded with zeros to whole tiles (rows to 16, k-pairs to 16), which every item reads.
void gemm_amx(const GemmParams& p, const PackedView& pw, int threads) {
  const int64_t kp_pad =
      ceil_div(pw.kpairs, gemm_detail::kAmxTilePairs) * gemm_detail::kAmxTilePairs;
  const WorkSplit s = split_work_amx(p, threads);
  const int64_t m_pad = s.num_row_chunks * s.row_chunk;
  uint32_t* a_pairs = thread_scratch<uint32_t>(2, static_cast<size_t>(m_pad * kp_pad));
  const int64_t items = s.num_panels * s.num_row_chunks;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m_pad; ++i)
      gemm_detail::amx_pairs_row(i < p.m ? p.a + i * p.lda : nullptr, pw.cols, kp_pad, i, a_pairs);
    gemm_detail::amx_begin();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t panel = s.first_panel + item % s.num_panels;
      const int64_t i0 = item / s.num_panels * s.row_chunk;
      const int64_t rows = std::min(s.row_chunk, p.m - i0);
      const int64_t tile_rows =
          ceil_div(rows, gemm_detail::kAmxTileRows) * gemm_detail::kAmxTileRows;
      float* c = thread_scratch<float>(0, static_cast<size_t>(tile_rows * kPanel));
      uint32_t* b =
          thread_scratch<uint32_t>(1, static_cast<size_t>(gemm_detail::kAmxChunkPairs * kPanel));
      gemm_detail::amx_panel(pw, panel, a_pairs + i0 * kp_pad, kp_pad, tile_rows, b, c);
      const int64_t r0 = std::max(panel * kPanel, p.row_begin);
      const int64_t r1 = std::min((panel + 1) * kPanel, p.row_begin + p.n);
      gemm_detail::amx_store_rows(c + (r0 - panel * kPanel), rows, r1 - r0, p.round_bf16,
                                  p.out + i0 * p.ldo + (r0 - p.row_begin), p.ldo);
    }
    gemm_detail::amx_end();
  }
}

void check_gemm(const GemmParams& p) {
  check_weight_view(p.w, "gemm");
  MOERUN_CHECK(p.m >= 0 && p.n >= 0, "gemm: negative size m={} n={}", p.m, p.n);
  MOERUN_CHECK(p.row_begin >= 0 && p.row_begin + p.n <= p.w.rows,
               "gemm: rows [{}, {}) outside the weight's {} rows", p.row_begin, p.row_begin + p.n,
               p.w.rows);
  MOERUN_CHECK(p.m == 0 || (p.lda >= p.w.cols && p.ldo >= p.n),
               "gemm: lda {} < cols {} or ldo {} < n {}", p.lda, p.w.cols, p.ldo, p.n);
}

// p.packed as this kernel set's pack, checked against p.w; nullptr when the call has none.
const PackedGemmWeight* checked_pack(const GemmParams& p) {
  const PackedGemmWeight* packed = dynamic_cast<const PackedGemmWeight*>(p.packed);
  MOERUN_CHECK(p.packed == nullptr || packed != nullptr,
               "gemm: the packed weight was not made by the optimized kernels");
  if (packed != nullptr) {
    const PackedView& v = packed->view();
    MOERUN_CHECK(v.format == p.w.format && v.rows == p.w.rows && v.cols == p.w.cols,
                 "gemm: the packed weight does not match the weight view");
  }
  return packed;
}

// p.packed checked against p.w, or (no pack) a re-blocked copy of just the panels the call
// reads, kept in `temporary` (slow, but the same arithmetic).
const PackedGemmWeight* resolve_pack(const GemmParams& p,
                                     std::unique_ptr<PackedGemmWeight>& temporary) {
  const PackedGemmWeight* packed = checked_pack(p);
  if (packed != nullptr) return packed;
  temporary = std::make_unique<PackedGemmWeight>(p.w, first_panel_of(p), end_panel_of(p));
  return temporary.get();
}

// True where opt_gemm sends the call to gemm_bf16_direct.
bool takes_direct_path(const GemmParams& p, const CpuFeatures& f) {
  return choose_path(f, p.w.format, p.phase) == Path::kAvx512Bf16 && p.m <= kMaxDirectRows;
}

}  // namespace

// ---- the portable path --------------------------------------------------------------------

namespace gemm_detail {

void convert_f32_portable(const PackedView& pw, int64_t panel, int64_t k0, int64_t kc, float* w) {
  const uint8_t* data = pw.panel(panel);
  const uint8_t* scales = pw.panel_scales(panel);
  for (int64_t kk = 0; kk < kc; ++kk) {
    const int64_t k = k0 + kk;
    const int64_t kp = k / 2;
    const int64_t slot = 1 - k % 2;  // pairs are stored {k+1, k}
    float* row = w + kk * kPanel;
    switch (pw.format) {
      case WeightFormat::kF32:
        std::memcpy(row, reinterpret_cast<const float*>(data) + k * kPanel, sizeof(float) * kPanel);
        break;
      case WeightFormat::kBf16: {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(data) + kp * kPanel * 2;
        for (int64_t lane = 0; lane < kPanel; ++lane)
          row[lane] = numfmt::bf16_to_f32(src[lane * 2 + slot]);
        break;
      }
      case WeightFormat::kFp8: {
        const uint8_t* src = data + kp * kPanel * 2;
        const float scale = numfmt::e8m0_to_f32(scales[k / kFp8Block]);
        for (int64_t lane = 0; lane < kPanel; ++lane)
          row[lane] = numfmt::e4m3_to_f32(src[lane * 2 + slot]) * scale;
        break;
      }
      case WeightFormat::kFp4: {
        const uint8_t* src = data + kp * kPanel;
        const uint8_t* srow = scales + (k / kFp4Block) * kPanel;
        for (int64_t lane = 0; lane < kPanel; ++lane) {
          const uint8_t byte = src[lane];
          const uint8_t nib = k % 2 == 0 ? numfmt::fp4_even(byte) : numfmt::fp4_odd(byte);
          row[lane] = numfmt::e2m1_to_f32(nib) * numfmt::e8m0_to_f32(srow[lane]);
        }
        break;
      }
    }
  }
}

void micro_f32_portable(const float* a, int64_t lda, int64_t rows, const float* w, int64_t kc,
                        float* c, bool init, int64_t g0, int64_t ng) {
  const int64_t lane0 = g0 * kGroupLanes;
  const int64_t lanes = ng * kGroupLanes;
  for (int64_t i = 0; i < rows; ++i) {
    float acc[kPanel];
    float* crow = c + i * kPanel + lane0;
    for (int64_t t = 0; t < lanes; ++t) acc[t] = init ? 0.0f : crow[t];
    const float* arow = a + i * lda;
    for (int64_t k = 0; k < kc; ++k) {
      const float ak = arow[k];
      const float* wk = w + k * kPanel + lane0;
      for (int64_t t = 0; t < lanes; ++t) acc[t] = std::fma(ak, wk[t], acc[t]);
    }
    std::memcpy(crow, acc, sizeof(float) * static_cast<size_t>(lanes));
  }
}

}  // namespace gemm_detail

// ---- public entry points ------------------------------------------------------------------

std::unique_ptr<PackedWeight> opt_pack_weight(const WeightView& w) {
  check_weight_view(w, "opt_pack_weight");
  return std::make_unique<PackedGemmWeight>(w, 0, ceil_div(w.rows, kPanel));
}

void opt_gemm(const GemmParams& p, const CpuFeatures& f, int num_threads) {
  check_gemm(p);
  if (p.m == 0 || p.n == 0) return;
  std::unique_ptr<PackedGemmWeight> temporary;
  const PackedGemmWeight* packed = resolve_pack(p, temporary);
  const int threads = resolve_threads(num_threads);
  const Path path = choose_path(f, p.w.format, p.phase);
  // Without AMX, prefill goes through fp32 FMA even where vdpbf16ps exists: weights converted
  // once per chunk are reused by every row, and on Sapphire/Emerald Rapids two FMA ports give
  // twice the multiply-adds per cycle of vdpbf16ps (bench_gemm measures both). Same results.
  if (path == Path::kAmx)
    gemm_amx(p, packed->view(), threads);
  else if (path == Path::kAvx512Bf16 && p.m <= kMaxDirectRows)
    gemm_bf16_direct(p, packed->view(), f.avx512_vbmi, threads);
  else
    gemm_f32_family(p, packed->view(), path == Path::kAvx512Bf16 ? Path::kAvx512 : path, threads);
}

void opt_gemm_batch(const GemmParams* ps, size_t n, const CpuFeatures& f, int num_threads) {
  // Every call is checked (and its pack resolved) before any runs, so that a bad call throws
  // here rather than inside the parallel region.
  struct DirectCall {
    const GemmParams* p;
    const PackedView* pw;
    size_t pairs_offset;  // into the activation pairs buffer
  };
  struct Item {
    int32_t call;
    int32_t panel;
  };
  std::vector<std::unique_ptr<PackedGemmWeight>> temporaries;
  // Reused from call to call (the hot path allocates only when a batch is bigger than before).
  thread_local std::vector<DirectCall> direct;
  thread_local std::vector<const GemmParams*> others;
  thread_local std::vector<Item> items;
  direct.clear();
  others.clear();
  items.clear();
  size_t pairs_total = 0;
  for (size_t i = 0; i < n; ++i) {
    const GemmParams& p = ps[i];
    check_gemm(p);
    if (p.m == 0 || p.n == 0) continue;
    if (!takes_direct_path(p, f)) {
      checked_pack(p);
      others.push_back(&p);
      continue;
    }
    std::unique_ptr<PackedGemmWeight> temporary;
    const PackedGemmWeight* packed = resolve_pack(p, temporary);
    if (temporary != nullptr) temporaries.push_back(std::move(temporary));
    direct.push_back({&p, &packed->view(), pairs_total});
    // Each call's rows start on a cache line of their own.
    pairs_total += static_cast<size_t>(ceil_div(p.m * packed->view().kpairs, 16) * 16);
  }
  for (const GemmParams* p : others) opt_gemm(*p, f, num_threads);
  if (direct.empty()) return;

  // The decode calls: activations to bf16 pairs (each call its own rows of the buffer), then
  // every (call, panel) of them in one region. Which thread computes a panel, and next to
  // which others, changes nothing in its result (gemm_bf16_direct's per-panel computation).
  uint32_t* pairs = thread_scratch<uint32_t>(3, pairs_total);
  for (size_t c = 0; c < direct.size(); ++c) {
    const DirectCall& d = direct[c];
    gemm_detail::pairs_from_f32_avx512(d.p->a, d.p->lda, d.p->m, d.pw->cols, d.pw->kpairs,
                                       pairs + d.pairs_offset);
    for (int64_t panel = first_panel_of(*d.p); panel < end_panel_of(*d.p); ++panel)
      items.push_back({static_cast<int32_t>(c), static_cast<int32_t>(panel)});
  }
  // The lists by pointer: inside the region each thread's `direct` and `items` would name its
  // own thread_local vectors.
  const DirectCall* calls = direct.data();
  const Item* item_list = items.data();
  const bool vbmi = f.avx512_vbmi;
  const auto run_item = [calls, pairs, vbmi](const Item& item) {
    const DirectCall& d = calls[item.call];
    const GemmParams& p = *d.p;
    float* c = thread_scratch<float>(0, static_cast<size_t>(p.m * kPanel));
    gemm_detail::direct_bf16_avx512bf16(*d.pw, item.panel, pairs + d.pairs_offset, d.pw->kpairs,
                                        p.m, vbmi, c);
    store_outputs(p, item.panel, 0, p.m, c);
  };
  const int threads = resolve_threads(num_threads);
  const int64_t num_items = static_cast<int64_t>(items.size());
  if (num_items == 1 || threads == 1) {
    for (int64_t i = 0; i < num_items; ++i) run_item(item_list[i]);
    return;
  }
  // Static, like gemm_bf16_direct: contiguous runs of (call, panel) items per thread.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < num_items; ++i) run_item(item_list[i]);
}

namespace {

using QuantRowFn = bool (*)(float* x, int64_t cols, int64_t block);

void quantize_rows(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                   QuantRowFn vector_row, void (*scalar_block)(float*, size_t), int threads) {
  MOERUN_CHECK(block > 0 && cols % block == 0, "quantize: cols {} not a multiple of block {}", cols,
               block);
  int64_t bad_row = -1;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : bad_row)
  for (int64_t i = 0; i < rows; ++i) {
    float* row = x + i * ld;
    if (vector_row != nullptr) {
      if (!vector_row(row, cols, block)) bad_row = std::max(bad_row, i);
      continue;
    }
    for (int64_t b = 0; b < cols; b += block) {
      float amax = 0.0f;
      for (int64_t t = 0; t < block; ++t) amax = std::max(amax, std::fabs(row[b + t]));
      if (!std::isfinite(amax)) {  // numfmt would throw, inside a parallel region
        bad_row = std::max(bad_row, i);
        break;
      }
      scalar_block(row + b, static_cast<size_t>(block));
    }
  }
  if (bad_row >= 0) {
    // Rethrow numfmt's own error from the calling thread.
    for (int64_t b = 0; b < cols; b += block)
      scalar_block(x + bad_row * ld + b, static_cast<size_t>(block));
    MOERUN_THROW("quantize: row {} has a non-finite value", bad_row);
  }
}

}  // namespace

void opt_quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                       const CpuFeatures& f, int num_threads) {
  quantize_rows(x, rows, ld, cols, block,
                f.avx512f ? gemm_detail::quantize_row_e4m3_avx512 : nullptr,
                numfmt::fake_quant_block_e4m3, resolve_threads(num_threads));
}

void opt_quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block,
                       const CpuFeatures& f, int num_threads) {
  quantize_rows(x, rows, ld, cols, block,
                f.avx512f ? gemm_detail::quantize_row_e2m1_avx512 : nullptr,
                numfmt::fake_quant_block_e2m1, resolve_threads(num_threads));
}

}  // namespace moerun::kernels

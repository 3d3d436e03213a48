// The compressors (spec §2.6): learned gated pooling of r tokens (8 with the ratio-4 overlap)
// into one row, normalized, rotated at the block's first position, then FP8-simulated (main
// KV) or Hadamard-rotated and FP4-simulated (indexer keys). The running state is the last
// 2r (overlap) or r tokens' projections in the sequence's slot, indexed by position, so a
// block pools the same values whether its tokens came in one step or many.
#include <cstring>

#include "kernels/cpu/canonical.h"
#include "worker/model/model.h"

namespace moerun::model {

void Model::add_compressor_projections(GemmList& list, const CompressorWeights& cw,
                                       const StepBatch& batch, const float* x,
                                       CompressorInput& in) {
  // fp32 outputs: the bf16 weights are used as fp32, as the reference does.
  const int64_t rows = batch.rows(), d = config().hidden_size;
  const int64_t width = (cw.overlap ? 2 : 1) * cw.dim;
  in.kv.resize(static_cast<size_t>(rows * width));
  in.score.resize(static_cast<size_t>(rows * width));
  add_linear(list, cw.wkv, x, all_rows(batch), d, in.kv.data(), width, false);
  add_linear(list, cw.wgate, x, all_rows(batch), d, in.score.data(), width, false);
}

void Model::compress(int64_t layer, const CompressorWeights& cw, bool indexer,
                     const StepBatch& batch, CompressorInput& in) {
  const ModelConfig& c = config();
  const kv::LayerKvLayout& ly = pool_.layout().layer(layer);
  const int64_t rows = batch.rows(), r = cw.ratio, dc = cw.dim;
  const int64_t width = (cw.overlap ? 2 : 1) * dc, rd = c.qk_rope_head_dim;
  const int64_t state_rows = ly.state_rows;
  const int64_t kv_off = indexer ? ly.idx_kv : ly.comp_kv;
  const int64_t score_off = indexer ? ly.idx_score : ly.comp_score;

  // Scores + ape[p mod r].
  const std::vector<float>& kvp = in.kv;
  std::vector<float>& g = in.score;
  for (int64_t i = 0; i < rows; ++i) {
    const float* ape = cw.ape.data() + (batch.positions[i] % r) * width;
    for (int64_t k = 0; k < width; ++k) g[i * width + k] += ape[k];
  }

  const RopeTable& tab = rope(layer);
  std::vector<const float*> term_kv, term_score;
  std::vector<float> row(static_cast<size_t>(dc));
  for (const Segment& s : batch.segments) {
    float* slot = pool_.slot(*s.kv);
    float* st_kv = slot + kv_off;
    float* st_score = slot + score_off;
    for (int64_t i = s.begin; i < s.begin + s.count; ++i) {
      const int64_t p = batch.positions[i];
      std::memcpy(st_kv + (p % state_rows) * width, kvp.data() + i * width, sizeof(float) * width);
      std::memcpy(st_score + (p % state_rows) * width, g.data() + i * width, sizeof(float) * width);
      if ((p + 1) % r != 0) continue;
      const int64_t j = p / r;
      // Terms in the reference's order: with overlap, the previous block's tokens (first half
      // of their channels) then this block's (second half); without, this block's.
      term_kv.clear();
      term_score.clear();
      if (cw.overlap && j > 0)
        for (int64_t t = (j - 1) * r; t < j * r; ++t) {
          term_kv.push_back(st_kv + (t % state_rows) * width);
          term_score.push_back(st_score + (t % state_rows) * width);
        }
      const int64_t half = cw.overlap ? dc : 0;
      for (int64_t t = j * r; t < (j + 1) * r; ++t) {
        term_kv.push_back(st_kv + (t % state_rows) * width + half);
        term_score.push_back(st_score + (t % state_rows) * width + half);
      }
      kernels::PoolParams pp;
      pp.kv = term_kv.data();
      pp.score = term_score.data();
      pp.n_terms = static_cast<int64_t>(term_kv.size());
      pp.dim = dc;
      pp.out = row.data();
      k_.pool(pp);
      for (float& v : row) v = kernels::canonical::bf16(v);
      k_.rmsnorm(row.data(), dc, 1, dc, cw.norm.data(), static_cast<float>(c.rms_norm_eps),
                 row.data(), dc);
      const int32_t first = static_cast<int32_t>(j * r);
      kernels::RopeParams rp;
      rp.x = row.data() + dc - rd;
      rp.rows = 1;
      rp.row_stride = dc;
      rp.head_stride = dc;
      rp.rope_dim = rd;
      rp.positions = &first;
      rp.cos = tab.cos.data();
      rp.sin = tab.sin.data();
      k_.rope(rp);
      if (indexer) {
        k_.hadamard(row.data(), 1, dc);
        k_.quantize_e2m1(row.data(), 1, dc, dc, 32);
        std::memcpy(pool_.idx_row(*s.kv, layer, j), row.data(), sizeof(float) * dc);
      } else {
        k_.quantize_e4m3(row.data(), 1, dc, dc - rd, 64);
        std::memcpy(pool_.comp_row(*s.kv, layer, j), row.data(), sizeof(float) * dc);
      }
    }
  }
}

}  // namespace moerun::model

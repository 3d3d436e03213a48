// The CSA indexer (spec §2.5): FP4-simulated, Hadamard-rotated queries scored against the
// indexer's own compressed keys, weighted over heads; each token keeps the top index_topk
// rows that are complete at its position (ties to the lower row, rows listed ascending).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/canonical.h"
#include "worker/model/model.h"

namespace moerun::model {

void Model::indexer_select(int64_t layer, const StepBatch& batch, float* q, float* w,
                           CompressorInput& key_input, std::vector<int32_t>& sel,
                           std::vector<int32_t>& counts, ForwardObserver* obs) {
  const ModelConfig& c = config();
  const IndexerWeights& ix = *w_.layer(layer).attn.indexer;
  const int64_t rows = batch.rows(), ih = c.index_n_heads;
  const int64_t ihd = c.index_head_dim, rd = c.qk_rope_head_dim, topk = c.index_topk;
  const RopeTable& tab = rope(layer);

  kernels::RopeParams rp;
  rp.x = q + ihd - rd;
  rp.rows = rows;
  rp.heads = ih;
  rp.row_stride = ih * ihd;
  rp.head_stride = ihd;
  rp.rope_dim = rd;
  rp.positions = batch.positions.data();
  rp.cos = tab.cos.data();
  rp.sin = tab.sin.data();
  k_.rope(rp);
  k_.hadamard(q, rows * ih, ihd);
  k_.quantize_e2m1(q, rows * ih, ihd, ihd, 32);

  compress(layer, ix.compressor, true, batch, key_input);

  // Head weights: bf16(bf16(x · weights_projᵀ) · fp32(ihd^-½ · heads^-½)).
  const float wscale = static_cast<float>(std::pow(static_cast<double>(ihd), -0.5) *
                                          std::pow(static_cast<double>(ih), -0.5));
  for (int64_t i = 0; i < rows * ih; ++i) w[i] = kernels::canonical::bf16(w[i] * wscale);

  const int64_t r = c.compress_ratio(layer);
  sel.assign(static_cast<size_t>(rows * topk), -1);
  counts.assign(static_cast<size_t>(rows), 0);
  std::vector<const float*> keys;
  std::vector<int32_t> limit;
  std::vector<float> scores;
  for (const Segment& s : batch.segments) {
    const int64_t nvis_max = (s.start + s.count) / r;
    if (nvis_max == 0) {
      if (obs)
        for (int64_t i = s.begin; i < s.begin + s.count; ++i)
          obs->indexer(layer, batch, i, nullptr, 0);
      continue;
    }
    keys.resize(static_cast<size_t>(nvis_max));
    for (int64_t j = 0; j < nvis_max; ++j) keys[j] = pool_.idx_row(*s.kv, layer, j);
    limit.resize(static_cast<size_t>(s.count));
    for (int64_t i = 0; i < s.count; ++i)
      limit[i] = static_cast<int32_t>((batch.positions[s.begin + i] + 1) / r);
    scores.assign(static_cast<size_t>(s.count * nvis_max), 0.0f);
    kernels::IndexerScoreParams sp;
    sp.q = q + s.begin * ih * ihd;
    sp.m = s.count;
    sp.num_heads = ih;
    sp.dim = ihd;
    sp.weights = w + s.begin * ih;
    sp.keys = keys.data();
    sp.n_keys = nvis_max;
    sp.key_limit = limit.data();
    sp.scores = scores.data();
    k_.indexer_scores(sp);
    for (int64_t i = 0; i < s.count; ++i) {
      const int64_t row = s.begin + i;
      int32_t* out = sel.data() + row * topk;
      const int64_t n =
          kernels::topk_lower_index(scores.data() + i * nvis_max, limit[i], topk, out);
      std::sort(out, out + n);
      counts[row] = static_cast<int32_t>(n);
      if (obs) obs->indexer(layer, batch, row, out, n);
    }
  }
}

}  // namespace moerun::model

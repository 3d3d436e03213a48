// Attention of one layer (spec §2.3–§2.5, §2.7): low-rank q with per-head RMS scaling, the
// single shared K=V head with FP8-simulated nope dims, RoPE, the key lists of the three
// attention kinds, sparse attention with sink, inverse RoPE and the grouped low-rank output.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "worker/model/model.h"

namespace moerun::model {

void Model::attention(int64_t layer, const StepBatch& batch, const float* x, float* out,
                      ForwardObserver* obs) {
  const ModelConfig& c = config();
  const AttentionWeights& aw = w_.layer(layer).attn;
  const kv::LayerKvLayout& ly = pool_.layout().layer(layer);
  const int64_t rows = batch.rows(), d = c.hidden_size, H = c.num_attention_heads;
  const int64_t D = c.head_dim, rd = c.qk_rope_head_dim, nope = D - rd, W = c.sliding_window;
  const int64_t ql = c.q_lora_rank, r = c.compress_ratio(layer);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const RopeTable& tab = rope(layer);

  kernels::RopeParams rp;
  rp.rows = rows;
  rp.rope_dim = rd;
  rp.positions = batch.positions.data();
  rp.cos = tab.cos.data();
  rp.sin = tab.sin.data();

  // Every projection of the block input x runs in one batch of GEMMs: wq_a and wkv on the
  // quantized x, the compressors' fp32 projections and the indexer's head weights on x.
  const Rows all = all_rows(batch);
  const int64_t ih = c.index_n_heads, ihd = c.index_head_dim;
  std::vector<float> qr(static_cast<size_t>(rows * ql)), q(static_cast<size_t>(rows * H * D));
  std::vector<float> kv(static_cast<size_t>(rows * D)), iq, iw;
  CompressorInput comp_in, idx_in;
  GemmList gemms;
  const std::vector<float> xq = quantized(x, rows, d, d);
  add_linear(gemms, aw.wq_a, xq.data(), all, d, qr.data(), ql, true);
  add_linear(gemms, aw.wkv, xq.data(), all, d, kv.data(), D, true);
  if (aw.compressor) add_compressor_projections(gemms, *aw.compressor, batch, x, comp_in);
  if (aw.indexer) {
    add_compressor_projections(gemms, aw.indexer->compressor, batch, x, idx_in);
    iw.resize(static_cast<size_t>(rows * ih));
    add_linear(gemms, aw.indexer->weights_proj, x, all, d, iw.data(), ih, true);
  }
  run_gemms(gemms);

  // Query: qr = q_norm(wq_a(x)); q = wq_b(qr) (with the indexer's queries, from the same qr),
  // per-head RMS scaling, RoPE on the last rd dims.
  k_.rmsnorm(qr.data(), ql, rows, ql, aw.q_norm.data(), eps, qr.data(), ql);
  const std::vector<float> qrq = quantized(qr.data(), rows, ql, ql);
  add_linear(gemms, aw.wq_b, qrq.data(), all, ql, q.data(), H * D, true);
  if (aw.indexer) {
    iq.resize(static_cast<size_t>(rows * ih * ihd));
    add_linear(gemms, aw.indexer->wq_b, qrq.data(), all, ql, iq.data(), ih * ihd, true);
  }
  run_gemms(gemms);
  k_.head_rms_scale_bf16(q.data(), rows, H, D, eps);
  rp.x = q.data() + nope;
  rp.heads = H;
  rp.row_stride = H * D;
  rp.head_stride = D;
  k_.rope(rp);

  // Key/value: kv_norm(wkv(x)), RoPE, FP8 simulation of the nope dims (blocks of 64).
  k_.rmsnorm(kv.data(), D, rows, D, aw.kv_norm.data(), eps, kv.data(), D);
  rp.x = kv.data() + nope;
  rp.heads = 1;
  rp.row_stride = D;
  rp.head_stride = D;
  k_.rope(rp);
  k_.quantize_e4m3(kv.data(), rows, D, nope, 64);

  // Compressed rows completing in this step are written before any query reads them (a
  // block that completes at p is visible to p itself).
  if (aw.compressor) compress(layer, *aw.compressor, false, batch, comp_in);
  std::vector<int32_t> sel, sel_count;
  if (aw.indexer) indexer_select(layer, batch, iq.data(), iw.data(), idx_in, sel, sel_count, obs);
  const int64_t topk = c.index_topk;

  // Key lists: the window [p−W+1, p] oldest first (rows of this step from `kv`, older ones from
  // the ring), then the visible compressed rows in ascending order.
  int64_t max_keys = W;
  for (const Segment& s : batch.segments) {
    const int64_t last = s.start + s.count - 1;
    if (r > 0)
      max_keys =
          std::max(max_keys, W + (aw.indexer ? std::min(topk, (last + 1) / r) : (last + 1) / r));
  }
  std::vector<const float*> keys(static_cast<size_t>(rows * max_keys), nullptr);
  std::vector<int32_t> nkeys(static_cast<size_t>(rows), 0);
  for (const Segment& s : batch.segments) {
    const float* ring = pool_.slot(*s.kv) + ly.window;
    for (int64_t i = s.begin; i < s.begin + s.count; ++i) {
      const int64_t p = batch.positions[i];
      const float** kl = keys.data() + i * max_keys;
      int64_t n = 0;
      for (int64_t t = std::max<int64_t>(0, p - W + 1); t <= p; ++t)
        kl[n++] = t >= s.start ? kv.data() + (s.begin + t - s.start) * D : ring + (t % W) * D;
      if (aw.indexer) {
        for (int64_t j = 0; j < sel_count[i]; ++j)
          kl[n++] = pool_.comp_row(*s.kv, layer, sel[i * topk + j]);
      } else if (r > 0) {
        for (int64_t j = 0; j < (p + 1) / r; ++j) kl[n++] = pool_.comp_row(*s.kv, layer, j);
      }
      nkeys[i] = static_cast<int32_t>(n);
    }
  }
  std::vector<float> o(static_cast<size_t>(rows * H * D));
  kernels::AttentionParams ap;
  ap.q = q.data();
  ap.m = rows;
  ap.num_heads = H;
  ap.head_dim = D;
  ap.keys = keys.data();
  ap.num_keys = nkeys.data();
  ap.max_keys = max_keys;
  ap.sink = aw.sink.data();
  ap.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  ap.out = o.data();
  k_.attention(ap);

  // Only now may the ring be overwritten: the last W rows of each segment.
  for (const Segment& s : batch.segments) {
    float* ring = pool_.slot(*s.kv) + ly.window;
    for (int64_t t = std::max(s.start, s.start + s.count - W); t < s.start + s.count; ++t)
      std::memcpy(ring + (t % W) * D, kv.data() + (s.begin + t - s.start) * D, sizeof(float) * D);
  }

  // Inverse RoPE on the output's rope dims, then the grouped low-rank projection:
  // group g (heads g·H/G …) maps its H·D/G values to o_lora_rank with rows of wo_a.
  rp.x = o.data() + nope;
  rp.heads = H;
  rp.row_stride = H * D;
  rp.head_stride = D;
  rp.inverse = true;
  k_.rope(rp);
  const int64_t G = c.o_groups, ol = c.o_lora_rank, gd = H * D / G;
  std::vector<float> og(static_cast<size_t>(rows * G * ol));
  for (int64_t g = 0; g < G; ++g)
    add_linear(gemms, aw.wo_a, o.data() + g * gd, all, H * D, og.data() + g * ol, G * ol, true,
               g * ol, ol);
  run_gemms(gemms);
  qlinear(aw.wo_b, og.data(), all_rows(batch), G * ol, out, d);
}

}  // namespace moerun::model

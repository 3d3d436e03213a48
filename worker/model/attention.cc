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

  // Query: qr = q_norm(wq_a(x)); q = wq_b(qr), per-head RMS scaling, RoPE on the last rd dims.
  std::vector<float> qr(static_cast<size_t>(rows * ql)), q(static_cast<size_t>(rows * H * D));
  qlinear(aw.wq_a, x, all_rows(batch), d, qr.data(), ql);
  k_.rmsnorm(qr.data(), ql, rows, ql, aw.q_norm.data(), eps, qr.data(), ql);
  qlinear(aw.wq_b, qr.data(), all_rows(batch), ql, q.data(), H * D);
  k_.head_rms_scale_bf16(q.data(), rows, H, D, eps);
  rp.x = q.data() + nope;
  rp.heads = H;
  rp.row_stride = H * D;
  rp.head_stride = D;
  k_.rope(rp);

  // Key/value: kv_norm(wkv(x)), RoPE, FP8 simulation of the nope dims (blocks of 64).
  std::vector<float> kv(static_cast<size_t>(rows * D));
  qlinear(aw.wkv, x, all_rows(batch), d, kv.data(), D);
  k_.rmsnorm(kv.data(), D, rows, D, aw.kv_norm.data(), eps, kv.data(), D);
  rp.x = kv.data() + nope;
  rp.heads = 1;
  rp.row_stride = D;
  rp.head_stride = D;
  k_.rope(rp);
  k_.quantize_e4m3(kv.data(), rows, D, nope, 64);

  // Compressed rows completing in this step are written before any query reads them (a
  // block that completes at p is visible to p itself).
  if (aw.compressor) compress(layer, *aw.compressor, false, batch, x);
  std::vector<int32_t> sel, sel_count;
  if (aw.indexer) indexer_select(layer, batch, x, qr.data(), sel, sel_count, obs);
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
    linear(aw.wo_a, o.data() + g * gd, all_rows(batch), H * D, og.data() + g * ol, G * ol, true,
           g * ol, ol);
  qlinear(aw.wo_b, og.data(), all_rows(batch), G * ol, out, d);
}

}  // namespace moerun::model

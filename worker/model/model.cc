// Model: embedding, the block structure with mHC mixing, the head and the MTP input
// (spec §2.1, §2.2, §2.10). Attention, compression, indexer and MoE live in their own files.
#include "worker/model/model.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/numfmt.h"
#include "kernels/cpu/canonical.h"

namespace moerun::model {

Model::Model(const ModelWeights& weights, kernels::Kernels& kernels, kv::KvPool& pool,
             int64_t max_position)
    : w_(weights), k_(kernels), pool_(pool) {
  const ModelConfig& c = w_.config();
  // One table per RoPE kind: ratio-0 layers (plain base) and compressed layers (YaRN).
  for (int64_t l = 0; l < c.num_layers_total(); ++l) {
    RopeTable& t = c.uses_yarn(l) ? rope_yarn_ : rope_plain_;
    if (t.max_position == 0) t = make_rope_table(c, l, max_position);
  }
}

void StepBatch::add(kv::SequenceKv* kv, int64_t start, std::span<const int32_t> new_tokens,
                    bool prefill) {
  MOERUN_CHECK(!prefill || prefill_rows == rows(),
               "step batch: a prompt segment after generated rows (prefill rows must come first)");
  const auto n = static_cast<int64_t>(new_tokens.size());
  segments.push_back({kv, start, rows(), n});
  tokens.insert(tokens.end(), new_tokens.begin(), new_tokens.end());
  for (int64_t i = 0; i < n; ++i) positions.push_back(static_cast<int32_t>(start + i));
  if (prefill) prefill_rows = rows();
}

const RopeTable& Model::rope(int64_t layer) const {
  return config().uses_yarn(layer) ? rope_yarn_ : rope_plain_;
}

void Model::add_linear(GemmList& list, const Linear& w, const float* x, Rows rows, int64_t ldx,
                       float* out, int64_t ldo, bool round_bf16, int64_t row_begin,
                       int64_t n) const {
  kernels::GemmParams p;
  p.lda = ldx;
  p.w = w.view;
  p.packed = w.packed.get();
  p.row_begin = row_begin;
  p.n = n < 0 ? w.view.rows : n;
  p.ldo = ldo;
  p.round_bf16 = round_bf16;
  // One call per phase: the prompt rows first, then the generated ones.
  const int64_t prefill = std::clamp<int64_t>(rows.prefill, 0, rows.rows);
  if (prefill > 0) {
    p.a = x;
    p.m = prefill;
    p.out = out;
    p.phase = kernels::RowPhase::kPrefill;
    list.push_back(p);
  }
  if (rows.rows > prefill) {
    p.a = x + prefill * ldx;
    p.m = rows.rows - prefill;
    p.out = out + prefill * ldo;
    p.phase = kernels::RowPhase::kDecode;
    list.push_back(p);
  }
}

void Model::run_gemms(GemmList& list) {
  if (!list.empty()) k_.gemm_batch(list.data(), list.size());
  list.clear();
}

void Model::linear(const Linear& w, const float* x, Rows rows, int64_t ldx, float* out, int64_t ldo,
                   bool round_bf16, int64_t row_begin, int64_t n) {
  GemmList list;
  add_linear(list, w, x, rows, ldx, out, ldo, round_bf16, row_begin, n);
  run_gemms(list);
}

std::vector<float> Model::quantized(const float* x, int64_t rows, int64_t ldx, int64_t cols) {
  std::vector<float> xq(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(xq.data() + i * cols, x + i * ldx, sizeof(float) * cols);
  k_.quantize_e4m3(xq.data(), rows, cols, cols, 128);
  return xq;
}

void Model::qlinear(const Linear& w, const float* x, Rows rows, int64_t ldx, float* out,
                    int64_t ldo) {
  const std::vector<float> xq = quantized(x, rows.rows, ldx, w.view.cols);
  linear(w, xq.data(), rows, w.view.cols, out, ldo, true);
}

void Model::embed(const StepBatch& batch, float* h, int64_t copies) const {
  const int64_t d = config().hidden_size;
  MOERUN_CHECK(w_.embed != nullptr, "this process holds no embedding table");
  for (int64_t i = 0; i < batch.rows(); ++i) {
    const uint16_t* e = w_.embed + static_cast<int64_t>(batch.tokens[i]) * d;
    float* row = h + i * copies * d;
    for (int64_t k = 0; k < d; ++k) row[k] = numfmt::bf16_to_f32(e[k]);
    for (int64_t j = 1; j < copies; ++j) std::memcpy(row + j * d, row, sizeof(float) * d);
  }
}

void Model::hc_pre(const HcParams& p, const float* h, const StepBatch& batch, float* x,
                   HcMix& mix) {
  const ModelConfig& c = config();
  const int64_t hc = c.hc_mult, d = c.hidden_size, nmix = c.hc_mix_dim(), rows = batch.rows();
  std::vector<float> mixes(static_cast<size_t>(rows * nmix)), r(static_cast<size_t>(rows));
  // mixes = (x_flat · fnᵀ) · rsqrt(mean(x_flat²) + eps): an RMS-normalized projection.
  linear(p.fn, h, all_rows(batch), hc * d, mixes.data(), nmix, false);
  k_.rms_rsqrt(h, hc * d, rows, hc * d, static_cast<float>(c.rms_norm_eps), r.data());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < nmix; ++j) mixes[i * nmix + j] *= r[i];
  mix.pre.resize(static_cast<size_t>(rows * hc));
  mix.post.resize(static_cast<size_t>(rows * hc));
  mix.comb.resize(static_cast<size_t>(rows * hc * hc));
  kernels::SinkhornParams sp;
  sp.mixes = mixes.data();
  sp.m = rows;
  sp.hc = hc;
  sp.iters = c.hc_sinkhorn_iters;
  sp.eps = static_cast<float>(c.hc_eps);
  sp.scale = p.scale.data();
  sp.base = p.base.data();
  sp.pre = mix.pre.data();
  sp.post = mix.post.data();
  sp.comb = mix.comb.data();
  k_.sinkhorn(sp);
  k_.hc_collapse(h, mix.pre.data(), rows, hc, d, x);
}

void Model::run_layers(const StepBatch& batch, float* h, int64_t layer_begin, int64_t layer_end,
                       ForwardObserver* obs) {
  for (int64_t l = layer_begin; l < layer_end; ++l) {
    block(l, batch, h, obs);
    if (obs) obs->block_output(l, batch, h);
  }
}

void Model::block(int64_t layer, const StepBatch& batch, float* h, ForwardObserver* obs) {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_.layer(layer);
  const int64_t rows = batch.rows(), hc = c.hc_mult, d = c.hidden_size;
  if (rows == 0) {  // nothing to compute here, but the experts' exchange is collective
    if (dispatcher_) moe(layer, batch, nullptr, nullptr, obs);
    return;
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> x(static_cast<size_t>(rows * d)), y(static_cast<size_t>(rows * d));
  std::vector<float> res(h, h + rows * hc * d);
  HcMix mix;

  hc_pre(lw.hc_attn, h, batch, x.data(), mix);
  k_.rmsnorm(x.data(), d, rows, d, lw.attn_norm.data(), eps, x.data(), d);
  attention(layer, batch, x.data(), y.data(), obs);
  k_.hc_expand(y.data(), res.data(), mix.post.data(), mix.comb.data(), rows, hc, d, h);

  res.assign(h, h + rows * hc * d);
  hc_pre(lw.hc_ffn, h, batch, x.data(), mix);
  k_.rmsnorm(x.data(), d, rows, d, lw.ffn_norm.data(), eps, x.data(), d);
  moe(layer, batch, x.data(), y.data(), obs);
  k_.hc_expand(y.data(), res.data(), mix.post.data(), mix.comb.data(), rows, hc, d, h);
}

void Model::logits(const StepBatch& batch, const float* h, const std::vector<int64_t>& rows,
                   float* out, int64_t mtp_layer, ForwardObserver* obs) {
  const ModelConfig& c = config();
  const int64_t hc = c.hc_mult, d = c.hidden_size, n = static_cast<int64_t>(rows.size());
  if (n == 0) return;
  const HcParams& hp = mtp_layer >= 0 ? w_.layer(mtp_layer).hc_head : w_.hc_head;
  const std::vector<float>& norm = mtp_layer >= 0 ? w_.layer(mtp_layer).norm : w_.norm;
  MOERUN_CHECK(w_.head.loaded() && !norm.empty(), "this process holds no head");
  std::vector<float> hs(static_cast<size_t>(n * hc * d));
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(hs.data() + i * hc * d, h + rows[i] * hc * d, sizeof(float) * hc * d);
  // hc_head: pre = sigmoid(mixes · scale + base) + eps, y = Σ_j pre_j · h_j (no Sinkhorn).
  // `rows` ascend, so the prompt rows among them come first.
  const Rows sel{n, std::count_if(rows.begin(), rows.end(),
                                  [&](int64_t r) { return r < batch.prefill_rows; })};
  std::vector<float> mixes(static_cast<size_t>(n * hc)), r(static_cast<size_t>(n));
  linear(hp.fn, hs.data(), sel, hc * d, mixes.data(), hc, false);
  k_.rms_rsqrt(hs.data(), hc * d, n, hc * d, static_cast<float>(c.rms_norm_eps), r.data());
  const float eps = static_cast<float>(c.hc_eps);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < hc; ++j) {
      const float m = mixes[i * hc + j] * r[i];
      mixes[i * hc + j] = kernels::canonical::sigmoid(m * hp.scale[0] + hp.base[j]) + eps;
    }
  std::vector<float> y(static_cast<size_t>(n * d));
  k_.hc_collapse(hs.data(), mixes.data(), n, hc, d, y.data());
  k_.rmsnorm(y.data(), d, n, d, norm.data(), static_cast<float>(c.rms_norm_eps), y.data(), d);
  if (obs) {
    StepBatch sub;
    for (int64_t i : rows) {
      sub.tokens.push_back(batch.tokens[i]);
      sub.positions.push_back(batch.positions[i]);
    }
    obs->head_input(mtp_layer >= 0, sub, y.data());
  }
  linear(w_.head, y.data(), sel, d, out, c.vocab_size, false);
}

void Model::mtp_input(const StepBatch& batch, const float* h_main, int64_t mtp_layer, float* x) {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_.layer(mtp_layer);
  const int64_t rows = batch.rows(), hc = c.hc_mult, d = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> e(static_cast<size_t>(rows * d));
  embed(batch, e.data(), 1);
  std::vector<float> en(static_cast<size_t>(rows * d)), ep(static_cast<size_t>(rows * d));
  k_.rmsnorm(e.data(), d, rows, d, lw.enorm.data(), eps, en.data(), d);
  qlinear(lw.e_proj, en.data(), all_rows(batch), d, ep.data(), d);
  std::vector<float> hn(static_cast<size_t>(rows * hc * d));
  k_.rmsnorm(h_main, d, rows * hc, d, lw.hnorm.data(), eps, hn.data(), d);
  qlinear(lw.h_proj, hn.data(), {rows * hc, batch.prefill_rows * hc}, d, x, d);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < hc; ++j)
      for (int64_t k = 0; k < d; ++k) {
        float& v = x[(i * hc + j) * d + k];
        v = kernels::canonical::bf16(ep[i * d + k] + v);
      }
}

}  // namespace moerun::model

// The MoE layer (spec §2.8): gate scores, hash or score routing, the routed experts' clamped
// SwiGLU with the routing weight applied before the down projection, and the shared expert.
// Expert outputs are summed per token in fp32 in ascending expert-id order (as the reference
// loops experts), then the shared expert — an order that does not depend on the batch.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "kernels/cpu/canonical.h"
#include "worker/model/model.h"

namespace moerun::model {

void Model::moe(int64_t layer, const StepBatch& batch, const float* x, float* out,
                ForwardObserver* obs) {
  const ModelConfig& c = config();
  const MoeWeights& mw = w_.layer(layer).ffn;
  const int64_t rows = batch.rows(), d = c.hidden_size, ne = c.n_routed_experts;
  const int64_t k = c.num_experts_per_tok, inter = c.moe_intermediate_size;

  std::vector<float> z(static_cast<size_t>(rows * ne));
  linear(mw.gate, x, all_rows(batch), d, z.data(), ne, false);
  std::vector<int32_t> ids(static_cast<size_t>(rows * k));
  std::vector<float> wts(static_cast<size_t>(rows * k));
  kernels::RouteParams rp;
  rp.logits = z.data();
  rp.m = rows;
  rp.num_experts = ne;
  rp.k = k;
  rp.route_scale = static_cast<float>(c.routed_scaling_factor);
  rp.ids = ids.data();
  rp.weights = wts.data();
  if (c.is_hash_layer(layer)) {
    rp.hash_table = mw.hash.data();
    rp.table_cols = k;
    rp.tokens = batch.tokens.data();
  } else {
    rp.bias = mw.bias.data();
  }
  k_.route(rp);
  if (obs) obs->router(layer, batch, ids.data(), wts.data(), k);

  std::vector<float> xq(x, x + rows * d);
  k_.quantize_e4m3(xq.data(), rows, d, d, 128);

  // Which (row, slot) pairs each expert serves, in row order.
  std::vector<std::vector<int64_t>> served(static_cast<size_t>(ne));
  for (int64_t i = 0; i < rows * k; ++i) served[static_cast<size_t>(ids[i])].push_back(i);

  std::vector<float> y(static_cast<size_t>(rows * d), 0.0f);
  std::vector<float> xe, g, u, ye, rw;
  auto run_expert = [&](const ExpertWeights& ex, const float* xin, Rows n, const float* wrow) {
    g.resize(static_cast<size_t>(n.rows * inter));
    u.resize(static_cast<size_t>(n.rows * inter));
    ye.resize(static_cast<size_t>(n.rows * d));
    linear(ex.w1, xin, n, d, g.data(), inter, true);
    linear(ex.w3, xin, n, d, u.data(), inter, true);
    kernels::SwigluParams sp;
    sp.gate = g.data();
    sp.up = u.data();
    sp.ld = inter;
    sp.m = n.rows;
    sp.n = inter;
    sp.limit = static_cast<float>(c.swiglu_limit);
    sp.row_weight = wrow;
    sp.out = g.data();
    k_.swiglu(sp);
    k_.quantize_e4m3(g.data(), n.rows, inter, inter, 128);
    linear(ex.w2, g.data(), n, inter, ye.data(), d, true);
  };
  for (int64_t e = w_.expert_begin; e < w_.expert_end; ++e) {
    const auto& pairs = served[static_cast<size_t>(e)];
    if (pairs.empty()) continue;
    const int64_t n = static_cast<int64_t>(pairs.size());
    xe.resize(static_cast<size_t>(n * d));
    rw.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(xe.data() + t * d, xq.data() + (pairs[t] / k) * d, sizeof(float) * d);
      rw[t] = wts[pairs[t]];
    }
    // Pairs are in row order, so the prompt rows come first.
    const int64_t prefill = std::count_if(pairs.begin(), pairs.end(),
                                          [&](int64_t pr) { return pr / k < batch.prefill_rows; });
    run_expert(mw.experts[static_cast<size_t>(e)], xe.data(), {n, prefill}, rw.data());
    for (int64_t t = 0; t < n; ++t) {
      float* yr = y.data() + (pairs[t] / k) * d;
      for (int64_t q = 0; q < d; ++q) yr[q] += ye[t * d + q];
    }
  }
  run_expert(mw.shared, xq.data(), all_rows(batch), nullptr);
  for (int64_t i = 0; i < rows * d; ++i) out[i] = kernels::canonical::bf16(y[i] + ye[i]);
}

}  // namespace moerun::model

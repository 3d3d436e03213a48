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

  // One entry per expert that serves rows (ascending id), then the shared expert (all rows).
  // The w1/w3 GEMMs of all of them run as one batch, then the w2 GEMMs: in a decode step that
  // is two parallel regions per layer instead of three per expert.
  struct ExpertRun {
    const ExpertWeights* w = nullptr;
    const std::vector<int64_t>* pairs = nullptr;  // nullptr: the shared expert
    Rows rows;
    std::vector<float> x, gate, up, out, route;
  };
  std::vector<ExpertRun> runs;
  for (int64_t e = w_.expert_begin; e < w_.expert_end; ++e) {
    const auto& pairs = served[static_cast<size_t>(e)];
    if (pairs.empty()) continue;
    ExpertRun& run = runs.emplace_back();
    run.w = &mw.experts[static_cast<size_t>(e)];
    run.pairs = &pairs;
    const int64_t n = static_cast<int64_t>(pairs.size());
    // Pairs are in row order, so the prompt rows come first.
    run.rows = {n, std::count_if(pairs.begin(), pairs.end(),
                                 [&](int64_t pr) { return pr / k < batch.prefill_rows; })};
    run.x.resize(static_cast<size_t>(n * d));
    run.route.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(run.x.data() + t * d, xq.data() + (pairs[t] / k) * d, sizeof(float) * d);
      run.route[t] = wts[pairs[t]];
    }
  }
  {
    ExpertRun& shared = runs.emplace_back();
    shared.w = &mw.shared;
    shared.rows = all_rows(batch);
  }
  GemmList gemms;
  for (ExpertRun& run : runs) {
    const float* xin = run.pairs ? run.x.data() : xq.data();
    run.gate.resize(static_cast<size_t>(run.rows.rows * inter));
    run.up.resize(static_cast<size_t>(run.rows.rows * inter));
    add_linear(gemms, run.w->w1, xin, run.rows, d, run.gate.data(), inter, true);
    add_linear(gemms, run.w->w3, xin, run.rows, d, run.up.data(), inter, true);
  }
  run_gemms(gemms);
  for (ExpertRun& run : runs) {
    kernels::SwigluParams sp;
    sp.gate = run.gate.data();
    sp.up = run.up.data();
    sp.ld = inter;
    sp.m = run.rows.rows;
    sp.n = inter;
    sp.limit = static_cast<float>(c.swiglu_limit);
    sp.row_weight = run.pairs ? run.route.data() : nullptr;
    sp.out = run.gate.data();
    k_.swiglu(sp);
    k_.quantize_e4m3(run.gate.data(), run.rows.rows, inter, inter, 128);
    run.out.resize(static_cast<size_t>(run.rows.rows * d));
    add_linear(gemms, run.w->w2, run.gate.data(), run.rows, inter, run.out.data(), d, true);
  }
  run_gemms(gemms);

  // Sum in fp32: routed experts in ascending id order, then the shared expert.
  std::vector<float> y(static_cast<size_t>(rows * d), 0.0f);
  for (const ExpertRun& run : runs) {
    if (!run.pairs) continue;
    for (int64_t t = 0; t < run.rows.rows; ++t) {
      float* yr = y.data() + ((*run.pairs)[t] / k) * d;
      for (int64_t q = 0; q < d; ++q) yr[q] += run.out[t * d + q];
    }
  }
  const std::vector<float>& ys = runs.back().out;
  for (int64_t i = 0; i < rows * d; ++i) out[i] = kernels::canonical::bf16(y[i] + ys[i]);
}

}  // namespace moerun::model

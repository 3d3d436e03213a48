// The MoE layer (spec §2.8): gate scores, hash or score routing, the routed experts' clamped
// SwiGLU with the routing weight applied before the down projection, and the shared expert.
// Expert outputs are summed per token in fp32 in ascending expert-id order (as the reference
// loops experts), then the shared expert — an order that does not depend on the batch, nor on
// where the experts ran: with expert parallelism the (token, expert) pairs travel to the rank
// that owns the expert (comm::Dispatcher) and their bf16 outputs come back to be summed in
// the same order.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "kernels/cpu/canonical.h"
#include "worker/comm/watchdog.h"
#include "worker/model/model.h"

namespace moerun::model {

void Model::set_dispatcher(comm::Dispatcher* dispatcher, int column) {
  if (dispatcher) {
    const comm::ExpertPlacement& p = dispatcher->placement();
    MOERUN_CHECK(p.num_experts == config().n_routed_experts && p.begin(column) == w_.expert_begin &&
                     p.end(column) == w_.expert_end,
                 "expert placement of column {} is [{}, {}) of {}, but this process loaded "
                 "experts [{}, {}) of {}",
                 column, p.begin(column), p.end(column), p.num_experts, w_.expert_begin,
                 w_.expert_end, config().n_routed_experts);
  }
  dispatcher_ = dispatcher;
}

void Model::moe(int64_t layer, const StepBatch& batch, const float* x, float* out,
                ForwardObserver* obs) {
  const ModelConfig& c = config();
  const MoeWeights& mw = w_.layer(layer).ffn;
  const int64_t rows = batch.rows(), d = c.hidden_size, ne = c.n_routed_experts;
  const int64_t k = c.num_experts_per_tok;

  std::vector<float> z(static_cast<size_t>(rows * ne));
  linear(mw.gate, x, all_rows(batch), d, z.data(), ne, false);
  std::vector<int32_t> ids(static_cast<size_t>(rows * k));
  std::vector<float> wts(static_cast<size_t>(rows * k));
  if (rows > 0) {
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
  }

  std::vector<float> xq(x, x + rows * d);
  if (rows > 0) k_.quantize_e4m3(xq.data(), rows, d, d, 128);

  std::vector<float> y(static_cast<size_t>(rows * d), 0.0f), ys(static_cast<size_t>(rows * d));
  if (dispatcher_) {
    comm::DispatchParams dp;
    dp.tokens = rows;
    dp.hidden = d;
    dp.k = k;
    dp.prefill_rows = batch.prefill_rows;
    dp.x = xq.data();
    dp.expert_ids = ids.data();
    dp.weights = wts.data();
    const comm::Received& rc = [&]() -> const comm::Received& {
      const comm::Watchdog::Scope scope("moe dispatch", layer);
      return dispatcher_->dispatch(dp);
    }();
    std::vector<float> pair_out(rc.pairs.size() * static_cast<size_t>(d));
    run_experts(mw, rc.x.data(), rc.prefill.data(), rc.pairs, pair_out.data(), xq.data(),
                all_rows(batch), ys.data());
    comm::CombineParams cp;
    cp.pair_out = pair_out.data();
    cp.out = y.data();
    const comm::Watchdog::Scope scope("moe combine", layer);
    dispatcher_->combine(cp);
  } else {
    // Every (row, slot) pair is local: pair i·k + s is row i's slot s.
    std::vector<comm::Received::Pair> pairs(static_cast<size_t>(rows * k));
    std::vector<uint8_t> prefill(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) {
      prefill[i] = i < batch.prefill_rows ? 1 : 0;
      for (int64_t s = 0; s < k; ++s) pairs[i * k + s] = {i, ids[i * k + s], wts[i * k + s]};
    }
    std::vector<float> pair_out(pairs.size() * static_cast<size_t>(d));
    run_experts(mw, xq.data(), prefill.data(), pairs, pair_out.data(), xq.data(), all_rows(batch),
                ys.data());
    // Sum in fp32, routed experts in ascending id order.
    std::vector<int64_t> slot(static_cast<size_t>(k));
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t s = 0; s < k; ++s) slot[s] = i * k + s;
      std::sort(slot.begin(), slot.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
      float* yr = y.data() + i * d;
      for (int64_t pi : slot)
        for (int64_t q = 0; q < d; ++q) yr[q] += pair_out[pi * d + q];
    }
  }
  // Then the shared expert.
  for (int64_t i = 0; i < rows * d; ++i) out[i] = kernels::canonical::bf16(y[i] + ys[i]);
}

void Model::run_experts(const MoeWeights& mw, const float* x, const uint8_t* prefill,
                        const std::vector<comm::Received::Pair>& pairs, float* pair_out,
                        const float* xs, Rows shared_rows, float* shared_out) {
  const ModelConfig& c = config();
  const int64_t d = c.hidden_size, inter = c.moe_intermediate_size;
  const int64_t ne = c.n_routed_experts;

  // The pairs each local expert serves, prompt rows first (the GEMMs split rows by phase;
  // within a phase a row's result does not depend on its neighbours).
  std::vector<std::vector<int64_t>> served(static_cast<size_t>(ne));
  for (int pass = 1; pass >= 0; --pass)
    for (size_t i = 0; i < pairs.size(); ++i) {
      const comm::Received::Pair& pr = pairs[i];
      MOERUN_CHECK(pr.expert >= w_.expert_begin && pr.expert < w_.expert_end,
                   "expert {} is not held here (experts [{}, {}))", pr.expert, w_.expert_begin,
                   w_.expert_end);
      if ((prefill[pr.token] != 0) == (pass == 1))
        served[static_cast<size_t>(pr.expert)].push_back(static_cast<int64_t>(i));
    }

  // One entry per expert that serves pairs (ascending id), then the shared expert. The w1/w3
  // GEMMs of all of them run as one batch, then the w2 GEMMs: in a decode step that is two
  // parallel regions per layer instead of three per expert.
  struct ExpertRun {
    const ExpertWeights* w = nullptr;
    const std::vector<int64_t>* pairs = nullptr;  // nullptr: the shared expert
    Rows rows;
    const float* x = nullptr;
    std::vector<float> xg, gate, up, out, route;
  };
  std::vector<ExpertRun> runs;
  for (int64_t e = w_.expert_begin; e < w_.expert_end; ++e) {
    const auto& list = served[static_cast<size_t>(e)];
    if (list.empty()) continue;
    ExpertRun& run = runs.emplace_back();
    run.w = &mw.experts[static_cast<size_t>(e)];
    run.pairs = &list;
    const int64_t n = static_cast<int64_t>(list.size());
    run.rows = {n, std::count_if(list.begin(), list.end(),
                                 [&](int64_t i) { return prefill[pairs[i].token] != 0; })};
    run.xg.resize(static_cast<size_t>(n * d));
    run.route.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const comm::Received::Pair& pr = pairs[list[t]];
      std::memcpy(run.xg.data() + t * d, x + pr.token * d, sizeof(float) * d);
      run.route[t] = pr.weight;
    }
    run.x = run.xg.data();
  }
  if (shared_rows.rows > 0) {
    ExpertRun& shared = runs.emplace_back();
    shared.w = &mw.shared;
    shared.rows = shared_rows;
    shared.x = xs;
  }
  GemmList gemms;
  for (ExpertRun& run : runs) {
    run.gate.resize(static_cast<size_t>(run.rows.rows * inter));
    run.up.resize(static_cast<size_t>(run.rows.rows * inter));
    add_linear(gemms, run.w->w1, run.x, run.rows, d, run.gate.data(), inter, true);
    add_linear(gemms, run.w->w3, run.x, run.rows, d, run.up.data(), inter, true);
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
    float* dst = run.pairs ? nullptr : shared_out;
    if (run.pairs) {
      run.out.resize(static_cast<size_t>(run.rows.rows * d));
      dst = run.out.data();
    }
    add_linear(gemms, run.w->w2, run.gate.data(), run.rows, inter, dst, d, true);
  }
  run_gemms(gemms);
  for (const ExpertRun& run : runs) {
    if (!run.pairs) continue;
    for (int64_t t = 0; t < run.rows.rows; ++t)
      std::memcpy(pair_out + (*run.pairs)[t] * d, run.out.data() + t * d, sizeof(float) * d);
  }
}

}  // namespace moerun::model

// The step's tail (see step_tail.h): head, sampling and the MTP block one position behind.
#include "worker/engine/step_tail.h"

#include <cstring>

namespace moerun::engine {

void run_step_tail(model::Model& model, kv::KvPool& pool, const model::StepBatch& batch,
                   const float* h, std::span<const TailRequest> requests, bool run_mtp,
                   std::vector<StepResult>& results, model::ForwardObserver* obs) {
  const ModelConfig& c = model.config();
  const int64_t hc = c.hc_mult, d = c.hidden_size, vocab = c.vocab_size;
  const size_t n = requests.size();
  results.resize(n);

  std::vector<int64_t> rows;
  for (size_t i = 0; i < n; ++i) {
    const model::Segment& seg = batch.segments[i];
    StepResult& res = results[i];
    res.first_position = requests[i].all_logits ? seg.start : seg.start + seg.count - 1;
    res.rows = requests[i].all_logits ? seg.count : 1;
    for (int64_t r = 0; r < res.rows; ++r) rows.push_back(seg.begin + seg.count - res.rows + r);
  }
  std::vector<float> logits(rows.size() * static_cast<size_t>(vocab));
  model.logits(batch, h, rows, logits.data(), -1, obs);
  size_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    StepResult& res = results[i];
    const float* row0 = logits.data() + off * vocab;
    if (requests[i].sampling)
      res.token =
          model.kernels().sample(row0 + (res.rows - 1) * vocab, vocab, *requests[i].sampling);
    if (requests[i].return_logits) res.logits.assign(row0, row0 + res.rows * vocab);
    off += static_cast<size_t>(res.rows);
  }

  // ---- MTP: position t with token t+1, one position behind the main model ------------
  if (!run_mtp || c.num_nextn_predict_layers == 0) return;
  const int64_t ml = c.num_hidden_layers;  // the (first) MTP block
  model::StepBatch mb;
  std::vector<float> hm;
  std::vector<int64_t> mtp_segment(n, -1);  // index into mb.segments
  for (size_t i = 0; i < n; ++i) {
    const model::Segment& seg = batch.segments[i];
    model::Segment ms;
    ms.kv = seg.kv;
    ms.begin = mb.rows();
    const float* pending = pool.slot(*seg.kv) + pool.layout().mtp_hidden();
    if (seg.kv->mtp_pending) {
      mb.tokens.push_back(batch.tokens[seg.begin]);
      mb.positions.push_back(static_cast<int32_t>(seg.start - 1));
      hm.insert(hm.end(), pending, pending + hc * d);
    }
    for (int64_t t = 0; t + 1 < seg.count; ++t) {
      mb.tokens.push_back(batch.tokens[seg.begin + t + 1]);
      mb.positions.push_back(static_cast<int32_t>(seg.start + t));
      const float* hr = h + (seg.begin + t) * hc * d;
      hm.insert(hm.end(), hr, hr + hc * d);
    }
    ms.count = mb.rows() - ms.begin;
    if (ms.count > 0) {
      ms.start = mb.positions[ms.begin];
      mtp_segment[i] = static_cast<int64_t>(mb.segments.size());
      mb.segments.push_back(ms);
    }
    if (requests[i].prefill) mb.prefill_rows = mb.rows();
  }
  std::vector<float> x(static_cast<size_t>(mb.rows() * hc * d));
  if (mb.rows() > 0) {
    model.mtp_input(mb, hm.data(), ml, x.data());
    if (obs) obs->mtp_input(mb, x.data());
  }
  // With expert parallelism the block's exchange is collective: run it over zero rows too.
  if (mb.rows() > 0 || model.exchanges_experts()) model.run_layers(mb, x.data(), ml, ml + 1, obs);
  if (mb.rows() > 0) {
    std::vector<int64_t> mrows;
    for (size_t i = 0; i < n; ++i) {
      if (mtp_segment[i] < 0) continue;
      const model::Segment& ms = mb.segments[static_cast<size_t>(mtp_segment[i])];
      const int64_t want = requests[i].all_logits ? ms.count : 1;
      results[i].mtp_first_position = ms.start + ms.count - want;
      results[i].mtp_rows = want;
      for (int64_t r = 0; r < want; ++r) mrows.push_back(ms.begin + ms.count - want + r);
    }
    std::vector<float> ml_out(mrows.size() * static_cast<size_t>(vocab));
    model.logits(mb, x.data(), mrows, ml_out.data(), ml, obs);
    size_t moff = 0;
    for (size_t i = 0; i < n; ++i) {
      StepResult& res = results[i];
      if (requests[i].return_logits)
        res.mtp_logits.assign(ml_out.begin() + moff * vocab,
                              ml_out.begin() + (moff + res.mtp_rows) * vocab);
      moff += static_cast<size_t>(res.mtp_rows);
    }
  }
  // The last main hidden stream of each sequence waits for its next token.
  for (const model::Segment& seg : batch.segments) {
    float* pending = pool.slot(*seg.kv) + pool.layout().mtp_hidden();
    std::memcpy(pending, h + (seg.begin + seg.count - 1) * hc * d, sizeof(float) * hc * d);
    seg.kv->mtp_pending = true;
  }
}

}  // namespace moerun::engine

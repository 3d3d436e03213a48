// Engine: request validation, KV admission, batch assembly, and the step's order of work —
// main blocks, head, then the MTP block one position behind (it needs token t+1).
#include "worker/engine/engine.h"

#include "worker/engine/step_tail.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <set>

#include "common/error.h"

namespace moerun::engine {

EngineOptions resolve_options(EngineOptions o, const ModelConfig& c) {
  if (o.max_context == 0) o.max_context = std::min<int64_t>(c.max_position_embeddings, 4096);
  MOERUN_CHECK(o.max_context > 0 && o.max_context <= c.max_position_embeddings,
               "max_context {} must be in 1..max_position_embeddings ({})", o.max_context,
               c.max_position_embeddings);
  MOERUN_CHECK(o.max_sequences > 0, "max_sequences {} must be >= 1", o.max_sequences);
  MOERUN_CHECK(o.max_batch_tokens > 0, "max_batch_tokens {} must be >= 1", o.max_batch_tokens);
  if (o.block_tokens == 0) o.block_tokens = kv::KvLayout::default_block_tokens(c);
  MOERUN_CHECK(o.block_tokens > 0, "block_tokens {} must be >= 1", o.block_tokens);
  const int64_t per_seq = (o.max_context + o.block_tokens - 1) / o.block_tokens;
  if (o.kv_blocks == 0) o.kv_blocks = o.max_sequences * per_seq;
  MOERUN_CHECK(o.kv_blocks > 0, "kv_blocks {} must be >= 1", o.kv_blocks);
  return o;
}

void check_request_tokens(const StepRequest& r, int64_t length, const ModelConfig& c,
                          const EngineOptions& o) {
  MOERUN_CHECK(!r.tokens.empty(), "step: request for sequence {} has no tokens", r.seq);
  for (size_t i = 0; i < r.tokens.size(); ++i)
    MOERUN_CHECK(r.tokens[i] >= 0 && r.tokens[i] < c.vocab_size,
                 "step: sequence {} token {} (index {}) is outside the vocabulary 0..{}", r.seq,
                 r.tokens[i], i, c.vocab_size - 1);
  const int64_t end = length + static_cast<int64_t>(r.tokens.size());
  MOERUN_CHECK(end <= o.max_context,
               "step: sequence {} would reach {} positions, past the context of {} "
               "(max_position_embeddings {})",
               r.seq, end, o.max_context, c.max_position_embeddings);
}

void check_isolated_run(int64_t layer, int64_t streams, std::span<const int32_t> tokens,
                        const ModelConfig& c, const EngineOptions& o) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  MOERUN_CHECK(layer >= 0 && layer < c.num_layers_total(), "isolated run: layer {} out of 0..{}",
               layer, c.num_layers_total() - 1);
  MOERUN_CHECK(n > 0 && n <= o.max_context && n <= o.max_batch_tokens,
               "isolated run: {} tokens (allowed 1..{})", n,
               std::min(o.max_context, o.max_batch_tokens));
  MOERUN_CHECK(streams == n * c.hc_mult * c.hidden_size,
               "isolated run: input stream has {} values, expected {} tokens × {} × {}", streams, n,
               c.hc_mult, c.hidden_size);
  for (int32_t t : tokens)
    MOERUN_CHECK(t >= 0 && t < c.vocab_size, "isolated run: token {} outside 0..{}", t,
                 c.vocab_size - 1);
}

Engine::Engine(const EngineOptions& options) : options_(options) {
  kernels_ = kernels::make_kernels(options_.kernels, options_.num_threads);
  weights_ = model::ModelWeights::load(options_.checkpoint, *kernels_, options_.experts_per_token,
                                       {}, options_.config);
  const ModelConfig& c = weights_->config();
  options_ = resolve_options(options_, c);
  pool_ = std::make_unique<kv::KvPool>(kv::KvLayout(c, options_.block_tokens),
                                       options_.max_sequences, options_.kv_blocks);
  model_ = std::make_unique<model::Model>(*weights_, *kernels_, *pool_, options_.max_context);
}

Engine::~Engine() = default;

Capacity Engine::capacity() const {
  Capacity cap;
  cap.max_sequences = pool_->max_sequences();
  cap.free_sequences = pool_->free_slots();
  cap.block_tokens = pool_->layout().block_tokens();
  cap.kv_blocks = pool_->num_blocks();
  cap.free_kv_blocks = pool_->free_blocks();
  cap.max_context = options_.max_context;
  cap.max_batch_tokens = options_.max_batch_tokens;
  cap.kv_bytes = pool_->bytes();
  return cap;
}

SeqId Engine::add_sequence() {
  Sequence s;
  s.kv = pool_->acquire();
  const SeqId id = next_id_++;
  sequences_.emplace(id, std::move(s));
  return id;
}

Engine::Sequence& Engine::find(SeqId seq, const char* what) {
  auto it = sequences_.find(seq);
  MOERUN_CHECK(it != sequences_.end(), "{}: unknown sequence id {}", what, seq);
  return it->second;
}

void Engine::free_sequence(SeqId seq) {
  Sequence& s = find(seq, "free_sequence");
  pool_->release(s.kv);
  sequences_.erase(seq);
}

int64_t Engine::length(SeqId seq) const {
  auto it = sequences_.find(seq);
  MOERUN_CHECK(it != sequences_.end(), "length: unknown sequence id {}", seq);
  return it->second.kv.length;
}

std::vector<StepResult> Engine::step(const std::vector<StepRequest>& requests,
                                     model::ForwardObserver* obs) {
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_partition(order.begin(), order.end(),
                        [&](size_t i) { return requests[i].phase == kernels::RowPhase::kPrefill; });
  if (std::is_sorted(order.begin(), order.end())) return step_ordered(requests, obs);
  std::vector<StepRequest> ordered;
  for (size_t i : order) ordered.push_back(requests[i]);
  std::vector<StepResult> res = step_ordered(ordered, obs);
  std::vector<StepResult> out(requests.size());
  for (size_t k = 0; k < order.size(); ++k) out[order[k]] = std::move(res[k]);
  return out;
}

std::vector<StepResult> Engine::step_ordered(const std::vector<StepRequest>& requests,
                                             model::ForwardObserver* obs) {
  const ModelConfig& c = config();
  const int64_t hc = c.hc_mult, d = c.hidden_size;

  // ---- validate everything before touching any state --------------------------------
  MOERUN_CHECK(!requests.empty(), "step: no requests");
  std::set<SeqId> seen;
  int64_t total = 0, blocks_needed = 0;
  for (const StepRequest& r : requests) {
    Sequence& s = find(r.seq, "step");
    MOERUN_CHECK(seen.insert(r.seq).second, "step: sequence {} appears twice in one step", r.seq);
    MOERUN_CHECK(!s.failed, "step: sequence {} failed in an earlier step; free it", r.seq);
    check_request_tokens(r, s.kv.length, c, options_);
    const int64_t end = s.kv.length + static_cast<int64_t>(r.tokens.size());
    total += static_cast<int64_t>(r.tokens.size());
    blocks_needed += pool_->blocks_for(end) - static_cast<int64_t>(s.kv.blocks.size());
  }
  MOERUN_CHECK(total <= options_.max_batch_tokens,
               "step: {} tokens in one step, over max_batch_tokens {}", total,
               options_.max_batch_tokens);
  MOERUN_CHECK(blocks_needed <= pool_->free_blocks(),
               "step: the batch needs {} more KV blocks of {} tokens, {} of {} free", blocks_needed,
               pool_->layout().block_tokens(), pool_->free_blocks(), pool_->num_blocks());

  // ---- admission (cannot fail now) and the batch -------------------------------------
  model::StepBatch batch;
  for (const StepRequest& r : requests) {
    Sequence& s = sequences_.at(r.seq);
    pool_->reserve(s.kv, s.kv.length + static_cast<int64_t>(r.tokens.size()));
    batch.add(&s.kv, s.kv.length, r.tokens, r.phase == kernels::RowPhase::kPrefill);
  }

  std::vector<StepResult> results(requests.size());
  try {
    std::vector<float> h(static_cast<size_t>(batch.rows() * hc * d));
    model_->embed(batch, h.data(), hc);
    model_->run_layers(batch, h.data(), 0, c.num_hidden_layers, obs);

    std::vector<TailRequest> tail(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      tail[i].all_logits = requests[i].all_logits;
      tail[i].return_logits = requests[i].return_logits;
      tail[i].prefill = requests[i].phase == kernels::RowPhase::kPrefill;
      tail[i].sampling = requests[i].sampling;
      results[i].seq = requests[i].seq;
    }
    run_step_tail(*model_, *pool_, batch, h.data(), tail, options_.mtp, results, obs);
  } catch (...) {
    for (const StepRequest& r : requests) sequences_.at(r.seq).failed = true;
    throw;
  }
  for (const model::Segment& seg : batch.segments) seg.kv->length += seg.count;
  return results;
}

std::vector<float> Engine::embedding(int32_t token) const {
  return weights_->embedding_row(token);
}

int32_t Engine::sample(std::span<const float> logits, const kernels::SamplingParams& params) {
  MOERUN_CHECK(static_cast<int64_t>(logits.size()) == config().vocab_size,
               "sample: {} logits, the vocabulary has {}", logits.size(), config().vocab_size);
  return kernels_->sample(logits.data(), config().vocab_size, params);
}

std::vector<float> Engine::run_isolated(int64_t layer, std::span<const float> h_in,
                                        std::span<const int32_t> tokens, bool mtp) {
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  check_isolated_run(layer, static_cast<int64_t>(h_in.size()), tokens, c, options_);
  kv::SequenceKv tmp = pool_->acquire();
  std::vector<float> h(h_in.begin(), h_in.end());
  try {
    pool_->reserve(tmp, n);
    model::StepBatch batch;
    batch.add(&tmp, 0, tokens, true);
    if (mtp) {
      std::vector<float> x(h.size());
      model_->mtp_input(batch, h.data(), layer, x.data());
      h.swap(x);
    }
    model_->run_layers(batch, h.data(), layer, layer + 1, nullptr);
  } catch (...) {
    pool_->release(tmp);
    throw;
  }
  pool_->release(tmp);
  return h;
}

std::vector<float> Engine::run_block_isolated(int64_t layer, std::span<const float> h_in,
                                              std::span<const int32_t> tokens) {
  return run_isolated(layer, h_in, tokens, false);
}

std::vector<float> Engine::run_mtp_isolated(std::span<const float> h_main,
                                            std::span<const int32_t> next_tokens) {
  MOERUN_CHECK(config().num_nextn_predict_layers > 0, "the model has no MTP block");
  return run_isolated(config().num_hidden_layers, h_main, next_tokens, true);
}

}  // namespace moerun::engine

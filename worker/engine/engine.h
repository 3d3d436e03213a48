// The single-process engine API: load a checkpoint, add sequences, run steps over a batch
// that mixes prefill chunks and decode tokens, get logits (and the MTP block's), sample,
// free. Every request is validated before any state changes, so a bad request (token id
// outside the vocabulary, a position past the context, a batch over capacity) is a
// moerun::Error naming what is wrong and leaves every sequence as it was.
//
// Logits are batch-invariant: a sequence's logits do not depend on which other sequences
// share its step or how its prompt was chunked (kernels.h explains the reduction orders).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "common/model_config.h"
#include "kernels/kernels.h"
#include "worker/engine/step_engine.h"
#include "worker/kv/kv_pool.h"
#include "worker/model/model.h"
#include "worker/model/weights.h"

namespace moerun::engine {

// Environment settings (the model's own are in its config.json).
struct EngineOptions {
  std::filesystem::path checkpoint;
  std::filesystem::path config;  // empty: checkpoint/config.json
  kernels::KernelImpl kernels = kernels::KernelImpl::kOptimized;
  int num_threads = 0;              // ≤ 0: OpenMP default
  int64_t experts_per_token = 0;    // 0: the config's; else the 4Expert-style override
  int64_t max_sequences = 8;        // sequence slots
  int64_t max_context = 0;          // positions per sequence; 0: min(max_position_embeddings, 4096)
  int64_t kv_blocks = 0;            // 0: enough for max_sequences full contexts
  int64_t block_tokens = 0;         // 0: the smallest multiple of every ratio ≥ 64
  int64_t max_batch_tokens = 4096;  // rows per step
  bool mtp = false;                 // run the MTP block alongside (drafts, golden replays)
};

// Fills the defaults of `o` (max_context, block_tokens, kv_blocks) for model `c` and checks
// every setting; throws moerun::Error naming a bad one.
EngineOptions resolve_options(EngineOptions o, const ModelConfig& c);
// The checks of one request that do not depend on capacity: tokens present and inside the
// vocabulary, the sequence (now `length` positions) staying inside max_context.
void check_request_tokens(const StepRequest& r, int64_t length, const ModelConfig& c,
                          const EngineOptions& o);
// The checks of an isolated block run (`streams`: values in its input stream).
void check_isolated_run(int64_t layer, int64_t streams, std::span<const int32_t> tokens,
                        const ModelConfig& c, const EngineOptions& o);

class Engine : public StepEngine {
 public:
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelConfig& config() const override { return weights_->config(); }
  const EngineOptions& options() const { return options_; }
  kernels::Kernels& kernels() { return *kernels_; }
  const model::ModelWeights& weights() const { return *weights_; }
  Capacity capacity() const override;

  SeqId add_sequence() override;
  void free_sequence(SeqId seq) override;
  int64_t length(SeqId seq) const override;
  std::vector<StepResult> step(const std::vector<StepRequest>& requests,
                               model::ForwardObserver* obs = nullptr) override;
  int32_t sample(std::span<const float> logits, const kernels::SamplingParams& params);
  std::vector<float> run_block_isolated(int64_t layer, std::span<const float> h_in,
                                        std::span<const int32_t> tokens) override;
  std::vector<float> run_mtp_isolated(std::span<const float> h_main,
                                      std::span<const int32_t> next_tokens) override;
  std::vector<float> embedding(int32_t token) const override;

 private:
  struct Sequence {
    kv::SequenceKv kv;
    bool failed = false;
  };
  Sequence& find(SeqId seq, const char* what);
  // step() with the prefill requests first (the model's GEMMs split rows by phase).
  std::vector<StepResult> step_ordered(const std::vector<StepRequest>& requests,
                                       model::ForwardObserver* obs);
  std::vector<float> run_isolated(int64_t layer, std::span<const float> h_in,
                                  std::span<const int32_t> tokens, bool mtp);

  EngineOptions options_;
  std::unique_ptr<kernels::Kernels> kernels_;
  std::unique_ptr<model::ModelWeights> weights_;
  std::unique_ptr<kv::KvPool> pool_;
  std::unique_ptr<model::Model> model_;
  std::map<SeqId, Sequence> sequences_;
  SeqId next_id_ = 0;
};

}  // namespace moerun::engine

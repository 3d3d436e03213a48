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

using SeqId = int64_t;

struct StepRequest {
  SeqId seq = -1;
  std::vector<int32_t> tokens;  // new tokens, at positions length(seq), length(seq)+1, ...
  bool all_logits = false;      // logits of every new token (default: the last one only)
  // Prompt tokens (prefill) or tokens the model generated (decode). On CPUs with AMX the two
  // run on different GEMM paths (kernels::RowPhase), so mark generated tokens as kDecode
  // consistently; a sequence's logits never depend on the other requests either way.
  kernels::RowPhase phase = kernels::RowPhase::kPrefill;
};

struct StepResult {
  SeqId seq = -1;
  int64_t first_position = 0;  // position of logits row 0
  int64_t rows = 0;
  std::vector<float> logits;  // [rows, vocab]; row i predicts the token after position
                              // first_position + i
  // The MTP block runs at position t once token t+1 is known, i.e. for positions
  // length−1 … length+n−2 of this step (t ≥ 0); mtp row i is position mtp_first_position + i
  // and predicts token t+2.
  int64_t mtp_first_position = 0;
  int64_t mtp_rows = 0;
  std::vector<float> mtp_logits;  // [mtp_rows, vocab]
};

struct Capacity {
  int64_t max_sequences = 0;
  int64_t free_sequences = 0;
  int64_t block_tokens = 0;
  int64_t kv_blocks = 0;
  int64_t free_kv_blocks = 0;
  int64_t max_context = 0;
  int64_t max_batch_tokens = 0;
  int64_t kv_bytes = 0;
};

class Engine {
 public:
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelConfig& config() const { return weights_->config(); }
  const EngineOptions& options() const { return options_; }
  kernels::Kernels& kernels() { return *kernels_; }
  const model::ModelWeights& weights() const { return *weights_; }
  Capacity capacity() const;

  // Throws when all sequence slots are in use.
  SeqId add_sequence();
  // Frees the sequence's slot and KV blocks; unknown ids throw.
  void free_sequence(SeqId seq);
  int64_t length(SeqId seq) const;  // positions processed

  std::vector<StepResult> step(const std::vector<StepRequest>& requests,
                               model::ForwardObserver* obs = nullptr);
  int32_t sample(std::span<const float> logits, const kernels::SamplingParams& params);

  // One block run alone as a prefill over positions 0..n−1 with fresh state (golden
  // "isolated" checks): h_in [n, hc, dim] → output stream. For an MTP block, `tokens` are the
  // next tokens; run_mtp_isolated builds the MTP input from the main stream first.
  std::vector<float> run_block_isolated(int64_t layer, std::span<const float> h_in,
                                        std::span<const int32_t> tokens);
  std::vector<float> run_mtp_isolated(std::span<const float> h_main,
                                      std::span<const int32_t> next_tokens);

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

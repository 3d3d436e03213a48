// The engine interface shared by the single-process Engine (engine.h) and the distributed one
// (distributed.h, one leader driving an mpirun job): sequences, steps mixing prefill chunks
// and decode tokens, logits and sampled tokens, isolated block runs for golden checks. Tools
// (replay, the workers' prompt runner) are written against it, so the same driver runs in one
// process or across a cluster — and must get the same bits.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/model_config.h"
#include "kernels/kernels.h"
#include "worker/model/model.h"

namespace moerun::engine {

using SeqId = int64_t;

struct StepRequest {
  SeqId seq = -1;
  std::vector<int32_t> tokens;  // new tokens, at positions length(seq), length(seq)+1, ...
  bool all_logits = false;      // logits of every new token (default: the last one only)
  // Prompt tokens (prefill) or tokens the model generated (decode). On CPUs with AMX the two
  // run on different GEMM paths (kernels::RowPhase), so mark generated tokens as kDecode
  // consistently; a sequence's logits never depend on the other requests either way.
  kernels::RowPhase phase = kernels::RowPhase::kPrefill;
  // Sample the next token from the last row's logits (where the head runs: on the last
  // pipeline stage of a cluster) into StepResult::token.
  std::optional<kernels::SamplingParams> sampling;
  // false: leave StepResult::logits / mtp_logits empty (a cluster then does not ship them to
  // the leader).
  bool return_logits = true;
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
  int32_t token = -1;             // the sampled next token (StepRequest::sampling)
};

struct Capacity {
  int64_t max_sequences = 0;
  int64_t free_sequences = 0;
  int64_t block_tokens = 0;
  int64_t kv_blocks = 0;
  int64_t free_kv_blocks = 0;
  int64_t max_context = 0;
  int64_t max_batch_tokens = 0;
  int64_t kv_bytes = 0;  // a cluster: its first stage's pools (each stage holds its layers)
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual const ModelConfig& config() const = 0;
  // Totals over the whole engine (a cluster: over its data-parallel columns).
  virtual Capacity capacity() const = 0;
  // Throws when all sequence slots are in use.
  virtual SeqId add_sequence() = 0;
  // Frees the sequence's slot and KV blocks; unknown ids throw.
  virtual void free_sequence(SeqId seq) = 0;
  virtual int64_t length(SeqId seq) const = 0;  // positions processed
  // Validates every request before any state changes (a bad one is a moerun::Error naming
  // it), then runs them as one step. `obs` sees the intermediate values.
  virtual std::vector<StepResult> step(const std::vector<StepRequest>& requests,
                                       model::ForwardObserver* obs = nullptr) = 0;
  // One block run alone as a prefill over positions 0..n−1 with fresh state (golden
  // "isolated" checks): h_in [n, hc, dim] → output stream. For the MTP block, `tokens` are the
  // next tokens and run_mtp_isolated builds the MTP input from the main stream first.
  virtual std::vector<float> run_block_isolated(int64_t layer, std::span<const float> h_in,
                                                std::span<const int32_t> tokens) = 0;
  virtual std::vector<float> run_mtp_isolated(std::span<const float> h_main,
                                              std::span<const int32_t> next_tokens) = 0;
  // The embedding row of `token` as fp32 (bf16 values).
  virtual std::vector<float> embedding(int32_t token) const = 0;
};

}  // namespace moerun::engine

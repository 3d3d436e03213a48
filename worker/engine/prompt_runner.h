// A small continuous-batching driver over any StepEngine: prompts (token ids) are admitted as
// sequence slots free up; every step carries each running sequence's next prefill chunk or
// its last sampled token; a sequence ends after max_new_tokens or at a stop token. It is the
// workers' local request source (moerun-worker --prompts) until the coordinator link exists,
// and the driver the distributed tests compare against one process.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "kernels/kernels.h"
#include "worker/engine/step_engine.h"

namespace moerun::engine {

struct PromptRunOptions {
  int64_t max_new_tokens = 16;
  int64_t prefill_chunk = 0;  // prompt tokens per step and sequence; 0: as many as fit
  // temperature 0: greedy. The draw of the token at position p uses (seed, p), so the result
  // does not depend on batching or layout.
  kernels::SamplingParams sampling;
  std::vector<int32_t> stop_tokens;
  bool keep_logits = false;  // keep the logits every generated token was sampled from
};

struct PromptResult {
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  std::vector<float> logits;  // [generated.size(), vocab] with keep_logits
};

struct PromptRunStats {
  int64_t steps = 0;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double seconds = 0.0;
  // Steps made only of decode tokens: their count, tokens and time (decode throughput).
  int64_t decode_steps = 0;
  int64_t decode_tokens = 0;
  double decode_seconds = 0.0;
};

std::vector<PromptResult> run_prompts(StepEngine& eng,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const PromptRunOptions& options,
                                      PromptRunStats* stats = nullptr);

// One prompt per line as whitespace-separated token ids; blank lines and lines starting with
// '#' are skipped. Throws moerun::Error naming the file, line and bad item.
std::vector<std::vector<int32_t>> read_prompt_file(const std::filesystem::path& path);

// results → safetensors: "prompt<i>.tokens" (I32 [n]) and, with logits, "prompt<i>.logits"
// (F32 [n, vocab]).
void write_prompt_results(const std::vector<PromptResult>& results, int64_t vocab,
                          const std::filesystem::path& path);

}  // namespace moerun::engine

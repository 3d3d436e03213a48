// The part of a step that follows the main blocks, on the process holding the head and the
// MTP block (the single-process engine, or a cluster's last pipeline stage): logits of the
// rows each request wants, sampling, the MTP block one position behind the main model (it
// needs token t+1), and each sequence's pending MTP stream for the next step.
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "kernels/kernels.h"
#include "worker/engine/step_engine.h"
#include "worker/kv/kv_pool.h"
#include "worker/model/model.h"

namespace moerun::engine {

// What request i (batch.segments[i]) wants from the tail of the step.
struct TailRequest {
  bool all_logits = false;
  bool return_logits = true;
  bool prefill = true;
  std::optional<kernels::SamplingParams> sampling;
};

// Fills results[i] (positions, logits, MTP logits, token; not seq) for every segment of
// `batch` from the main stream h [rows, hc, dim] after the last main block. With `run_mtp`
// the MTP block runs too — over zero rows as well when the model exchanges experts with other
// ranks (the exchange is collective) — and the pending streams are updated.
void run_step_tail(model::Model& model, kv::KvPool& pool, const model::StepBatch& batch,
                   const float* h, std::span<const TailRequest> requests, bool run_mtp,
                   std::vector<StepResult>& results, model::ForwardObserver* obs);

}  // namespace moerun::engine

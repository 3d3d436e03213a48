// Golden replay: runs every sequence of a golden folder (layout of
// ../shared/golden/dsv4-tiny: checkpoint/ + golden.json) the way the golden describes it —
// one prefill, teacher-forced decode steps, the MTP block alongside, and the isolated block
// runs — and collects every golden tensor it can produce, under the golden's names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "worker/engine/engine.h"
#include "worker/engine/step_engine.h"

namespace moerun::replay {

struct ReplayOptions {
  std::filesystem::path golden_dir;
  std::filesystem::path checkpoint;  // empty: golden_dir / golden.json's checkpoint_dir
  std::filesystem::path config;      // empty: the checkpoint's config.json
  kernels::KernelImpl kernels = kernels::KernelImpl::kOptimized;
  int num_threads = 0;
  int64_t experts_per_token = 0;
  // Prefill in chunks of this many tokens (0: the whole prompt in one step) — the outputs
  // must not change.
  int64_t prefill_chunk = 0;
};

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> f32;    // float tensors
  std::vector<int32_t> i32;  // id tensors
};

// The engine settings a replay needs: the golden's checkpoint (golden.json's checkpoint_dir
// unless options.checkpoint is given), two sequence slots, the MTP block on.
engine::EngineOptions replay_engine_options(const ReplayOptions& options);
// Replays the golden's sequences through `eng` (made from replay_engine_options, in this
// process or as a cluster's leader).
std::map<std::string, Tensor> run_replay(const ReplayOptions& options, engine::StepEngine& eng);
void write_tensors(const std::map<std::string, Tensor>& tensors, const std::filesystem::path& path);

}  // namespace moerun::replay

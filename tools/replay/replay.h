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

std::map<std::string, Tensor> run_replay(const ReplayOptions& options);
void write_tensors(const std::map<std::string, Tensor>& tensors, const std::filesystem::path& path);

}  // namespace moerun::replay

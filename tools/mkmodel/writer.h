// Writes a synthetic DeepSeek-V4 checkpoint directory in the released layout:
//   config.json, model-0000N-of-0000M.safetensors shards, model.safetensors.index.json,
//   tokenizer.json, tokenizer_config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "common/checkpoint_schema.h"
#include "common/model_config.h"

namespace moerun::mkmodel {

struct CheckpointWriteOptions {
  uint64_t seed = 1234;
  int64_t num_shards = 3;
  // Data regions left as holes (sparse files): real headers and shapes, no values. For the
  // full-size skeleton, which would otherwise need 160 GB.
  bool sparse = false;
};

struct CheckpointWriteResult {
  int64_t num_tensors = 0;
  uint64_t tensor_bytes = 0;
  int64_t num_shards = 0;
};

// Shards hold contiguous runs of the schema's tensors (embedding, layers, head group) split by
// bytes; every MTP tensor goes to the last shard, as in the release. A .weight and its .scale
// are never split. Needs num_shards ≥ 2 when the model has MTP blocks.
std::vector<std::vector<const TensorSpec*>> assign_shards(const CheckpointSchema& schema,
                                                          int64_t num_shards);

// `dir` is created; it must not already contain a checkpoint (throws naming the file found).
CheckpointWriteResult write_checkpoint(const ModelConfig& config,
                                       const CheckpointWriteOptions& options,
                                       const std::filesystem::path& dir);

}  // namespace moerun::mkmodel

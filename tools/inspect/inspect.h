// moerun-inspect's engine: validates a checkpoint directory against the DeepSeek-V4 schema of
// its config.json and summarises it, optionally with the per-rank plan of a pp × ep layout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/checkpoint_schema.h"

namespace moerun::inspect {

struct RankPlan {
  int64_t rank = 0, stage = 0, column = 0;
  int64_t layer_begin = 0, layer_end = 0, expert_begin = 0, expert_end = 0;
  bool embedding = false, head = false;
  int64_t num_tensors = 0;
  uint64_t bytes = 0;         // everything the rank loads (replicated dense weights included)
  uint64_t expert_bytes = 0;  // its routed experts
  uint64_t owned_bytes = 0;   // tensors for which it is the lowest rank holding them
};

struct Report {
  std::filesystem::path dir;
  int64_t num_shards = 0;
  int64_t num_tensors = 0;
  uint64_t total_bytes = 0;
  double header_parse_ms = 0;  // opening every shard and parsing its header
  SchemaReport schema;
  std::map<std::string, std::pair<int64_t, uint64_t>> by_dtype;  // dtype → (tensors, bytes)
  int64_t parameters = 0, parameters_without_mtp = 0;
  std::map<std::string, int64_t> layers_by_kind;  // "SWA", "CSA", "HCA", "MTP"
  std::vector<int64_t> hash_layers;
  int64_t n_routed_experts = 0, n_shared_experts = 0, experts_per_token = 0;
  int64_t hash_table_width = 0;  // tid2eid columns found in the checkpoint (0: none)
  std::vector<RankPlan> ranks;   // filled when a layout is given

  nlohmann::json to_json() const;
  std::string to_text() const;
};

// Throws moerun::Error when the directory, config or shards cannot be read; schema
// differences are reported in Report::schema, not thrown.
Report inspect_checkpoint(const std::filesystem::path& dir,
                          std::optional<std::pair<int64_t, int64_t>> layout = std::nullopt);

}  // namespace moerun::inspect

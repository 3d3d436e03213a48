// The parallel layout of a worker job (architecture §2): pp pipeline stages × ep columns,
// rank = stage·ep + column. Stage s holds a contiguous range of layers (the MTP blocks on the
// last stage); column d owns experts [d·E/ep, (d+1)·E/ep) of every layer of its stage.
// This module decides the layout and what each rank must load; it does no communication.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/checkpoint_schema.h"
#include "common/model_config.h"

namespace moerun {

struct ParallelLayout {
  int64_t pp = 1;
  int64_t ep = 1;
  // Per stage: [layer_begin, layer_end) over main layers then MTP layers; contiguous, covering
  // 0..num_layers_total, every stage non-empty in main layers, MTP on the last stage.
  std::vector<std::pair<int64_t, int64_t>> stage_layers;
  int64_t n_routed_experts = 0;

  int64_t world_size() const { return pp * ep; }
  int64_t rank_of(int64_t stage, int64_t column) const { return stage * ep + column; }
  int64_t stage_of(int64_t rank) const { return rank / ep; }
  int64_t column_of(int64_t rank) const { return rank % ep; }
  int64_t experts_per_rank() const { return n_routed_experts / ep; }
  // What rank `rank` holds: its stage's layers, its column's experts, the embedding on stage 0
  // and on the stage running MTP (shared embedding), the head group on the last stage.
  RankSelection selection(int64_t rank, const ModelConfig& config) const;
};

// "pp=2,ep=8" (either order, both required) → {pp, ep}; throws naming the bad part.
std::pair<int64_t, int64_t> parse_layout_spec(std::string_view spec);

// Plans a layout. With `stage_layer_counts` empty, main layers are split into contiguous
// stages that minimise the most expensive stage, where a layer costs the weights one token
// touches (dense weights + top-k routed experts + shared expert) and the last stage also pays
// for the head and the MTP blocks. Otherwise the counts (main layers per stage, summing to
// num_hidden_layers) are used as given. Throws moerun::Error (naming the value and what is
// allowed) for pp < 1, ep < 1, pp > num_hidden_layers, ep not dividing n_routed_experts, or
// bad explicit counts.
ParallelLayout plan_layout(const ModelConfig& config, int64_t pp, int64_t ep,
                           const std::vector<int64_t>& stage_layer_counts = {});

// Per-token cost of each layer (main then MTP), in weights touched; the planner's input.
std::vector<double> layer_costs(const CheckpointSchema& schema);

}  // namespace moerun

// The DeepSeek-V4 weights one process holds, read from a released-format checkpoint (spec
// §3): large matrices stay in checkpoint precision — views into the memory-mapped shards,
// re-blocked once by the kernel set when it wants to (Kernels::pack) — and small parameters
// (norm weights, mHC parameters, sinks, ape, gate bias, hash tables) are converted to fp32 /
// int32 vectors at load. The checkpoint must match the schema of its config exactly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "common/checkpoint_schema.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "kernels/kernels.h"

namespace moerun::model {

struct Linear {
  kernels::WeightView view;
  std::unique_ptr<kernels::PackedWeight> packed;  // nullptr: the kernel set uses the view
  bool loaded() const { return view.data != nullptr; }
};

struct HcParams {            // one mHC mixing site
  Linear fn;                 // F32 [mix, hc·dim] (copied; see `f32_storage`)
  std::vector<float> scale;  // [3] (pre/post/comb) or [1] for the head
  std::vector<float> base;   // [mix]
};

struct CompressorWeights {
  int64_t ratio = 0;
  int64_t dim = 0;          // Dc
  bool overlap = false;     // ratio 4: coff = 2
  Linear wkv, wgate;        // BF16 [coff·Dc, dim]
  std::vector<float> ape;   // [ratio, coff·Dc]
  std::vector<float> norm;  // [Dc]
};

struct IndexerWeights {
  Linear wq_b;          // FP8 [heads·index_head_dim, q_lora_rank]
  Linear weights_proj;  // BF16 [heads, dim]
  CompressorWeights compressor;
};

struct AttentionWeights {
  Linear wq_a, wq_b, wkv, wo_a, wo_b;
  std::vector<float> q_norm, kv_norm, sink;
  std::optional<CompressorWeights> compressor;
  std::optional<IndexerWeights> indexer;
};

struct ExpertWeights {
  Linear w1, w2, w3;
};

struct MoeWeights {
  Linear gate;                         // BF16 [experts, dim], used with fp32 activations
  std::vector<float> bias;             // score-routed layers
  std::vector<int32_t> hash;           // hash layers: [vocab, num_experts_per_tok] (sliced)
  std::vector<ExpertWeights> experts;  // all ids; only [expert_begin, expert_end) loaded
  ExpertWeights shared;
};

struct LayerWeights {
  int64_t layer = 0;
  HcParams hc_attn, hc_ffn;
  std::vector<float> attn_norm, ffn_norm;
  AttentionWeights attn;
  MoeWeights ffn;
  // MTP blocks only.
  Linear e_proj, h_proj;
  std::vector<float> enorm, hnorm, norm;
  HcParams hc_head;
};

// Which part of the model to load (a pipeline stage's layers, an expert range).
struct LoadRange {
  int64_t layer_begin = 0;
  int64_t layer_end = -1;  // exclusive; -1 = all layers incl. MTP
  int64_t expert_begin = 0;
  int64_t expert_end = -1;  // exclusive; -1 = all experts
  bool embedding = true;
  bool head = true;
};

class ModelWeights {
 public:
  // Opens `dir` (config.json + shards + index), validates the config and the checkpoint's
  // tensor table, applies `experts_per_token` (0 = the config's; otherwise the 4Expert-style
  // override: hash tables sliced to their first k columns; a table narrower than k is an
  // error), loads `range`, and packs the large matrices with `kernels`.
  // `config_json` empty: dir/config.json.
  static std::unique_ptr<ModelWeights> load(const std::filesystem::path& dir,
                                            kernels::Kernels& kernels,
                                            int64_t experts_per_token = 0,
                                            const LoadRange& range = {},
                                            const std::filesystem::path& config_json = {});

  const ModelConfig& config() const { return config_; }
  const Checkpoint& checkpoint() const { return checkpoint_; }
  const LoadRange& range() const { return range_; }
  const LayerWeights& layer(int64_t l) const { return *layers_.at(static_cast<size_t>(l)); }
  bool has_layer(int64_t l) const {
    return l >= 0 && l < static_cast<int64_t>(layers_.size()) && layers_[l] != nullptr;
  }

  // The embedding row of `token` as fp32 (bf16 values); throws for ids outside the
  // vocabulary or when this process holds no embedding.
  std::vector<float> embedding_row(int32_t token) const;

  const uint16_t* embed = nullptr;  // BF16 [vocab, dim] (mapped)
  Linear head;                      // BF16 [vocab, dim]
  std::vector<float> norm;          // final RMSNorm
  HcParams hc_head;
  int64_t expert_begin = 0, expert_end = 0;

 private:
  ModelWeights() = default;
  ModelConfig config_;
  Checkpoint checkpoint_;
  LoadRange range_;
  std::vector<std::unique_ptr<LayerWeights>> layers_;
  std::vector<std::unique_ptr<std::vector<float>>> f32_storage_;  // copies of F32 matrices
  friend class WeightLoader;
};

}  // namespace moerun::model

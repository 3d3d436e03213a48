// The model's semantic configuration: the Hugging Face config.json of DeepSeek-V4-Flash
// (model spec §1.1) as a typed, validated struct. Environment settings (threads, ports,
// layouts) live elsewhere. Everything derived from the config is a method here, so no call
// site does its own arithmetic on raw fields.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moerun {

enum class AttentionKind {
  kSlidingWindow,  // compress ratio 0: window only (SWA)
  kCsa,            // ratio 4: window + indexer top-k over ratio-4 compressed KV (overlapping)
  kHca,            // any other ratio > 0: window + all compressed rows (no overlap, no indexer)
};
enum class RoutingKind { kHash, kScore };
std::string_view attention_kind_name(AttentionKind kind);  // "SWA", "CSA", "HCA"

struct RopeScaling {
  std::string type = "yarn";
  double factor = 16;
  int64_t original_max_position_embeddings = 65536;
  double beta_fast = 32;
  double beta_slow = 1;
};

struct QuantizationConfig {
  std::string quant_method = "fp8";
  std::string fmt = "e4m3";
  std::string scale_fmt = "ue8m0";
  std::string activation_scheme = "dynamic";
  std::vector<int64_t> weight_block_size = {128, 128};
};

struct ModelConfig {
  // ---- config.json fields, defaults = the real DeepSeek-V4-Flash -------------------------
  std::vector<std::string> architectures = {"DeepseekV4ForCausalLM"};
  std::string model_type = "deepseek_v4";
  int64_t vocab_size = 129280;
  int64_t hidden_size = 4096;
  int64_t num_hidden_layers = 43;
  int64_t num_nextn_predict_layers = 1;
  int64_t num_attention_heads = 64;
  int64_t num_key_value_heads = 1;
  int64_t head_dim = 512;
  int64_t qk_rope_head_dim = 64;
  int64_t q_lora_rank = 1024;
  int64_t o_groups = 8;
  int64_t o_lora_rank = 1024;
  int64_t sliding_window = 128;
  std::vector<int64_t> compress_ratios;  // num_hidden_layers + num_nextn_predict_layers
  double compress_rope_theta = 160000;
  double rope_theta = 10000;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 1048576;
  int64_t index_n_heads = 64;
  int64_t index_head_dim = 128;
  int64_t index_topk = 512;
  int64_t hc_mult = 4;
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  int64_t n_routed_experts = 256;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 6;
  int64_t num_hash_layers = 3;
  int64_t moe_intermediate_size = 2048;
  std::string scoring_func = "sqrtsoftplus";
  std::string topk_method = "noaux_tc";
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.5;
  double swiglu_limit = 10.0;
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  QuantizationConfig quantization_config;
  std::string expert_dtype = "fp4";
  std::string torch_dtype = "bfloat16";
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  double initializer_range = 0.02;
  bool use_cache = true;
  std::string transformers_version = "4.57.1";

  // ---- loading -----------------------------------------------------------------------
  // Parses and validates. Every field of spec §1.1 is required; unknown keys, wrong JSON
  // types and inconsistent values throw moerun::Error naming `source`, the field, the value
  // and what is allowed.
  static ModelConfig from_json(const nlohmann::json& j, std::string_view source);
  static ModelConfig load(const std::filesystem::path& config_json);
  // The HF form (round-trips through from_json).
  nlohmann::json to_json() const;
  // Throws on the first violated rule (see model_config.cc for the list).
  void validate(std::string_view source = "config") const;

  // A copy with num_experts_per_tok = k (the 4Expert release); validates k.
  ModelConfig with_experts_per_tok(int64_t k) const;

  // ---- derived quantities -----------------------------------------------------------
  // Layers 0..num_hidden_layers-1 are the main blocks; num_hidden_layers.. are MTP blocks.
  int64_t num_layers_total() const { return num_hidden_layers + num_nextn_predict_layers; }
  bool is_mtp_layer(int64_t layer) const { return layer >= num_hidden_layers; }
  int64_t compress_ratio(int64_t layer) const;
  AttentionKind attention_kind(int64_t layer) const;
  bool has_compressor(int64_t layer) const { return compress_ratio(layer) > 0; }
  bool has_indexer(int64_t layer) const { return attention_kind(layer) == AttentionKind::kCsa; }
  // Hash-routed (tid2eid) layers are the first num_hash_layers main layers; MTP is scored.
  RoutingKind routing_kind(int64_t layer) const;
  bool is_hash_layer(int64_t layer) const { return routing_kind(layer) == RoutingKind::kHash; }
  // RoPE base and whether YaRN applies (ratio > 0 layers: compress_rope_theta with YaRN).
  double rope_base(int64_t layer) const;
  bool uses_yarn(int64_t layer) const { return compress_ratio(layer) > 0; }

  int64_t nope_head_dim() const { return head_dim - qk_rope_head_dim; }
  int64_t heads_per_group() const { return num_attention_heads / o_groups; }
  int64_t hc_mix_dim() const { return (2 + hc_mult) * hc_mult; }  // pre + post + comb
  int64_t hc_dim() const { return hc_mult * hidden_size; }        // flattened residual
  // Compressor output width: coff·Dc with coff = 2 for overlapping (ratio 4) compression.
  int64_t compressor_width(int64_t layer, int64_t compressed_dim) const;

  // Parameter and byte counts come from the checkpoint schema (checkpoint_schema.h): weights
  // counted one per element (an FP4 value is one weight), scales and tid2eid excluded.
  int64_t parameter_count(bool include_mtp = true) const;
  int64_t checkpoint_bytes() const;  // bytes of all tensors of the released checkpoint
};

}  // namespace moerun

// The DeepSeek-V4 checkpoint schema (model spec §3.2): every tensor a released checkpoint of
// a given ModelConfig holds, with dtype, shape, format and which layer/expert it belongs to.
// One source of truth for the checkpoint writer (moerun-mkmodel), the validator
// (moerun-inspect, loaders), parameter/byte counts and per-rank tensor selection.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/model_config.h"
#include "common/safetensors.h"

namespace moerun {

// Where a tensor lives in a pipeline: the embedding on the first stage (and on the stage that
// runs MTP, which shares it), the head group (final norm, hc_head_*, head) on the last stage,
// per-layer dense weights on the layer's stage (replicated across its ep columns), routed
// experts on the one column that owns them.
enum class TensorRole { kEmbedding, kHead, kLayerDense, kRoutedExpert };

enum class TensorFormat {
  kPlain,      // BF16 / F32 values used as they are
  kFp8Weight,  // F8_E4M3 [out, in]; scale at <name minus .weight>.scale
  kFp8Scale,   // F8_E8M0 [ceil(out/128), ceil(in/128)]
  kFp4Weight,  // I8 [out, in/2], packed e2m1, low nibble = even column
  kFp4Scale,   // F8_E8M0 [out, in/32]
  kHashTable,  // I64 tid2eid [vocab, num_experts_per_tok]
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kLayerDense;
  TensorFormat format = TensorFormat::kPlain;
  int64_t layer = -1;   // 0..num_layers_total-1 (MTP blocks after the main ones); -1 global
  int64_t expert = -1;  // routed expert id, -1 otherwise

  int64_t numel() const;
  uint64_t nbytes() const { return static_cast<uint64_t>(numel()) * dtype_size(dtype); }
  // Weights counted as the release counts them: one per element, one per FP4 value (two per
  // packed byte); scales and hash tables count zero.
  int64_t num_weights() const;
};

// What one rank holds: a contiguous layer range (MTP layers included when the range reaches
// them), a contiguous range of routed experts, and the global groups its stage needs.
struct RankSelection {
  int64_t layer_begin = 0;
  int64_t layer_end = 0;  // exclusive
  int64_t expert_begin = 0;
  int64_t expert_end = 0;  // exclusive
  bool embedding = false;
  bool head = false;

  bool holds(const TensorSpec& spec) const;
};

struct SchemaReport {
  struct Mismatch {
    std::string name;
    std::string expected;  // "F8_E4M3 [1024, 4096]"
    std::string actual;
  };
  std::vector<std::string> missing;     // expected, absent from the checkpoint
  std::vector<std::string> unexpected;  // present, not part of the schema
  std::vector<Mismatch> mismatched;     // present with another dtype or shape

  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  // Human-readable summary listing at most `max_items` names per category.
  std::string describe(size_t max_items = 10) const;
};

class CheckpointSchema {
 public:
  explicit CheckpointSchema(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  // In a stable order: embedding, main layers in order (dense then experts), MTP, head group.
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  const TensorSpec* find(std::string_view name) const;  // nullptr when not in the schema

  SchemaReport check(const Checkpoint& checkpoint) const;
  // Throws moerun::Error with report.describe() unless the checkpoint matches exactly.
  void require_match(const Checkpoint& checkpoint) const;

  int64_t parameter_count(bool include_mtp = true) const;
  uint64_t total_bytes() const;
  // The tensors a rank holds, in schema order.
  std::vector<const TensorSpec*> select(const RankSelection& selection) const;

  // "layers.3." for main layers, "mtp.0." for MTP blocks.
  std::string layer_prefix(int64_t layer) const;

 private:
  void add(std::string name, DType dtype, std::vector<int64_t> shape, TensorRole role,
           TensorFormat format, int64_t layer, int64_t expert = -1);
  void add_fp8_linear(const std::string& base, int64_t out, int64_t in, TensorRole role,
                      int64_t layer);
  void add_fp4_linear(const std::string& base, int64_t out, int64_t in, int64_t layer,
                      int64_t expert);
  void add_layer(int64_t layer);

  ModelConfig config_;
  std::vector<TensorSpec> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
};

// "F8_E4M3 [1024, 4096]"
std::string describe_tensor(DType dtype, const std::vector<int64_t>& shape);

}  // namespace moerun

// Builds the tensor table of spec §3.2 from a ModelConfig and checks checkpoints against it.
#include "common/checkpoint_schema.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"

namespace moerun {
namespace {

constexpr int64_t kFp8Block = 128;  // FP8 weight scales cover 128×128 blocks
constexpr int64_t kFp4Block = 32;   // FP4 weight scales cover 1×32 blocks along the input

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorSpec::num_weights() const {
  switch (format) {
    case TensorFormat::kFp4Weight:
      return numel() * 2;  // two e2m1 values per packed byte
    case TensorFormat::kFp8Scale:
    case TensorFormat::kFp4Scale:
    case TensorFormat::kHashTable:
      return 0;
    case TensorFormat::kPlain:
    case TensorFormat::kFp8Weight:
      return numel();
  }
  return 0;
}

bool RankSelection::holds(const TensorSpec& spec) const {
  switch (spec.role) {
    case TensorRole::kEmbedding:
      return embedding;
    case TensorRole::kHead:
      return head;
    case TensorRole::kLayerDense:
      return spec.layer >= layer_begin && spec.layer < layer_end;
    case TensorRole::kRoutedExpert:
      return spec.layer >= layer_begin && spec.layer < layer_end && spec.expert >= expert_begin &&
             spec.expert < expert_end;
  }
  return false;
}

std::string describe_tensor(DType dtype, const std::vector<int64_t>& shape) {
  return fmt::format("{} [{}]", dtype_name(dtype), fmt::join(shape, ", "));
}

std::string SchemaReport::describe(size_t max_items) const {
  if (ok()) return "checkpoint matches the schema";
  std::string out;
  auto list = [&](std::string_view what, const std::vector<std::string>& names) {
    if (names.empty()) return;
    out += fmt::format("{} {} tensor(s):", names.size(), what);
    for (size_t i = 0; i < names.size() && i < max_items; ++i) out += fmt::format(" {}", names[i]);
    if (names.size() > max_items) out += fmt::format(" ... ({} more)", names.size() - max_items);
    out += "\n";
  };
  list("missing", missing);
  list("unexpected", unexpected);
  if (!mismatched.empty()) {
    out += fmt::format("{} mis-shaped tensor(s):", mismatched.size());
    for (size_t i = 0; i < mismatched.size() && i < max_items; ++i) {
      const auto& m = mismatched[i];
      out += fmt::format(" {} (expected {}, found {})", m.name, m.expected, m.actual);
    }
    if (mismatched.size() > max_items)
      out += fmt::format(" ... ({} more)", mismatched.size() - max_items);
    out += "\n";
  }
  if (!out.empty()) out.pop_back();
  return out;
}

CheckpointSchema::CheckpointSchema(const ModelConfig& config) : config_(config) {
  config_.validate("checkpoint schema config");
  const ModelConfig& c = config_;
  add("embed.weight", DType::kBF16, {c.vocab_size, c.hidden_size}, TensorRole::kEmbedding,
      TensorFormat::kPlain, -1);
  for (int64_t layer = 0; layer < c.num_layers_total(); ++layer) add_layer(layer);
  add("norm.weight", DType::kBF16, {c.hidden_size}, TensorRole::kHead, TensorFormat::kPlain, -1);
  add("hc_head_fn", DType::kF32, {c.hc_mult, c.hc_dim()}, TensorRole::kHead, TensorFormat::kPlain,
      -1);
  add("hc_head_base", DType::kF32, {c.hc_mult}, TensorRole::kHead, TensorFormat::kPlain, -1);
  add("hc_head_scale", DType::kF32, {1}, TensorRole::kHead, TensorFormat::kPlain, -1);
  add("head.weight", DType::kBF16, {c.vocab_size, c.hidden_size}, TensorRole::kHead,
      TensorFormat::kPlain, -1);
}

std::string CheckpointSchema::layer_prefix(int64_t layer) const {
  if (config_.is_mtp_layer(layer)) return fmt::format("mtp.{}.", layer - config_.num_hidden_layers);
  return fmt::format("layers.{}.", layer);
}

void CheckpointSchema::add(std::string name, DType dtype, std::vector<int64_t> shape,
                           TensorRole role, TensorFormat format, int64_t layer, int64_t expert) {
  MOERUN_CHECK(!by_name_.contains(name), "schema lists tensor '{}' twice", name);
  by_name_.emplace(name, tensors_.size());
  tensors_.push_back(
      TensorSpec{std::move(name), dtype, std::move(shape), role, format, layer, expert});
}

void CheckpointSchema::add_fp8_linear(const std::string& base, int64_t out, int64_t in,
                                      TensorRole role, int64_t layer) {
  add(base + ".weight", DType::kF8_E4M3, {out, in}, role, TensorFormat::kFp8Weight, layer);
  add(base + ".scale", DType::kF8_E8M0, {ceil_div(out, kFp8Block), ceil_div(in, kFp8Block)}, role,
      TensorFormat::kFp8Scale, layer);
}

void CheckpointSchema::add_fp4_linear(const std::string& base, int64_t out, int64_t in,
                                      int64_t layer, int64_t expert) {
  add(base + ".weight", DType::kI8, {out, in / 2}, TensorRole::kRoutedExpert,
      TensorFormat::kFp4Weight, layer, expert);
  add(base + ".scale", DType::kF8_E8M0, {out, in / kFp4Block}, TensorRole::kRoutedExpert,
      TensorFormat::kFp4Scale, layer, expert);
}

void CheckpointSchema::add_layer(int64_t layer) {
  const ModelConfig& c = config_;
  const std::string p = layer_prefix(layer);
  const auto dense = TensorRole::kLayerDense;
  const auto plain = TensorFormat::kPlain;
  const int64_t dim = c.hidden_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim;

  if (c.is_mtp_layer(layer)) {  // MTP input projections and norms (spec §2.10)
    add_fp8_linear(p + "e_proj", dim, dim, dense, layer);
    add_fp8_linear(p + "h_proj", dim, dim, dense, layer);
    add(p + "enorm.weight", DType::kBF16, {dim}, dense, plain, layer);
    add(p + "hnorm.weight", DType::kBF16, {dim}, dense, plain, layer);
  }
  for (const char* site : {"attn", "ffn"}) {  // mHC mixing before attention and before the MoE
    add(fmt::format("{}hc_{}_fn", p, site), DType::kF32, {c.hc_mix_dim(), c.hc_dim()}, dense, plain,
        layer);
    add(fmt::format("{}hc_{}_base", p, site), DType::kF32, {c.hc_mix_dim()}, dense, plain, layer);
    add(fmt::format("{}hc_{}_scale", p, site), DType::kF32, {3}, dense, plain, layer);
  }
  add(p + "attn_norm.weight", DType::kBF16, {dim}, dense, plain, layer);
  add(p + "ffn_norm.weight", DType::kBF16, {dim}, dense, plain, layer);

  // Attention (spec §2.3).
  const std::string a = p + "attn.";
  add(a + "attn_sink", DType::kF32, {c.num_attention_heads}, dense, plain, layer);
  add_fp8_linear(a + "wq_a", c.q_lora_rank, dim, dense, layer);
  add(a + "q_norm.weight", DType::kBF16, {c.q_lora_rank}, dense, plain, layer);
  add_fp8_linear(a + "wq_b", q_dim, c.q_lora_rank, dense, layer);
  add_fp8_linear(a + "wkv", c.head_dim, dim, dense, layer);
  add(a + "kv_norm.weight", DType::kBF16, {c.head_dim}, dense, plain, layer);
  add_fp8_linear(a + "wo_a", c.o_groups * c.o_lora_rank, q_dim / c.o_groups, dense, layer);
  add_fp8_linear(a + "wo_b", dim, c.o_groups * c.o_lora_rank, dense, layer);
  if (c.has_compressor(layer)) {  // spec §2.6
    const int64_t width = c.compressor_width(layer, c.head_dim);
    add(a + "compressor.wkv.weight", DType::kBF16, {width, dim}, dense, plain, layer);
    add(a + "compressor.wgate.weight", DType::kBF16, {width, dim}, dense, plain, layer);
    add(a + "compressor.ape", DType::kF32, {c.compress_ratio(layer), width}, dense, plain, layer);
    add(a + "compressor.norm.weight", DType::kBF16, {c.head_dim}, dense, plain, layer);
  }
  if (c.has_indexer(layer)) {  // spec §2.5, CSA part
    const std::string ix = a + "indexer.";
    const int64_t width = c.compressor_width(layer, c.index_head_dim);
    add_fp8_linear(ix + "wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, dense, layer);
    add(ix + "weights_proj.weight", DType::kBF16, {c.index_n_heads, dim}, dense, plain, layer);
    add(ix + "compressor.wkv.weight", DType::kBF16, {width, dim}, dense, plain, layer);
    add(ix + "compressor.wgate.weight", DType::kBF16, {width, dim}, dense, plain, layer);
    add(ix + "compressor.ape", DType::kF32, {c.compress_ratio(layer), width}, dense, plain, layer);
    add(ix + "compressor.norm.weight", DType::kBF16, {c.index_head_dim}, dense, plain, layer);
  }

  // MoE (spec §2.8): gate, routed experts (FP4), shared expert (FP8).
  const std::string f = p + "ffn.";
  add(f + "gate.weight", DType::kBF16, {c.n_routed_experts, dim}, dense, plain, layer);
  if (c.is_hash_layer(layer)) {
    add(f + "gate.tid2eid", DType::kI64, {c.vocab_size, c.num_experts_per_tok}, dense,
        TensorFormat::kHashTable, layer);
  } else {
    add(f + "gate.bias", DType::kF32, {c.n_routed_experts}, dense, plain, layer);
  }
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const std::string x = fmt::format("{}experts.{}.", f, e);
    add_fp4_linear(x + "w1", c.moe_intermediate_size, dim, layer, e);
    add_fp4_linear(x + "w2", dim, c.moe_intermediate_size, layer, e);
    add_fp4_linear(x + "w3", c.moe_intermediate_size, dim, layer, e);
  }
  add_fp8_linear(f + "shared_experts.w1", c.moe_intermediate_size, dim, dense, layer);
  add_fp8_linear(f + "shared_experts.w2", dim, c.moe_intermediate_size, dense, layer);
  add_fp8_linear(f + "shared_experts.w3", c.moe_intermediate_size, dim, dense, layer);

  if (c.is_mtp_layer(layer)) {  // the MTP block's own head mixing and final norm
    add(p + "norm.weight", DType::kBF16, {dim}, dense, plain, layer);
    add(p + "hc_head_fn", DType::kF32, {c.hc_mult, c.hc_dim()}, dense, plain, layer);
    add(p + "hc_head_base", DType::kF32, {c.hc_mult}, dense, plain, layer);
    add(p + "hc_head_scale", DType::kF32, {1}, dense, plain, layer);
  }
}

const TensorSpec* CheckpointSchema::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

SchemaReport CheckpointSchema::check(const Checkpoint& checkpoint) const {
  SchemaReport report;
  for (const TensorSpec& spec : tensors_) {
    const Checkpoint::Entry* entry = checkpoint.find(spec.name);
    if (!entry) {
      report.missing.push_back(spec.name);
      continue;
    }
    const TensorInfo& info = *entry->info;
    if (info.dtype != spec.dtype || info.shape != spec.shape) {
      report.mismatched.push_back({spec.name, describe_tensor(spec.dtype, spec.shape),
                                   describe_tensor(info.dtype, info.shape)});
    }
  }
  for (const std::string& name : checkpoint.names())
    if (!find(name)) report.unexpected.push_back(name);
  return report;
}

void CheckpointSchema::require_match(const Checkpoint& checkpoint) const {
  const SchemaReport report = check(checkpoint);
  MOERUN_CHECK(report.ok(),
               "checkpoint {} does not match the DeepSeek-V4 schema of its config:\n{}",
               checkpoint.dir().string(), report.describe());
}

int64_t CheckpointSchema::parameter_count(bool include_mtp) const {
  int64_t n = 0;
  for (const TensorSpec& spec : tensors_)
    if (include_mtp || spec.layer < config_.num_hidden_layers) n += spec.num_weights();
  return n;
}

uint64_t CheckpointSchema::total_bytes() const {
  uint64_t n = 0;
  for (const TensorSpec& spec : tensors_) n += spec.nbytes();
  return n;
}

std::vector<const TensorSpec*> CheckpointSchema::select(const RankSelection& selection) const {
  std::vector<const TensorSpec*> out;
  for (const TensorSpec& spec : tensors_)
    if (selection.holds(spec)) out.push_back(&spec);
  return out;
}

// ModelConfig's counts are defined here so that the config module does not depend on the
// schema's tensor table.
int64_t ModelConfig::parameter_count(bool include_mtp) const {
  return CheckpointSchema(*this).parameter_count(include_mtp);
}

int64_t ModelConfig::checkpoint_bytes() const {
  return static_cast<int64_t>(CheckpointSchema(*this).total_bytes());
}

}  // namespace moerun

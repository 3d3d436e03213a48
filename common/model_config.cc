// ModelConfig: strict parsing of the HF config.json (spec §1.1), the validation rules, the HF
// form for writing back, and the per-layer derived quantities (spec §1.3).
//
// Parsing is strict so that a typo or a stale field never silently falls back to a default:
// every field is required, unknown keys are errors, and JSON types are checked. Integer
// fields must be JSON integers: 4.0 is rejected like 4.5 (real configs are written by Python's
// json module, which writes ints as ints, so a float there means the file was edited or
// produced by something else). Floating-point fields accept JSON integers and floats
// (rope_theta is 10000 in the release). parameter_count/checkpoint_bytes live in
// checkpoint_schema.cc.
#include "common/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <source_location>
#include <sstream>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun {

using nlohmann::json;

namespace {

// Limits and constants named by the validation rules.
constexpr int64_t kMaxSize = int64_t{1} << 24;  // any size/count field; keeps products in int64
constexpr int64_t kActQuantBlock = 128;         // act_quant block before every FP8/FP4 GEMM
constexpr int64_t kFp4Block = 32;               // FP4 e2m1 scale block along the input dim
constexpr int64_t kKvFp8Block = 64;             // FP8 block of the non-RoPE part of the KV cache
constexpr int64_t kWeightBlock = 128;           // FP8 weight scale block (weight_block_size)
constexpr int64_t kCsaRatio = 4;                // the overlapping, indexed compression ratio

// "a, b, c". (Not fmt::join, and no `"literal" + std::string&&`: at -O3 GCC 12 reports false
// -Wstringop-overflow / -Wrestrict warnings inside both, depending on inlining.)
template <typename T>
std::string join(const std::vector<T>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += fmt::format("{}", items[i]);
  }
  return out;
}

// ---- strict JSON reading -------------------------------------------------------------------

// Reads the fields of one JSON object. Fields are read in declaration order; missing fields are
// collected, so finish() can report an unknown key (usually a typo) before the missing field
// it was meant to be. Wrong types throw at once.
class ObjectReader {
 public:
  ObjectReader(const json& j, std::string_view source, std::string prefix)
      : j_(j), source_(source), prefix_(std::move(prefix)) {
    if (!j_.is_object()) {
      MOERUN_THROW("{}: {} = {}: expected a JSON object", source_,
                   prefix_.empty() ? std::string("config") : prefix_, j_.dump());
    }
  }

  int64_t integer(const char* name) {
    const json* v = find(name);
    if (v == nullptr) return 0;
    return to_integer(*v, qualified(name));
  }

  double number(const char* name) {
    const json* v = find(name);
    if (v == nullptr) return 0;
    if (!v->is_number()) type_error(qualified(name), *v, "a number");
    return v->get<double>();
  }

  bool boolean(const char* name) {
    const json* v = find(name);
    if (v == nullptr) return false;
    if (!v->is_boolean()) type_error(qualified(name), *v, "a boolean (true or false)");
    return v->get<bool>();
  }

  std::string string(const char* name) {
    const json* v = find(name);
    if (v == nullptr) return {};
    if (!v->is_string()) type_error(qualified(name), *v, "a string");
    return v->get<std::string>();
  }

  std::vector<int64_t> integers(const char* name) {
    const json* v = find(name);
    if (v == nullptr) return {};
    if (!v->is_array()) type_error(qualified(name), *v, "an array of integers");
    std::vector<int64_t> out;
    out.reserve(v->size());
    for (size_t i = 0; i < v->size(); ++i) {
      out.push_back(to_integer((*v)[i], fmt::format("{}[{}]", qualified(name), i)));
    }
    return out;
  }

  std::vector<std::string> strings(const char* name) {
    const json* v = find(name);
    if (v == nullptr) return {};
    if (!v->is_array()) type_error(qualified(name), *v, "an array of strings");
    std::vector<std::string> out;
    for (size_t i = 0; i < v->size(); ++i) {
      const json& e = (*v)[i];
      if (!e.is_string()) type_error(fmt::format("{}[{}]", qualified(name), i), e, "a string");
      out.push_back(e.get<std::string>());
    }
    return out;
  }

  // A nested object; returns nullptr when missing (the missing field is reported by finish()).
  const json* object(const char* name) {
    const json* v = find(name);
    if (v != nullptr && !v->is_object()) type_error(qualified(name), *v, "a JSON object");
    return v;
  }

  std::string qualified(std::string_view name) const {
    return prefix_.empty() ? std::string(name) : fmt::format("{}.{}", prefix_, name);
  }

  // Throws on the first unknown key, else on the first missing field.
  void finish() const {
    for (const auto& item : j_.items()) {
      if (read_.count(item.key()) == 0) {
        MOERUN_THROW("{}: \"{}\": unknown field (missing fields: {})", source_,
                     qualified(item.key()),
                     missing_.empty() ? std::string("none") : join(missing_));
      }
    }
    if (!missing_.empty()) {
      MOERUN_THROW("{}: \"{}\": missing field (every field of config.json is required)", source_,
                   missing_.front());
    }
  }

 private:
  const json* find(const char* name) {
    read_.insert(name);
    auto it = j_.find(name);
    if (it == j_.end()) {
      missing_.push_back(qualified(name));
      return nullptr;
    }
    return &*it;
  }

  [[noreturn]] void type_error(const std::string& field, const json& v,
                               std::string_view expected) const {
    MOERUN_THROW("{}: \"{}\" = {}: wrong type, expected {}", source_, field, v.dump(), expected);
  }

  int64_t to_integer(const json& v, const std::string& field) const {
    if (!v.is_number_integer()) type_error(field, v, "an integer (not a float, string or bool)");
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      type_error(field, v, "an integer that fits in int64");
    }
    return v.get<int64_t>();
  }

  const json& j_;
  std::string_view source_;
  std::string prefix_;
  std::set<std::string> read_;
  std::vector<std::string> missing_;
};

// ---- validation ------------------------------------------------------------------------------

std::string show(int64_t v) {
  return fmt::format("{}", v);
}
std::string show(double v) {
  return fmt::format("{}", v);
}
std::string show(bool v) {
  return v ? "true" : "false";
}
std::string show(const std::string& v) {
  return fmt::format("\"{}\"", v);
}
std::string show(const std::vector<int64_t>& v) {
  return fmt::format("[{}]", join(v));
}
std::string show(const std::vector<std::string>& v) {
  std::vector<std::string> quoted;
  for (const auto& s : v) quoted.push_back(show(s));
  return fmt::format("[{}]", join(quoted));
}

// One violated rule, one error: "<source>: invalid <field> = <value>: <what is allowed>".
class RuleChecker {
 public:
  explicit RuleChecker(std::string_view source) : source_(source) {}

  template <typename T>
  void require(bool ok, std::string_view field, const T& value, std::string_view allowed,
               std::source_location loc = std::source_location::current()) const {
    if (ok) [[likely]]
      return;
    detail::fail(loc.file_name(), static_cast<int>(loc.line()),
                 fmt::format("{}: invalid {} = {}: {}", source_, field, show(value), allowed));
  }

  // The shorthands below pass their caller's location on, so the error points at the rule.
  void size(std::string_view field, int64_t v, int64_t min = 1,
            std::source_location loc = std::source_location::current()) const {
    require(v >= min && v <= kMaxSize, field, v, fmt::format("must be in [{}, {}]", min, kMaxSize),
            loc);
  }
  void multiple_of(std::string_view field, int64_t v, int64_t block, std::string_view why,
                   std::source_location loc = std::source_location::current()) const {
    require(v % block == 0, field, v, fmt::format("must be a multiple of {} ({})", block, why),
            loc);
  }
  void positive(std::string_view field, double v,
                std::source_location loc = std::source_location::current()) const {
    require(std::isfinite(v) && v > 0, field, v, "must be finite and > 0", loc);
  }
  void equals(std::string_view field, const std::string& v, const char* expected,
              std::source_location loc = std::source_location::current()) const {
    require(v == expected, field, v,
            fmt::format("must be \"{}\" (the only supported value)", expected), loc);
  }

 private:
  std::string_view source_;
};

bool is_power_of_two(int64_t v) {
  return v > 0 && (v & (v - 1)) == 0;
}

}  // namespace

std::string_view attention_kind_name(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::kSlidingWindow:
      return "SWA";
    case AttentionKind::kCsa:
      return "CSA";
    case AttentionKind::kHca:
      return "HCA";
  }
  return "unknown";
}

// The validation rules, checked in this order (the first violation throws):
//  identity and number formats
//   1. architectures == ["DeepseekV4ForCausalLM"], model_type == "deepseek_v4"
//   2. torch_dtype "bfloat16", expert_dtype "fp4"; quantization_config: quant_method "fp8",
//      fmt "e4m3", scale_fmt "ue8m0", activation_scheme "dynamic", weight_block_size [128, 128]
//   3. hidden_act "silu", scoring_func "sqrtsoftplus", topk_method "noaux_tc",
//      norm_topk_prob true, tie_word_embeddings false, attention_bias false
//  sizes (every one named in the error; kMaxSize keeps all products in int64)
//   4. vocab_size, hidden_size, num_hidden_layers, num_attention_heads, head_dim,
//      qk_rope_head_dim, q_lora_rank, o_groups, o_lora_rank, sliding_window,
//      max_position_embeddings, index_n_heads, index_head_dim, index_topk, hc_mult,
//      hc_sinkhorn_iters, n_routed_experts, moe_intermediate_size in [1, kMaxSize];
//      num_nextn_predict_layers in [0, kMaxSize]
//   5. num_key_value_heads == 1 (one shared K=V head), n_shared_experts == 1
//  attention geometry
//   6. qk_rope_head_dim even and < head_dim
//   7. (head_dim - qk_rope_head_dim) % 64 == 0 (FP8 block of the KV cache's non-RoPE part)
//   8. num_attention_heads % o_groups == 0
//  quantized GEMM input widths (FP4 block 32 first, then act_quant block 128)
//   9. hidden_size, moe_intermediate_size multiples of 32 (FP4 expert inputs)
//  10. hidden_size, q_lora_rank, o_groups·o_lora_rank, moe_intermediate_size,
//      head_dim·num_attention_heads/o_groups multiples of 128 (act_quant block)
//  indexer
//  11. index_head_dim a multiple of 32, a power of two, > qk_rope_head_dim
//  MoE
//  12. 1 <= num_experts_per_tok <= n_routed_experts; 0 <= num_hash_layers <= num_hidden_layers
//  13. routed_scaling_factor > 0, swiglu_limit > 0 (finite)
//  layer schedule
//  14. len(compress_ratios) == num_hidden_layers + num_nextn_predict_layers
//  15. each ratio is 0 or >= 2, and divides max_position_embeddings
//  RoPE / YaRN
//  16. rope_theta > 0, compress_rope_theta > 0 (finite)
//  17. rope_scaling: type "yarn", factor > 0, beta_slow > 0, beta_fast > beta_slow,
//      original_max_position_embeddings in [1, kMaxSize]
//  norms, tokens, unused HF fields
//  18. rms_norm_eps > 0, hc_eps > 0 (finite)
//  19. 0 <= bos_token_id < vocab_size, 0 <= eos_token_id < vocab_size
//  20. attention_dropout in [0, 1], initializer_range finite and >= 0
void ModelConfig::validate(std::string_view source) const {
  const RuleChecker c(source);

  // 1-3: identity and number formats.
  c.require(architectures == std::vector<std::string>{"DeepseekV4ForCausalLM"}, "architectures",
            architectures, "must be [\"DeepseekV4ForCausalLM\"]");
  c.equals("model_type", model_type, "deepseek_v4");
  c.equals("torch_dtype", torch_dtype, "bfloat16");
  c.equals("expert_dtype", expert_dtype, "fp4");
  c.equals("quantization_config.quant_method", quantization_config.quant_method, "fp8");
  c.equals("quantization_config.fmt", quantization_config.fmt, "e4m3");
  c.equals("quantization_config.scale_fmt", quantization_config.scale_fmt, "ue8m0");
  c.equals("quantization_config.activation_scheme", quantization_config.activation_scheme,
           "dynamic");
  c.require(
      quantization_config.weight_block_size == std::vector<int64_t>{kWeightBlock, kWeightBlock},
      "quantization_config.weight_block_size", quantization_config.weight_block_size,
      fmt::format("must be [{}, {}]", kWeightBlock, kWeightBlock));
  c.equals("hidden_act", hidden_act, "silu");
  c.equals("scoring_func", scoring_func, "sqrtsoftplus");
  c.equals("topk_method", topk_method, "noaux_tc");
  c.require(norm_topk_prob, "norm_topk_prob", norm_topk_prob,
            "must be true (routing weights are always renormalized)");
  c.require(!tie_word_embeddings, "tie_word_embeddings", tie_word_embeddings,
            "must be false (separate embed and head)");
  c.require(!attention_bias, "attention_bias", attention_bias,
            "must be false (the checkpoint has no attention biases)");

  // 4-5: sizes.
  c.size("vocab_size", vocab_size);
  c.size("hidden_size", hidden_size);
  c.size("num_hidden_layers", num_hidden_layers);
  c.size("num_nextn_predict_layers", num_nextn_predict_layers, 0);
  c.size("num_attention_heads", num_attention_heads);
  c.size("head_dim", head_dim);
  c.size("qk_rope_head_dim", qk_rope_head_dim);
  c.size("q_lora_rank", q_lora_rank);
  c.size("o_groups", o_groups);
  c.size("o_lora_rank", o_lora_rank);
  c.size("sliding_window", sliding_window);
  c.size("max_position_embeddings", max_position_embeddings);
  c.size("index_n_heads", index_n_heads);
  c.size("index_head_dim", index_head_dim);
  c.size("index_topk", index_topk);
  c.size("hc_mult", hc_mult);
  c.size("hc_sinkhorn_iters", hc_sinkhorn_iters);
  c.size("n_routed_experts", n_routed_experts);
  c.size("moe_intermediate_size", moe_intermediate_size);
  c.require(num_key_value_heads == 1, "num_key_value_heads", num_key_value_heads,
            "must be 1 (one shared K=V head)");
  c.require(n_shared_experts == 1, "n_shared_experts", n_shared_experts, "must be 1");

  // 6-8: attention geometry.
  c.require(qk_rope_head_dim % 2 == 0 && qk_rope_head_dim < head_dim, "qk_rope_head_dim",
            qk_rope_head_dim, fmt::format("must be even and < head_dim = {}", head_dim));
  c.require(nope_head_dim() % kKvFp8Block == 0, "head_dim - qk_rope_head_dim", nope_head_dim(),
            fmt::format("must be a multiple of {} (FP8 block of the KV cache; head_dim = {}, "
                        "qk_rope_head_dim = {})",
                        kKvFp8Block, head_dim, qk_rope_head_dim));
  c.require(num_attention_heads % o_groups == 0, "num_attention_heads", num_attention_heads,
            fmt::format("must be a multiple of o_groups = {}", o_groups));

  // 9-10: quantized GEMM input widths.
  c.multiple_of("hidden_size", hidden_size, kFp4Block, "FP4 block of the expert w1/w3 input");
  c.multiple_of("moe_intermediate_size", moe_intermediate_size, kFp4Block,
                "FP4 block of the expert w2 input");
  c.multiple_of("hidden_size", hidden_size, kActQuantBlock, "act_quant block");
  c.multiple_of("q_lora_rank", q_lora_rank, kActQuantBlock, "act_quant block of the wq_b input");
  c.multiple_of("o_groups * o_lora_rank", o_groups * o_lora_rank, kActQuantBlock,
                "act_quant block of the wo_b input");
  c.multiple_of("moe_intermediate_size", moe_intermediate_size, kActQuantBlock,
                "act_quant block of the w2 input");
  c.multiple_of("head_dim * num_attention_heads / o_groups",
                head_dim * num_attention_heads / o_groups, kActQuantBlock,
                "act_quant block of the wo_a input");

  // 11: indexer.
  c.multiple_of("index_head_dim", index_head_dim, kFp4Block, "indexer FP4 block");
  c.require(is_power_of_two(index_head_dim), "index_head_dim", index_head_dim,
            "must be a power of two (Hadamard rotation)");
  c.require(index_head_dim > qk_rope_head_dim, "index_head_dim", index_head_dim,
            fmt::format("must be > qk_rope_head_dim = {}", qk_rope_head_dim));

  // 12-13: MoE.
  c.require(num_experts_per_tok >= 1 && num_experts_per_tok <= n_routed_experts,
            "num_experts_per_tok", num_experts_per_tok,
            fmt::format("must be in [1, n_routed_experts = {}]", n_routed_experts));
  c.require(num_hash_layers >= 0 && num_hash_layers <= num_hidden_layers, "num_hash_layers",
            num_hash_layers,
            fmt::format("must be in [0, num_hidden_layers = {}]", num_hidden_layers));
  c.positive("routed_scaling_factor", routed_scaling_factor);
  c.positive("swiglu_limit", swiglu_limit);

  // 14-15: layer schedule.
  c.require(static_cast<int64_t>(compress_ratios.size()) == num_layers_total(), "compress_ratios",
            compress_ratios,
            fmt::format("needs num_hidden_layers + num_nextn_predict_layers = {} + {} = {} "
                        "entries, got {}",
                        num_hidden_layers, num_nextn_predict_layers, num_layers_total(),
                        compress_ratios.size()));
  for (size_t i = 0; i < compress_ratios.size(); ++i) {
    const int64_t r = compress_ratios[i];
    const std::string field = fmt::format("compress_ratios[{}]", i);
    c.require(r == 0 || r >= 2, field, r, "must be 0 (window only) or >= 2");
    c.require(r == 0 || max_position_embeddings % r == 0, field, r,
              fmt::format("must divide max_position_embeddings = {}", max_position_embeddings));
  }

  // 16-17: RoPE / YaRN.
  c.positive("rope_theta", rope_theta);
  c.positive("compress_rope_theta", compress_rope_theta);
  c.equals("rope_scaling.type", rope_scaling.type, "yarn");
  c.positive("rope_scaling.factor", rope_scaling.factor);
  c.positive("rope_scaling.beta_slow", rope_scaling.beta_slow);
  c.require(
      std::isfinite(rope_scaling.beta_fast) && rope_scaling.beta_fast > rope_scaling.beta_slow,
      "rope_scaling.beta_fast", rope_scaling.beta_fast,
      fmt::format("must be finite and > rope_scaling.beta_slow = {}", rope_scaling.beta_slow));
  c.size("rope_scaling.original_max_position_embeddings",
         rope_scaling.original_max_position_embeddings);

  // 18-20: norms, tokens, unused HF fields.
  c.positive("rms_norm_eps", rms_norm_eps);
  c.positive("hc_eps", hc_eps);
  c.require(bos_token_id >= 0 && bos_token_id < vocab_size, "bos_token_id", bos_token_id,
            fmt::format("must be in [0, vocab_size = {})", vocab_size));
  c.require(eos_token_id >= 0 && eos_token_id < vocab_size, "eos_token_id", eos_token_id,
            fmt::format("must be in [0, vocab_size = {})", vocab_size));
  c.require(attention_dropout >= 0 && attention_dropout <= 1, "attention_dropout",
            attention_dropout, "must be in [0, 1]");
  c.require(std::isfinite(initializer_range) && initializer_range >= 0, "initializer_range",
            initializer_range, "must be finite and >= 0");
}

ModelConfig ModelConfig::from_json(const json& j, std::string_view source) {
  ModelConfig m;
  ObjectReader r(j, source, "");
  m.architectures = r.strings("architectures");
  m.model_type = r.string("model_type");
  m.vocab_size = r.integer("vocab_size");
  m.hidden_size = r.integer("hidden_size");
  m.num_hidden_layers = r.integer("num_hidden_layers");
  m.num_nextn_predict_layers = r.integer("num_nextn_predict_layers");
  m.num_attention_heads = r.integer("num_attention_heads");
  m.num_key_value_heads = r.integer("num_key_value_heads");
  m.head_dim = r.integer("head_dim");
  m.qk_rope_head_dim = r.integer("qk_rope_head_dim");
  m.q_lora_rank = r.integer("q_lora_rank");
  m.o_groups = r.integer("o_groups");
  m.o_lora_rank = r.integer("o_lora_rank");
  m.sliding_window = r.integer("sliding_window");
  m.compress_ratios = r.integers("compress_ratios");
  m.compress_rope_theta = r.number("compress_rope_theta");
  m.rope_theta = r.number("rope_theta");
  if (const json* rs = r.object("rope_scaling")) {
    ObjectReader s(*rs, source, r.qualified("rope_scaling"));
    m.rope_scaling.type = s.string("type");
    m.rope_scaling.factor = s.number("factor");
    m.rope_scaling.original_max_position_embeddings = s.integer("original_max_position_embeddings");
    m.rope_scaling.beta_fast = s.number("beta_fast");
    m.rope_scaling.beta_slow = s.number("beta_slow");
    s.finish();
  }
  m.max_position_embeddings = r.integer("max_position_embeddings");
  m.index_n_heads = r.integer("index_n_heads");
  m.index_head_dim = r.integer("index_head_dim");
  m.index_topk = r.integer("index_topk");
  m.hc_mult = r.integer("hc_mult");
  m.hc_sinkhorn_iters = r.integer("hc_sinkhorn_iters");
  m.hc_eps = r.number("hc_eps");
  m.n_routed_experts = r.integer("n_routed_experts");
  m.n_shared_experts = r.integer("n_shared_experts");
  m.num_experts_per_tok = r.integer("num_experts_per_tok");
  m.num_hash_layers = r.integer("num_hash_layers");
  m.moe_intermediate_size = r.integer("moe_intermediate_size");
  m.scoring_func = r.string("scoring_func");
  m.topk_method = r.string("topk_method");
  m.norm_topk_prob = r.boolean("norm_topk_prob");
  m.routed_scaling_factor = r.number("routed_scaling_factor");
  m.swiglu_limit = r.number("swiglu_limit");
  m.hidden_act = r.string("hidden_act");
  m.rms_norm_eps = r.number("rms_norm_eps");
  if (const json* q = r.object("quantization_config")) {
    ObjectReader s(*q, source, r.qualified("quantization_config"));
    m.quantization_config.quant_method = s.string("quant_method");
    m.quantization_config.fmt = s.string("fmt");
    m.quantization_config.scale_fmt = s.string("scale_fmt");
    m.quantization_config.activation_scheme = s.string("activation_scheme");
    m.quantization_config.weight_block_size = s.integers("weight_block_size");
    s.finish();
  }
  m.expert_dtype = r.string("expert_dtype");
  m.torch_dtype = r.string("torch_dtype");
  m.bos_token_id = r.integer("bos_token_id");
  m.eos_token_id = r.integer("eos_token_id");
  m.tie_word_embeddings = r.boolean("tie_word_embeddings");
  m.attention_bias = r.boolean("attention_bias");
  m.attention_dropout = r.number("attention_dropout");
  m.initializer_range = r.number("initializer_range");
  m.use_cache = r.boolean("use_cache");
  m.transformers_version = r.string("transformers_version");
  r.finish();

  m.validate(source);
  return m;
}

ModelConfig ModelConfig::load(const std::filesystem::path& config_json) {
  const std::string path = config_json.string();
  std::error_code ec;
  MOERUN_CHECK(!std::filesystem::is_directory(config_json, ec),
               "{}: is a directory, expected a config.json file", path);
  std::ifstream in(config_json, std::ios::binary);
  if (!in) {
    const int err = errno;
    MOERUN_THROW("{}: cannot open model config: {}", path, detail::errno_string(err));
  }
  std::ostringstream text;
  text << in.rdbuf();
  MOERUN_CHECK(!in.bad(), "{}: read error", path);

  // nlohmann keeps the last of duplicate keys silently; a duplicated field is as suspicious as an
  // unknown one, so the parser callback records the first duplicate (one key set per open object).
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int /*depth*/, json::parse_event_t event,
                                               json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.str(), on_event);
  } catch (const json::exception& e) {
    MOERUN_THROW("{}: invalid JSON: {}", path, e.what());
  }
  MOERUN_CHECK(duplicate.empty(), "{}: \"{}\": duplicate field", path, duplicate);
  return from_json(j, path);
}

json ModelConfig::to_json() const {
  json j;
  j["architectures"] = architectures;
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["q_lora_rank"] = q_lora_rank;
  j["o_groups"] = o_groups;
  j["o_lora_rank"] = o_lora_rank;
  j["sliding_window"] = sliding_window;
  j["compress_ratios"] = compress_ratios;
  j["compress_rope_theta"] = compress_rope_theta;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = {
      {"type", rope_scaling.type},
      {"factor", rope_scaling.factor},
      {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
      {"beta_fast", rope_scaling.beta_fast},
      {"beta_slow", rope_scaling.beta_slow},
  };
  j["max_position_embeddings"] = max_position_embeddings;
  j["index_n_heads"] = index_n_heads;
  j["index_head_dim"] = index_head_dim;
  j["index_topk"] = index_topk;
  j["hc_mult"] = hc_mult;
  j["hc_sinkhorn_iters"] = hc_sinkhorn_iters;
  j["hc_eps"] = hc_eps;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["num_hash_layers"] = num_hash_layers;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["scoring_func"] = scoring_func;
  j["topk_method"] = topk_method;
  j["norm_topk_prob"] = norm_topk_prob;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["swiglu_limit"] = swiglu_limit;
  j["hidden_act"] = hidden_act;
  j["rms_norm_eps"] = rms_norm_eps;
  j["quantization_config"] = {
      {"quant_method", quantization_config.quant_method},
      {"fmt", quantization_config.fmt},
      {"scale_fmt", quantization_config.scale_fmt},
      {"activation_scheme", quantization_config.activation_scheme},
      {"weight_block_size", quantization_config.weight_block_size},
  };
  j["expert_dtype"] = expert_dtype;
  j["torch_dtype"] = torch_dtype;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["attention_dropout"] = attention_dropout;
  j["initializer_range"] = initializer_range;
  j["use_cache"] = use_cache;
  j["transformers_version"] = transformers_version;
  return j;
}

ModelConfig ModelConfig::with_experts_per_tok(int64_t k) const {
  ModelConfig copy = *this;
  copy.num_experts_per_tok = k;
  copy.validate("with_experts_per_tok");
  return copy;
}

int64_t ModelConfig::compress_ratio(int64_t layer) const {
  MOERUN_CHECK(layer >= 0 && layer < static_cast<int64_t>(compress_ratios.size()),
               "layer {} out of range: must be in [0, {}) ({} main + {} MTP layers)", layer,
               compress_ratios.size(), num_hidden_layers, num_nextn_predict_layers);
  return compress_ratios[static_cast<size_t>(layer)];
}

AttentionKind ModelConfig::attention_kind(int64_t layer) const {
  const int64_t ratio = compress_ratio(layer);
  if (ratio == 0) return AttentionKind::kSlidingWindow;
  return ratio == kCsaRatio ? AttentionKind::kCsa : AttentionKind::kHca;
}

RoutingKind ModelConfig::routing_kind(int64_t layer) const {
  static_cast<void>(compress_ratio(layer));  // range check
  return !is_mtp_layer(layer) && layer < num_hash_layers ? RoutingKind::kHash : RoutingKind::kScore;
}

double ModelConfig::rope_base(int64_t layer) const {
  return compress_ratio(layer) > 0 ? compress_rope_theta : rope_theta;
}

int64_t ModelConfig::compressor_width(int64_t layer, int64_t compressed_dim) const {
  const int64_t ratio = compress_ratio(layer);
  MOERUN_CHECK(ratio > 0, "layer {} has compress ratio 0 and therefore no compressor", layer);
  MOERUN_CHECK(compressed_dim >= 1, "compressor_width: compressed_dim = {} must be >= 1",
               compressed_dim);
  return (ratio == kCsaRatio ? 2 : 1) * compressed_dim;
}

}  // namespace moerun

// ModelConfig: loading the shipped configs and the golden tiny config, derived per-layer facts
// checked against spec §1.3/§1.4 and against the golden set's own summary (golden.json
// layer_kinds, model_args.json = what the official code ran with), round trips, and one
// failing example per parse error and validation rule.
#include "common/model_config.h"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kSourceDir = MOERUN_SOURCE_DIR;
const fs::path kGoldenTiny = fs::path(MOERUN_GOLDEN_DIR) / "dsv4-tiny";
const fs::path kGoldenTinyConfig = kGoldenTiny / "checkpoint" / "config.json";

fs::path config_path(const char* name) {
  return kSourceDir / "configs" / name;
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return json::parse(in);
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Field-by-field equality (doubles compared exactly: a round trip must not change them).
void expect_same(const ModelConfig& a, const ModelConfig& b) {
#define MOERUN_EXPECT_FIELD(f) EXPECT_EQ(a.f, b.f) << "field " #f
  MOERUN_EXPECT_FIELD(architectures);
  MOERUN_EXPECT_FIELD(model_type);
  MOERUN_EXPECT_FIELD(vocab_size);
  MOERUN_EXPECT_FIELD(hidden_size);
  MOERUN_EXPECT_FIELD(num_hidden_layers);
  MOERUN_EXPECT_FIELD(num_nextn_predict_layers);
  MOERUN_EXPECT_FIELD(num_attention_heads);
  MOERUN_EXPECT_FIELD(num_key_value_heads);
  MOERUN_EXPECT_FIELD(head_dim);
  MOERUN_EXPECT_FIELD(qk_rope_head_dim);
  MOERUN_EXPECT_FIELD(q_lora_rank);
  MOERUN_EXPECT_FIELD(o_groups);
  MOERUN_EXPECT_FIELD(o_lora_rank);
  MOERUN_EXPECT_FIELD(sliding_window);
  MOERUN_EXPECT_FIELD(compress_ratios);
  MOERUN_EXPECT_FIELD(compress_rope_theta);
  MOERUN_EXPECT_FIELD(rope_theta);
  MOERUN_EXPECT_FIELD(rope_scaling.type);
  MOERUN_EXPECT_FIELD(rope_scaling.factor);
  MOERUN_EXPECT_FIELD(rope_scaling.original_max_position_embeddings);
  MOERUN_EXPECT_FIELD(rope_scaling.beta_fast);
  MOERUN_EXPECT_FIELD(rope_scaling.beta_slow);
  MOERUN_EXPECT_FIELD(max_position_embeddings);
  MOERUN_EXPECT_FIELD(index_n_heads);
  MOERUN_EXPECT_FIELD(index_head_dim);
  MOERUN_EXPECT_FIELD(index_topk);
  MOERUN_EXPECT_FIELD(hc_mult);
  MOERUN_EXPECT_FIELD(hc_sinkhorn_iters);
  MOERUN_EXPECT_FIELD(hc_eps);
  MOERUN_EXPECT_FIELD(n_routed_experts);
  MOERUN_EXPECT_FIELD(n_shared_experts);
  MOERUN_EXPECT_FIELD(num_experts_per_tok);
  MOERUN_EXPECT_FIELD(num_hash_layers);
  MOERUN_EXPECT_FIELD(moe_intermediate_size);
  MOERUN_EXPECT_FIELD(scoring_func);
  MOERUN_EXPECT_FIELD(topk_method);
  MOERUN_EXPECT_FIELD(norm_topk_prob);
  MOERUN_EXPECT_FIELD(routed_scaling_factor);
  MOERUN_EXPECT_FIELD(swiglu_limit);
  MOERUN_EXPECT_FIELD(hidden_act);
  MOERUN_EXPECT_FIELD(rms_norm_eps);
  MOERUN_EXPECT_FIELD(quantization_config.quant_method);
  MOERUN_EXPECT_FIELD(quantization_config.fmt);
  MOERUN_EXPECT_FIELD(quantization_config.scale_fmt);
  MOERUN_EXPECT_FIELD(quantization_config.activation_scheme);
  MOERUN_EXPECT_FIELD(quantization_config.weight_block_size);
  MOERUN_EXPECT_FIELD(expert_dtype);
  MOERUN_EXPECT_FIELD(torch_dtype);
  MOERUN_EXPECT_FIELD(bos_token_id);
  MOERUN_EXPECT_FIELD(eos_token_id);
  MOERUN_EXPECT_FIELD(tie_word_embeddings);
  MOERUN_EXPECT_FIELD(attention_bias);
  MOERUN_EXPECT_FIELD(attention_dropout);
  MOERUN_EXPECT_FIELD(initializer_range);
  MOERUN_EXPECT_FIELD(use_cache);
  MOERUN_EXPECT_FIELD(transformers_version);
#undef MOERUN_EXPECT_FIELD
}

// DeepSeek-V4-Flash written out from spec §1.1 and §1.3, independent of the header defaults.
ModelConfig spec_flash() {
  ModelConfig c;
  c.architectures = {"DeepseekV4ForCausalLM"};
  c.model_type = "deepseek_v4";
  c.vocab_size = 129280;
  c.hidden_size = 4096;
  c.num_hidden_layers = 43;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 64;
  c.num_key_value_heads = 1;
  c.head_dim = 512;
  c.qk_rope_head_dim = 64;
  c.q_lora_rank = 1024;
  c.o_groups = 8;
  c.o_lora_rank = 1024;
  c.sliding_window = 128;
  c.compress_ratios = {0, 0};  // layers 0, 1: SWA
  for (int64_t layer = 2; layer < 43; ++layer) c.compress_ratios.push_back(layer % 2 ? 128 : 4);
  c.compress_ratios.push_back(0);  // MTP
  c.compress_rope_theta = 160000;
  c.rope_theta = 10000;
  c.rope_scaling = {"yarn", 16, 65536, 32, 1};
  c.max_position_embeddings = 1048576;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.index_topk = 512;
  c.hc_mult = 4;
  c.hc_sinkhorn_iters = 20;
  c.hc_eps = 1e-6;
  c.n_routed_experts = 256;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 6;
  c.num_hash_layers = 3;
  c.moe_intermediate_size = 2048;
  c.scoring_func = "sqrtsoftplus";
  c.topk_method = "noaux_tc";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 1.5;
  c.swiglu_limit = 10.0;
  c.hidden_act = "silu";
  c.rms_norm_eps = 1e-6;
  c.quantization_config = {"fp8", "e4m3", "ue8m0", "dynamic", {128, 128}};
  c.expert_dtype = "fp4";
  c.torch_dtype = "bfloat16";
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  c.tie_word_embeddings = false;
  c.attention_bias = false;
  c.attention_dropout = 0.0;
  c.initializer_range = 0.02;
  c.use_cache = true;
  c.transformers_version = "4.57.1";
  return c;
}

// ---- loading the shipped configs ---------------------------------------------------------------

TEST(ModelConfigFiles, LoadsEveryShippedConfigAndTheGoldenTinyConfig) {
  for (const char* name :
       {"dsv4-flash.json", "dsv4-flash-4expert.json", "dsv4-tiny.json", "dsv4-small.json"}) {
    SCOPED_TRACE(name);
    EXPECT_NO_THROW(ModelConfig::load(config_path(name)));
  }
  EXPECT_NO_THROW(ModelConfig::load(kGoldenTinyConfig));
}

TEST(ModelConfigFiles, FlashFileIsSpecSection1) {
  expect_same(ModelConfig::load(config_path("dsv4-flash.json")), spec_flash());
}

TEST(ModelConfigFiles, HeaderDefaultsAreFlash) {
  ModelConfig defaults;
  EXPECT_TRUE(defaults.compress_ratios.empty());
  defaults.compress_ratios = spec_flash().compress_ratios;
  expect_same(defaults, spec_flash());
  EXPECT_NO_THROW(defaults.validate());
}

TEST(ModelConfigFiles, FlashFileKeepsTheGoldenKeyOrder) {
  // Keys as in the released config (the golden tiny config has every field): read the files'
  // key sequence with an order-preserving parser.
  const auto keys = [](const fs::path& path) {
    const auto parsed = nlohmann::ordered_json::parse(read_bytes(path));
    std::vector<std::string> out;
    for (const auto& item : parsed.items()) {
      out.push_back(item.key());
    }
    return out;
  };
  const auto golden = keys(kGoldenTinyConfig);
  EXPECT_EQ(keys(config_path("dsv4-flash.json")), golden);
  EXPECT_EQ(keys(config_path("dsv4-flash-4expert.json")), golden);
  EXPECT_EQ(keys(config_path("dsv4-small.json")), golden);
}

TEST(ModelConfigFiles, TinyFileIsByteIdenticalToGolden) {
  const std::string golden = read_bytes(kGoldenTinyConfig);
  ASSERT_FALSE(golden.empty());
  EXPECT_EQ(read_bytes(config_path("dsv4-tiny.json")), golden);
}

TEST(ModelConfigFiles, FourExpertDiffersOnlyInExpertsPerToken) {
  json flash = read_json(config_path("dsv4-flash.json"));
  json four = read_json(config_path("dsv4-flash-4expert.json"));
  EXPECT_EQ(flash["num_experts_per_tok"], 6);
  EXPECT_EQ(four["num_experts_per_tok"], 4);
  flash.erase("num_experts_per_tok");
  four.erase("num_experts_per_tok");
  EXPECT_EQ(flash, four);

  const ModelConfig flash_cfg = ModelConfig::load(config_path("dsv4-flash.json"));
  expect_same(ModelConfig::load(config_path("dsv4-flash-4expert.json")),
              flash_cfg.with_experts_per_tok(4));
}

TEST(ModelConfigFiles, SmallPresetSizesAndEverythingElseAsFlash) {
  const json small = read_json(config_path("dsv4-small.json"));
  const json flash = read_json(config_path("dsv4-flash.json"));
  const json changed = {{"vocab_size", 32768},
                        {"hidden_size", 2048},
                        {"num_hidden_layers", 8},
                        {"num_nextn_predict_layers", 1},
                        {"num_attention_heads", 16},
                        {"head_dim", 512},
                        {"qk_rope_head_dim", 64},
                        {"q_lora_rank", 1024},
                        {"o_groups", 8},
                        {"o_lora_rank", 512},
                        {"sliding_window", 128},
                        {"compress_ratios", {0, 0, 4, 128, 4, 128, 4, 128, 0}},
                        {"index_n_heads", 16},
                        {"index_head_dim", 128},
                        {"index_topk", 64},
                        {"n_routed_experts", 32},
                        {"num_experts_per_tok", 6},
                        {"num_hash_layers", 3},
                        {"moe_intermediate_size", 1024},
                        {"max_position_embeddings", 65536}};
  ASSERT_EQ(small.size(), flash.size());
  for (const auto& item : small.items()) {
    SCOPED_TRACE(item.key());
    if (changed.contains(item.key())) {
      EXPECT_EQ(item.value(), changed[item.key()]);
    } else {
      EXPECT_EQ(item.value(), flash[item.key()]);
    }
  }

  const ModelConfig c = ModelConfig::load(config_path("dsv4-small.json"));
  const std::vector<AttentionKind> kinds = {
      AttentionKind::kSlidingWindow, AttentionKind::kSlidingWindow, AttentionKind::kCsa,
      AttentionKind::kHca,           AttentionKind::kCsa,           AttentionKind::kHca,
      AttentionKind::kCsa,           AttentionKind::kHca,           AttentionKind::kSlidingWindow};
  ASSERT_EQ(c.num_layers_total(), 9);
  for (int64_t layer = 0; layer < 9; ++layer) {
    EXPECT_EQ(c.attention_kind(layer), kinds[static_cast<size_t>(layer)]) << "layer " << layer;
    EXPECT_EQ(c.is_hash_layer(layer), layer < 3) << "layer " << layer;
  }
  EXPECT_TRUE(c.is_mtp_layer(8));
  EXPECT_EQ(c.heads_per_group(), 2);
}

// ---- derived facts ---------------------------------------------------------------------------

TEST(ModelConfigFlash, LayerScheduleTotals) {
  const ModelConfig c = ModelConfig::load(config_path("dsv4-flash.json"));
  ASSERT_EQ(c.num_layers_total(), 44);
  int num_swa = 0, num_csa = 0, num_hca = 0;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    EXPECT_FALSE(c.is_mtp_layer(layer));
    switch (c.attention_kind(layer)) {
      case AttentionKind::kSlidingWindow:
        ++num_swa;
        break;
      case AttentionKind::kCsa:
        ++num_csa;
        break;
      case AttentionKind::kHca:
        ++num_hca;
        break;
    }
  }
  EXPECT_EQ(num_swa, 2);
  EXPECT_EQ(num_csa, 21);
  EXPECT_EQ(num_hca, 20);

  EXPECT_EQ(c.attention_kind(0), AttentionKind::kSlidingWindow);
  EXPECT_EQ(c.attention_kind(1), AttentionKind::kSlidingWindow);
  EXPECT_EQ(c.attention_kind(2), AttentionKind::kCsa);
  EXPECT_EQ(c.attention_kind(3), AttentionKind::kHca);
  EXPECT_EQ(c.compress_ratio(3), 128);
  EXPECT_EQ(c.attention_kind(42), AttentionKind::kCsa);
  EXPECT_TRUE(c.is_mtp_layer(43));
  EXPECT_EQ(c.attention_kind(43), AttentionKind::kSlidingWindow);
  EXPECT_FALSE(c.has_compressor(43));
  EXPECT_TRUE(c.has_indexer(2));
  EXPECT_FALSE(c.has_indexer(3));
  EXPECT_FALSE(c.has_indexer(0));
}

TEST(ModelConfigFlash, HashLayersAreZeroToTwo) {
  const ModelConfig c = ModelConfig::load(config_path("dsv4-flash.json"));
  for (int64_t layer = 0; layer < c.num_layers_total(); ++layer) {
    EXPECT_EQ(c.routing_kind(layer), layer <= 2 ? RoutingKind::kHash : RoutingKind::kScore)
        << "layer " << layer;
  }
}

TEST(ModelConfigFlash, RopeBasesAndYarn) {
  const ModelConfig c = ModelConfig::load(config_path("dsv4-flash.json"));
  for (int64_t layer : {0, 1, 43}) {
    EXPECT_EQ(c.rope_base(layer), 10000.0) << "layer " << layer;
    EXPECT_FALSE(c.uses_yarn(layer)) << "layer " << layer;
  }
  for (int64_t layer : {2, 3, 4, 41, 42}) {
    EXPECT_EQ(c.rope_base(layer), 160000.0) << "layer " << layer;
    EXPECT_TRUE(c.uses_yarn(layer)) << "layer " << layer;
  }
}

TEST(ModelConfigFlash, DerivedDimensions) {
  const ModelConfig c = ModelConfig::load(config_path("dsv4-flash.json"));
  // Spec §1.4: ratio 4 main 1024 / indexer 256, ratio 128 main 512.
  EXPECT_EQ(c.compressor_width(2, c.head_dim), 1024);
  EXPECT_EQ(c.compressor_width(2, c.index_head_dim), 256);
  EXPECT_EQ(c.compressor_width(3, c.head_dim), 512);
  EXPECT_EQ(c.hc_mix_dim(), 24);
  EXPECT_EQ(c.hc_dim(), 4 * 4096);
  EXPECT_EQ(c.nope_head_dim(), 448);
  EXPECT_EQ(c.heads_per_group(), 8);
}

TEST(ModelConfigDerived, LayerOutOfRangeThrows) {
  const ModelConfig c = ModelConfig::load(config_path("dsv4-flash.json"));
  for (int64_t layer : {int64_t{-1}, int64_t{44}, int64_t{1} << 40}) {
    SCOPED_TRACE(layer);
    EXPECT_THROW(c.compress_ratio(layer), Error);
    EXPECT_THROW(c.attention_kind(layer), Error);
    EXPECT_THROW(c.routing_kind(layer), Error);
    EXPECT_THROW(c.rope_base(layer), Error);
  }
  try {
    c.compress_ratio(44);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 44"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[0, 44)"), std::string::npos) << e.what();
  }
}

TEST(ModelConfigDerived, CompressorWidthNeedsACompressor) {
  const ModelConfig c = ModelConfig::load(config_path("dsv4-flash.json"));
  EXPECT_THROW(c.compressor_width(0, 512), Error);
  EXPECT_THROW(c.compressor_width(43, 512), Error);
  EXPECT_THROW(c.compressor_width(2, 0), Error);
}

TEST(ModelConfigDerived, AttentionKindNames) {
  EXPECT_EQ(attention_kind_name(AttentionKind::kSlidingWindow), "SWA");
  EXPECT_EQ(attention_kind_name(AttentionKind::kCsa), "CSA");
  EXPECT_EQ(attention_kind_name(AttentionKind::kHca), "HCA");
}

TEST(ModelConfigDerived, WithExpertsPerToken) {
  const ModelConfig tiny = ModelConfig::load(kGoldenTinyConfig);
  const ModelConfig two = tiny.with_experts_per_tok(2);
  EXPECT_EQ(two.num_experts_per_tok, 2);
  EXPECT_EQ(tiny.num_experts_per_tok, 4);
  ModelConfig expected = tiny;
  expected.num_experts_per_tok = 2;
  expect_same(two, expected);
  EXPECT_NO_THROW(tiny.with_experts_per_tok(16));
  for (int64_t k : {int64_t{0}, int64_t{-1}, int64_t{17}}) {
    try {
      tiny.with_experts_per_tok(k);
      FAIL() << "k = " << k << " accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(fmt::format("num_experts_per_tok = {}", k)), std::string::npos) << msg;
      EXPECT_NE(msg.find("n_routed_experts = 16"), std::string::npos) << msg;
    }
  }
}

// The golden set's own description of its layers (golden.json layer_kinds), rebuilt from the
// config: "SWA, hash-routed", "HCA(ratio 16), score-routed", "MTP: SWA, score-routed".
TEST(ModelConfigTiny, LayerKindsMatchGoldenJson) {
  const ModelConfig c = ModelConfig::load(kGoldenTinyConfig);
  const json golden_kinds = read_json(kGoldenTiny / "golden.json").at("layer_kinds");
  ASSERT_EQ(static_cast<int64_t>(golden_kinds.size()), c.num_layers_total());
  for (int64_t layer = 0; layer < c.num_layers_total(); ++layer) {
    std::string kind(attention_kind_name(c.attention_kind(layer)));
    if (c.attention_kind(layer) == AttentionKind::kHca) {
      kind += fmt::format("(ratio {})", c.compress_ratio(layer));
    }
    std::string text =
        fmt::format("{}, {}-routed", kind, c.is_hash_layer(layer) ? "hash" : "score");
    if (c.is_mtp_layer(layer)) text = "MTP: " + text;
    EXPECT_EQ(text, golden_kinds[static_cast<size_t>(layer)].get<std::string>())
        << "layer " << layer;
  }
}

TEST(ModelConfigTiny, GoldenReadmeFacts) {
  const ModelConfig c = ModelConfig::load(kGoldenTinyConfig);
  ASSERT_EQ(c.num_layers_total(), 6);
  EXPECT_EQ(c.attention_kind(0), AttentionKind::kSlidingWindow);
  EXPECT_EQ(c.routing_kind(0), RoutingKind::kHash);
  EXPECT_EQ(c.attention_kind(1), AttentionKind::kCsa);
  EXPECT_EQ(c.routing_kind(1), RoutingKind::kHash);
  EXPECT_EQ(c.attention_kind(2), AttentionKind::kHca);
  EXPECT_EQ(c.compress_ratio(2), 16);
  EXPECT_EQ(c.routing_kind(2), RoutingKind::kScore);
  EXPECT_EQ(c.attention_kind(3), AttentionKind::kCsa);
  EXPECT_EQ(c.attention_kind(4), AttentionKind::kHca);
  EXPECT_TRUE(c.is_mtp_layer(5));
  EXPECT_EQ(c.attention_kind(5), AttentionKind::kSlidingWindow);
  EXPECT_EQ(c.routing_kind(5), RoutingKind::kScore);
  EXPECT_EQ(c.rope_base(0), 10000.0);
  EXPECT_EQ(c.rope_base(2), 160000.0);
  EXPECT_EQ(c.rope_base(5), 10000.0);
  EXPECT_EQ(c.compressor_width(1, c.head_dim), 256);
  EXPECT_EQ(c.compressor_width(2, c.head_dim), 128);
  EXPECT_EQ(c.heads_per_group(), 2);
}

// model_args.json is the ModelArgs the official code ran with, mapped from config.json as in
// spec §1.1's third column.
TEST(ModelConfigTiny, MatchesModelArgsTheOfficialCodeRan) {
  const ModelConfig c = ModelConfig::load(kGoldenTinyConfig);
  const json a = read_json(kGoldenTiny / "model_args.json");
  EXPECT_EQ(a.at("max_seq_len").get<int64_t>(), c.max_position_embeddings);
  EXPECT_EQ(a.at("dtype").get<std::string>(), c.quantization_config.quant_method);
  EXPECT_EQ(a.at("scale_fmt").get<std::string>(), c.quantization_config.scale_fmt);
  EXPECT_EQ(a.at("expert_dtype").get<std::string>(), c.expert_dtype);
  EXPECT_EQ(a.at("vocab_size").get<int64_t>(), c.vocab_size);
  EXPECT_EQ(a.at("dim").get<int64_t>(), c.hidden_size);
  EXPECT_EQ(a.at("moe_inter_dim").get<int64_t>(), c.moe_intermediate_size);
  EXPECT_EQ(a.at("n_layers").get<int64_t>(), c.num_hidden_layers);
  EXPECT_EQ(a.at("n_hash_layers").get<int64_t>(), c.num_hash_layers);
  EXPECT_EQ(a.at("n_mtp_layers").get<int64_t>(), c.num_nextn_predict_layers);
  EXPECT_EQ(a.at("n_heads").get<int64_t>(), c.num_attention_heads);
  EXPECT_EQ(a.at("n_routed_experts").get<int64_t>(), c.n_routed_experts);
  EXPECT_EQ(a.at("n_shared_experts").get<int64_t>(), c.n_shared_experts);
  EXPECT_EQ(a.at("n_activated_experts").get<int64_t>(), c.num_experts_per_tok);
  EXPECT_EQ(a.at("score_func").get<std::string>(), c.scoring_func);
  EXPECT_EQ(a.at("route_scale").get<double>(), c.routed_scaling_factor);
  EXPECT_EQ(a.at("swiglu_limit").get<double>(), c.swiglu_limit);
  EXPECT_EQ(a.at("q_lora_rank").get<int64_t>(), c.q_lora_rank);
  EXPECT_EQ(a.at("head_dim").get<int64_t>(), c.head_dim);
  EXPECT_EQ(a.at("rope_head_dim").get<int64_t>(), c.qk_rope_head_dim);
  EXPECT_EQ(a.at("norm_eps").get<double>(), c.rms_norm_eps);
  EXPECT_EQ(a.at("o_groups").get<int64_t>(), c.o_groups);
  EXPECT_EQ(a.at("o_lora_rank").get<int64_t>(), c.o_lora_rank);
  EXPECT_EQ(a.at("window_size").get<int64_t>(), c.sliding_window);
  EXPECT_EQ(a.at("compress_ratios").get<std::vector<int64_t>>(), c.compress_ratios);
  EXPECT_EQ(a.at("compress_rope_theta").get<double>(), c.compress_rope_theta);
  EXPECT_EQ(a.at("original_seq_len").get<int64_t>(),
            c.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.at("rope_theta").get<double>(), c.rope_theta);
  EXPECT_EQ(a.at("rope_factor").get<double>(), c.rope_scaling.factor);
  EXPECT_EQ(a.at("beta_fast").get<double>(), c.rope_scaling.beta_fast);
  EXPECT_EQ(a.at("beta_slow").get<double>(), c.rope_scaling.beta_slow);
  EXPECT_EQ(a.at("index_n_heads").get<int64_t>(), c.index_n_heads);
  EXPECT_EQ(a.at("index_head_dim").get<int64_t>(), c.index_head_dim);
  EXPECT_EQ(a.at("index_topk").get<int64_t>(), c.index_topk);
  EXPECT_EQ(a.at("hc_mult").get<int64_t>(), c.hc_mult);
  EXPECT_EQ(a.at("hc_sinkhorn_iters").get<int64_t>(), c.hc_sinkhorn_iters);
  EXPECT_EQ(a.at("hc_eps").get<double>(), c.hc_eps);
}

// ---- round trips -------------------------------------------------------------------------------

TEST(ModelConfigRoundTrip, FromJsonOfToJsonIsTheSameConfig) {
  for (const char* name :
       {"dsv4-flash.json", "dsv4-flash-4expert.json", "dsv4-tiny.json", "dsv4-small.json"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = ModelConfig::load(config_path(name));
    expect_same(ModelConfig::from_json(c.to_json(), name), c);
  }
}

TEST(ModelConfigRoundTrip, ToJsonIsTheHfFile) {
  // nlohmann compares 10000 and 10000.0 equal, so this checks every key and value of the file.
  for (const fs::path& path :
       {kGoldenTinyConfig, config_path("dsv4-flash.json"), config_path("dsv4-small.json")}) {
    SCOPED_TRACE(path.string());
    EXPECT_EQ(ModelConfig::load(path).to_json(), read_json(path));
  }
}

// ---- one failing example per parse error and per validation rule --------------------------------

struct BadConfigCase {
  std::string name;                   // gtest parameter name
  std::function<void(json&)> mutate;  // applied to the golden tiny config
  std::vector<std::string> expected;  // substrings of the error: the field, the value, the rule
};

void PrintTo(const BadConfigCase& c, std::ostream* os) {
  *os << c.name;
}

BadConfigCase set_field(std::string name, std::string field, json value,
                        std::vector<std::string> expected) {
  return {std::move(name), [field, value](json& j) { j[field] = value; }, std::move(expected)};
}

BadConfigCase set_nested(std::string name, std::string object, std::string field, json value,
                         std::vector<std::string> expected) {
  return {std::move(name), [object, field, value](json& j) { j[object][field] = value; },
          std::move(expected)};
}

// A value that passes "in [1, kMaxSize]" for every other size field is in the golden config;
// these fields are set to 0 one at a time.
const char* const kSizeFields[] = {"vocab_size",
                                   "hidden_size",
                                   "num_hidden_layers",
                                   "num_attention_heads",
                                   "head_dim",
                                   "qk_rope_head_dim",
                                   "q_lora_rank",
                                   "o_groups",
                                   "o_lora_rank",
                                   "sliding_window",
                                   "max_position_embeddings",
                                   "index_n_heads",
                                   "index_head_dim",
                                   "index_topk",
                                   "hc_mult",
                                   "hc_sinkhorn_iters",
                                   "n_routed_experts",
                                   "moe_intermediate_size"};

std::vector<BadConfigCase> parse_error_cases() {
  std::vector<BadConfigCase> cases = {
      {"root_not_object",
       [](json& j) {
         j = json::array({1, 2});
       },
       {"[1,2]", "expected a JSON object"}},
      set_field("unknown_top_level", "rope_theta_x", 1, {"\"rope_theta_x\"", "unknown field"}),
      {"typo_names_unknown_and_missing",
       [](json& j) {
         j["vocab_sise"] = j["vocab_size"];
         j.erase("vocab_size");
       },
       {"\"vocab_sise\"", "unknown field", "missing fields: vocab_size"}},
      set_nested("unknown_in_rope_scaling", "rope_scaling", "mscale", 1.0,
                 {"\"rope_scaling.mscale\"", "unknown field"}),
      set_nested("unknown_in_quantization_config", "quantization_config", "group_size", 128,
                 {"\"quantization_config.group_size\"", "unknown field"}),
      set_field("int_as_string", "vocab_size", "1024",
                {"\"vocab_size\"", "\"1024\"", "expected an integer"}),
      set_field("int_as_fraction", "hidden_size", 256.5,
                {"\"hidden_size\"", "256.5", "expected an integer"}),
      set_field("int_as_integral_float", "num_attention_heads", 4.0,
                {"\"num_attention_heads\"", "4.0", "expected an integer"}),
      set_field("int_as_bool", "head_dim", true, {"\"head_dim\"", "true", "expected an integer"}),
      set_field("int_as_null", "o_groups", nullptr,
                {"\"o_groups\"", "null", "expected an integer"}),
      set_field("int_beyond_int64", "vocab_size", uint64_t{18446744073709551615u},
                {"\"vocab_size\"", "18446744073709551615", "fits in int64"}),
      set_field("number_as_string", "rope_theta", "10000",
                {"\"rope_theta\"", "\"10000\"", "expected a number"}),
      set_field("bool_as_int", "norm_topk_prob", 1,
                {"\"norm_topk_prob\"", "= 1", "expected a boolean"}),
      set_field("string_as_int", "model_type", 4, {"\"model_type\"", "= 4", "expected a string"}),
      set_field("string_array_as_string", "architectures", "DeepseekV4ForCausalLM",
                {"\"architectures\"", "\"DeepseekV4ForCausalLM\"", "expected an array of strings"}),
      set_field("string_array_element", "architectures", json::array({1}),
                {"\"architectures[0]\"", "= 1", "expected a string"}),
      set_field("int_array_as_string", "compress_ratios", "0,4,16,4,16,0",
                {"\"compress_ratios\"", "\"0,4,16,4,16,0\"", "expected an array of integers"}),
      set_field("int_array_element", "compress_ratios", json::array({0, 4.5, 16, 4, 16, 0}),
                {"\"compress_ratios[1]\"", "4.5", "expected an integer"}),
      set_field("object_as_array", "rope_scaling", json::array(),
                {"\"rope_scaling\"", "[]", "expected a JSON object"}),
      set_nested(
          "nested_int_array_element", "quantization_config", "weight_block_size",
          json::array({128, "128"}),
          {"\"quantization_config.weight_block_size[1]\"", "\"128\"", "expected an integer"}),
      set_nested("nested_number_as_bool", "rope_scaling", "factor", false,
                 {"\"rope_scaling.factor\"", "false", "expected a number"}),
  };
  // Every field is required: remove each one of the golden config's fields in turn.
  const json golden = read_json(kGoldenTinyConfig);
  for (const auto& item : golden.items()) {
    const std::string key = item.key();
    cases.push_back(
        {"missing_" + key, [key](json& j) { j.erase(key); }, {"\"" + key + "\"", "missing field"}});
    if (item.value().is_object()) {
      for (const auto& sub : item.value().items()) {
        const std::string sub_key = sub.key();
        cases.push_back({"missing_" + key + "_" + sub_key,
                         [key, sub_key](json& j) { j[key].erase(sub_key); },
                         {"\"" + key + "." + sub_key + "\"", "missing field"}});
      }
    }
  }
  return cases;
}

// One case per rule of ModelConfig::validate, in its order. The golden tiny config passes every
// rule; each mutation breaks exactly one, so the error must be that rule's.
std::vector<BadConfigCase> rule_cases() {
  std::vector<BadConfigCase> cases = {
      // 1-3: identity and number formats.
      set_field("architectures", "architectures", json::array({"LlamaForCausalLM"}),
                {"architectures = [\"LlamaForCausalLM\"]", "DeepseekV4ForCausalLM"}),
      set_field("architectures_empty", "architectures", json::array(),
                {"architectures = []", "DeepseekV4ForCausalLM"}),
      set_field("model_type", "model_type", "deepseek_v3",
                {"model_type = \"deepseek_v3\"", "\"deepseek_v4\""}),
      set_field("torch_dtype", "torch_dtype", "float16", {"torch_dtype = \"float16\"", "bfloat16"}),
      set_field("expert_dtype", "expert_dtype", "fp8", {"expert_dtype = \"fp8\"", "\"fp4\""}),
      set_nested("quant_method", "quantization_config", "quant_method", "bf16",
                 {"quantization_config.quant_method = \"bf16\"", "\"fp8\""}),
      set_nested("quant_fmt", "quantization_config", "fmt", "e5m2",
                 {"quantization_config.fmt = \"e5m2\"", "\"e4m3\""}),
      set_nested("quant_scale_fmt", "quantization_config", "scale_fmt", "fp32",
                 {"quantization_config.scale_fmt = \"fp32\"", "\"ue8m0\""}),
      set_nested("quant_activation_scheme", "quantization_config", "activation_scheme", "static",
                 {"quantization_config.activation_scheme = \"static\"", "\"dynamic\""}),
      set_nested("quant_weight_block_size", "quantization_config", "weight_block_size",
                 json::array({64, 64}),
                 {"quantization_config.weight_block_size = [64, 64]", "[128, 128]"}),
      set_field("hidden_act", "hidden_act", "gelu", {"hidden_act = \"gelu\"", "\"silu\""}),
      set_field("scoring_func", "scoring_func", "softmax",
                {"scoring_func = \"softmax\"", "\"sqrtsoftplus\""}),
      set_field("topk_method", "topk_method", "greedy",
                {"topk_method = \"greedy\"", "\"noaux_tc\""}),
      set_field("norm_topk_prob", "norm_topk_prob", false,
                {"norm_topk_prob = false", "must be true"}),
      set_field("tie_word_embeddings", "tie_word_embeddings", true,
                {"tie_word_embeddings = true", "must be false"}),
      set_field("attention_bias", "attention_bias", true,
                {"attention_bias = true", "must be false"}),
      // 4-5: sizes (the zero cases are added below).
      set_field("vocab_size_too_large", "vocab_size", int64_t{1} << 25,
                {"vocab_size = 33554432", "[1, 16777216]"}),
      set_field("num_nextn_predict_layers_negative", "num_nextn_predict_layers", -1,
                {"num_nextn_predict_layers = -1", "[0, 16777216]"}),
      set_field("num_key_value_heads", "num_key_value_heads", 2,
                {"num_key_value_heads = 2", "must be 1"}),
      set_field("n_shared_experts", "n_shared_experts", 2, {"n_shared_experts = 2", "must be 1"}),
      // 6-8: attention geometry.
      set_field("qk_rope_head_dim_odd", "qk_rope_head_dim", 63,
                {"qk_rope_head_dim = 63", "even and < head_dim = 128"}),
      set_field("qk_rope_head_dim_not_below_head_dim", "qk_rope_head_dim", 128,
                {"qk_rope_head_dim = 128", "< head_dim = 128"}),
      set_field("kv_fp8_block", "head_dim", 160,
                {"head_dim - qk_rope_head_dim = 96", "multiple of 64", "head_dim = 160"}),
      set_field("heads_per_o_group", "num_attention_heads", 3,
                {"num_attention_heads = 3", "multiple of o_groups = 2"}),
      // 9-10: quantized GEMM input widths.
      set_field("hidden_size_fp4", "hidden_size", 100, {"hidden_size = 100", "multiple of 32"}),
      set_field("moe_intermediate_size_fp4", "moe_intermediate_size", 80,
                {"moe_intermediate_size = 80", "multiple of 32"}),
      set_field("hidden_size_act_quant", "hidden_size", 160,
                {"hidden_size = 160", "multiple of 128"}),
      set_field("q_lora_rank_act_quant", "q_lora_rank", 64,
                {"q_lora_rank = 64", "multiple of 128"}),
      set_field("wo_b_input_act_quant", "o_lora_rank", 32,
                {"o_groups * o_lora_rank = 64", "multiple of 128"}),
      set_field("moe_intermediate_size_act_quant", "moe_intermediate_size", 96,
                {"moe_intermediate_size = 96", "multiple of 128"}),
      {"wo_a_input_act_quant",
       [](json& j) {
         j["head_dim"] = 192;
         j["num_attention_heads"] = 2;
       },
       {"head_dim * num_attention_heads / o_groups = 192", "multiple of 128"}},
      // 11: indexer.
      set_field("index_head_dim_multiple_of_32", "index_head_dim", 16,
                {"index_head_dim = 16", "multiple of 32"}),
      set_field("index_head_dim_power_of_two", "index_head_dim", 96,
                {"index_head_dim = 96", "power of two"}),
      set_field("index_head_dim_above_rope", "index_head_dim", 64,
                {"index_head_dim = 64", "> qk_rope_head_dim = 64"}),
      // 12-13: MoE.
      set_field("experts_per_tok_above_routed", "num_experts_per_tok", 17,
                {"num_experts_per_tok = 17", "n_routed_experts = 16"}),
      set_field("experts_per_tok_zero", "num_experts_per_tok", 0,
                {"num_experts_per_tok = 0", "[1, n_routed_experts = 16]"}),
      set_field("hash_layers_above_main_layers", "num_hash_layers", 6,
                {"num_hash_layers = 6", "num_hidden_layers = 5"}),
      set_field("hash_layers_negative", "num_hash_layers", -1,
                {"num_hash_layers = -1", "[0, num_hidden_layers = 5]"}),
      set_field("routed_scaling_factor", "routed_scaling_factor", 0,
                {"routed_scaling_factor = 0", "> 0"}),
      set_field("swiglu_limit", "swiglu_limit", -1.0, {"swiglu_limit = -1", "> 0"}),
      // 14-15: layer schedule.
      {"compress_ratios_too_short",
       [](json& j) { j["compress_ratios"].erase(5); },
       {"compress_ratios = [0, 4, 16, 4, 16]", "5 + 1 = 6 entries, got 5"}},
      set_field("compress_ratios_vs_num_hidden_layers", "num_hidden_layers", 4,
                {"compress_ratios = [0, 4, 16, 4, 16, 0]", "4 + 1 = 5 entries, got 6"}),
      {"compress_ratio_one",
       [](json& j) { j["compress_ratios"][2] = 1; },
       {"compress_ratios[2] = 1", "0 (window only) or >= 2"}},
      {"compress_ratio_negative",
       [](json& j) { j["compress_ratios"][1] = -4; },
       {"compress_ratios[1] = -4", "0 (window only) or >= 2"}},
      {"compress_ratio_not_dividing",
       [](json& j) { j["compress_ratios"][2] = 3; },
       {"compress_ratios[2] = 3", "divide max_position_embeddings = 128"}},
      set_field("max_position_embeddings_not_divisible", "max_position_embeddings", 72,
                {"compress_ratios[2] = 16", "divide max_position_embeddings = 72"}),
      // 16-17: RoPE / YaRN.
      set_field("rope_theta", "rope_theta", 0, {"invalid rope_theta = 0", "> 0"}),
      set_field("compress_rope_theta", "compress_rope_theta", -160000,
                {"compress_rope_theta = -160000", "> 0"}),
      set_nested("rope_scaling_type", "rope_scaling", "type", "linear",
                 {"rope_scaling.type = \"linear\"", "\"yarn\""}),
      set_nested("rope_scaling_factor", "rope_scaling", "factor", 0,
                 {"rope_scaling.factor = 0", "> 0"}),
      set_nested("rope_scaling_beta_slow", "rope_scaling", "beta_slow", 0,
                 {"rope_scaling.beta_slow = 0", "> 0"}),
      set_nested("rope_scaling_beta_fast", "rope_scaling", "beta_fast", 1,
                 {"rope_scaling.beta_fast = 1", "> rope_scaling.beta_slow = 1"}),
      set_nested("rope_scaling_original_max", "rope_scaling", "original_max_position_embeddings", 0,
                 {"rope_scaling.original_max_position_embeddings = 0", "[1, 16777216]"}),
      // 18-20: norms, tokens, unused HF fields.
      set_field("rms_norm_eps", "rms_norm_eps", 0, {"rms_norm_eps = 0", "> 0"}),
      set_field("hc_eps", "hc_eps", -1e-6, {"hc_eps = -1e-06", "> 0"}),
      set_field("bos_token_id_too_large", "bos_token_id", 1024,
                {"bos_token_id = 1024", "[0, vocab_size = 1024)"}),
      set_field("bos_token_id_negative", "bos_token_id", -1,
                {"bos_token_id = -1", "[0, vocab_size = 1024)"}),
      set_field("eos_token_id", "eos_token_id", 5000,
                {"eos_token_id = 5000", "[0, vocab_size = 1024)"}),
      set_field("attention_dropout", "attention_dropout", 1.5,
                {"attention_dropout = 1.5", "[0, 1]"}),
      set_field("initializer_range", "initializer_range", -0.02,
                {"initializer_range = -0.02", ">= 0"}),
  };
  for (const char* field : kSizeFields) {
    cases.push_back(set_field(std::string("zero_") + field, field, 0,
                              {fmt::format("invalid {} = 0", field), "[1, 16777216]"}));
  }
  return cases;
}

class ModelConfigBadJson : public testing::TestWithParam<BadConfigCase> {};

TEST_P(ModelConfigBadJson, ErrorNamesFieldAndValue) {
  const BadConfigCase& c = GetParam();
  json j = read_json(kGoldenTinyConfig);
  ASSERT_NO_THROW(ModelConfig::from_json(j, "golden-tiny"));  // the unmutated config is valid
  c.mutate(j);
  try {
    ModelConfig::from_json(j, "mutated-tiny");
    FAIL() << "accepted: " << j.dump();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("mutated-tiny"), std::string::npos) << "source not named: " << msg;
    for (const std::string& s : c.expected) {
      EXPECT_NE(msg.find(s), std::string::npos) << "expected \"" << s << "\" in: " << msg;
    }
  }
}

const auto kCaseName = [](const testing::TestParamInfo<BadConfigCase>& info) {
  return info.param.name;
};
INSTANTIATE_TEST_SUITE_P(Parse, ModelConfigBadJson, testing::ValuesIn(parse_error_cases()),
                         kCaseName);
INSTANTIATE_TEST_SUITE_P(Rule, ModelConfigBadJson, testing::ValuesIn(rule_cases()), kCaseName);

// validate() on a struct built in code reports the same rules as from_json.
TEST(ModelConfigValidate, ReportsTheSourceAndTheRule) {
  ModelConfig c = spec_flash();
  EXPECT_NO_THROW(c.validate("spec"));
  c.o_groups = 7;
  try {
    c.validate("built-in-code");
    FAIL() << "accepted o_groups 7";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("built-in-code"), std::string::npos) << msg;
    EXPECT_NE(msg.find("num_attention_heads = 64"), std::string::npos) << msg;
    EXPECT_NE(msg.find("o_groups = 7"), std::string::npos) << msg;
  }
}

// ---- files -------------------------------------------------------------------------------------

class ModelConfigLoad : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(testing::TempDir()) /
           fmt::format("moerun_model_config_{}_{}", getpid(),
                       testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const char* name, const std::string& text) const {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  // Calls load(path) and returns the error message ("" if it did not throw).
  static std::string load_error(const fs::path& path) {
    try {
      ModelConfig::load(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(ModelConfigLoad, MissingFileNamesThePath) {
  const fs::path path = dir_ / "no-such-config.json";
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;
}

TEST_F(ModelConfigLoad, DirectoryNamesThePath) {
  const std::string msg = load_error(dir_);
  EXPECT_NE(msg.find(dir_.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("is a directory"), std::string::npos) << msg;
}

TEST_F(ModelConfigLoad, InvalidJsonNamesThePath) {
  std::string text = read_bytes(kGoldenTinyConfig);
  text.resize(text.size() / 2);  // truncated
  const fs::path path = write("truncated.json", text);
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;

  const fs::path empty = write("empty.json", "");
  EXPECT_NE(load_error(empty).find("invalid JSON"), std::string::npos);
}

TEST_F(ModelConfigLoad, DuplicateKeyIsAnError) {
  std::string text = read_bytes(kGoldenTinyConfig);
  const size_t pos = text.find("\"hidden_size\"");
  ASSERT_NE(pos, std::string::npos);
  text.insert(pos, "\"hidden_size\": 512,\n  ");
  const fs::path path = write("duplicate.json", text);
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"hidden_size\": duplicate field"), std::string::npos) << msg;
}

TEST_F(ModelConfigLoad, ValidationErrorNamesThePath) {
  json j = read_json(kGoldenTinyConfig);
  j["num_key_value_heads"] = 8;
  const fs::path path = write("bad.json", j.dump(2));
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_key_value_heads = 8"), std::string::npos) << msg;
}

TEST_F(ModelConfigLoad, RewrittenFileLoadsTheSameConfig) {
  const ModelConfig flash = ModelConfig::load(config_path("dsv4-flash.json"));
  const fs::path path = write("flash.json", flash.to_json().dump(2));
  expect_same(ModelConfig::load(path), flash);
}

}  // namespace
}  // namespace moerun

// The checkpoint schema against the numbers of the release (spec §3.1/§3.2) and against the
// golden dsv4-tiny checkpoint, written by an independent implementation.
#include <algorithm>
#include <map>

#include <gtest/gtest.h>

#include "common/checkpoint_schema.h"
#include "common/error.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace {

const std::filesystem::path kGolden = MOERUN_GOLDEN_DIR;
const std::filesystem::path kSource = MOERUN_SOURCE_DIR;

moerun::ModelConfig flash() {
  return moerun::ModelConfig::load(kSource / "configs/dsv4-flash.json");
}

TEST(CheckpointSchema, FlashMatchesTheRelease) {
  const moerun::CheckpointSchema schema(flash());
  // Spec §3.1: 69,187 tensors, 159,609,485,896 bytes, and the dtype histogram.
  EXPECT_EQ(schema.tensors().size(), 69187u);
  EXPECT_EQ(schema.total_bytes(), 159609485896ull);
  std::map<std::string, int> counts;
  for (const auto& t : schema.tensors()) counts[std::string(moerun::dtype_name(t.dtype))] += 1;
  EXPECT_EQ(counts["BF16"], 433);
  EXPECT_EQ(counts["F32"], 417);
  EXPECT_EQ(counts["F8_E4M3"], 375);
  EXPECT_EQ(counts["F8_E8M0"], 34167);
  EXPECT_EQ(counts["I8"], 33792);
  EXPECT_EQ(counts["I64"], 3);
  // Spec §1.4: 290,942,289,362 weights incl. MTP; ≈284.3B without the 6.61B MTP block.
  EXPECT_EQ(schema.parameter_count(true), 290942289362);
  const int64_t mtp = schema.parameter_count(true) - schema.parameter_count(false);
  EXPECT_NEAR(static_cast<double>(mtp), 6.61e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(schema.parameter_count(false)), 284.3e9, 0.05e9);
  EXPECT_EQ(flash().parameter_count(), 290942289362);
  EXPECT_EQ(flash().checkpoint_bytes(), 159609485896);
  // MTP block: 1,575 tensors (spec §3.1).
  int mtp_tensors = 0;
  for (const auto& t : schema.tensors()) mtp_tensors += t.name.rfind("mtp.0.", 0) == 0;
  EXPECT_EQ(mtp_tensors, 1575);
}

TEST(CheckpointSchema, FlashShapesFromTheTable) {
  const moerun::CheckpointSchema schema(flash());
  auto expect = [&](const char* name, moerun::DType dtype, std::vector<int64_t> shape) {
    const moerun::TensorSpec* t = schema.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dtype) << name;
    EXPECT_EQ(t->shape, shape) << name;
  };
  using moerun::DType;
  expect("embed.weight", DType::kBF16, {129280, 4096});
  expect("layers.0.hc_attn_fn", DType::kF32, {24, 16384});
  expect("layers.0.attn.wq_b.scale", DType::kF8_E8M0, {256, 8});
  expect("layers.0.attn.wo_a.weight", DType::kF8_E4M3, {8192, 4096});
  expect("layers.0.attn.wo_b.scale", DType::kF8_E8M0, {32, 64});
  expect("layers.2.attn.compressor.ape", DType::kF32, {4, 1024});
  expect("layers.3.attn.compressor.ape", DType::kF32, {128, 512});
  expect("layers.2.attn.indexer.wq_b.scale", DType::kF8_E8M0, {64, 8});
  expect("layers.2.attn.indexer.compressor.wkv.weight", DType::kBF16, {256, 4096});
  expect("layers.2.ffn.gate.tid2eid", DType::kI64, {129280, 6});
  expect("layers.3.ffn.gate.bias", DType::kF32, {256});
  expect("layers.7.ffn.experts.255.w2.weight", DType::kI8, {4096, 1024});
  expect("layers.7.ffn.experts.255.w2.scale", DType::kF8_E8M0, {4096, 64});
  expect("layers.7.ffn.shared_experts.w1.scale", DType::kF8_E8M0, {16, 32});
  expect("mtp.0.e_proj.scale", DType::kF8_E8M0, {32, 32});
  expect("mtp.0.ffn.gate.bias", DType::kF32, {256});
  expect("mtp.0.hc_head_fn", DType::kF32, {4, 16384});
  EXPECT_EQ(schema.find("layers.1.attn.compressor.ape"), nullptr);       // SWA layer
  EXPECT_EQ(schema.find("layers.3.attn.indexer.wq_b.weight"), nullptr);  // HCA layer
  EXPECT_EQ(schema.find("layers.3.ffn.gate.tid2eid"), nullptr);
  EXPECT_EQ(schema.find("mtp.0.embed.weight"), nullptr);  // MTP shares embed and head
}

TEST(CheckpointSchema, FourExpertVariantNarrowsOnlyTheHashTables) {
  const moerun::CheckpointSchema six(flash());
  const moerun::CheckpointSchema four(flash().with_experts_per_tok(4));
  ASSERT_EQ(six.tensors().size(), four.tensors().size());
  int differing = 0;
  for (size_t i = 0; i < six.tensors().size(); ++i) {
    if (six.tensors()[i].shape == four.tensors()[i].shape) continue;
    ++differing;
    EXPECT_NE(six.tensors()[i].name.find("tid2eid"), std::string::npos);
    EXPECT_EQ(four.tensors()[i].shape, (std::vector<int64_t>{129280, 4}));
  }
  EXPECT_EQ(differing, 3);
}

TEST(CheckpointSchema, GoldenTinyCheckpointIsClean) {
  const auto dir = kGolden / "dsv4-tiny/checkpoint";
  const moerun::ModelConfig config = moerun::ModelConfig::load(dir / "config.json");
  const moerun::CheckpointSchema schema(config);
  const moerun::Checkpoint ckpt = moerun::Checkpoint::open(dir);
  const moerun::SchemaReport report = schema.check(ckpt);
  EXPECT_TRUE(report.ok()) << report.describe();
  EXPECT_EQ(ckpt.num_tensors(), schema.tensors().size());
  EXPECT_EQ(ckpt.total_bytes(), schema.total_bytes());
  EXPECT_NO_THROW(schema.require_match(ckpt));
}

TEST(CheckpointSchema, ReportsMissingUnexpectedAndMisshaped) {
  const auto dir = kGolden / "dsv4-tiny/checkpoint";
  moerun::ModelConfig config = moerun::ModelConfig::load(dir / "config.json");
  const moerun::Checkpoint ckpt = moerun::Checkpoint::open(dir);
  // A config with one more layer: that layer's tensors are missing, MTP renumbers, and
  // ... the golden's mtp.0 tensors are then judged as mtp.0 of a 6-layer model (still there).
  config.num_hidden_layers += 1;
  config.compress_ratios.insert(config.compress_ratios.begin() + 5, 0);
  const moerun::SchemaReport more = moerun::CheckpointSchema(config).check(ckpt);
  EXPECT_FALSE(more.ok());
  EXPECT_FALSE(more.missing.empty());
  EXPECT_NE(std::find(more.missing.begin(), more.missing.end(), "layers.5.attn.wq_a.weight"),
            more.missing.end());
  // top-2 instead of top-4: the tid2eid tables are mis-shaped.
  moerun::ModelConfig top2 = moerun::ModelConfig::load(dir / "config.json").with_experts_per_tok(2);
  const moerun::SchemaReport narrow = moerun::CheckpointSchema(top2).check(ckpt);
  ASSERT_EQ(narrow.mismatched.size(), 2u);
  EXPECT_EQ(narrow.mismatched[0].name, "layers.0.ffn.gate.tid2eid");
  EXPECT_EQ(narrow.mismatched[0].expected, "I64 [1024, 2]");
  EXPECT_EQ(narrow.mismatched[0].actual, "I64 [1024, 4]");
  EXPECT_NE(narrow.describe().find(
                "layers.0.ffn.gate.tid2eid (expected I64 [1024, 2], found I64 [1024, 4])"),
            std::string::npos);
  // Fewer hash layers: layer 1's tid2eid is unexpected and its bias missing.
  moerun::ModelConfig one_hash = moerun::ModelConfig::load(dir / "config.json");
  one_hash.num_hash_layers = 1;
  const moerun::SchemaReport hash = moerun::CheckpointSchema(one_hash).check(ckpt);
  EXPECT_EQ(hash.unexpected, std::vector<std::string>{"layers.1.ffn.gate.tid2eid"});
  EXPECT_EQ(hash.missing, std::vector<std::string>{"layers.1.ffn.gate.bias"});
  EXPECT_THROW(moerun::CheckpointSchema(one_hash).require_match(ckpt), moerun::Error);
}

TEST(CheckpointSchema, SelectionByLayerAndExpertRange) {
  const moerun::CheckpointSchema schema(flash());
  moerun::RankSelection sel;
  sel.layer_begin = 10;
  sel.layer_end = 12;
  sel.expert_begin = 32;
  sel.expert_end = 64;
  const auto picked = schema.select(sel);
  int experts = 0, dense = 0;
  for (const auto* t : picked) {
    EXPECT_TRUE(t->layer == 10 || t->layer == 11) << t->name;
    if (t->role == moerun::TensorRole::kRoutedExpert) {
      ++experts;
      EXPECT_GE(t->expert, 32);
      EXPECT_LT(t->expert, 64);
    } else {
      ++dense;
    }
    EXPECT_NE(t->role, moerun::TensorRole::kEmbedding);
    EXPECT_NE(t->role, moerun::TensorRole::kHead);
  }
  EXPECT_EQ(experts, 2 * 32 * 6);
  // Layer 10 is CSA (ratio 4: +4 compressor +7 indexer), 11 is HCA (+4): 29 + 29 + 4 dense
  // minus the 2·1536 experts already counted → 21+2+6 base dense each.
  EXPECT_EQ(dense, (29 + 4 + 7) + (29 + 4));
}

}  // namespace

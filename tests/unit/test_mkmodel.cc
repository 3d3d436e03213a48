// moerun-mkmodel's checkpoints: released layout, schema-clean, deterministic, quantized through
// the real FP8/FP4 paths, well-scaled values, sparse skeletons that take no space.
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/checkpoint_schema.h"
#include "common/error.h"
#include "common/numfmt.h"
#include "common/safetensors.h"
#include "common/weight_quant.h"
#include "tests/unit/test_util.h"
#include "tools/mkmodel/tokenizer_gen.h"
#include "tools/mkmodel/weights.h"
#include "tools/mkmodel/writer.h"

namespace {

namespace fs = std::filesystem;
const fs::path kSource = MOERUN_SOURCE_DIR;

moerun::ModelConfig tiny() {
  return moerun::ModelConfig::load(kSource / "configs/dsv4-tiny.json");
}

using moerun::testing_util::TempDir;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(Mkmodel, TinyIsAReleasedLayoutCheckpoint) {
  TempDir tmp;
  moerun::mkmodel::CheckpointWriteOptions opt;
  opt.num_shards = 3;
  const auto result = moerun::mkmodel::write_checkpoint(tiny(), opt, tmp.path());
  for (const char* f : {"config.json", "model.safetensors.index.json", "tokenizer.json",
                        "tokenizer_config.json", "model-00001-of-00003.safetensors",
                        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"})
    EXPECT_TRUE(fs::exists(tmp.path() / f)) << f;

  const moerun::ModelConfig config = moerun::ModelConfig::load(tmp.path() / "config.json");
  EXPECT_EQ(config.to_json(), tiny().to_json());
  const moerun::CheckpointSchema schema(config);
  const moerun::Checkpoint ckpt = moerun::Checkpoint::open(tmp.path());
  EXPECT_TRUE(schema.check(ckpt).ok()) << schema.check(ckpt).describe();
  EXPECT_EQ(result.num_tensors, 796);
  EXPECT_EQ(ckpt.total_bytes(), schema.total_bytes());
  const auto index = nlohmann::json::parse(read_file(tmp.path() / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), schema.total_bytes());
  // As in the release: every MTP tensor in the last shard, nothing else there.
  for (const auto& [name, shard] : index["weight_map"].items())
    EXPECT_EQ(name.rfind("mtp.", 0) == 0, shard == "model-00003-of-00003.safetensors") << name;
  // The tokenizer covers exactly the embedding rows.
  const auto tok = nlohmann::json::parse(read_file(tmp.path() / "tokenizer.json"));
  EXPECT_EQ(tok["model"]["type"], "BPE");
  int64_t max_id = -1;
  for (const auto& [k, v] : tok["model"]["vocab"].items())
    max_id = std::max(max_id, v.get<int64_t>());
  for (const auto& a : tok["added_tokens"]) max_id = std::max(max_id, a["id"].get<int64_t>());
  EXPECT_EQ(max_id, config.vocab_size - 1);
  // A second write into the same directory is refused.
  EXPECT_THROW(moerun::mkmodel::write_checkpoint(tiny(), opt, tmp.path()), moerun::Error);
}

TEST(Mkmodel, DeterministicPerSeed) {
  TempDir a, b, c;
  moerun::mkmodel::CheckpointWriteOptions opt;
  moerun::mkmodel::write_checkpoint(tiny(), opt, a.path());
  moerun::mkmodel::write_checkpoint(tiny(), opt, b.path());
  opt.seed = 99;
  moerun::mkmodel::write_checkpoint(tiny(), opt, c.path());
  for (const char* f : {"model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"}) {
    EXPECT_EQ(read_file(a.path() / f), read_file(b.path() / f)) << f;
    EXPECT_NE(read_file(a.path() / f), read_file(c.path() / f)) << f;
  }
}

// Statistics of the dequantized values, against the recipe they were drawn from.
TEST(Mkmodel, ValuesAreQuantizedThroughTheRealPathsAndWellScaled) {
  const moerun::CheckpointSchema schema(tiny());
  const uint64_t seed = 7;
  auto check_linear = [&](const std::string& base, bool fp4, double expected_var_lo,
                          double expected_var_hi) {
    SCOPED_TRACE(base);
    const moerun::TensorSpec* w = schema.find(base + ".weight");
    ASSERT_NE(w, nullptr);
    const auto bytes = moerun::mkmodel::generate_tensor(schema, *w, seed);
    ASSERT_EQ(bytes.size(), 2u);
    const auto* codes = reinterpret_cast<const uint8_t*>(bytes.at(base + ".weight").data());
    const auto* scales = reinterpret_cast<const uint8_t*>(bytes.at(base + ".scale").data());
    const int64_t out = w->shape[0], in = fp4 ? w->shape[1] * 2 : w->shape[1];
    std::vector<float> deq(static_cast<size_t>(out * in));
    if (fp4) {
      moerun::numfmt::dequantize_fp4_weight(codes, scales, out, in, deq.data());
    } else {
      moerun::numfmt::dequantize_fp8_weight(codes, scales, out, in, deq.data());
    }
    // The bytes are exactly the real quantizers applied to the drawn float matrix.
    const std::vector<float> raw = moerun::mkmodel::generate_values(schema, *w, seed);
    std::vector<uint8_t> codes2(bytes.at(base + ".weight").size());
    std::vector<uint8_t> scales2(bytes.at(base + ".scale").size());
    if (fp4) {
      moerun::numfmt::quantize_fp4_weight(raw.data(), out, in, codes2.data(), scales2.data());
    } else {
      moerun::numfmt::quantize_fp8_weight(raw.data(), out, in, codes2.data(), scales2.data());
    }
    EXPECT_EQ(0, std::memcmp(codes2.data(), codes, codes2.size()));
    EXPECT_EQ(0, std::memcmp(scales2.data(), scales, scales2.size()));
    // Close to the float matrix it came from.
    double err = 0, norm = 0, var = 0;
    for (size_t i = 0; i < raw.size(); ++i) {
      err += (raw[i] - deq[i]) * static_cast<double>(raw[i] - deq[i]);
      norm += static_cast<double>(raw[i]) * raw[i];
    }
    var = norm / static_cast<double>(raw.size());
    EXPECT_LT(std::sqrt(err / norm), fp4 ? 0.2 : 0.05);
    EXPECT_GT(var, expected_var_lo);
    EXPECT_LT(var, expected_var_hi);
    // Block gains make scales differ.
    std::set<uint8_t> distinct(scales, scales + scales2.size());
    EXPECT_GT(distinct.size(), 1u);
  };
  // N(0, 1/fan_in) × 2^U(-1,1) gains: E[gain²] = (4 − 1/4)/(2 ln 4) ≈ 1.35.
  check_linear("layers.0.attn.wq_a", false, 0.5 / 256, 3.0 / 256);
  check_linear("layers.1.attn.wq_b", false, 0.5 / 128, 3.0 / 128);
  check_linear("layers.2.ffn.experts.5.w2", true, 0.5 / 128, 3.0 / 128);
  check_linear("layers.2.ffn.experts.5.w1", true, 0.5 / 256, 3.0 / 256);

  const moerun::TensorSpec* embed = schema.find("embed.weight");
  const auto v = moerun::mkmodel::generate_values(schema, *embed, seed);
  double s = 0, s2 = 0;
  for (float x : v) {
    s += x;
    s2 += static_cast<double>(x) * x;
  }
  EXPECT_NEAR(s / static_cast<double>(v.size()), 0.0, 0.02);
  EXPECT_NEAR(s2 / static_cast<double>(v.size()), 1.0, 0.05);
  // Norm weights near 1, sinkhorn scales in [0.3, 1).
  for (float x :
       moerun::mkmodel::generate_values(schema, *schema.find("layers.0.attn_norm.weight"), seed))
    EXPECT_NEAR(x, 1.0, 0.6);
  for (float x :
       moerun::mkmodel::generate_values(schema, *schema.find("layers.0.hc_attn_scale"), seed)) {
    EXPECT_GE(x, 0.3f);
    EXPECT_LT(x, 1.0f);
  }
}

TEST(Mkmodel, HashTablesHoldDistinctExperts) {
  const moerun::CheckpointSchema schema(tiny().with_experts_per_tok(2));
  const moerun::TensorSpec* t = schema.find("layers.1.ffn.gate.tid2eid");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{1024, 2}));
  const auto bytes = moerun::mkmodel::generate_tensor(schema, *t, 1).at(t->name);
  std::vector<int64_t> v(bytes.size() / 8);
  std::memcpy(v.data(), bytes.data(), bytes.size());
  std::set<int64_t> used;
  for (size_t r = 0; r < 1024; ++r) {
    EXPECT_NE(v[2 * r], v[2 * r + 1]) << r;
    for (int j = 0; j < 2; ++j) {
      EXPECT_GE(v[2 * r + j], 0);
      EXPECT_LT(v[2 * r + j], 16);
      used.insert(v[2 * r + j]);
    }
  }
  EXPECT_EQ(used.size(), 16u);
}

TEST(Mkmodel, SparseSkeletonTakesNoSpace) {
  TempDir tmp;
  moerun::mkmodel::CheckpointWriteOptions opt;
  opt.sparse = true;
  moerun::mkmodel::write_checkpoint(moerun::ModelConfig::load(kSource / "configs/dsv4-small.json"),
                                    opt, tmp.path());
  const moerun::Checkpoint ckpt = moerun::Checkpoint::open(tmp.path());
  uint64_t apparent = 0, allocated = 0;
  for (const auto& shard : ckpt.shards()) {
    struct stat st {};
    ASSERT_EQ(::stat(shard.path().c_str(), &st), 0);
    apparent += static_cast<uint64_t>(st.st_size);
    allocated += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  EXPECT_GT(apparent, 300u << 20);      // hundreds of MB of tensor ranges ...
  EXPECT_LT(allocated, apparent / 50);  // ... almost none of it on disk
}

TEST(Mkmodel, ShardAssignmentKeepsPairsTogether) {
  const moerun::CheckpointSchema schema(
      moerun::ModelConfig::load(kSource / "configs/dsv4-flash.json"));
  const auto shards = moerun::mkmodel::assign_shards(schema, 46);
  ASSERT_EQ(shards.size(), 46u);
  size_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    ASSERT_FALSE(shards[s].empty());
    total += shards[s].size();
    // A shard never starts with a scale (it stays beside its weight).
    EXPECT_EQ(shards[s].front()->name.find(".scale"), std::string::npos) << shards[s].front()->name;
  }
  EXPECT_EQ(total, 69187u);
  EXPECT_EQ(shards.back().size(), 1575u);  // the MTP block, as in the release
  EXPECT_THROW(moerun::mkmodel::assign_shards(schema, 1), moerun::Error);
}

}  // namespace

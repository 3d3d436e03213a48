// Parallel layout planning: stages cover the layers contiguously, experts are split evenly,
// cost balancing beats a naive split, and bad layouts are refused with clear messages.
#include <functional>

#include <gtest/gtest.h>

#include "common/checkpoint_schema.h"
#include "common/error.h"
#include "common/model_config.h"
#include "tests/unit/test_util.h"
#include "worker/kv/kv_pool.h"
#include "worker/layout.h"

namespace {

const std::filesystem::path kSource = MOERUN_SOURCE_DIR;

moerun::ModelConfig flash() {
  return moerun::ModelConfig::load(kSource / "configs/dsv4-flash.json");
}
moerun::ModelConfig tiny() {
  return moerun::ModelConfig::load(kSource / "configs/dsv4-tiny.json");
}

using moerun::testing_util::error_message;

TEST(Layout, ParsesSpecs) {
  EXPECT_EQ(moerun::parse_layout_spec("pp=2,ep=8"), std::make_pair(int64_t{2}, int64_t{8}));
  EXPECT_EQ(moerun::parse_layout_spec("ep=4,pp=1"), std::make_pair(int64_t{1}, int64_t{4}));
  EXPECT_NE(error_message([] { moerun::parse_layout_spec("pp=2"); }).find("both pp and ep"),
            std::string::npos);
  EXPECT_NE(error_message([] { moerun::parse_layout_spec("pp=0,ep=2"); }).find("positive integer"),
            std::string::npos);
  EXPECT_NE(error_message([] { moerun::parse_layout_spec("pp=2,tp=2"); }).find("unknown key 'tp'"),
            std::string::npos);
  EXPECT_NE(error_message([] { moerun::parse_layout_spec("pp2"); }).find("not key=value"),
            std::string::npos);
}

TEST(Layout, StagesAreContiguousWithMtpLast) {
  const auto c = flash();
  for (int64_t pp : {1, 2, 3, 4, 8, 43}) {
    const auto layout = moerun::plan_layout(c, pp, 8);
    ASSERT_EQ(static_cast<int64_t>(layout.stage_layers.size()), pp);
    int64_t next = 0;
    for (const auto& [b, e] : layout.stage_layers) {
      EXPECT_EQ(b, next);
      EXPECT_GT(std::min(e, c.num_hidden_layers), b) << "stage without a main layer";
      next = e;
    }
    EXPECT_EQ(next, c.num_layers_total());
    EXPECT_EQ(layout.stage_layers.back().second, 44);
  }
}

TEST(Layout, BalancedBeatsEqualSplit) {
  const auto c = flash();
  const moerun::CheckpointSchema schema(c);
  const auto costs = moerun::layer_costs(schema);
  const auto layout = moerun::plan_layout(c, 4, 1);
  double worst = 0;
  for (const auto& [b, e] : layout.stage_layers) {
    double s = 0;
    for (int64_t l = b; l < e; ++l) s += costs[static_cast<size_t>(l)];
    worst = std::max(worst, s);
  }
  // Balanced: no stage above the ideal share by more than one layer's cost plus the head.
  double total = 0;
  for (double x : costs) total += x;
  const double head = 2.0 * 129280 * 4096;
  EXPECT_LE(worst, (total + head) / 4 + costs[5] + head);
  // Explicit counts are honoured.
  const auto given = moerun::plan_layout(c, 2, 4, {20, 23});
  EXPECT_EQ(given.stage_layers[0], std::make_pair(int64_t{0}, int64_t{20}));
  EXPECT_EQ(given.stage_layers[1], std::make_pair(int64_t{20}, int64_t{44}));
}

TEST(Layout, RanksExpertsAndGlobals) {
  const auto c = flash();
  const auto layout = moerun::plan_layout(c, 2, 8);
  EXPECT_EQ(layout.world_size(), 16);
  EXPECT_EQ(layout.experts_per_rank(), 32);
  for (int64_t r = 0; r < 16; ++r) {
    const auto sel = layout.selection(r, c);
    EXPECT_EQ(sel.expert_begin, layout.column_of(r) * 32);
    EXPECT_EQ(sel.expert_end, sel.expert_begin + 32);
    // Embedding on stage 0 and on the last stage (MTP shares it); head on the last stage.
    EXPECT_TRUE(sel.embedding);
    EXPECT_EQ(sel.head, layout.stage_of(r) == 1);
  }
  EXPECT_EQ(layout.rank_of(1, 3), 11);
  EXPECT_THROW(layout.selection(16, c), moerun::Error);
}

TEST(Layout, RefusesBadLayouts) {
  const auto c = tiny();  // 5 layers, 16 experts
  std::string m = error_message([&] { moerun::plan_layout(c, 6, 1); });
  EXPECT_NE(m.find("pp=6 pipeline stages but the model has only 5 layers"), std::string::npos) << m;
  m = error_message([&] { moerun::plan_layout(c, 1, 3); });
  EXPECT_NE(m.find("ep=3 does not divide the 16 routed experts"), std::string::npos) << m;
  m = error_message([&] { moerun::plan_layout(c, 0, 1); });
  EXPECT_NE(m.find("pp=0"), std::string::npos) << m;
  m = error_message([&] { moerun::plan_layout(c, 2, 1, {2, 2}); });
  EXPECT_NE(m.find("sum to 4 but the model has 5 layers"), std::string::npos) << m;
  m = error_message([&] { moerun::plan_layout(c, 2, 1, {5, 0}); });
  EXPECT_NE(m.find("stage 1 is given 0 layers"), std::string::npos) << m;
  m = error_message([&] { moerun::plan_layout(c, 2, 1, {5}); });
  EXPECT_NE(m.find("1 stage layer counts given for pp=2"), std::string::npos) << m;
}

// A stage's KV pool holds only its layers: the stages of any layout together hold exactly the
// single process's per-sequence state (plus one MTP pending stream per stage).
TEST(Layout, StageKvHoldsOnlyItsLayers) {
  for (const moerun::ModelConfig& c : {tiny(), flash()}) {
    const int64_t bt = moerun::kv::KvLayout::default_block_tokens(c);
    const moerun::kv::KvLayout full(c, bt);
    for (int64_t pp : {2, 3}) {
      const moerun::ParallelLayout lay = moerun::plan_layout(c, pp, 1);
      int64_t slot = 0, block = 0;
      for (const auto& [begin, end] : lay.stage_layers) {
        const moerun::kv::KvLayout part(c, bt, begin, end);
        slot += part.slot_floats();
        block += part.block_floats();
        for (int64_t l = 0; l < c.num_layers_total(); ++l)
          EXPECT_EQ(part.layer(l).held, l >= begin && l < end) << "layer " << l;
      }
      EXPECT_EQ(slot, full.slot_floats() + (pp - 1) * c.hc_dim()) << "pp=" << pp;
      EXPECT_EQ(block, full.block_floats()) << "pp=" << pp;
    }
  }
  EXPECT_NE(error_message([] { moerun::kv::KvLayout(tiny(), 64, 2, 99); }).find("not inside"),
            std::string::npos);
}

}  // namespace

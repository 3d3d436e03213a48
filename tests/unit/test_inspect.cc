// moerun-inspect on the full-size sparse DeepSeek-V4-Flash skeleton written by moerun-mkmodel
// (46 shards, real headers): counts and bytes against the spec's figures, the pp=2 × ep=8
// per-rank plan sums to the whole, and the command-line tools behave on good and bad input.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/checkpoint_schema.h"
#include "tools/inspect/inspect.h"

namespace {

namespace fs = std::filesystem;
const fs::path kBinary = MOERUN_BINARY_DIR;
const fs::path kGolden = MOERUN_GOLDEN_DIR;
const fs::path kMkmodel = kBinary / "tools/mkmodel/moerun-mkmodel";
const fs::path kInspect = kBinary / "tools/inspect/moerun-inspect";

struct CommandResult {
  int status = -1;
  std::string out;  // stdout and stderr
};

CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

class FlashSkeleton : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("moerun-flash-skeleton-" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    const CommandResult r =
        run_command(kMkmodel.string() + " --preset flash --sparse --out " + dir_->string());
    ASSERT_EQ(r.status, 0) << r.out;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static fs::path* dir_;
};
fs::path* FlashSkeleton::dir_ = nullptr;

TEST_F(FlashSkeleton, SummaryMatchesTheSpec) {
  const auto report = moerun::inspect::inspect_checkpoint(*dir_);
  EXPECT_TRUE(report.schema.ok()) << report.schema.describe();
  EXPECT_EQ(report.num_shards, 46);
  EXPECT_EQ(report.num_tensors, 69187);
  EXPECT_EQ(report.total_bytes, 159609485896ull);
  EXPECT_EQ(report.parameters, 290942289362);
  EXPECT_EQ(report.by_dtype.at("BF16").first, 433);
  EXPECT_EQ(report.by_dtype.at("F32").first, 417);
  EXPECT_EQ(report.by_dtype.at("F8_E4M3").first, 375);
  EXPECT_EQ(report.by_dtype.at("F8_E8M0").first, 34167);
  EXPECT_EQ(report.by_dtype.at("I8").first, 33792);
  EXPECT_EQ(report.by_dtype.at("I64").first, 3);
  EXPECT_EQ(report.layers_by_kind.at("SWA"), 2);
  EXPECT_EQ(report.layers_by_kind.at("CSA"), 21);
  EXPECT_EQ(report.layers_by_kind.at("HCA"), 20);
  EXPECT_EQ(report.layers_by_kind.at("MTP"), 1);
  EXPECT_EQ(report.hash_layers, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(report.experts_per_token, 6);
  EXPECT_EQ(report.hash_table_width, 6);
}

TEST_F(FlashSkeleton, RankPlanSumsToTheWhole) {
  const auto report = moerun::inspect::inspect_checkpoint(*dir_, std::make_pair(2, 8));
  ASSERT_EQ(report.ranks.size(), 16u);
  uint64_t owned = 0, experts = 0;
  for (const auto& p : report.ranks) {
    owned += p.owned_bytes;
    experts += p.expert_bytes;
    EXPECT_EQ(p.expert_end - p.expert_begin, 32);
    // Columns of one stage hold the same dense weights and equal expert shares.
    const auto& first_of_stage = report.ranks[static_cast<size_t>(p.stage * 8)];
    EXPECT_EQ(p.bytes - p.expert_bytes, first_of_stage.bytes - first_of_stage.expert_bytes);
  }
  EXPECT_EQ(owned, report.total_bytes);
  // Every routed expert is on exactly one rank: the ranks' expert bytes sum to all experts.
  const moerun::CheckpointSchema schema(moerun::ModelConfig::load(*dir_ / "config.json"));
  uint64_t all_experts = 0;
  for (const auto& t : schema.tensors())
    if (t.role == moerun::TensorRole::kRoutedExpert) all_experts += t.nbytes();
  EXPECT_EQ(experts, all_experts);
  // Per-rank expert memory is 1/ep of the stage's experts.
  EXPECT_EQ(report.ranks[0].expert_bytes * 8 + report.ranks[8].expert_bytes * 8, all_experts);
}

TEST_F(FlashSkeleton, CommandLineJsonAndText) {
  const CommandResult j =
      run_command(kInspect.string() + " " + dir_->string() + " --layout pp=2,ep=8 --json");
  ASSERT_EQ(j.status, 0) << j.out;
  const auto parsed = nlohmann::json::parse(j.out);
  EXPECT_EQ(parsed["num_tensors"], 69187);
  EXPECT_EQ(parsed["ranks"].size(), 16u);
  uint64_t owned = 0;
  for (const auto& r : parsed["ranks"]) owned += r["owned_bytes"].get<uint64_t>();
  EXPECT_EQ(owned, parsed["total_bytes"].get<uint64_t>());
  const CommandResult t = run_command(kInspect.string() + " " + dir_->string());
  ASSERT_EQ(t.status, 0) << t.out;
  EXPECT_NE(t.out.find("69,187 tensors"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("290,942,289,362"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("SWA 2"), std::string::npos) << t.out;
}

TEST(InspectCli, GoldenTinyAndBadInput) {
  const CommandResult ok =
      run_command(kInspect.string() + " " + (kGolden / "dsv4-tiny/checkpoint").string() +
                  " --layout pp=2,ep=4");
  EXPECT_EQ(ok.status, 0) << ok.out;
  EXPECT_NE(ok.out.find("schema       OK"), std::string::npos) << ok.out;
  const CommandResult bad_layout =
      run_command(kInspect.string() + " " + (kGolden / "dsv4-tiny/checkpoint").string() +
                  " --layout pp=2,ep=3");
  EXPECT_EQ(bad_layout.status, 1);
  EXPECT_NE(bad_layout.out.find("ep=3 does not divide the 16 routed experts"), std::string::npos)
      << bad_layout.out;
  const CommandResult missing = run_command(kInspect.string() + " /nonexistent/ckpt");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.out.find("/nonexistent/ckpt"), std::string::npos) << missing.out;
  const CommandResult usage = run_command(kInspect.string());
  EXPECT_NE(usage.status, 0);
}

TEST(MkmodelCli, RefusesFullSizeWithoutSparseAndBadFlags) {
  const CommandResult full =
      run_command(kMkmodel.string() + " --preset flash --out /tmp/moerun-never-written");
  EXPECT_EQ(full.status, 2);
  EXPECT_NE(full.out.find("add --sparse"), std::string::npos) << full.out;
  EXPECT_FALSE(fs::exists("/tmp/moerun-never-written"));
  const CommandResult preset = run_command(kMkmodel.string() + " --preset huge --out /tmp/x");
  EXPECT_NE(preset.status, 0);
  EXPECT_NE(preset.out.find("huge"), std::string::npos) << preset.out;
  const CommandResult k = run_command(
      kMkmodel.string() + " --preset tiny --experts-per-token 40 --out /tmp/moerun-never-written");
  EXPECT_EQ(k.status, 1);
  EXPECT_NE(k.out.find("40"), std::string::npos) << k.out;
  EXPECT_FALSE(fs::exists("/tmp/moerun-never-written/config.json"));
}

}  // namespace

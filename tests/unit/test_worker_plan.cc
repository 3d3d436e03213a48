// The distributed engine's wire formats and inputs: commands survive encode/decode exactly and
// truncated or inconsistent messages are errors; observer records replay the same calls;
// prompt files and cluster layout files reject bad input with messages naming it.
#include <fstream>

#include <gtest/gtest.h>

#include "tests/unit/test_util.h"
#include "worker/engine/cluster_flags.h"
#include "worker/engine/plan.h"
#include "worker/engine/prompt_runner.h"
#include "worker/engine/remote_observer.h"

namespace {

using namespace moerun::engine;
using moerun::testing_util::error_message;
using moerun::testing_util::TempDir;

Command sample_command() {
  Command c;
  c.kind = CommandKind::kStep;
  c.step = 41;
  c.micro_batches = 2;
  c.observe = 1;
  PlanRequest a;
  a.seq = 7;
  a.start = 3;
  a.column = 1;
  a.micro_batch = 1;
  a.num_tokens = 2;
  a.has_sampling = 1;
  a.sampling.temperature = 0.7f;
  a.sampling.seed = 99;
  PlanRequest b = a;
  b.seq = 8;
  b.num_tokens = 1;
  b.prefill = 0;
  c.requests = {a, b};
  c.tokens = {5, 6, 7};
  c.h = {1.5f, -2.0f};
  return c;
}

TEST(WorkerPlan, CommandsRoundTripExactly) {
  const Command c = sample_command();
  const std::vector<uint8_t> bytes = encode_command(c);
  const Command d = decode_command(bytes);
  EXPECT_EQ(d.kind, c.kind);
  EXPECT_EQ(d.step, 41);
  EXPECT_EQ(d.micro_batches, 2);
  EXPECT_EQ(d.observe, 1);
  ASSERT_EQ(d.requests.size(), 2u);
  EXPECT_EQ(std::memcmp(d.requests.data(), c.requests.data(), sizeof(PlanRequest) * 2), 0);
  EXPECT_EQ(d.tokens, c.tokens);
  EXPECT_EQ(d.h, c.h);
  // Every byte matters: a re-encoding is identical.
  EXPECT_EQ(encode_command(d), bytes);
}

TEST(WorkerPlan, MalformedCommandsAreErrors) {
  std::vector<uint8_t> bytes = encode_command(sample_command());
  for (size_t cut : {size_t{0}, size_t{5}, bytes.size() - 1}) {
    const std::vector<uint8_t> part(bytes.begin(), bytes.begin() + static_cast<int64_t>(cut));
    EXPECT_NE(error_message([&] { decode_command(part); }).find("truncated"), std::string::npos)
        << "cut at " << cut;
  }
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_NE(error_message([&] { decode_command(longer); }).find("trailing"), std::string::npos);
  Command c = sample_command();
  c.tokens.pop_back();
  const auto mismatch = encode_command(c);
  EXPECT_NE(error_message([&] { decode_command(mismatch); }).find("requests hold 3 tokens"),
            std::string::npos);
  std::vector<uint8_t> bad_kind = bytes;
  bad_kind[0] = 77;
  EXPECT_NE(error_message([&] { decode_command(bad_kind); }).find("unknown kind"),
            std::string::npos);
}

// Collects every observer call as text.
class Log : public moerun::model::ForwardObserver {
 public:
  std::vector<std::string> calls;
  static std::string rows(const moerun::model::StepBatch& b) {
    std::string s;
    for (int64_t i = 0; i < b.rows(); ++i) s += fmt::format("({},{})", b.tokens[i], b.positions[i]);
    return s;
  }
  void block_output(int64_t layer, const moerun::model::StepBatch& b, const float* h) override {
    calls.push_back(fmt::format("block {} {} {} {}", layer, rows(b), h[0], h[b.rows() * 4 - 1]));
  }
  void router(int64_t layer, const moerun::model::StepBatch& b, const int32_t* ids, const float* w,
              int64_t k) override {
    calls.push_back(fmt::format("router {} {} {} {} {}", layer, rows(b), k, ids[1], w[1]));
  }
  void indexer(int64_t layer, const moerun::model::StepBatch& b, int64_t row, const int32_t* c,
               int64_t n) override {
    calls.push_back(fmt::format("indexer {} {}:{} {} {}", layer, b.tokens[row], b.positions[row], n,
                                n ? c[n - 1] : -1));
  }
  void head_input(bool mtp, const moerun::model::StepBatch& b, const float* y) override {
    calls.push_back(fmt::format("head {} {} {}", mtp, rows(b), y[b.rows() * 2 - 1]));
  }
  void mtp_input(const moerun::model::StepBatch& b, const float* x) override {
    calls.push_back(fmt::format("mtp {} {}", rows(b), x[0]));
  }
};

TEST(WorkerPlan, ObserverRecordsReplayTheSameCalls) {
  moerun::model::StepBatch b;
  b.tokens = {10, 11};
  b.positions = {4, 5};
  const std::vector<float> h = {1, 2, 3, 4, 5, 6, 7, 8};  // [2 rows, hc·dim = 4]
  const std::vector<int32_t> ids = {3, 1, 2, 0};          // [2, k = 2]
  const std::vector<float> w = {0.25f, 0.5f, 0.75f, 1.0f};
  const std::vector<int32_t> chosen = {0, 2, 5};
  const std::vector<float> y = {9, 8, 7, 6};  // [2, dim = 2]
  auto drive = [&](moerun::model::ForwardObserver& o) {
    o.block_output(3, b, h.data());
    o.router(2, b, ids.data(), w.data(), 2);
    o.indexer(1, b, 1, chosen.data(), 3);
    o.head_input(true, b, y.data());
    o.mtp_input(b, h.data());
  };
  Log direct;
  drive(direct);
  ByteWriter out;
  RecordingObserver rec(out, 4, 2);
  drive(rec);
  rec.finish();
  Log replayed;
  ByteReader in(out.bytes());
  replay_observations(in, replayed, 4, 2);
  EXPECT_TRUE(in.done());
  EXPECT_EQ(replayed.calls, direct.calls);
}

TEST(WorkerPlan, PromptFilesRejectBadLines) {
  TempDir dir;
  std::filesystem::create_directories(dir.path());
  const auto path = dir.path() / "p.txt";
  std::ofstream(path) << "# comment\n1 2 3\n\n  7\n";
  const auto prompts = read_prompt_file(path);
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[0], (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(prompts[1], (std::vector<int32_t>{7}));
  std::ofstream(path) << "1 2\n3 x4\n";
  EXPECT_NE(error_message([&] { read_prompt_file(path); }).find("line 2: 'x4'"), std::string::npos);
  std::ofstream(path) << "-5\n";
  EXPECT_NE(error_message([&] { read_prompt_file(path); }).find("'-5' is not a token id"),
            std::string::npos);
  std::ofstream(path) << "# nothing\n";
  EXPECT_NE(error_message([&] { read_prompt_file(path); }).find("holds no prompts"),
            std::string::npos);
  EXPECT_NE(error_message([&] { read_prompt_file(dir.path() / "missing"); }).find("cannot read"),
            std::string::npos);
}

TEST(WorkerPlan, ClusterFilesAndFlags) {
  TempDir dir;
  std::filesystem::create_directories(dir.path());
  const auto path = dir.path() / "c.json";
  auto apply = [&](const std::string& json, ClusterFlags f = {}) {
    std::ofstream(path) << json;
    f.cluster_file = path.string();
    ClusterOptions o;
    apply_cluster_flags(f, o);
    return o;
  };
  const ClusterOptions o = apply(R"({"pp": 2, "ep": 4, "stage_layers": [3, 2],
                                     "transport": "mpi", "micro_batches": 3})");
  EXPECT_EQ(o.pp, 2);
  EXPECT_EQ(o.ep, 4);
  EXPECT_EQ(o.stage_layers, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(o.micro_batches, 3);
  ClusterFlags over;
  over.layout = "pp=1,ep=2";
  const ClusterOptions p = apply(R"({"pp": 2, "ep": 4})", over);
  EXPECT_EQ(p.pp, 1);
  EXPECT_EQ(p.ep, 2);
  EXPECT_NE(error_message([&] { apply(R"({"pp": 2, "eps": 4})"); }).find("unknown key 'eps'"),
            std::string::npos);
  EXPECT_NE(error_message([&] { apply(R"({"pp": -1})"); }).find("'pp' must be a non-negative"),
            std::string::npos);
  EXPECT_NE(error_message([&] { apply(R"({"transport": "tcp"})"); }).find("tcp"),
            std::string::npos);
  EXPECT_NE(error_message([&] { apply("[1, 2]"); }).find("expected a JSON object"),
            std::string::npos);
  EXPECT_NE(error_message([&] { apply("{"); }).find("invalid JSON"), std::string::npos);
}

}  // namespace

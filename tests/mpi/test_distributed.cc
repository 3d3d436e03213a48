// The distributed engine's leader API on a small cluster (mpirun -np 1: pp=1, ep=1; -np 2:
// pp=1, ep=2; -np 4: pp=2, ep=2) of the golden tiny checkpoint: bad requests are errors that change
// nothing on any rank — the sequence continues bit-identically to a single-process engine —
// capacity is per column and exact, and the leader-only API refuses other ranks. Every TEST
// builds the cluster collectively: rank 0 runs the checks, the others serve.
#include <functional>

#include <gtest/gtest.h>
#include <mpi.h>

#include "tests/unit/test_util.h"
#include "worker/engine/distributed.h"
#include "worker/engine/engine.h"

namespace {

namespace fs = std::filesystem;
using moerun::engine::ClusterOptions;
using moerun::engine::DistributedEngine;
using moerun::engine::Engine;
using moerun::engine::EngineOptions;
using moerun::engine::StepEngine;
using moerun::engine::StepRequest;
using moerun::testing_util::error_message;

const fs::path kTiny = fs::path(MOERUN_GOLDEN_DIR) / "dsv4-tiny" / "checkpoint";

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

EngineOptions engine_options() {
  EngineOptions o;
  o.checkpoint = kTiny;
  o.num_threads = 1;
  o.max_sequences = 2;  // per column
  o.max_batch_tokens = 48;
  o.mtp = true;
  return o;
}

ClusterOptions cluster_options(const EngineOptions& eo) {
  ClusterOptions c;
  c.engine = eo;
  c.pp = world_size() >= 4 ? 2 : 1;
  c.ep = world_size() / c.pp;
  return c;
}

// Builds the cluster; rank 0 runs `leader`, the others serve until it is done.
void on_cluster(const ClusterOptions& options,
                const std::function<void(DistributedEngine&)>& leader) {
  DistributedEngine eng(options, MPI_COMM_WORLD);
  if (eng.is_leader()) {
    leader(eng);
    eng.shutdown();
  } else {
    eng.serve();
  }
}

std::vector<int32_t> tokens(int64_t n, uint32_t seed) {
  std::vector<int32_t> t;
  uint32_t h = seed * 2654435761u + 7u;
  for (int64_t i = 0; i < n; ++i) {
    h = h * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>((h >> 8) % 1024u));
  }
  return t;
}

// Logits of prompt `toks` fed in chunks of 6, then 3 greedy tokens, as one vector.
std::vector<float> run_sequence(StepEngine& eng, const std::vector<int32_t>& toks) {
  std::vector<float> all;
  const auto s = eng.add_sequence();
  for (size_t b = 0; b < toks.size(); b += 6) {
    StepRequest r;
    r.seq = s;
    r.tokens.assign(toks.begin() + b, toks.begin() + std::min(toks.size(), b + 6));
    r.all_logits = true;
    const auto res = eng.step({r});
    all.insert(all.end(), res[0].logits.begin(), res[0].logits.end());
  }
  eng.free_sequence(s);
  return all;
}

TEST(Distributed, BadRequestsAreErrorsThatChangeNothing) {
  const EngineOptions eo = engine_options();
  std::vector<float> expected;
  if (world_size() > 0) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
      Engine single(eo);
      expected = run_sequence(single, tokens(12, 5));
    }
  }
  on_cluster(cluster_options(eo), [&](DistributedEngine& eng) {
    const int64_t vocab = eng.config().vocab_size;
    const auto toks = tokens(12, 5);
    const auto a = eng.add_sequence();
    const auto b = eng.add_sequence();
    auto expect_error = [&](const std::vector<StepRequest>& reqs, const std::string& needle) {
      const std::string msg = error_message([&] { eng.step(reqs); });
      EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
    };
    expect_error({{a, {1, 2, static_cast<int32_t>(vocab)}, false}}, "outside the vocabulary");
    expect_error({{a, {-1}, false}}, "outside the vocabulary");
    expect_error({{a, toks, false}, {a, toks, false}}, "appears twice");
    expect_error({{a, {}, false}}, "no tokens");
    expect_error({{99, {1}, false}}, "unknown sequence id 99");
    expect_error({}, "no requests");
    // a and b sit on different columns (the emptiest column takes a new sequence), so 48
    // tokens each fit; 49 for one column do not.
    expect_error({{a, tokens(49, 3), false}}, "over max_batch_tokens 48");
    expect_error({{b, tokens(129, 4), false}}, "past the context of 128");
    EXPECT_EQ(eng.length(a), 0);
    EXPECT_NE(error_message([&] { eng.free_sequence(77); }).find("unknown sequence"),
              std::string::npos);
    eng.free_sequence(a);
    eng.free_sequence(b);
    // After the rejected steps the cluster computes exactly what one process does.
    const std::vector<float> got = run_sequence(eng, toks);
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_EQ(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)), 0);
  });
}

TEST(Distributed, CapacityIsPerColumnAndExact) {
  EngineOptions eo = engine_options();
  eo.max_sequences = 1;
  eo.kv_blocks = 1;  // one block of 64 positions per column
  on_cluster(cluster_options(eo), [&](DistributedEngine& eng) {
    const int64_t columns = world_size() >= 4 ? 2 : world_size();
    EXPECT_EQ(eng.capacity().max_sequences, columns);
    EXPECT_EQ(eng.capacity().kv_blocks, columns);
    std::vector<moerun::engine::SeqId> seqs;
    for (int64_t i = 0; i < columns; ++i) seqs.push_back(eng.add_sequence());
    EXPECT_EQ(eng.capacity().free_sequences, 0);
    const std::string full = error_message([&] { eng.add_sequence(); });
    EXPECT_NE(full.find("sequence slots are in use"), std::string::npos) << full;
    eng.step({{seqs[0], tokens(40, 1), false}});  // its column's only block
    EXPECT_EQ(eng.capacity().free_kv_blocks, columns - 1);
    const std::string msg = error_message([&] { eng.step({{seqs[0], tokens(40, 2), false}}); });
    EXPECT_NE(msg.find("KV blocks"), std::string::npos) << msg;
    EXPECT_EQ(eng.length(seqs[0]), 40);
    // The other column still has its block.
    if (columns > 1) eng.step({{seqs[1], tokens(40, 3), false}});
    eng.free_sequence(seqs[0]);
    EXPECT_EQ(eng.capacity().free_sequences, 1);
    EXPECT_EQ(eng.capacity().free_kv_blocks, 1);
    if (columns > 1) {
      EXPECT_EQ(eng.length(seqs[1]), 40);
    }
  });
}

// Each rank holds exactly its share — its stage's layers (the MTP block on the last stage) and
// its column's 1/ep of the routed experts — and tokens are exchanged only when ep > 1.
TEST(Distributed, EachRankHoldsItsShare) {
  const ClusterOptions co = cluster_options(engine_options());
  on_cluster(co, [&](DistributedEngine& eng) {
    const moerun::engine::SeqId s = eng.add_sequence();
    eng.step({{s, tokens(20, 9), false}});
    const auto stats = eng.stats();
    const moerun::ModelConfig& c = eng.config();
    ASSERT_EQ(static_cast<int64_t>(stats.size()), co.pp * co.ep);
    int64_t layers_seen = 0, dispatched = 0, remote_pairs = 0;
    for (const moerun::engine::RankStats& r : stats) {
      const int64_t stage = r.rank / co.ep, column = r.rank % co.ep;
      const int64_t per = c.n_routed_experts / co.ep;
      EXPECT_EQ(r.expert_begin, column * per) << "rank " << r.rank;
      EXPECT_EQ(r.expert_end, (column + 1) * per) << "rank " << r.rank;
      EXPECT_EQ(r.layer_begin, eng.layout().stage_layers[stage].first);
      EXPECT_EQ(r.layer_end, eng.layout().stage_layers[stage].second);
      if (column == 0) layers_seen += r.layer_end - r.layer_begin;
      if (stage == co.pp - 1) {
        EXPECT_EQ(r.layer_end, c.num_layers_total());
      }
      EXPECT_GT(r.resident_bytes, 0);
      EXPECT_EQ(r.steps, 1);
      dispatched += r.exchange.tokens;
      remote_pairs += r.exchange.pairs_sent;
    }
    EXPECT_EQ(layers_seen, c.num_layers_total());
    if (co.ep > 1) {
      // The sequence's 20 tokens went through every main MoE layer's dispatch, and the MTP
      // block's 19 rows (positions 0..18: token t+1 is known) through its own.
      EXPECT_EQ(dispatched, 20 * c.num_hidden_layers + 19);
      EXPECT_GT(remote_pairs, 0);
    } else {
      EXPECT_EQ(dispatched, 0);  // one column: every expert is local, nothing is exchanged
    }
  });
}

TEST(Distributed, LeaderOnlyCallsAreRefusedElsewhere) {
  DistributedEngine eng(cluster_options(engine_options()), MPI_COMM_WORLD);
  if (eng.is_leader()) {
    EXPECT_NE(error_message([&] { eng.serve(); }).find("other than the leader"), std::string::npos);
    eng.shutdown();
    EXPECT_NE(error_message([&] { eng.add_sequence(); }).find("shut down"), std::string::npos);
  } else {
    EXPECT_NE(error_message([&] { eng.add_sequence(); }).find("is for the leader"),
              std::string::npos);
    eng.serve();
  }
}

}  // namespace

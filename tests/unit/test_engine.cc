// The engine's guarantees on the golden tiny checkpoint: prompt chunking never changes a bit
// (token by token = one shot = any chunks, reference kernels); a sequence's logits are the
// same alone or in a batch with 7 others (both kernel sets); a top-4 override of a top-6
// checkpoint equals a checkpoint written with a 4-column hash table; bad requests are errors
// that leave every sequence as it was.
#include <cstring>
#include <fstream>
#include <map>

#include <gtest/gtest.h>

#include "common/checkpoint_schema.h"
#include "common/safetensors.h"
#include "tests/unit/test_util.h"
#include "tools/mkmodel/writer.h"
#include "worker/engine/engine.h"

namespace {

namespace fs = std::filesystem;
using moerun::engine::Engine;
using moerun::engine::EngineOptions;
using moerun::engine::StepRequest;
using moerun::engine::StepResult;
using moerun::kernels::KernelImpl;
using moerun::kernels::RowPhase;
using moerun::testing_util::error_message;
using moerun::testing_util::TempDir;

const fs::path kGoldenCkpt = fs::path(MOERUN_GOLDEN_DIR) / "dsv4-tiny" / "checkpoint";

EngineOptions options(KernelImpl impl, const fs::path& ckpt = kGoldenCkpt) {
  EngineOptions o;
  o.checkpoint = ckpt;
  o.kernels = impl;
  o.max_sequences = 8;
  o.mtp = true;
  return o;
}

// Deterministic token ids in [0, vocab).
std::vector<int32_t> tokens(int64_t n, uint32_t seed, int64_t vocab = 1024) {
  std::vector<int32_t> t;
  uint32_t h = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < n; ++i) {
    h = h * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>((h >> 8) % static_cast<uint32_t>(vocab)));
  }
  return t;
}

// Per position: the main logits row and, where the MTP ran, its row.
struct Trace {
  std::map<int64_t, std::vector<float>> logits, mtp;
};

void record(const StepResult& r, int64_t vocab, Trace& t) {
  for (int64_t i = 0; i < r.rows; ++i)
    t.logits[r.first_position + i].assign(r.logits.begin() + i * vocab,
                                          r.logits.begin() + (i + 1) * vocab);
  for (int64_t i = 0; i < r.mtp_rows; ++i)
    t.mtp[r.mtp_first_position + i].assign(r.mtp_logits.begin() + i * vocab,
                                           r.mtp_logits.begin() + (i + 1) * vocab);
}

// Runs `toks` through a fresh sequence in chunks of the given sizes (cycled); steps from
// `decode_from` on are marked as generated tokens (RowPhase::kDecode).
Trace run_chunked(Engine& eng, const std::vector<int32_t>& toks, std::vector<int64_t> chunks,
                  size_t decode_from = SIZE_MAX) {
  Trace t;
  const auto id = eng.add_sequence();
  size_t c = 0;
  for (size_t pos = 0; pos < toks.size();) {
    const size_t n =
        std::min<size_t>(static_cast<size_t>(chunks[c % chunks.size()]), toks.size() - pos);
    StepRequest r{id, std::vector<int32_t>(toks.begin() + pos, toks.begin() + pos + n), true,
                  c >= decode_from ? RowPhase::kDecode : RowPhase::kPrefill};
    ++c;
    record(eng.step({r})[0], eng.config().vocab_size, t);
    pos += n;
  }
  eng.free_sequence(id);
  return t;
}

// Bit-for-bit equality of two traces, naming the first differing position and index.
void expect_identical(const Trace& a, const Trace& b, const std::string& what) {
  ASSERT_EQ(a.logits.size(), b.logits.size()) << what;
  ASSERT_EQ(a.mtp.size(), b.mtp.size()) << what;
  for (auto m : {&Trace::logits, &Trace::mtp})
    for (const auto& [pos, row] : a.*m) {
      const auto& other = (b.*m).at(pos);
      ASSERT_EQ(row.size(), other.size());
      for (size_t i = 0; i < row.size(); ++i)
        ASSERT_EQ(std::memcmp(&row[i], &other[i], sizeof(float)), 0)
            << what << ": " << (m == &Trace::logits ? "logits" : "mtp logits") << " at position "
            << pos << " index " << i << ": " << row[i] << " vs " << other[i];
    }
}

TEST(Engine, ChunkedPrefillIsBitIdenticalWithReferenceKernels) {
  Engine eng(options(KernelImpl::kReference));
  const auto toks = tokens(37, 1);  // crosses ratio-4 and ratio-16 blocks and the window (8)
  const Trace one_shot = run_chunked(eng, toks, {37});
  EXPECT_EQ(one_shot.logits.size(), 37u);
  EXPECT_EQ(one_shot.mtp.size(), 36u);
  expect_identical(one_shot, run_chunked(eng, toks, {1}), "token by token");
  expect_identical(one_shot, run_chunked(eng, toks, {5, 3, 16, 2}), "chunks 5,3,16,2");
  expect_identical(one_shot, run_chunked(eng, toks, {20, 1}), "prefill 20 then decode");
}

// The target sequence runs alone, then again with 7 others in every step: prompts of other
// lengths, some decoding while it prefills, one joining late.
void check_batch_invariance(KernelImpl impl) {
  Engine eng(options(impl));
  const int64_t vocab = eng.config().vocab_size;
  const auto target = tokens(30, 7);
  const std::vector<int64_t> chunks = {13, 1, 1, 9, 1, 1, 1, 1, 1, 1};
  // The prompt is the first step's 13 tokens; later steps are generated tokens (a 9-token
  // step stands for a speculative verification).
  const Trace alone = run_chunked(eng, target, chunks, 1);

  std::vector<moerun::engine::SeqId> others;
  std::vector<std::vector<int32_t>> other_toks;
  std::vector<size_t> other_pos;
  for (int j = 0; j < 7; ++j) {
    others.push_back(eng.add_sequence());
    other_toks.push_back(tokens(40, 100 + j));
    other_pos.push_back(0);
  }
  Trace batched;
  const auto id = eng.add_sequence();
  size_t pos = 0;
  for (size_t step = 0; pos < target.size(); ++step) {
    std::vector<StepRequest> reqs;
    for (int j = 0; j < 7; ++j) {
      if (j == 6 && step < 3) continue;  // joins late
      const size_t n = other_pos[j] == 0 ? static_cast<size_t>(2 + 3 * j) : 1 + (step + j) % 2;
      const size_t take = std::min(n, other_toks[j].size() - other_pos[j]);
      if (take == 0) continue;
      reqs.push_back({others[j],
                      std::vector<int32_t>(other_toks[j].begin() + other_pos[j],
                                           other_toks[j].begin() + other_pos[j] + take),
                      j % 2 == 0, other_pos[j] == 0 ? RowPhase::kPrefill : RowPhase::kDecode});
      other_pos[j] += take;
    }
    const size_t n =
        std::min<size_t>(static_cast<size_t>(chunks[step % chunks.size()]), target.size() - pos);
    // The target sits in the middle of the batch.
    reqs.insert(reqs.begin() + static_cast<long>(reqs.size() / 2),
                {id, std::vector<int32_t>(target.begin() + pos, target.begin() + pos + n), true,
                 step == 0 ? RowPhase::kPrefill : RowPhase::kDecode});
    pos += n;
    for (const StepResult& r : eng.step(reqs))
      if (r.seq == id) record(r, vocab, batched);
  }
  expect_identical(alone, batched, "alone vs in a batch of 8");
}

TEST(Engine, BatchInvariantWithReferenceKernels) {
  check_batch_invariance(KernelImpl::kReference);
}

TEST(Engine, BatchInvariantWithOptimizedKernels) {
  check_batch_invariance(KernelImpl::kOptimized);
}

// A top-6 tiny checkpoint, and the same weights written as a top-4 release: config k = 4 and
// every tid2eid cut to its first 4 columns.
void write_top6_and_top4(const fs::path& top6, const fs::path& top4) {
  const auto base =
      moerun::ModelConfig::load(fs::path(MOERUN_SOURCE_DIR) / "configs/dsv4-tiny.json");
  moerun::mkmodel::CheckpointWriteOptions wo;
  moerun::mkmodel::write_checkpoint(base.with_experts_per_tok(6), wo, top6);
  moerun::mkmodel::write_checkpoint(base.with_experts_per_tok(4), wo, top4);
  const auto a = moerun::Checkpoint::open(top6);
  const auto b = moerun::Checkpoint::open(top4);
  for (int64_t l = 0; l < base.num_hidden_layers; ++l) {
    if (!base.is_hash_layer(l)) continue;
    const std::string name = "layers." + std::to_string(l) + ".ffn.gate.tid2eid";
    const auto src = a.data(name);
    const auto* entry = b.find(name);
    ASSERT_NE(entry, nullptr);
    const auto& shard = b.shards()[entry->shard_idx];
    std::vector<int64_t> cut;
    for (int64_t r = 0; r < base.vocab_size; ++r)
      for (int64_t c = 0; c < 4; ++c) {
        int64_t v;
        std::memcpy(&v, src.data() + 8 * (r * 6 + c), 8);
        cut.push_back(v);
      }
    std::fstream f(shard.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(8 + shard.header().header_bytes + entry->info->begin));
    f.write(reinterpret_cast<const char*>(cut.data()),
            static_cast<std::streamsize>(cut.size() * 8));
    ASSERT_TRUE(f.good());
  }
}

TEST(Engine, TopFourOverrideEqualsAFourColumnCheckpoint) {
  TempDir top6("moerun-top6"), top4("moerun-top4");
  write_top6_and_top4(top6.path(), top4.path());
  const auto toks = tokens(24, 3);
  auto opt6as4 = options(KernelImpl::kReference, top6.path());
  opt6as4.experts_per_token = 4;
  Engine overridden(opt6as4);
  Engine released(options(KernelImpl::kReference, top4.path()));
  EXPECT_EQ(overridden.config().num_experts_per_tok, 4);
  expect_identical(run_chunked(overridden, toks, {24}), run_chunked(released, toks, {24}),
                   "top-6 checkpoint run as top-4 vs the top-4 checkpoint");
  // The unmodified top-6 model really routes differently.
  Engine six(options(KernelImpl::kReference, top6.path()));
  EXPECT_NE(run_chunked(six, toks, {24}).logits.at(23),
            run_chunked(released, toks, {24}).logits.at(23));
  // A table narrower than k cannot route.
  auto opt4as6 = options(KernelImpl::kReference, top4.path());
  opt4as6.experts_per_token = 6;
  EXPECT_NE(error_message([&] { Engine e(opt4as6); }).find("narrower than k"), std::string::npos);
}

TEST(Engine, BadRequestsAreErrorsThatChangeNothing) {
  auto opt = options(KernelImpl::kReference);
  opt.max_sequences = 3;
  opt.max_batch_tokens = 48;
  Engine eng(opt);
  const int64_t vocab = eng.config().vocab_size;
  const auto toks = tokens(12, 5);
  const Trace clean = run_chunked(eng, toks, {6, 6});

  Trace t;
  const auto a = eng.add_sequence();
  const auto b = eng.add_sequence();
  record(eng.step({{a, std::vector<int32_t>(toks.begin(), toks.begin() + 6), true}})[0], vocab, t);
  auto expect_error = [&](const std::vector<StepRequest>& reqs, const std::string& needle) {
    const std::string msg = error_message([&] { eng.step(reqs); });
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
  };
  const std::vector<int32_t> rest(toks.begin() + 6, toks.end());
  expect_error({{a, {1, 2, static_cast<int32_t>(vocab)}, false}}, "outside the vocabulary");
  expect_error({{a, {-1}, false}}, "outside the vocabulary");
  expect_error({{a, rest, false}, {b, {1, 2, 1024}, false}}, "outside the vocabulary");
  expect_error({{a, rest, false}, {a, rest, false}}, "appears twice");
  expect_error({{a, {}, false}}, "no tokens");
  expect_error({{99, {1}, false}}, "unknown sequence id 99");
  expect_error({{a, rest, false}, {b, tokens(43, 9), false}}, "over max_batch_tokens 48");
  expect_error({}, "no requests");
  const auto c = eng.add_sequence();
  EXPECT_NE(error_message([&] { eng.add_sequence(); }).find("sequence slots"), std::string::npos);
  // 128 positions is tiny's max_position_embeddings (= the default context here).
  for (int i = 0; i < 3; ++i) eng.step({{c, tokens(40, 20 + i), false}});
  expect_error({{c, tokens(9, 30), false}}, "past the context of 128");
  EXPECT_EQ(eng.length(a), 6);
  // After every rejected step, `a` continues exactly as if none had been sent.
  record(eng.step({{a, rest, true}})[0], vocab, t);
  expect_identical(clean, t, "after rejected requests");
  EXPECT_NE(error_message([&] { eng.free_sequence(77); }).find("unknown sequence"),
            std::string::npos);
}

TEST(Engine, KvBlocksAreAdmissionControlled) {
  auto opt = options(KernelImpl::kReference);
  opt.max_sequences = 2;
  opt.kv_blocks = 2;  // 2 blocks of 64 positions (tiny: ratios 4 and 16, block ≥ 64)
  Engine eng(opt);
  EXPECT_EQ(eng.capacity().block_tokens, 64);
  const auto a = eng.add_sequence();
  const auto b = eng.add_sequence();
  eng.step({{a, tokens(65, 1), false}});  // takes both blocks
  EXPECT_EQ(eng.capacity().free_kv_blocks, 0);
  const std::string msg = error_message([&] { eng.step({{b, {1}, false}}); });
  EXPECT_NE(msg.find("KV blocks"), std::string::npos) << msg;
  eng.free_sequence(a);
  EXPECT_EQ(eng.capacity().free_kv_blocks, 2);
  eng.step({{b, {1}, false}});
  EXPECT_EQ(eng.length(b), 1);
}

TEST(Engine, BadOptionsAreErrors) {
  auto opt = options(KernelImpl::kReference);
  opt.max_context = 129;
  EXPECT_NE(error_message([&] { Engine e(opt); }).find("max_position_embeddings (128)"),
            std::string::npos);
  opt = options(KernelImpl::kReference, "/nonexistent/checkpoint");
  EXPECT_NE(error_message([&] { Engine e(opt); }).find("/nonexistent/checkpoint"),
            std::string::npos);
  EXPECT_NE(error_message([] { moerun::kernels::parse_kernel_impl("fast"); }).find("'fast'"),
            std::string::npos);
}

}  // namespace

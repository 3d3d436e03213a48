// Expert-parallel dispatch / combine (worker/comm/dispatch.h) under mpirun, 1–4 ranks over the
// mpi transport. Every rank regenerates every rank's inputs from the case (the data depends only
// on the case, the rank and the token), so it knows exactly what it must receive and what its
// combine must return, without trusting the code under test:
//   - activations are built from e4m3 codes derived from (seed, rank, token, column) times a
//     power-of-two scale per 1×128 block derived from (rank, token, block), and are checked to
//     be fixed points of numfmt::fake_quant_block_e4m3 (valid act_quant outputs);
//   - received rows, source ranks / tokens, prefill flags, (expert, weight) pairs and per-expert
//     counts are compared exactly, payloads bit for bit;
//   - each pair's expert output is a bf16 value derived from (expert, source rank, token,
//     column) and the combined rows are compared bit for bit to an fp32 sum from +0 in ascending
//     expert id; a naïve MPI_Alltoall + MPI_Alltoallv exchange of float rows per (token, expert)
//     pair must give the same received pairs and the same sums;
//   - the byte counters match counts computed from the inputs.
// Every test is collective: all ranks make the same calls, and error cases make every rank's
// input bad (validation happens before the first exchange, so each rank throws before any
// communication; a single bad rank would leave the others waiting in the count exchange).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "common/error.h"
#include "common/numfmt.h"
#include "worker/comm/dispatch.h"
#include "worker/comm/transport.h"

namespace moerun::comm {
namespace {

// ---- the transport, made once (before MPI_Finalize, gone before it) ------------------------

class TransportEnv : public ::testing::Environment {
 public:
  void SetUp() override { transport = make_transport(TransportKind::kMpi, MPI_COMM_WORLD); }
  void TearDown() override { transport.reset(); }
  static inline std::unique_ptr<Transport> transport;
};
const auto* const kTransportEnv = ::testing::AddGlobalTestEnvironment(new TransportEnv);

Transport& transport() {
  return *TransportEnv::transport;
}

// ---- deterministic data ------------------------------------------------------------------

uint64_t mix(uint64_t h) {  // splitmix64 finaliser
  h += 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}
uint64_t hash(uint64_t a, uint64_t b, uint64_t c = 0, uint64_t d = 0, uint64_t e = 0) {
  return mix(mix(mix(mix(mix(a) ^ b) ^ c) ^ d) ^ e);
}

enum class Routing {
  kRandom,      // k distinct ids, uniformly at random
  kSame,        // every token: ids E−1, E−4, E−7, ... (descending, so slot ≠ id order)
  kRemoteOnly,  // k distinct ids, none owned by the token's own rank (when ranks > 1)
};

struct Case {
  std::string name;
  int64_t experts = 12;  // used when the rank count divides it, else experts_fallback
  int64_t experts_fallback = 12;
  int64_t hidden = 128;
  int64_t k = 1;
  std::vector<int64_t> tokens;  // per rank, cycled
  Routing routing = Routing::kRandom;
  uint64_t seed = 1;
  int64_t num_experts(int ranks) const { return experts % ranks == 0 ? experts : experts_fallback; }
};

// Test names print the case's name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

struct Inputs {
  int64_t tokens = 0, prefill_rows = 0;
  std::vector<float> x;        // [T, H]
  std::vector<int32_t> ids;    // [T, k]
  std::vector<float> weights;  // [T, k]
};

// Non-NaN e4m3 code from a hash: 0x00..0x7E or 0x80..0xFE.
uint8_t any_code(uint64_t h) {
  const auto c = static_cast<uint32_t>(h % 254);
  return static_cast<uint8_t>(c < 0x7F ? c : c + 1);
}

Inputs make_inputs(const Case& c, int rank, int ranks) {
  const int64_t E = c.num_experts(ranks), H = c.hidden, K = c.k;
  const ExpertPlacement pl{E, ranks};
  Inputs in;
  in.tokens = c.tokens[static_cast<size_t>(rank) % c.tokens.size()];
  const int64_t T = in.tokens;
  in.prefill_rows = T * (rank + 1) / (ranks + 1);  // a prompt/generated mix differing by rank
  in.x.resize(static_cast<size_t>(T * H));
  in.ids.resize(static_cast<size_t>(T * K));
  in.weights.resize(static_cast<size_t>(T * K));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = 0; b < H / 128; ++b) {
      float* xb = in.x.data() + t * H + b * 128;
      const uint64_t hb = hash(c.seed, 1, rank, t, b);
      if (hb % 11 == 0) continue;  // an all-zero block now and then (scale exponent 0)
      // Scale 2^e with e in [-20, 20] from (rank, token, block); one element of magnitude
      // 256..416 fixes the block's max, so act_quant's scale is exactly 2^e.
      const int e = static_cast<int>((rank * 13 + t * 5 + b * 3 + c.seed) % 41) - 20;
      const auto top = static_cast<int64_t>(hb % 128);
      for (int64_t i = 0; i < 128; ++i) {
        uint8_t code = any_code(hash(c.seed, 2, rank, t, b * 128 + i));
        if (i == top)
          code = static_cast<uint8_t>((0x78 + hb / 128 % 6) | ((hb >> 40) & 0x80));
        else if ((code & 0x7F) > 0x77)
          code &= 0xF7;  // keep the others below the max
        xb[i] = numfmt::e4m3_to_f32(code) * std::ldexp(1.0f, e);
      }
    }
    int32_t* ids = in.ids.data() + t * K;
    for (int64_t j = 0; j < K; ++j) {
      int32_t id = 0;
      switch (c.routing) {
        case Routing::kSame:
          id = static_cast<int32_t>(((E - 1 - 3 * j) % E + E) % E);
          break;
        case Routing::kRandom:
        case Routing::kRemoteOnly:
          for (uint64_t attempt = 0;; ++attempt) {
            id = static_cast<int32_t>(hash(c.seed, 3, rank, t * 1000 + j, attempt) % E);
            const bool fresh = std::find(ids, ids + j, id) == ids + j;
            const bool remote =
                c.routing != Routing::kRemoteOnly || ranks == 1 || pl.owner(id) != rank;
            if (fresh && remote) break;
          }
          break;
      }
      ids[j] = id;
      in.weights[t * K + j] = static_cast<float>(rank * 1000 + t) + static_cast<float>(j) / 8;
    }
  }
  return in;
}

// The bf16 output of expert e for column col of (source rank, token): magnitudes from 2^-12 to
// 2^12 depending on the expert, so the k terms of one output differ widely and their rounding
// depends on the order of the sum (checked in check_order_matters).
float pair_value(int32_t e, int src, int64_t token, int64_t col) {
  const uint64_t h = hash(77, e, src, token, col);
  const auto exponent = static_cast<uint32_t>(127 + (e * 7 + col) % 25 - 12);
  const auto bits = static_cast<uint32_t>(((h >> 8) & 1) << 31 | exponent << 23 | (h & 0x7F) << 16);
  return std::bit_cast<float>(bits);
}

// y = +0; y += out_e for t's experts e in the given id order.
void reference_sum(const int32_t* ids_in_order, int64_t k, int src, int64_t token, int64_t H,
                   float* y) {
  for (int64_t c = 0; c < H; ++c) {
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) acc += pair_value(ids_in_order[j], src, token, c);
    y[c] = acc;
  }
}

std::vector<int32_t> ascending(const int32_t* ids, int64_t k) {
  std::vector<int32_t> v(ids, ids + k);
  std::sort(v.begin(), v.end());
  return v;
}

::testing::AssertionResult bits_equal(const float* got, const float* want, int64_t n,
                                      const std::string& what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i])) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << bad << " of " << n << " values differ; first at index " << first
         << ": got " << got[first] << " (0x" << std::hex << std::bit_cast<uint32_t>(got[first])
         << "), want " << std::dec << want[first] << " (0x" << std::hex
         << std::bit_cast<uint32_t>(want[first]) << ")";
}

bool same_bits(const float* a, const float* b, int64_t n) {
  return n == 0 || std::memcmp(a, b, static_cast<size_t>(n) * sizeof(float)) == 0;
}

DispatchParams params_of(const Inputs& in, int64_t H, int64_t K) {
  DispatchParams p;
  p.tokens = in.tokens;
  p.hidden = H;
  p.k = K;
  p.prefill_rows = in.prefill_rows;
  p.x = in.x.data();
  p.expert_ids = in.ids.data();
  p.weights = in.weights.data();
  return p;
}

// Each received pair's expert output [P, H], derived from what the pair says it is.
std::vector<float> pair_outputs(const Received& rv, int64_t H) {
  std::vector<float> out(rv.pairs.size() * static_cast<size_t>(H));
  for (size_t i = 0; i < rv.pairs.size(); ++i) {
    const auto& pr = rv.pairs[i];
    for (int64_t c = 0; c < H; ++c)
      out[i * H + c] =
          pair_value(pr.expert, rv.source_rank[pr.token], rv.source_token[pr.token], c);
  }
  return out;
}

// ---- the independent expectation -----------------------------------------------------------

struct ExpectedPair {
  int src = 0;
  int64_t token = 0;
  int32_t expert = 0;
  float weight = 0;
  uint8_t prefill = 0;
  const float* x = nullptr;  // [H]
};

// What `me` must receive, in (source rank, source token, slot) order, from all ranks' inputs.
std::vector<ExpectedPair> expected_pairs(const std::vector<Inputs>& all, const ExpertPlacement& pl,
                                         int me, int64_t H, int64_t K) {
  std::vector<ExpectedPair> out;
  for (int s = 0; s < static_cast<int>(all.size()); ++s) {
    const Inputs& in = all[s];
    for (int64_t t = 0; t < in.tokens; ++t)
      for (int64_t j = 0; j < K; ++j) {
        const int32_t id = in.ids[t * K + j];
        if (pl.owner(id) != me) continue;
        out.push_back({s, t, id, in.weights[t * K + j],
                       static_cast<uint8_t>(t < in.prefill_rows ? 1 : 0), in.x.data() + t * H});
      }
  }
  return out;
}

// Compares a dispatch result with the expectation: rows, metadata, pairs, per-expert counts.
void check_received(const Received& rv, const std::vector<ExpectedPair>& want, int64_t H,
                    const ExpertPlacement& pl, int me) {
  // Expected rows: one per distinct (src, token) among the pairs, in order.
  std::vector<const ExpectedPair*> rows;
  for (const auto& e : want)
    if (rows.empty() || rows.back()->src != e.src || rows.back()->token != e.token)
      rows.push_back(&e);
  ASSERT_EQ(rv.tokens, static_cast<int64_t>(rows.size()));
  ASSERT_EQ(rv.x.size(), rows.size() * static_cast<size_t>(H));
  ASSERT_EQ(rv.source_rank.size(), rows.size());
  ASSERT_EQ(rv.source_token.size(), rows.size());
  ASSERT_EQ(rv.prefill.size(), rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    EXPECT_EQ(rv.source_rank[r], rows[r]->src) << "row " << r;
    EXPECT_EQ(rv.source_token[r], rows[r]->token) << "row " << r;
    EXPECT_EQ(rv.prefill[r], rows[r]->prefill) << "row " << r;
    EXPECT_TRUE(bits_equal(rv.x.data() + r * H, rows[r]->x, H,
                           "row " + std::to_string(r) + " (src " + std::to_string(rows[r]->src) +
                               " token " + std::to_string(rows[r]->token) + ")"));
  }
  ASSERT_EQ(rv.pairs.size(), want.size());
  size_t row = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (i > 0 && (want[i].src != want[i - 1].src || want[i].token != want[i - 1].token)) ++row;
    EXPECT_EQ(rv.pairs[i].token, static_cast<int64_t>(row)) << "pair " << i;
    EXPECT_EQ(rv.pairs[i].expert, want[i].expert) << "pair " << i;
    EXPECT_EQ(std::bit_cast<uint32_t>(rv.pairs[i].weight), std::bit_cast<uint32_t>(want[i].weight))
        << "pair " << i;
  }
  // Tokens per expert (implied by the above, checked on its own for a readable failure).
  std::vector<int64_t> got_count(static_cast<size_t>(pl.num_experts), 0), want_count = got_count;
  for (const auto& pr : rv.pairs) ++got_count[pr.expert];
  for (const auto& e : want) ++want_count[e.expert];
  EXPECT_EQ(got_count, want_count);
  for (const auto& pr : rv.pairs) EXPECT_EQ(pl.owner(pr.expert), me) << "expert " << pr.expert;
}

// ---- the naïve reference exchange ----------------------------------------------------------

// One unit per (token, expert) pair: H floats, then token, expert, weight bits, prefill (int32).
struct NaiveResult {
  std::vector<ExpectedPair> received;  // x points into `recv`
  std::vector<float> recv;             // [units, H + 4]
  std::vector<float> out;              // [T, H] combined
};

NaiveResult naive_exchange(const Inputs& in, const ExpertPlacement& pl, int64_t H, int64_t K) {
  int me = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const int64_t U = H + 4;  // floats per unit
  std::vector<int> send_units(n, 0), recv_units(n, 0);
  for (int64_t i = 0; i < in.tokens * K; ++i) ++send_units[pl.owner(in.ids[i])];
  MPI_Alltoall(send_units.data(), 1, MPI_INT, recv_units.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> sc(n), sd(n), rc(n), rd(n);
  int soff = 0, roff = 0;
  for (int r = 0; r < n; ++r) {
    sc[r] = send_units[r] * static_cast<int>(U) * 4;
    sd[r] = soff;
    soff += sc[r];
    rc[r] = recv_units[r] * static_cast<int>(U) * 4;
    rd[r] = roff;
    roff += rc[r];
  }
  std::vector<float> send(static_cast<size_t>(soff / 4));
  std::vector<int> cursor(sd);
  for (int64_t t = 0; t < in.tokens; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t id = in.ids[t * K + j];
      float* u = send.data() + cursor[pl.owner(id)] / 4;
      cursor[pl.owner(id)] += static_cast<int>(U) * 4;
      std::memcpy(u, in.x.data() + t * H, static_cast<size_t>(H) * 4);
      const int32_t meta[4] = {static_cast<int32_t>(t), id,
                               std::bit_cast<int32_t>(in.weights[t * K + j]),
                               t < in.prefill_rows ? 1 : 0};
      std::memcpy(u + H, meta, sizeof meta);
    }
  NaiveResult res;
  res.recv.resize(static_cast<size_t>(roff / 4));
  MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_BYTE, res.recv.data(), rc.data(), rd.data(),
                MPI_BYTE, MPI_COMM_WORLD);
  for (int s = 0; s < n; ++s)
    for (int i = 0; i < recv_units[s]; ++i) {
      const float* u = res.recv.data() + rd[s] / 4 + i * U;
      int32_t meta[4];
      std::memcpy(meta, u + H, sizeof meta);
      res.received.push_back(
          {s, meta[0], meta[1], std::bit_cast<float>(meta[2]), static_cast<uint8_t>(meta[3]), u});
    }
  // Outputs back, one float row per unit, in the order received.
  std::vector<float> back(res.received.size() * static_cast<size_t>(H));
  for (size_t i = 0; i < res.received.size(); ++i)
    for (int64_t c = 0; c < H; ++c)
      back[i * H + c] =
          pair_value(res.received[i].expert, res.received[i].src, res.received[i].token, c);
  std::vector<int> bc(n), bd(n), brc(n), brd(n);
  int boff = 0, broff = 0;
  for (int r = 0; r < n; ++r) {
    bc[r] = recv_units[r] * static_cast<int>(H) * 4;
    bd[r] = boff;
    boff += bc[r];
    brc[r] = send_units[r] * static_cast<int>(H) * 4;
    brd[r] = broff;
    broff += brc[r];
  }
  std::vector<float> rows(static_cast<size_t>(broff / 4));
  MPI_Alltoallv(back.data(), bc.data(), bd.data(), MPI_BYTE, rows.data(), brc.data(), brd.data(),
                MPI_BYTE, MPI_COMM_WORLD);
  // Rows arrive per owner in the (token, slot) order they were sent: sum by ascending id.
  res.out.assign(static_cast<size_t>(in.tokens * H), 0.0f);
  std::vector<int> next(brd);
  std::vector<const float*> slot_row(static_cast<size_t>(K));
  for (int64_t t = 0; t < in.tokens; ++t) {
    const int32_t* ids = in.ids.data() + t * K;
    for (int64_t j = 0; j < K; ++j) {
      const int r = pl.owner(ids[j]);
      slot_row[j] = rows.data() + next[r] / 4;
      next[r] += static_cast<int>(H) * 4;
    }
    std::vector<int64_t> order(static_cast<size_t>(K));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [ids](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (int64_t c = 0; c < H; ++c) {
      float acc = 0.0f;
      for (int64_t j : order) acc += slot_row[j][c];
      res.out[t * H + c] = acc;
    }
  }
  return res;
}

// ---- the cases -------------------------------------------------------------------------------

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

std::vector<Case> cases() {
  return {
      {"random_top6_E256_h4096", 256, 240, 4096, 6, {7, 0, 19, 3}, Routing::kRandom, 11},
      {"random_top4_E256_h4096", 256, 240, 4096, 4, {33}, Routing::kRandom, 12},
      {"top1_h128", 12, 12, 128, 1, {9, 14}, Routing::kRandom, 13},
      {"all_to_one_expert_top1_h256", 12, 12, 256, 1, {10, 4, 0, 21}, Routing::kSame, 14},
      {"same_experts_top4_h128", 12, 12, 128, 4, {6}, Routing::kSame, 15},
      {"all_ranks_empty", 12, 12, 128, 2, {0}, Routing::kRandom, 16},
      {"some_ranks_empty_top6_h256", 48, 48, 256, 6, {20, 0}, Routing::kRandom, 17},
      {"top6_E48_h256", 48, 48, 256, 6, {40, 25, 31}, Routing::kRandom, 18},
      {"all_experts_E12_h128", 12, 12, 128, 12, {5, 2}, Routing::kRandom, 19},
      {"random_top4_E256_h128_many", 256, 240, 128, 4, {300, 170, 0, 251}, Routing::kRandom, 20},
  };
}

// A case's placement and every rank's inputs (each rank regenerates all of them).
struct CaseSetup {
  explicit CaseSetup(const Case& cs)
      : c(cs), me(world_rank()), n(world_size()), pl{cs.num_experts(n), n} {
    for (int r = 0; r < n; ++r) all.push_back(make_inputs(c, r, n));
  }
  Case c;
  int me, n;
  ExpertPlacement pl;
  std::vector<Inputs> all;
};

class DispatchCase : public ::testing::TestWithParam<Case> {};

// The inputs are what the test says they are: valid act_quant outputs.
TEST_P(DispatchCase, InputsAreActQuantOutputs) {
  const Case& c = GetParam();
  const Inputs in = make_inputs(c, world_rank(), world_size());
  for (int64_t i = 0; i < in.tokens * c.hidden; i += 128) {
    std::vector<float> q(in.x.begin() + i, in.x.begin() + i + 128);
    numfmt::fake_quant_block_e4m3(q.data(), q.size());
    ASSERT_TRUE(bits_equal(q.data(), in.x.data() + i, 128, "block at " + std::to_string(i)));
  }
}

TEST_P(DispatchCase, DispatchCombineMatchExpectation) {
  const CaseSetup cs(GetParam());
  const Case& c = cs.c;
  const int me = cs.me, n = cs.n;
  const int64_t H = c.hidden, K = c.k;
  const ExpertPlacement& pl = cs.pl;
  const std::vector<Inputs>& all = cs.all;
  const Inputs& in = all[me];

  Dispatcher d(transport(), pl);
  const Received& rv = d.dispatch(params_of(in, H, K));
  const auto want = expected_pairs(all, pl, me, H, K);
  check_received(rv, want, H, pl, me);

  const std::vector<float> pair_out = pair_outputs(rv, H);
  std::vector<float> out(static_cast<size_t>(in.tokens * H), -1.0f);
  d.combine({pair_out.data(), out.data()});
  std::vector<float> ref(static_cast<size_t>(H));
  for (int64_t t = 0; t < in.tokens; ++t) {
    const auto ids = ascending(in.ids.data() + t * K, K);
    reference_sum(ids.data(), K, me, t, H, ref.data());
    EXPECT_TRUE(
        bits_equal(out.data() + t * H, ref.data(), H, "combined token " + std::to_string(t)));
  }

  // Byte counters from the inputs alone.
  const int64_t rb = Dispatcher::dispatch_record_bytes(H, K), cb = Dispatcher::combine_row_bytes(H);
  ExchangeStats st;
  for (int s = 0; s < n; ++s)
    for (int64_t t = 0; t < all[s].tokens; ++t) {
      std::vector<int> dests;
      for (int64_t j = 0; j < K; ++j) {
        const int r = pl.owner(all[s].ids[t * K + j]);
        if (s == me && r != me) {
          ++st.pairs_sent;
          st.combine_recv += cb;
        }
        if (s != me && r == me) st.combine_sent += cb;
        if (std::find(dests.begin(), dests.end(), r) == dests.end()) dests.push_back(r);
      }
      for (int r : dests) {
        if (s == me && r != me) {
          ++st.token_copies_sent;
          st.dispatch_sent += rb;
        }
        if (s != me && r == me) st.dispatch_recv += rb;
      }
    }
  const ExchangeStats& got = d.stats();
  EXPECT_EQ(got.calls, 1);
  EXPECT_EQ(got.tokens, in.tokens);
  EXPECT_EQ(got.dispatch_sent, st.dispatch_sent);
  EXPECT_EQ(got.dispatch_recv, st.dispatch_recv);
  EXPECT_EQ(got.combine_sent, st.combine_sent);
  EXPECT_EQ(got.combine_recv, st.combine_recv);
  EXPECT_EQ(got.token_copies_sent, st.token_copies_sent);
  EXPECT_EQ(got.pairs_sent, st.pairs_sent);
  EXPECT_GT(got.seconds, 0.0);
}

// The Dispatcher's local passes run on several threads over independent rows: the bytes
// received and the combined sums must not change (and still match the expectation).
TEST_P(DispatchCase, ThreadsDoNotChangeABit) {
  const CaseSetup cs(GetParam());
  const Case& c = cs.c;
  const int me = cs.me;
  const int64_t H = c.hidden, K = c.k;
  const ExpertPlacement& pl = cs.pl;
  const std::vector<Inputs>& all = cs.all;
  const Inputs& in = all[me];
  Dispatcher one(transport(), pl), three(transport(), pl);
  three.set_threads(3);
  const Received& a = one.dispatch(params_of(in, H, K));
  const Received& b = three.dispatch(params_of(in, H, K));
  check_received(b, expected_pairs(all, pl, me, H, K), H, pl, me);
  ASSERT_EQ(a.tokens, b.tokens);
  EXPECT_TRUE(same_bits(a.x.data(), b.x.data(), a.tokens * H));
  EXPECT_EQ(a.prefill, b.prefill);
  EXPECT_EQ(a.source_rank, b.source_rank);
  EXPECT_EQ(a.source_token, b.source_token);
  ASSERT_EQ(a.pairs.size(), b.pairs.size());
  const std::vector<float> pair_out = pair_outputs(b, H);
  std::vector<float> out_a(static_cast<size_t>(in.tokens * H)), out_b(out_a.size());
  one.combine({pair_out.data(), out_a.data()});
  three.combine({pair_out.data(), out_b.data()});
  EXPECT_TRUE(same_bits(out_a.data(), out_b.data(), in.tokens * H));
}

// A wrong order of the sum would be caught: with these values, summing t's outputs in slot
// order or in descending id order changes bits. Example of the effect: (2^12 + −2^12) + 2^-12 =
// 2^-12, but (2^12 + 2^-12) + −2^12 = 0 in fp32 (2^-12 is below half an ulp of 2^12); the pair
// values span 2^-12 .. 2^12 by expert, so such cancellations happen in most rows for k ≥ 3.
TEST_P(DispatchCase, OrderOfTheSumMatters) {
  const Case& c = GetParam();
  if (c.k < 3) GTEST_SKIP() << "two terms commute exactly";
  const Inputs in = make_inputs(c, world_rank(), world_size());
  if (in.tokens == 0) GTEST_SKIP() << "no tokens on this rank";
  int64_t differ_desc = 0, differ_slot = 0;
  std::vector<float> asc(static_cast<size_t>(c.hidden)), other(asc.size());
  for (int64_t t = 0; t < in.tokens; ++t) {
    const int32_t* slot = in.ids.data() + t * c.k;
    auto ids = ascending(slot, c.k);
    reference_sum(ids.data(), c.k, world_rank(), t, c.hidden, asc.data());
    std::reverse(ids.begin(), ids.end());
    reference_sum(ids.data(), c.k, world_rank(), t, c.hidden, other.data());
    differ_desc += same_bits(asc.data(), other.data(), c.hidden) ? 0 : 1;
    if (!std::is_sorted(slot, slot + c.k)) {
      reference_sum(slot, c.k, world_rank(), t, c.hidden, other.data());
      differ_slot += same_bits(asc.data(), other.data(), c.hidden) ? 0 : 1;
    }
  }
  EXPECT_GT(differ_desc, 0);
  if (c.routing == Routing::kRandom) {
    EXPECT_GT(differ_slot, 0);
  }
}

// The same exchange through plain MPI_Alltoall + MPI_Alltoallv of float rows per pair.
TEST_P(DispatchCase, EqualsNaiveMpiAlltoallv) {
  const Case& c = GetParam();
  const int me = world_rank(), n = world_size();
  const int64_t E = c.num_experts(n), H = c.hidden, K = c.k;
  const ExpertPlacement pl{E, n};
  const Inputs in = make_inputs(c, me, n);

  Dispatcher d(transport(), pl);
  const Received& rv = d.dispatch(params_of(in, H, K));
  const NaiveResult naive = naive_exchange(in, pl, H, K);
  check_received(rv, naive.received, H, pl, me);
  const std::vector<float> pair_out = pair_outputs(rv, H);
  std::vector<float> out(static_cast<size_t>(in.tokens * H));
  d.combine({pair_out.data(), out.data()});
  EXPECT_TRUE(bits_equal(out.data(), naive.out.data(), in.tokens * H, "combined vs naive"));
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.name;
}
INSTANTIATE_TEST_SUITE_P(Cases, DispatchCase, ::testing::ValuesIn(cases()), case_name);

// One Dispatcher through every case, twice: buffers grow and shrink between calls without
// stale data leaking into a later result.
TEST(Dispatch, ReusedAcrossShapes) {
  const int me = world_rank(), n = world_size();
  for (int64_t E : {int64_t{48}, int64_t{12}}) {
    const ExpertPlacement pl{E, n};
    Dispatcher d(transport(), pl);
    for (int round = 0; round < 2; ++round)
      for (Case c : cases()) {
        if (c.num_experts(n) != E) continue;
        c.seed += static_cast<uint64_t>(round) * 100;
        std::vector<Inputs> all;
        for (int r = 0; r < n; ++r) all.push_back(make_inputs(c, r, n));
        const Received& rv = d.dispatch(params_of(all[me], c.hidden, c.k));
        check_received(rv, expected_pairs(all, pl, me, c.hidden, c.k), c.hidden, pl, me);
        const std::vector<float> pair_out = pair_outputs(rv, c.hidden);
        std::vector<float> out(static_cast<size_t>(all[me].tokens * c.hidden));
        d.combine({pair_out.data(), out.data()});
        std::vector<float> ref(static_cast<size_t>(c.hidden));
        for (int64_t t = 0; t < all[me].tokens; ++t) {
          const auto ids = ascending(all[me].ids.data() + t * c.k, c.k);
          reference_sum(ids.data(), c.k, me, t, c.hidden, ref.data());
          EXPECT_TRUE(bits_equal(out.data() + t * c.hidden, ref.data(), c.hidden,
                                 c.name + " round " + std::to_string(round)));
        }
      }
    const std::vector<Case> all_cases = cases();
    EXPECT_EQ(d.stats().calls,
              2 * std::count_if(all_cases.begin(), all_cases.end(),
                                [&](const Case& c) { return c.num_experts(n) == E; }));
  }
}

// Top-4 as the 4Expert release makes it (the first 4 columns of the top-6 ids): combine moves
// exactly 2/3 of the bytes when no token uses an expert of its own rank (every pair crosses the
// wire; with random routing the self share differs between the two), and dispatch never more
// than top-6 (same or fewer destinations, smaller records).
TEST(Dispatch, Top4ByteAccounting) {
  const int me = world_rank(), n = world_size();
  for (Routing routing : {Routing::kRemoteOnly, Routing::kRandom}) {
    const Case c6{"top6", 256, 240, 4096, 6, {40, 17, 64, 0}, routing, 21};
    const int64_t E = c6.num_experts(n), H = c6.hidden;
    const Inputs in6 = make_inputs(c6, me, n);
    Inputs in4 = in6;
    for (int64_t t = 0; t < in6.tokens; ++t)
      for (int64_t j = 0; j < 4; ++j) {
        in4.ids[t * 4 + j] = in6.ids[t * 6 + j];
        in4.weights[t * 4 + j] = in6.weights[t * 6 + j];
      }
    in4.ids.resize(static_cast<size_t>(in6.tokens * 4));
    in4.weights.resize(in4.ids.size());
    ExchangeStats s4, s6;
    for (int64_t K : {int64_t{4}, int64_t{6}}) {
      Dispatcher d(transport(), ExpertPlacement{E, n});
      const Inputs& in = K == 4 ? in4 : in6;
      const Received& rv = d.dispatch(params_of(in, H, K));
      const std::vector<float> pair_out = pair_outputs(rv, H);
      std::vector<float> out(static_cast<size_t>(in.tokens * H));
      d.combine({pair_out.data(), out.data()});
      (K == 4 ? s4 : s6) = d.stats();
    }
    if (routing == Routing::kRemoteOnly) {
      // What comes back to a rank is its own pairs: exact per rank. What a rank sends back
      // depends on the others' routing: exact summed over the group.
      EXPECT_EQ(s4.combine_recv * 3, s6.combine_recv * 2);
      int64_t sent[2] = {s4.combine_sent, s6.combine_sent}, total[2] = {0, 0};
      MPI_Allreduce(sent, total, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      EXPECT_EQ(total[0] * 3, total[1] * 2);
      EXPECT_EQ(s6.pairs_sent, n > 1 ? in6.tokens * 6 : 0);
    }
    EXPECT_LE(s4.dispatch_sent, s6.dispatch_sent);
    EXPECT_LE(s4.token_copies_sent, s6.token_copies_sent);
    EXPECT_LE(s4.combine_sent, s6.combine_sent);
  }
  // The record layout of dispatch.cc: codes, scales (to 4 bytes), ids, weights, token,
  // prefill flag, padded to 16.
  EXPECT_EQ(Dispatcher::dispatch_record_bytes(4096, 4), 4176);  // 4128 + 32 + 5 → 4176
  EXPECT_EQ(Dispatcher::dispatch_record_bytes(4096, 6), 4192);  // 4128 + 48 + 5 → 4192
  EXPECT_EQ(Dispatcher::dispatch_record_bytes(128, 1), 160);    // 132 + 8 + 5 → 160
  EXPECT_EQ(Dispatcher::combine_row_bytes(4096), 8192);
}

// NaN elements are valid act_quant outputs (a NaN input quantizes to a NaN code and comes back
// as e4m3_to_f32(0x7F)·2^e) and cross bit for bit; ±0 keep their sign.
TEST(Dispatch, NanAndSignedZeroCrossExactly) {
  const int me = world_rank(), n = world_size();
  const ExpertPlacement pl{12, n};
  Case c{"nan", 12, 12, 256, 2, {3}, Routing::kRandom, 31};
  std::vector<Inputs> all;
  for (int r = 0; r < n; ++r) {
    all.push_back(make_inputs(c, r, n));
    Inputs& in = all.back();
    for (int64_t t = 0; t < in.tokens; ++t) {
      float* x = in.x.data() + t * c.hidden;
      // act_quant turns a NaN into e4m3 code 0xFF/0x7F and writes back bf16(NaN · 2^e), which
      // is e4m3_to_f32(code) itself (a quiet NaN keeps its bits through both). A zero may land
      // on the block's largest element: the block then has a smaller scale, still exact.
      x[128 + (t + r) % 128] = numfmt::e4m3_to_f32(0xFF);
      x[128 + (t + r + 1) % 128] = -0.0f;
      x[(t + r) % 128] = +0.0f;
    }
  }
  Dispatcher d(transport(), pl);
  const Received& rv = d.dispatch(params_of(all[me], c.hidden, c.k));
  check_received(rv, expected_pairs(all, pl, me, c.hidden, c.k), c.hidden, pl, me);
  const std::vector<float> pair_out = pair_outputs(rv, c.hidden);
  std::vector<float> out(static_cast<size_t>(all[me].tokens * c.hidden));
  d.combine({pair_out.data(), out.data()});
}

// ---- errors: every rank's input is bad, so every rank throws before communicating ---------

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DispatchErrors, NotActQuantizedThrowsBeforeCommunicating) {
  const int me = world_rank(), n = world_size();
  const ExpertPlacement pl{12, n};
  const Case c{"bad", 12, 12, 256, 3, {4}, Routing::kRandom, 41};
  Dispatcher d(transport(), pl);
  Inputs in = make_inputs(c, me, n);
  // 0.1 is no e4m3 value times the scale its block needs.
  const Inputs good = in;
  in.x[2 * c.hidden + 128 + 5] = 0.1f;
  std::string msg = error_of([&] { d.dispatch(params_of(in, c.hidden, c.k)); });
  EXPECT_NE(msg.find("dispatch: activation row 2 block 1 is not act_quant'ed (value 0.1"),
            std::string::npos)
      << msg;
  // A value with one mantissa bit too many for e4m3 at its block's scale.
  in = good;
  const float v = in.x[3 * c.hidden + 7];
  in.x[3 * c.hidden + 7] = v == 0.0f ? 1e-30f : std::nextafter(v, 2 * v);
  msg = error_of([&] { d.dispatch(params_of(in, c.hidden, c.k)); });
  EXPECT_NE(msg.find("activation row 3 block 0 is not act_quant'ed"), std::string::npos) << msg;
  // Infinity.
  in = good;
  in.x[0] = INFINITY;
  msg = error_of([&] { d.dispatch(params_of(in, c.hidden, c.k)); });
  EXPECT_NE(msg.find("activation row 0 block 0 is not act_quant'ed (value inf"), std::string::npos)
      << msg;
  // Two bad rows with the encode pass on 3 threads (48 tokens × 4096 values is past the
  // parallel threshold): the first one by token is reported.
  {
    const Case big{"bad_big", 12, 12, 4096, 3, {48}, Routing::kRandom, 42};
    Dispatcher threaded(transport(), pl);
    threaded.set_threads(3);
    Inputs wide = make_inputs(big, me, n);
    wide.x[40 * big.hidden + 9] = 0.1f;
    wide.x[7 * big.hidden + 300] = 0.1f;
    msg = error_of([&] { threaded.dispatch(params_of(wide, big.hidden, big.k)); });
    EXPECT_NE(msg.find("activation row 7 block 2 is not act_quant'ed"), std::string::npos) << msg;
  }
  EXPECT_NE(error_of([&] {
              d.combine({nullptr, nullptr});
            }).find("no dispatch"),
            std::string::npos);
  // Nothing was exchanged: the next collective call pairs up on every rank.
  std::vector<Inputs> all;
  for (int r = 0; r < n; ++r) all.push_back(make_inputs(c, r, n));
  const Received& rv = d.dispatch(params_of(good, c.hidden, c.k));
  check_received(rv, expected_pairs(all, pl, me, c.hidden, c.k), c.hidden, pl, me);
  EXPECT_EQ(d.stats().calls, 1);
}

TEST(DispatchErrors, BadParametersNameTheValue) {
  const int me = world_rank(), n = world_size();
  const ExpertPlacement pl{12, n};
  const Case c{"params", 12, 12, 256, 2, {3}, Routing::kRandom, 42};
  Dispatcher d(transport(), pl);
  const Inputs good = make_inputs(c, me, n);
  auto expect_error = [&](DispatchParams p, const std::string& needle) {
    const std::string msg = error_of([&] { d.dispatch(p); });
    EXPECT_NE(msg.find(needle), std::string::npos) << "want \"" << needle << "\", got: " << msg;
  };
  DispatchParams p = params_of(good, c.hidden, c.k);
  p.hidden = 200;
  expect_error(p, "hidden 200 must be a positive multiple of 128");
  p = params_of(good, c.hidden, c.k);
  p.k = 13;
  expect_error(p, "k 13 must be in 1..12");
  p.k = 0;
  expect_error(p, "k 0 must be in 1..12");
  p = params_of(good, c.hidden, c.k);
  p.prefill_rows = 4;
  expect_error(p, "prefill_rows 4 must be in 0..3");
  p = params_of(good, c.hidden, c.k);
  p.x = nullptr;
  expect_error(p, "x is null with 3 tokens");
  Inputs in = good;
  in.ids[1 * 2 + 1] = 12;
  expect_error(params_of(in, c.hidden, c.k), "token 1 slot 1: expert id 12 is not in [0, 12)");
  in = good;
  in.ids[2 * 2 + 1] = in.ids[2 * 2];
  expect_error(params_of(in, c.hidden, c.k),
               "token 2: expert id " + std::to_string(in.ids[4]) + " appears twice");
  // Placement must span the transport's group.
  const std::string msg = error_of([&] {
    Dispatcher bad(transport(), ExpertPlacement{12 * (n + 1), n + 1});
  });
  EXPECT_NE(msg.find("placement spans"), std::string::npos) << msg;
}

// Every rank receives pairs (its tokens go to one expert on every rank), every rank's outputs
// hold a non-bf16 value, so every rank throws before the combine's exchange; a correct combine
// of the same dispatch then still works.
TEST(DispatchErrors, NonBf16CombineValueThrowsBeforeCommunicating) {
  const int me = world_rank(), n = world_size();
  const int64_t E = 12, H = 128, K = n;
  const ExpertPlacement pl{E, n};
  Case c{"bf16", E, E, H, K, {2}, Routing::kRandom, 43};
  Inputs in = make_inputs(c, me, n);
  for (int64_t t = 0; t < in.tokens; ++t)
    for (int64_t j = 0; j < K; ++j)
      in.ids[t * K + j] = static_cast<int32_t>(pl.begin(static_cast<int>((j + t) % n)) + t);
  Dispatcher d(transport(), pl);
  const Received& rv = d.dispatch(params_of(in, H, K));
  ASSERT_EQ(rv.pairs.size(), static_cast<size_t>(2 * n));  // 2 tokens from each rank
  std::vector<float> pair_out = pair_outputs(rv, H);
  const std::vector<float> good = pair_out;
  pair_out[1 * H + 9] = 1.0f + 0x1p-10f;  // needs 10 mantissa bits
  std::vector<float> out(static_cast<size_t>(in.tokens * H));
  const std::string msg = error_of([&] { d.combine({pair_out.data(), out.data()}); });
  EXPECT_NE(msg.find("combine: pair 1 (expert "), std::string::npos) << msg;
  EXPECT_NE(msg.find("output column 9 is not a bf16 value"), std::string::npos) << msg;
  d.combine({good.data(), out.data()});
  std::vector<float> ref(static_cast<size_t>(H));
  for (int64_t t = 0; t < in.tokens; ++t) {
    const auto ids = ascending(in.ids.data() + t * K, K);
    reference_sum(ids.data(), K, me, t, H, ref.data());
    EXPECT_TRUE(bits_equal(out.data() + t * H, ref.data(), H, "token " + std::to_string(t)));
  }
}

}  // namespace
}  // namespace moerun::comm

// Expert-parallel dispatch + combine (worker/comm/dispatch.h, mpi transport) against the plain
// MPI_Alltoallv of exactly the same bytes, measured in the same run: for each rank pair the
// baseline sends the dispatch records' bytes and then the combine rows' bytes (two
// MPI_Alltoallv calls, self included, as the Dispatcher's transport moves them), without the
// encode / decode, the count exchange or the ordered sum. The same two exchanges also run
// through Transport::alltoallv (the transport's own cost apart from the Dispatcher's), and
// "(local)" is the time a dispatch + combine spends outside the transport's waits (encoding,
// decoding, bf16 conversion, the sum). DeepSeek-V4-Flash's shape: hidden 4096, 256 routed experts
// split evenly over the ranks, top-4 (the 4Expert release: the first 4 columns of the top-6 ids)
// and top-6, 1 / 16 / 128 / 512 tokens per rank, seeded random routing. Run with mpirun (4 ranks
// for the figures in bench/README.md); not run by ctest.
//
// Before timing, one dispatch + combine round is validated on every rank: the received rows are
// the senders' activations bit for bit (each rank regenerates every rank's inputs from the seed),
// the combined rows equal Σ over ascending expert id, in fp32 from +0, of bf16(x · weight) (the
// pair output used here), and the baseline's per-peer bytes equal the Dispatcher's counters.
// Times are per dispatch + combine (resp. both exchanges), the slowest rank of each iteration,
// median over the iterations after a warm-up (half as many iterations at 512 tokens).
// Reported as nccl-tests reports alltoall: algbw = bytes a rank sends (self included; mean over
// ranks) / time, busbw = algbw · (n − 1)/n. Bytes per token are wire bytes (self excluded) per
// dispatched token, for one MoE layer.
#include <mpi.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/numfmt.h"
#include "worker/comm/dispatch.h"
#include "worker/comm/transport.h"

namespace {

using moerun::comm::Dispatcher;
using moerun::comm::ExpertPlacement;

constexpr int64_t kExperts = 256;
constexpr int64_t kHidden = 4096;
constexpr int64_t kMaxK = 6;  // ids are drawn for top-6; top-4 keeps their first 4 columns
constexpr uint64_t kSeed = 20250607;

uint64_t mix(uint64_t h) {  // splitmix64 finaliser
  h += 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}
uint64_t hash(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  return mix(mix(mix(mix(a) ^ b) ^ c) ^ d);
}
// Uniform in [-1, 1) from a hash.
float unit(uint64_t h) {
  return static_cast<float>(h >> 40) * 0x1p-23f - 1.0f;
}

struct Inputs {
  int64_t tokens = 0;
  std::vector<float> x;        // [T, H], act_quant'ed (fake_quant_block_e4m3 per 1×128 block)
  std::vector<int32_t> ids;    // [T, k]
  std::vector<float> weights;  // [T, k]
};

Inputs make_inputs(int rank, int64_t T, int64_t k) {
  Inputs in;
  in.tokens = T;
  in.x.resize(static_cast<size_t>(T * kHidden));
  in.ids.resize(static_cast<size_t>(T * k));
  in.weights.resize(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    float* x = in.x.data() + t * kHidden;
    // Activations of varying size per block (as after an RMSNorm and a projection).
    for (int64_t c = 0; c < kHidden; ++c) {
      const float block_size =
          std::ldexp(1.0f, static_cast<int>(hash(kSeed, rank, t, c / 128) % 9) - 4);
      x[c] = unit(hash(kSeed + 1, rank, t, c)) * block_size;
    }
    for (int64_t b = 0; b < kHidden / 128; ++b)
      moerun::numfmt::fake_quant_block_e4m3(x + b * 128, 128);
    int32_t ids6[kMaxK];
    for (int64_t j = 0; j < kMaxK; ++j) {
      for (uint64_t attempt = 0;; ++attempt) {
        ids6[j] = static_cast<int32_t>(hash(kSeed + 2, rank, t * kMaxK + j, attempt) % kExperts);
        if (std::find(ids6, ids6 + j, ids6[j]) == ids6 + j) break;
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      in.ids[t * k + j] = ids6[j];
      in.weights[t * k + j] = (unit(hash(kSeed + 3, rank, t, j)) + 1.0f) / 2.0f;
    }
  }
  return in;
}

moerun::comm::DispatchParams params_of(const Inputs& in, int64_t k) {
  moerun::comm::DispatchParams p;
  p.tokens = in.tokens;
  p.hidden = kHidden;
  p.k = k;
  p.prefill_rows = 0;
  p.x = in.x.data();
  p.expert_ids = in.ids.data();
  p.weights = in.weights.data();
  return p;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Per-iteration wall time of f() on the slowest rank, after `warmup` untimed calls.
template <typename F>
double median_seconds(int warmup, int iters, F&& f) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    f();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(dt);
  }
  return median(times);
}

// Per-peer byte counts of one direction and their displacements (MPI_Alltoallv's int form).
struct Counts {
  std::vector<int> bytes, displ;
  int total = 0;
  explicit Counts(int n) : bytes(n, 0), displ(n, 0) {}
  void finish() {
    total = 0;
    for (size_t r = 0; r < bytes.size(); ++r) {
      displ[r] = total;
      total += bytes[r];
    }
  }
};

struct Result {
  int64_t k = 0, tokens = 0;
  double ours_s = 0, mpi_s = 0, transport_s = 0;
  double local_s = 0;             // outside transport waits, per call, slowest rank (mean)
  double bytes_per_rank = 0;      // sent per rank, self included, mean over ranks
  double dispatch_per_token = 0;  // wire bytes (self excluded) per dispatched token
  double combine_per_token = 0;
};

// Validates one round, then times dispatch + combine and the baseline. Collective.
Result run_case(moerun::comm::Transport& transport, int64_t k, int64_t T, int warmup, int iters,
                int threads) {
  const int me = transport.rank(), n = transport.size();
  const ExpertPlacement pl{kExperts, n};
  std::vector<Inputs> all;
  for (int r = 0; r < n; ++r) all.push_back(make_inputs(r, T, k));
  const Inputs& in = all[me];

  // ---- validate --------------------------------------------------------------------------
  Dispatcher d(transport, pl);
  d.set_threads(threads);
  const moerun::comm::Received& rv = d.dispatch(params_of(in, k));
  int64_t row = 0;
  for (int s = 0; s < n; ++s)
    for (int64_t t = 0; t < T; ++t) {
      bool mine = false;
      for (int64_t j = 0; j < k; ++j) mine |= pl.owner(all[s].ids[t * k + j]) == me;
      if (!mine) continue;
      MOERUN_CHECK(row < rv.tokens && rv.source_rank[row] == s && rv.source_token[row] == t,
                   "bench_dispatch: rank {} row {} is not (source {}, token {})", me, row, s, t);
      MOERUN_CHECK(std::memcmp(rv.x.data() + row * kHidden, all[s].x.data() + t * kHidden,
                               kHidden * sizeof(float)) == 0,
                   "bench_dispatch: rank {} row {} (source {} token {}) differs from the sender's",
                   me, row, s, t);
      ++row;
    }
  MOERUN_CHECK(row == rv.tokens, "bench_dispatch: rank {} received {} rows, expected {}", me,
               rv.tokens, row);
  // Pair outputs bf16(x · weight): computed once, reused by every timed combine.
  std::vector<float> pair_out(rv.pairs.size() * kHidden);
  for (size_t i = 0; i < rv.pairs.size(); ++i) {
    const float* x = rv.x.data() + rv.pairs[i].token * kHidden;
    for (int64_t c = 0; c < kHidden; ++c)
      pair_out[i * kHidden + c] = moerun::numfmt::round_to_bf16(x[c] * rv.pairs[i].weight);
  }
  std::vector<float> out(static_cast<size_t>(T * kHidden));
  d.combine({pair_out.data(), out.data()});
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> order(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) order[j] = j;
    const int32_t* ids = in.ids.data() + t * k;
    std::sort(order.begin(), order.end(), [ids](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (int64_t c = 0; c < kHidden; ++c) {
      float y = 0.0f;
      for (int64_t j : order)
        y += moerun::numfmt::round_to_bf16(in.x[t * kHidden + c] * in.weights[t * k + j]);
      MOERUN_CHECK(std::bit_cast<uint32_t>(y) == std::bit_cast<uint32_t>(out[t * kHidden + c]),
                   "bench_dispatch: rank {} token {} column {}: combined {} but expected {}", me, t,
                   c, out[t * kHidden + c], y);
    }
  }

  // ---- the baseline's per-peer bytes, from every rank's routing ---------------------------
  const int64_t rb = Dispatcher::dispatch_record_bytes(kHidden, k);
  const int64_t cb = Dispatcher::combine_row_bytes(kHidden);
  Counts ds(n), dr(n), cs(n), cr(n);  // dispatch send / recv, combine send / recv
  for (int s = 0; s < n; ++s)
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int> dests;
      for (int64_t j = 0; j < k; ++j) {
        const int r = pl.owner(all[s].ids[t * k + j]);
        if (s == me) cr.bytes[r] += static_cast<int>(cb);
        if (r == me) cs.bytes[s] += static_cast<int>(cb);
        if (std::find(dests.begin(), dests.end(), r) == dests.end()) dests.push_back(r);
      }
      for (int r : dests) {
        if (s == me) ds.bytes[r] += static_cast<int>(rb);
        if (r == me) dr.bytes[s] += static_cast<int>(rb);
      }
    }
  for (Counts* c : {&ds, &dr, &cs, &cr}) c->finish();
  int64_t wire_d = 0, wire_c = 0;  // self excluded
  for (int r = 0; r < n; ++r)
    if (r != me) {
      wire_d += ds.bytes[r];
      wire_c += cs.bytes[r];
    }
  MOERUN_CHECK(
      wire_d == d.stats().dispatch_sent && wire_c == d.stats().combine_sent,
      "bench_dispatch: rank {} baseline bytes {} + {} differ from the dispatcher's {} + {}", me,
      wire_d, wire_c, d.stats().dispatch_sent, d.stats().combine_sent);

  // ---- time ------------------------------------------------------------------------------
  const auto round = [&] {
    d.dispatch(params_of(in, k));
    d.combine({pair_out.data(), out.data()});
  };
  for (int i = 0; i < warmup; ++i) round();
  d.reset_stats();
  const double wait0 = transport.wait_seconds();
  const double ours = median_seconds(0, iters, round);
  // Time inside dispatch + combine but outside the transport's waits: encoding, decoding, the
  // bf16 conversion, the sum (and, with more ranks than cores, time spent descheduled).
  double local = (d.stats().seconds - (transport.wait_seconds() - wait0)) / iters;
  MPI_Allreduce(MPI_IN_PLACE, &local, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  std::vector<uint8_t> dsend(static_cast<size_t>(std::max(ds.total, 1))),
      drecv(static_cast<size_t>(std::max(dr.total, 1))),
      csend(static_cast<size_t>(std::max(cs.total, 1))),
      crecv(static_cast<size_t>(std::max(cr.total, 1)));
  const double base = median_seconds(warmup, iters, [&] {
    MPI_Alltoallv(dsend.data(), ds.bytes.data(), ds.displ.data(), MPI_BYTE, drecv.data(),
                  dr.bytes.data(), dr.displ.data(), MPI_BYTE, MPI_COMM_WORLD);
    MPI_Alltoallv(csend.data(), cs.bytes.data(), cs.displ.data(), MPI_BYTE, crecv.data(),
                  cr.bytes.data(), cr.displ.data(), MPI_BYTE, MPI_COMM_WORLD);
  });

  // The same two exchanges through the transport the Dispatcher uses (its own overhead apart).
  std::vector<int64_t> sb[4], so[4];
  for (int i = 0; i < 4; ++i) {
    const Counts& c = i == 0 ? ds : i == 1 ? dr : i == 2 ? cs : cr;
    sb[i].assign(c.bytes.begin(), c.bytes.end());
    so[i].assign(c.displ.begin(), c.displ.end());
  }
  const double via_transport = median_seconds(warmup, iters, [&] {
    transport.alltoallv(dsend.data(), sb[0], so[0], drecv.data(), sb[1], so[1]);
    transport.alltoallv(csend.data(), sb[2], so[2], crecv.data(), sb[3], so[3]);
  });

  Result res;
  res.k = k;
  res.transport_s = via_transport;
  res.local_s = local;
  res.tokens = T;
  res.ours_s = ours;
  res.mpi_s = base;
  double sums[3] = {static_cast<double>(ds.total + cs.total), static_cast<double>(wire_d),
                    static_cast<double>(wire_c)};
  MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  res.bytes_per_rank = sums[0] / n;
  res.dispatch_per_token = T > 0 ? sums[1] / static_cast<double>(T * n) : 0;
  res.combine_per_token = T > 0 ? sums[2] / static_cast<double>(T * n) : 0;
  return res;
}

int run(int argc, char** argv) {
  int iters = 30, warmup = 5, threads = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      iters = std::stoi(argv[++i]);
    } else if (a == "--warmup" && i + 1 < argc) {
      warmup = std::stoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::stoi(argv[++i]);
    } else {
      MOERUN_THROW(
          "bench_dispatch: unknown argument '{}' (allowed: --iters N, --warmup N, --threads N)", a);
    }
  }
  MOERUN_CHECK(iters >= 1 && warmup >= 0, "bench_dispatch: --iters {} must be ≥ 1, --warmup {} ≥ 0",
               iters, warmup);
  const auto transport =
      moerun::comm::make_transport(moerun::comm::TransportKind::kMpi, MPI_COMM_WORLD);
  const int me = transport->rank(), n = transport->size();
  MOERUN_CHECK(kExperts % n == 0, "bench_dispatch: {} ranks must divide the {} experts", n,
               kExperts);
  if (me == 0)
    std::printf(
        "bench_dispatch: %d ranks, hidden %lld, %lld experts (%lld per rank), %d thread(s) per "
        "rank for the Dispatcher's passes, median of %d iterations after %d warm-up; times are "
        "the slowest rank's\n"
        "dispatch record %lld B (top-4) / %lld B (top-6), combine row %lld B\n\n",
        n, static_cast<long long>(kHidden), static_cast<long long>(kExperts),
        static_cast<long long>(kExperts / n), threads, iters, warmup,
        static_cast<long long>(Dispatcher::dispatch_record_bytes(kHidden, 4)),
        static_cast<long long>(Dispatcher::dispatch_record_bytes(kHidden, 6)),
        static_cast<long long>(Dispatcher::combine_row_bytes(kHidden)));
  std::map<std::pair<int64_t, int64_t>, Result> results;
  for (int64_t k : {int64_t{4}, int64_t{6}}) {
    if (me == 0)
      std::printf(
          "top-%lld  tokens/rank  dispatch+combine   (local)  MPI_Alltoallv  ratio  transport"
          "  ratio  algbw GB/s  busbw GB/s  dispatch B/token  combine B/token\n",
          static_cast<long long>(k));
    for (int64_t T : {int64_t{1}, int64_t{16}, int64_t{128}, int64_t{512}}) {
      const Result r =
          run_case(*transport, k, T, warmup, T >= 512 ? std::max(iters / 2, 1) : iters, threads);
      results[{k, T}] = r;
      if (me == 0) {
        const double algbw = r.bytes_per_rank / r.ours_s / 1e9;
        std::printf(
            "        %11lld  %13.1f us  %7.0f us  %10.1f us  %5.2f  %6.1f us  %5.2f  %10.2f  %10.2f"
            "  %16.0f  %15.0f\n",
            static_cast<long long>(T), r.ours_s * 1e6, r.local_s * 1e6, r.mpi_s * 1e6,
            r.ours_s / r.mpi_s, r.transport_s * 1e6, r.ours_s / r.transport_s, algbw,
            algbw * (n - 1) / n, r.dispatch_per_token, r.combine_per_token);
        std::fflush(stdout);
      }
    }
    if (me == 0) std::printf("\n");
  }
  if (me == 0) {
    std::printf("top-4 / top-6 wire bytes per token (dispatch + combine):");
    for (int64_t T : {int64_t{1}, int64_t{16}, int64_t{128}, int64_t{512}}) {
      const Result& a = results[{4, T}];
      const Result& b = results[{6, T}];
      std::printf("  T=%lld %.3f", static_cast<long long>(T),
                  (a.dispatch_per_token + a.combine_per_token) /
                      (b.dispatch_per_token + b.combine_per_token));
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}

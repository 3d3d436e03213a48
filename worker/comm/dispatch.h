// Expert-parallel dispatch and combine for one MoE layer among the ep ranks of a pipeline
// stage (architecture §2). Each rank brings its own tokens (its column's sequences: data-
// parallel attention) with their top-k expert ids and routing weights.
//
// dispatch: counts are exchanged first; then each token goes once to every rank that owns at
// least one of its experts, as FP8 e4m3 bytes with its 1×128 power-of-two scales (the exact
// form the expert GEMM consumes: the model quantizes activations so before every expert, so
// the receiver reconstructs the sender's values bit for bit), with the ids and weights of the
// experts that rank owns, and whether it is a prompt row (kernels::RowPhase). Ranks with no
// tokens take part all the same.
// combine: each received (token, expert) output goes back in bf16 (the rounding the model
// applies to an expert's output, so nothing is lost) and the source sums each token's k
// outputs in fp32 in ascending expert-id order, starting from +0 — the reference's order, so
// no ep (or placement) changes a bit. The caller then adds the shared expert.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "worker/comm/transport.h"

namespace moerun::comm {

// Which rank owns which routed expert: contiguous ranges, rank r owning
// [r·E/ranks, (r+1)·E/ranks). `ranks` must divide `num_experts`.
struct ExpertPlacement {
  int64_t num_experts = 0;
  int ranks = 1;
  int64_t per_rank() const { return num_experts / ranks; }
  int owner(int64_t expert) const { return static_cast<int>(expert / per_rank()); }
  int64_t begin(int rank) const { return rank * per_rank(); }
  int64_t end(int rank) const { return (rank + 1) * per_rank(); }
};

struct DispatchParams {
  int64_t tokens = 0;        // T: this rank's tokens (0 allowed)
  int64_t hidden = 0;        // H: a multiple of 128
  int64_t k = 0;             // experts per token (1..E)
  int64_t prefill_rows = 0;  // tokens [0, prefill_rows) are prompt rows, the rest generated
  // [T, H] activations already quantized by act_quant: every 1×128 block is e4m3 values times
  // one power-of-two scale (Kernels::quantize_e4m3). Anything else is an error (it could not
  // cross the wire losslessly).
  const float* x = nullptr;
  const int32_t* expert_ids = nullptr;  // [T, k] distinct ids in [0, E) per token
  const float* weights = nullptr;       // [T, k] routing weights
};

// What this rank received: the tokens needing at least one of its experts, in the order
// (source rank, source token).
struct Received {
  int64_t tokens = 0;                 // R
  std::vector<float> x;               // [R, H] the senders' values, bit for bit
  std::vector<uint8_t> prefill;       // [R] 1: prompt row
  std::vector<int32_t> source_rank;   // [R] group rank of the sender
  std::vector<int32_t> source_token;  // [R] token index on the sender
  // The (token, expert) pairs this rank computes: for each received token, its experts owned
  // here in the sender's slot order.
  struct Pair {
    int64_t token = 0;   // row in x
    int32_t expert = 0;  // global expert id (owned by this rank)
    float weight = 0.0f;
  };
  std::vector<Pair> pairs;  // P
};

struct CombineParams {
  // [P, H]: each received pair's expert output (values representable in bf16 — anything else
  // is an error), in Received::pairs order.
  const float* pair_out = nullptr;
  // [T, H] on the source: out[t] = Σ over t's k experts, ascending id, in fp32 from +0.
  float* out = nullptr;
};

// Bytes this rank put on the wire (self-traffic excluded) and received, per exchange.
struct ExchangeStats {
  int64_t calls = 0;
  int64_t tokens = 0;  // tokens dispatched from this rank (Σ T)
  int64_t dispatch_sent = 0, dispatch_recv = 0;
  int64_t combine_sent = 0, combine_recv = 0;
  int64_t token_copies_sent = 0;  // (token, destination rank) pairs, self excluded
  int64_t pairs_sent = 0;         // (token, expert) pairs routed to other ranks
  double seconds = 0.0;           // wall time inside dispatch + combine
};

class Dispatcher {
 public:
  // `transport` spans the ep ranks of one stage, group rank = column.
  Dispatcher(Transport& transport, ExpertPlacement placement);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Collective over the group. The result stays valid until the next dispatch.
  const Received& dispatch(const DispatchParams& p);
  // Collective over the group; pairs the previous dispatch.
  void combine(const CombineParams& p);

  // Threads for the local passes (encode, decode, bf16 conversion, ordered sum; rows are
  // independent, so the bytes do not depend on it). Default 1; ≤ 0: OpenMP's default.
  void set_threads(int threads);

  const ExpertPlacement& placement() const { return placement_; }
  const ExchangeStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

  // Wire sizes for one token (reporting, benchmarks).
  static int64_t dispatch_record_bytes(int64_t hidden, int64_t k);
  static int64_t combine_row_bytes(int64_t hidden) { return hidden * 2; }

 private:
  struct State;
  Transport& transport_;
  ExpertPlacement placement_;
  int pass_threads(int64_t elements) const;  // threads_ for big passes, 1 for small ones

  ExchangeStats stats_;
  int threads_ = 1;
  std::unique_ptr<State> state_;
};

}  // namespace moerun::comm

// The DeepSeek-V4 forward pass over one step's batch (spec §2): embedding, the blocks (mHC
// pre/post mixing, attention of the three kinds with compressor and indexer, MoE), the head
// with its hc contraction, and the MTP block. A step holds any mix of sequences, each
// contributing a contiguous run of new tokens (a prefill chunk or one decode token); every
// per-token op runs over all rows at once, and attention reads each sequence's state from
// the KV pool. Prefill and decode are one code path: a token at position p sees the window
// [p−W+1, p] and the compressed rows complete at p, whether they were computed in this step
// or earlier — so chunking never changes what a token sees, and with the reference kernels
// not even a bit of what it computes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/kernels.h"
#include "worker/comm/dispatch.h"
#include "worker/kv/kv_pool.h"
#include "worker/model/weights.h"

namespace moerun::model {

struct Segment {
  kv::SequenceKv* kv = nullptr;
  int64_t start = 0;  // position of the segment's first token
  int64_t begin = 0;  // first row in the step's token arrays
  int64_t count = 0;  // rows
};

// One step's rows. tokens[i] is the token processed at positions[i]; for the MTP block,
// tokens[i] is the *next* token (t+1) that row i combines with the hidden state at t.
struct StepBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  std::vector<Segment> segments;
  // Rows [0, prefill_rows) are prompt tokens, the rest generated ones (kernels::RowPhase):
  // the engine puts prefill segments first.
  int64_t prefill_rows = 0;
  int64_t rows() const { return static_cast<int64_t>(tokens.size()); }
  // Appends a segment: `new_tokens` of sequence `kv` at positions start, start+1, ...
  // Prompt segments (`prefill`) must all come before the generated ones.
  void add(kv::SequenceKv* kv, int64_t start, std::span<const int32_t> new_tokens, bool prefill);
};

// Optional hooks that see intermediate values (the replay tool, tests). All pointers are
// valid only during the call; row r of each array belongs to batch row r.
class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // h [rows, hc, dim] after block `layer` (MTP blocks included).
  virtual void block_output(int64_t layer, const StepBatch& batch, const float* h) {
    (void)layer, (void)batch, (void)h;
  }
  // ids/weights [rows, k].
  virtual void router(int64_t layer, const StepBatch& batch, const int32_t* ids,
                      const float* weights, int64_t k) {
    (void)layer, (void)batch, (void)ids, (void)weights, (void)k;
  }
  // Compressed rows the indexer chose for one row (ascending).
  virtual void indexer(int64_t layer, const StepBatch& batch, int64_t row, const int32_t* chosen,
                       int64_t n) {
    (void)layer, (void)batch, (void)row, (void)chosen, (void)n;
  }
  // y [rows, dim]: the final-norm output (the head's input) of the main model or of an MTP
  // block (`mtp` true).
  virtual void head_input(bool mtp, const StepBatch& batch, const float* y) {
    (void)mtp, (void)batch, (void)y;
  }
  // x [rows, hc, dim]: the MTP block's input stream.
  virtual void mtp_input(const StepBatch& batch, const float* x) { (void)batch, (void)x; }
};

struct RopeTable {
  int64_t max_position = 0;
  int64_t half = 0;
  std::vector<float> cos, sin;  // [max_position, half]
};
// The reference's precompute_freqs_cis (spec §2.4) with canonical pow/cos/sin.
RopeTable make_rope_table(const ModelConfig& config, int64_t layer, int64_t max_position);

class Model {
 public:
  // `max_position`: RoPE tables cover positions [0, max_position).
  Model(const ModelWeights& weights, kernels::Kernels& kernels, kv::KvPool& pool,
        int64_t max_position);

  const ModelConfig& config() const { return w_.config(); }
  kernels::Kernels& kernels() { return k_; }

  // Expert parallelism: routed experts of other ranks are reached through `dispatcher`
  // (dispatch/combine among the ep ranks of this stage); this process computes the experts it
  // loaded, which must be exactly the dispatcher's placement range for `column`. nullptr (the
  // default): every expert is local. With a dispatcher, run_layers must be called on every
  // rank of the stage for every micro-batch — with zero rows too — because the exchange is
  // collective.
  void set_dispatcher(comm::Dispatcher* dispatcher, int column);
  bool exchanges_experts() const { return dispatcher_ != nullptr; }

  // h [rows, copies, dim] ← the embedding of batch.tokens, repeated `copies` times (the
  // residual stream has hc copies).
  void embed(const StepBatch& batch, float* h, int64_t copies) const;
  // Runs blocks [layer_begin, layer_end) over h [rows, hc, dim] in place, reading and
  // updating the segments' KV state.
  void run_layers(const StepBatch& batch, float* h, int64_t layer_begin, int64_t layer_end,
                  ForwardObserver* obs);
  // Logits [rows.size(), vocab] (fp32) of the given batch rows: hc_head contraction, final
  // norm, head. `mtp_layer` ≥ 0 uses that MTP block's hc_head and norm.
  void logits(const StepBatch& batch, const float* h, const std::vector<int64_t>& rows, float* out,
              int64_t mtp_layer, ForwardObserver* obs);
  // The MTP block's input x [rows, hc, dim] from the main stream h_main [rows, hc, dim] and
  // batch.tokens (the next tokens): bf16(e_proj(enorm(embed(t+1))) + h_proj(hnorm(h))).
  void mtp_input(const StepBatch& batch, const float* h_main, int64_t mtp_layer, float* x);

 private:
  // Row counts of a GEMM: `rows` in all, the first `prefill` of them prompt tokens.
  struct Rows {
    int64_t rows = 0;
    int64_t prefill = 0;
  };
  static Rows all_rows(const StepBatch& b) { return {b.rows(), b.prefill_rows}; }
  // GEMMs queued to run together (Kernels::gemm_batch: one parallel region).
  using GemmList = std::vector<kernels::GemmParams>;
  // Queues out = x · Wᵀ (rows [row_begin, row_begin + n) of W), one call per row phase.
  void add_linear(GemmList& list, const Linear& w, const float* x, Rows rows, int64_t ldx,
                  float* out, int64_t ldo, bool round_bf16, int64_t row_begin = 0,
                  int64_t n = -1) const;
  void run_gemms(GemmList& list);
  // act_quant (1×128 e4m3) of x [rows, cols] (row stride ldx) into a dense copy.
  std::vector<float> quantized(const float* x, int64_t rows, int64_t ldx, int64_t cols);
  struct HcMix {
    std::vector<float> pre, post, comb;
  };
  void block(int64_t layer, const StepBatch& batch, float* h, ForwardObserver* obs);
  // hc_pre: x [rows, dim] (bf16) from h [rows, hc, dim]; fills mix.
  void hc_pre(const HcParams& p, const float* h, const StepBatch& batch, float* x, HcMix& mix);
  void attention(int64_t layer, const StepBatch& batch, const float* x, float* out,
                 ForwardObserver* obs);
  // A compressor's fp32 projections of the attention input: kv [rows, coff·Dc] and the gate
  // scores [rows, coff·Dc] before ape. Made by add_compressor_projections (GEMMs queued in a
  // list, run with the layer's other input projections), consumed by compress.
  struct CompressorInput {
    std::vector<float> kv, score;
  };
  void add_compressor_projections(GemmList& list, const CompressorWeights& cw,
                                  const StepBatch& batch, const float* x, CompressorInput& in);
  // Runs a compressor over the batch rows: updates the running state and writes every row
  // that completes. `indexer` picks the indexer's one.
  void compress(int64_t layer, const CompressorWeights& cw, bool indexer, const StepBatch& batch,
                CompressorInput& in);
  // Chosen compressed rows of every batch row: sel [rows, index_topk] (−1 padded), counts.
  // q [rows, heads·dim] is wq_b(qr) and w [rows, heads] weights_proj(x), both bf16.
  void indexer_select(int64_t layer, const StepBatch& batch, float* q, float* w,
                      CompressorInput& key_input, std::vector<int32_t>& sel,
                      std::vector<int32_t>& counts, ForwardObserver* obs);
  void moe(int64_t layer, const StepBatch& batch, const float* x, float* out, ForwardObserver* obs);
  // The routed experts this process holds, over (token, expert) pairs of activations x
  // [tokens, dim] (act_quant'ed; prefill[t] marks prompt rows), and the shared expert over
  // xs [shared_rows, dim]: pair_out [pairs, dim] and shared_out [shared_rows, dim], bf16.
  void run_experts(const MoeWeights& mw, const float* x, const uint8_t* prefill,
                   const std::vector<comm::Received::Pair>& pairs, float* pair_out, const float* xs,
                   Rows shared_rows, float* shared_out);
  // out [rows, n] = bf16(act_quant(x) · Wᵀ) — the FP8/FP4 linear of the reference.
  void qlinear(const Linear& w, const float* x, Rows rows, int64_t ldx, float* out, int64_t ldo);
  void linear(const Linear& w, const float* x, Rows rows, int64_t ldx, float* out, int64_t ldo,
              bool round_bf16, int64_t row_begin = 0, int64_t n = -1);
  const RopeTable& rope(int64_t layer) const;

  const ModelWeights& w_;
  kernels::Kernels& k_;
  kv::KvPool& pool_;
  comm::Dispatcher* dispatcher_ = nullptr;
  RopeTable rope_plain_, rope_yarn_;
};

}  // namespace moerun::model

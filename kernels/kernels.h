// The CPU compute ops of the DeepSeek-V4 forward pass (model spec §2, §5), behind one
// interface with two implementations:
//   - reference: the canonical numerics of ../shared/golden/dsv4-tiny/README.md — every sum
//     of fp32 products accumulated in double and rounded once, every transcendental evaluated
//     in double from its fp32 input and rounded once, elementwise fp32 ops in the reference
//     model's order, ties in top-k to the lower index. It reproduces the golden bit for bit
//     and is the oracle of everything else.
//   - optimized: SIMD chosen at run time (AVX-512 / AVX-512-BF16 / AMX / AVX2 / portable),
//     OpenMP threads; sums in other orders and precisions, within kernels/tolerance.h.
//
// Conventions shared by all ops:
//   - Activations are fp32 arrays. Where the model rounds to bf16 the values stored are
//     exactly bf16-representable (round_bf16 flags / the op's contract say where).
//   - Weights stay in checkpoint format (WeightView) and are decoded inside the kernels.
//   - Row-major; `ld*` arguments are row strides in elements.
//   - Batch invariance: every output row depends only on its own input row(s) and the
//     weights, never on how many rows a call has or where a row sits in the batch; reduction
//     orders are fixed by the reduction length alone. Threads split output rows/columns,
//     never a reduction. Both implementations guarantee this (tests check it).
//   - Kernels never allocate per call in the hot path beyond small per-thread scratch, never
//     throw on valid shapes, and are called from one thread (they use their own threads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace moerun::kernels {

enum class KernelImpl { kReference, kOptimized };
std::string_view kernel_impl_name(KernelImpl impl);  // "reference" / "optimized"
// "reference" | "optimized" → impl; anything else throws moerun::Error naming the value.
KernelImpl parse_kernel_impl(std::string_view name);

enum class WeightFormat {
  kF32,   // float [rows, cols]
  kBf16,  // uint16 bf16 bits [rows, cols]
  kFp8,   // uint8 e4m3 codes [rows, cols]; scales E8M0 [ceil(rows/128), ceil(cols/128)]
  kFp4,   // uint8 packed e2m1 [rows, cols/2] (low nibble = even column); scales E8M0
          // [rows, cols/32]
};

// A weight matrix W [rows, cols] in checkpoint layout; the GEMM computes x · Wᵀ.
// Non-owning: points into the memory-mapped checkpoint (or a test's buffer).
struct WeightView {
  WeightFormat format = WeightFormat::kF32;
  const void* data = nullptr;
  const uint8_t* scales = nullptr;  // kFp8 / kFp4 only
  int64_t rows = 0;                 // output features
  int64_t cols = 0;                 // input features (reduction length)
};

// out[i][j] = Σ_k a[i][k] · W[row_begin + j][k] for i < m, j < n, k < W.cols.
// The dequantized weight (FP8/FP4 value × its power-of-two block scale; bf16 widened) is
// exact in fp32, and so is every product with an fp32 activation in double; reference sums
// them in double and rounds once to fp32. With round_bf16 the fp32 result is then rounded
// to bf16 (the reference's GEMM outputs). FP8/FP4 GEMMs expect activations that already went
// through act_quant (1×128 e4m3, see quantize_e4m3) — the GEMM does not quantize.
// Activations of kBf16 / kFp8 / kFp4 GEMMs must be bf16-representable (every GEMM input of
// the model is), so that products are exact in fp32 and bf16 hardware dot products apply.
// ORDER CONTRACT. The optimized kernels sum in one fixed order for every output: an fp32
// accumulator from +0, adding the exact products a[k]·W[j][k] for k = 0, 1, ..., cols−1 with
// one rounding each (fma for kF32 weights, whose products are not exact). Every SIMD path
// (AVX-512 BF16, AVX-512F, AVX2, scalar) reproduces that order, so results do not depend on
// the path, the batch size or the thread count. The one exception is AMX: where
// cpu_features().amx_usable (not capped off by MOERUN_CPU_FEATURES), kBf16/kFp8/kFp4 GEMMs of
// prefill-phase rows (every m) use TDPBF16PS, which adds each K tile of 32 products its own way.
// Its order is fixed by cols alone (K tiles of 32 ascending, one fp32 accumulator from +0), so on
// such a CPU rows are still batch-invariant and thread-count-invariant, but they differ from the
// other paths in the last bits (within kernels/tolerance.h). Nodes that must agree bit for bit
// across CPUs with and without AMX all set MOERUN_CPU_FEATURES=avx512bf16 (or lower). A weight
// re-laid out by one kernel set for its SIMD paths (still FP8/FP4/bf16/fp32 values, only
// re-blocked), made once at load by Kernels::pack. Owned by the caller.
class PackedWeight {
 public:
  virtual ~PackedWeight() = default;
  virtual int64_t bytes() const = 0;  // memory it holds
};

// Which phase a GEMM's rows belong to. The reference ignores it. The optimized kernels use it
// only where the CPU has AMX: prefill rows (prompt tokens, compute-bound) go to the AMX tiles,
// decode rows (generated tokens, bound by streaming the weights) to the in-register decode
// path, which reaches the memory floor. A row's result depends only on its own phase, never
// on the other rows of the call, so logits stay batch-invariant; the engine gives every
// prompt token the prefill phase however the prompt is chunked.
enum class RowPhase { kPrefill, kDecode };

struct GemmParams {
  const float* a = nullptr;  // [m, lda], row i uses a[i*lda .. i*lda + W.cols)
  int64_t lda = 0;
  int64_t m = 0;
  WeightView w;
  int64_t row_begin = 0;  // first weight row (a slice of W, e.g. one wo_a group)
  int64_t n = 0;          // number of weight rows, row_begin + n <= w.rows
  float* out = nullptr;   // [m, ldo], row i writes out[i*ldo .. i*ldo + n)
  int64_t ldo = 0;
  bool round_bf16 = false;
  // Optional: Kernels::pack(w) of the same kernel set. Results are identical with or
  // without it; the optimized kernels are only fast with it.
  const PackedWeight* packed = nullptr;
  RowPhase phase = RowPhase::kPrefill;  // of every row of the call
};

// Sparse attention with sink (spec §2.7) over per-query key lists.
//   s_t = fp32(q_h · kv_t) · scale; M = max_t s_t; e_t = exp(s_t − M);
//   den = Σ_t e_t + exp(sink_h − M); o_h = bf16(fp32(Σ_t bf16(e_t) · kv_t) / den).
// K = V (the 512-d kv rows). A query with no keys gets o = 0.
struct AttentionParams {
  const float* q = nullptr;  // [m, num_heads, head_dim]
  int64_t m = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  const float* const* keys = nullptr;  // [m, max_keys] row pointers (head_dim floats each);
                                       // the first num_keys[i] entries of row i are used,
                                       // in order (the order fixes the reference's sums)
  const int32_t* num_keys = nullptr;   // [m]
  int64_t max_keys = 0;
  const float* sink = nullptr;  // [num_heads]
  float scale = 0;              // fp32 softmax scale (head_dim^-0.5)
  float* out = nullptr;         // [m, num_heads, head_dim], bf16 values
};

// RoPE on interleaved pairs (spec §2.4): for each pair i of a rope slice at position p,
// (a, b) ← (a·cos − b·sin, a·sin + b·cos) with (cos, sin) = table[p][i] (sin negated when
// inverse); the complex product in double, rounded once to fp32, then to bf16.
struct RopeParams {
  float* x = nullptr;  // first rope element of (row 0, head 0)
  int64_t rows = 0;
  int64_t heads = 1;                   // slices per row
  int64_t row_stride = 0;              // elements between rows
  int64_t head_stride = 0;             // elements between heads of a row
  int64_t rope_dim = 0;                // even; pairs = rope_dim / 2
  const int32_t* positions = nullptr;  // [rows]
  const float* cos = nullptr;          // [max_position, rope_dim/2] fp32
  const float* sin = nullptr;          // [max_position, rope_dim/2] fp32
  bool inverse = false;
};

// mHC Sinkhorn split (spec §2.2), per token: pre = sigmoid(mix·scale0 + base) + eps,
// post = 2·sigmoid(mix·scale1 + base), comb = 20-iteration Sinkhorn of the 4×4 part.
struct SinkhornParams {
  const float* mixes = nullptr;  // [m, (2 + hc) · hc]
  int64_t m = 0;
  int64_t hc = 4;
  int64_t iters = 20;
  float eps = 1e-6f;
  const float* scale = nullptr;  // [3]
  const float* base = nullptr;   // [(2 + hc) · hc]
  float* pre = nullptr;          // [m, hc]
  float* post = nullptr;         // [m, hc]
  float* comb = nullptr;         // [m, hc, hc]  comb[j][k]: row j, column k
};

// Routing of one MoE layer (spec §2.8): sc = sqrt(softplus(z)) (fp32 sqrt of the canonical
// softplus); score layers: ids = top-k of sc + bias (descending, lower expert id wins ties);
// hash layers: ids = table[token][0..k); weights = sc[ids] / Σ sc[ids] · route_scale.
struct RouteParams {
  const float* logits = nullptr;  // [m, num_experts] gate GEMM output z (fp32)
  int64_t m = 0;
  int64_t num_experts = 0;
  int64_t k = 0;
  const float* bias = nullptr;          // [num_experts] score layers; nullptr for hash layers
  const int32_t* hash_table = nullptr;  // [vocab, table_cols] hash layers; nullptr otherwise
  int64_t table_cols = 0;
  const int32_t* tokens = nullptr;  // [m] token ids (hash layers)
  float route_scale = 1.5f;
  int32_t* ids = nullptr;    // [m, k] (hash: table order; score: descending biased score)
  float* weights = nullptr;  // [m, k]
};

// Clamped SwiGLU (spec §2.8): u = clamp(u, ±limit); g = min(g, limit);
// a = silu(g) · u (fp32); a = w_row · a if row_weight; out = bf16(a).
struct SwigluParams {
  const float* gate = nullptr;  // [m, ld] w1 output (bf16 values)
  const float* up = nullptr;    // [m, ld] w3 output (bf16 values)
  int64_t ld = 0;
  int64_t m = 0;
  int64_t n = 0;
  float limit = 10.0f;
  const float* row_weight = nullptr;  // [m] routing weight, nullptr for the shared expert
  float* out = nullptr;               // [m, ld] may alias gate
};

// The indexer's scores (spec §2.5 step 4) for one query row against n_keys compressed keys:
// score[j] = bf16(Σ_h bf16(relu(bf16(q_h · k_j)) · w_h)), heads summed in double.
struct IndexerScoreParams {
  const float* q = nullptr;  // [m, num_heads, dim] (FP4-simulated, bf16 values)
  int64_t m = 0;
  int64_t num_heads = 0;
  int64_t dim = 0;
  const float* weights = nullptr;      // [m, num_heads] head weights (bf16 values)
  const float* const* keys = nullptr;  // [n_keys] row pointers (dim floats each)
  int64_t n_keys = 0;
  const int32_t* key_limit = nullptr;  // [m] query i scores keys 0..key_limit[i]-1 only
  float* scores = nullptr;             // [m, n_keys]; entries ≥ key_limit[i] untouched
};

// Gated pooling of one compressed row (spec §2.6), per channel c:
// out[c] = Σ_t fp32(kv_t[c] · softmax_t(g_t[c])) over the n_terms tokens, the softmax in
// double and rounded to fp32, the sum in double; out is fp32 (the model rounds to bf16).
struct PoolParams {
  const float* const* kv = nullptr;     // [n_terms] pointers to dim floats
  const float* const* score = nullptr;  // [n_terms] pointers to dim floats (g + ape)
  int64_t n_terms = 0;
  int64_t dim = 0;
  float* out = nullptr;  // [dim]
};

// Sampling from one row of logits. temperature 0 (or top_k 1) is greedy: the lowest index
// among the maxima. Otherwise: candidates = the top_k largest logits (all when top_k ≤ 0),
// probabilities softmax(logits / temperature) over them, then the smallest prefix (by
// descending probability, lower index first on ties) whose mass reaches top_p; one uniform
// draw u ∈ [0, 1) from (seed, step) picks the token by the cumulative mass of that prefix.
// Both implementations must return the same token for the same inputs.
struct SamplingParams {
  float temperature = 0.0f;
  int64_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  uint64_t step = 0;  // draw index (e.g. the position); the same (seed, step) → same draw
};

class Kernels {
 public:
  virtual ~Kernels() = default;
  virtual KernelImpl impl() const = 0;
  // e.g. "reference" or "optimized (avx512-bf16+amx, 2 threads)".
  virtual std::string describe() const = 0;

  // The packed form of `w` for this kernel set (nullptr when it uses the view as is). `w`'s
  // memory must outlive the pack only if the pack says so (the optimized pack copies).
  virtual std::unique_ptr<PackedWeight> pack(const WeightView& w) {
    (void)w;
    return nullptr;
  }
  virtual void gemm(const GemmParams& p) = 0;
  // Runs every GEMM of the list; each output is exactly what gemm(ps[i]) would give (the calls
  // must not write each other's inputs or outputs). The optimized kernels run them in one parallel
  // region.
  virtual void gemm_batch(const GemmParams* ps, size_t n) {
    for (size_t i = 0; i < n; ++i) gemm(ps[i]);
  }

  // act_quant in place over rows of `cols` elements in blocks of `block` (cols % block == 0):
  // x ← bf16(e4m3(clamp(x/s, ±448))·s), s the power-of-two scale of spec §5.
  virtual void quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block) = 0;
  // fp4_act_quant in place (blocks of `block`, e2m1, clamp ±6), bf16 result.
  virtual void quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block) = 0;

  // y = bf16(weight · (x · rsqrt(mean(x²) + eps))) per row; weight nullptr = all ones.
  virtual void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t cols, const float* weight,
                       float eps, float* y, int64_t ldy) = 0;
  // r[i] = rsqrt(mean(x_i²) + eps) in fp32 (the mHC pre-projection normalizer).
  virtual void rms_rsqrt(const float* x, int64_t ldx, int64_t rows, int64_t cols, float eps,
                         float* r) = 0;
  // The reference's per-head q scaling in bf16 tensor ops (spec §2.3 step 2):
  // ms = bf16(mean(bf16(q²))); r = bf16(rsqrt(bf16(ms + eps))); q ← bf16(q · r); per head.
  virtual void head_rms_scale_bf16(float* q, int64_t rows, int64_t heads, int64_t dim,
                                   float eps) = 0;

  virtual void rope(const RopeParams& p) = 0;
  // x ← bf16(x · H / √n) per row, H the n×n Sylvester Hadamard matrix (n a power of two).
  virtual void hadamard(float* x, int64_t rows, int64_t n) = 0;

  virtual void sinkhorn(const SinkhornParams& p) = 0;
  // y[i] = bf16(Σ_j fp32(pre[i][j] · h[i][j][:]))  (hc_pre's weighted sum, j < hc).
  virtual void hc_collapse(const float* h, const float* pre, int64_t m, int64_t hc, int64_t dim,
                           float* y) = 0;
  // out[i][k] = bf16(fp32(post[i][k] · f[i]) + Σ_j fp32(comb[i][j][k] · res[i][j]))  (hc_post).
  virtual void hc_expand(const float* f, const float* res, const float* post, const float* comb,
                         int64_t m, int64_t hc, int64_t dim, float* out) = 0;

  virtual void attention(const AttentionParams& p) = 0;
  virtual void indexer_scores(const IndexerScoreParams& p) = 0;
  virtual void pool(const PoolParams& p) = 0;

  virtual void route(const RouteParams& p) = 0;
  virtual void swiglu(const SwigluParams& p) = 0;

  virtual int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p) = 0;
};

// num_threads ≤ 0: the OpenMP default. The reference implementation is single-threaded.
std::unique_ptr<Kernels> make_kernels(KernelImpl impl, int num_threads = 0);

// ---- helpers shared by both implementations and the model ------------------------------
// The top `k` indices of scores[0..n) by descending value, lower index first among equals
// (a stable descending sort), written to idx[0..min(k, n)). Returns min(k, n).
int64_t topk_lower_index(const float* scores, int64_t n, int64_t k, int32_t* idx);

}  // namespace moerun::kernels

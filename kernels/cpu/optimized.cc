// OptimizedKernels: the optimized CPU kernel set. The GEMM, weight packing and activation
// quantization come from opt_gemm.h (SIMD paths picked from cpu_features()); the other ops from
// opt_ops.h (portable fp32 code GCC vectorizes); sampling is shared with the reference.
#include <omp.h>

#include <memory>
#include <string>

#include "common/error.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/opt_gemm.h"
#include "kernels/cpu/opt_ops.h"
#include "kernels/cpu/optimized.h"
#include "kernels/cpu/sampling.h"

namespace moerun::kernels {
namespace {

class OptimizedKernels final : public Kernels {
 public:
  explicit OptimizedKernels(int num_threads)
      : threads_(num_threads > 0 ? num_threads : omp_get_max_threads()),
        features_(cpu_features()) {}

  KernelImpl impl() const override { return KernelImpl::kOptimized; }
  std::string describe() const override {
    return "optimized (" + kernels::describe(features_) + ", " + std::to_string(threads_) +
           (threads_ == 1 ? " thread)" : " threads)");
  }

  std::unique_ptr<PackedWeight> pack(const WeightView& w) override { return opt_pack_weight(w); }
  void gemm(const GemmParams& p) override { opt_gemm(p, features_, threads_); }
  void gemm_batch(const GemmParams* ps, size_t n) override {
    opt_gemm_batch(ps, n, features_, threads_);
  }
  void quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block) override {
    opt_quantize_e4m3(x, rows, ld, cols, block, features_, threads_);
  }
  void quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block) override {
    opt_quantize_e2m1(x, rows, ld, cols, block, features_, threads_);
  }

  void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t cols, const float* weight,
               float eps, float* y, int64_t ldy) override {
    opt::rmsnorm(x, ldx, rows, cols, weight, eps, y, ldy, threads_);
  }
  void rms_rsqrt(const float* x, int64_t ldx, int64_t rows, int64_t cols, float eps,
                 float* r) override {
    opt::rms_rsqrt(x, ldx, rows, cols, eps, r, threads_);
  }
  void head_rms_scale_bf16(float* q, int64_t rows, int64_t heads, int64_t dim, float eps) override {
    opt::head_rms_scale_bf16(q, rows, heads, dim, eps, threads_);
  }
  void rope(const RopeParams& p) override { opt::rope(p, threads_); }
  void hadamard(float* x, int64_t rows, int64_t n) override {
    MOERUN_CHECK(n > 0 && (n & (n - 1)) == 0, "hadamard size {} is not a power of two", n);
    opt::hadamard(x, rows, n, threads_);
  }
  void sinkhorn(const SinkhornParams& p) override { opt::sinkhorn(p, threads_); }
  void hc_collapse(const float* h, const float* pre, int64_t m, int64_t hc, int64_t dim,
                   float* y) override {
    opt::hc_collapse(h, pre, m, hc, dim, y, threads_);
  }
  void hc_expand(const float* f, const float* res, const float* post, const float* comb, int64_t m,
                 int64_t hc, int64_t dim, float* out) override {
    opt::hc_expand(f, res, post, comb, m, hc, dim, out, threads_);
  }
  void attention(const AttentionParams& p) override { opt::attention(p, threads_); }
  void indexer_scores(const IndexerScoreParams& p) override { opt::indexer_scores(p, threads_); }
  void pool(const PoolParams& p) override { opt::pool(p, threads_); }
  void route(const RouteParams& p) override { opt::route(p, threads_); }
  void swiglu(const SwigluParams& p) override { opt::swiglu(p, threads_); }
  int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p) override {
    return sample_token(logits, vocab, p);
  }

 private:
  int threads_;
  const CpuFeatures& features_;
};

}  // namespace

std::unique_ptr<Kernels> make_optimized_kernels(int num_threads) {
  return std::make_unique<OptimizedKernels>(num_threads);
}

}  // namespace moerun::kernels

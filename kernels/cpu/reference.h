// The reference CPU kernels: plain loops implementing the canonical numerics described in
// kernels/kernels.h (double accumulation rounded once, transcendentals in double rounded once,
// the reference model's elementwise fp32 order). Single-threaded and readable on purpose:
// this is the oracle the optimized kernels and the golden checks are measured against.
#pragma once

#include "kernels/kernels.h"

namespace moerun::kernels {

class ReferenceKernels final : public Kernels {
 public:
  KernelImpl impl() const override { return KernelImpl::kReference; }
  std::string describe() const override { return "reference"; }

  void gemm(const GemmParams& p) override;
  void quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block) override;
  void quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols, int64_t block) override;
  void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t cols, const float* weight,
               float eps, float* y, int64_t ldy) override;
  void rms_rsqrt(const float* x, int64_t ldx, int64_t rows, int64_t cols, float eps,
                 float* r) override;
  void head_rms_scale_bf16(float* q, int64_t rows, int64_t heads, int64_t dim, float eps) override;
  void rope(const RopeParams& p) override;
  void hadamard(float* x, int64_t rows, int64_t n) override;
  void sinkhorn(const SinkhornParams& p) override;
  void hc_collapse(const float* h, const float* pre, int64_t m, int64_t hc, int64_t dim,
                   float* y) override;
  void hc_expand(const float* f, const float* res, const float* post, const float* comb, int64_t m,
                 int64_t hc, int64_t dim, float* out) override;
  void attention(const AttentionParams& p) override;
  void indexer_scores(const IndexerScoreParams& p) override;
  void pool(const PoolParams& p) override;
  void route(const RouteParams& p) override;
  void swiglu(const SwigluParams& p) override;
  int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p) override;
};

}  // namespace moerun::kernels

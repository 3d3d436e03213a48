// Reference GEMM: every weight row decoded to fp32 once, products with the fp32 activations
// exact in double, summed in double in k order, rounded once to fp32 (then bf16 if asked).
#include <vector>

#include "kernels/cpu/canonical.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/weight_decode.h"

namespace moerun::kernels {

void ReferenceKernels::gemm(const GemmParams& p) {
  const int64_t k_len = p.w.cols;
  std::vector<float> wrow(static_cast<size_t>(k_len));
  for (int64_t j = 0; j < p.n; ++j) {
    decode_weight_row(p.w, p.row_begin + j, wrow.data());
    for (int64_t i = 0; i < p.m; ++i) {
      const float* a = p.a + i * p.lda;
      double acc = 0.0;
      for (int64_t k = 0; k < k_len; ++k)
        acc += static_cast<double>(a[k]) * static_cast<double>(wrow[k]);
      float v = static_cast<float>(acc);
      if (p.round_bf16) v = canonical::bf16(v);
      p.out[i * p.ldo + j] = v;
    }
  }
}

}  // namespace moerun::kernels

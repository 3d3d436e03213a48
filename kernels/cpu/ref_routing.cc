// Reference routing (sqrt-softplus scores, biased top-k or hash table, renormalized weights)
// and sampling.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/canonical.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/sampling.h"

namespace moerun::kernels {

void ReferenceKernels::route(const RouteParams& p) {
  const int64_t ne = p.num_experts;
  std::vector<float> sc(static_cast<size_t>(ne)), sel(static_cast<size_t>(ne));
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t e = 0; e < ne; ++e) sc[e] = std::sqrt(canonical::softplus(p.logits[i * ne + e]));
    int32_t* ids = p.ids + i * p.k;
    if (p.hash_table) {
      const int32_t* row = p.hash_table + static_cast<int64_t>(p.tokens[i]) * p.table_cols;
      std::copy(row, row + p.k, ids);
    } else {
      for (int64_t e = 0; e < ne; ++e) sel[e] = sc[e] + p.bias[e];
      topk_lower_index(sel.data(), ne, p.k, ids);
    }
    double sum = 0.0;
    for (int64_t j = 0; j < p.k; ++j) sum += sc[ids[j]];
    const float total = static_cast<float>(sum);
    for (int64_t j = 0; j < p.k; ++j) p.weights[i * p.k + j] = sc[ids[j]] / total * p.route_scale;
  }
}

int32_t ReferenceKernels::sample(const float* logits, int64_t vocab, const SamplingParams& p) {
  return sample_token(logits, vocab, p);
}

}  // namespace moerun::kernels

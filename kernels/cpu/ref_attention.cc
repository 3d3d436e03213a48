// Reference kernels of the attention path: sparse attention with sink, the indexer's scores
// and the compressor's gated pooling. Sums in double, exp in double, rounded once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/canonical.h"
#include "kernels/cpu/reference.h"

namespace moerun::kernels {
namespace {
float dot_canonical(const float* a, const float* b, int64_t n) {
  double acc = 0.0;
  for (int64_t k = 0; k < n; ++k) acc += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return static_cast<float>(acc);
}
}  // namespace

void ReferenceKernels::attention(const AttentionParams& p) {
  const int64_t dim = p.head_dim;
  std::vector<float> s(static_cast<size_t>(p.max_keys));
  std::vector<double> acc(static_cast<size_t>(dim));
  for (int64_t i = 0; i < p.m; ++i) {
    const int64_t n = p.num_keys[i];
    const float* const* keys = p.keys + i * p.max_keys;
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const float* q = p.q + (i * p.num_heads + h) * dim;
      float* o = p.out + (i * p.num_heads + h) * dim;
      if (n == 0) {
        std::fill(o, o + dim, 0.0f);
        continue;
      }
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        s[t] = dot_canonical(q, keys[t], dim) * p.scale;
        mx = std::max(mx, s[t]);
      }
      double den_sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < n; ++t) {
        const float e = canonical::exp(s[t] - mx);
        den_sum += e;
        const double pe = canonical::bf16(e);  // P is cast to bf16 before P·V
        for (int64_t d = 0; d < dim; ++d) acc[d] += pe * static_cast<double>(keys[t][d]);
      }
      const float den = static_cast<float>(den_sum) + canonical::exp(p.sink[h] - mx);
      for (int64_t d = 0; d < dim; ++d) o[d] = canonical::bf16(static_cast<float>(acc[d]) / den);
    }
  }
}

void ReferenceKernels::indexer_scores(const IndexerScoreParams& p) {
  using canonical::bf16;
  for (int64_t i = 0; i < p.m; ++i) {
    const int64_t limit = p.key_limit[i];
    for (int64_t j = 0; j < limit; ++j) {
      double acc = 0.0;
      for (int64_t h = 0; h < p.num_heads; ++h) {
        const float s = bf16(dot_canonical(p.q + (i * p.num_heads + h) * p.dim, p.keys[j], p.dim));
        acc += static_cast<double>(bf16(std::max(s, 0.0f) * p.weights[i * p.num_heads + h]));
      }
      p.scores[i * p.n_keys + j] = bf16(static_cast<float>(acc));
    }
  }
}

void ReferenceKernels::pool(const PoolParams& p) {
  std::vector<double> e(static_cast<size_t>(p.n_terms));
  for (int64_t c = 0; c < p.dim; ++c) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t t = 0; t < p.n_terms; ++t) mx = std::max(mx, static_cast<double>(p.score[t][c]));
    double sum = 0.0;
    for (int64_t t = 0; t < p.n_terms; ++t) {
      e[t] = std::exp(static_cast<double>(p.score[t][c]) - mx);
      sum += e[t];
    }
    double acc = 0.0;
    for (int64_t t = 0; t < p.n_terms; ++t) {
      const float prob = static_cast<float>(e[t] / sum);
      acc += static_cast<double>(p.kv[t][c] * prob);
    }
    p.out[c] = static_cast<float>(acc);
  }
}

}  // namespace moerun::kernels

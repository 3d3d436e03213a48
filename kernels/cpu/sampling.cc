// Token sampling (see sampling.h): candidates sorted by descending logit with lower ids first,
// softmax in double, nucleus cut, one SplitMix64 draw per (seed, step).
#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/error.h"

namespace moerun::kernels {
namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

double sampling_uniform(uint64_t seed, uint64_t step) {
  const uint64_t bits = splitmix64(splitmix64(seed) ^ step);
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p) {
  MOERUN_CHECK(vocab > 0, "sampling over an empty vocabulary");
  MOERUN_CHECK(p.temperature >= 0.0f && std::isfinite(p.temperature),
               "temperature {} must be finite and >= 0", p.temperature);
  MOERUN_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, "top_p {} must be in (0, 1]", p.top_p);
  if (p.temperature == 0.0f || p.top_k == 1) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }
  const int64_t k = (p.top_k <= 0 || p.top_k > vocab) ? vocab : p.top_k;
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  topk_lower_index(logits, vocab, k, idx.data());
  idx.resize(static_cast<size_t>(k));
  // Softmax over the candidates in double (they are sorted, so idx[0] holds the maximum).
  const double inv_t = 1.0 / static_cast<double>(p.temperature);
  const double mx = logits[idx[0]];
  std::vector<double> prob(idx.size());
  double sum = 0.0;
  for (size_t i = 0; i < idx.size(); ++i) {
    prob[i] = std::exp((static_cast<double>(logits[idx[i]]) - mx) * inv_t);
    sum += prob[i];
  }
  // Nucleus: the smallest prefix whose mass reaches top_p (at least one token).
  size_t keep = idx.size();
  if (p.top_p < 1.0f) {
    double mass = 0.0;
    for (size_t i = 0; i < idx.size(); ++i) {
      mass += prob[i] / sum;
      if (mass >= static_cast<double>(p.top_p)) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += prob[i];
  const double target = sampling_uniform(p.seed, p.step) * kept;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += prob[i];
    if (target < cum) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace moerun::kernels

// Optimized attention-path ops: sparse attention with sink, the indexer's scores and the
// compressor's gated pooling. fp32 dot products and sums in fixed orders (opt_ops.h), fp32
// exp; OpenMP over (query, head group) / (query, key block) / channel blocks.
#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/opt_ops.h"

namespace moerun::kernels::opt {
namespace {

// Heads of one query processed together, so each key row is read once from memory and reused
// from L1 for all of them. Per-head arithmetic does not depend on the grouping.
constexpr int64_t kMaxHeadGroup = 8;
// Keys of one query scored per indexer task.
constexpr int64_t kIndexerKeyBlock = 64;
// Channels of one pooled row per pool task (the per-channel softmax state lives on the stack).
constexpr int64_t kPoolChannels = 64;
constexpr int64_t kParallelMinWork = 1 << 15;

int threads_for(int64_t work, int num_threads) {
  return work >= kParallelMinWork ? num_threads : 1;
}

// Query i, heads h0 .. h0+hn−1. s: [hn, max_keys] scratch (scores, then exp(s − M), then
// bf16 probabilities); acc: [hn, head_dim] scratch (P·V sums).
MOERUN_OPT_CLONES void attention_task(const AttentionParams& p, int64_t i, int64_t h0, int64_t hn,
                                      float* s, float* acc) {
  const int64_t dim = p.head_dim;
  const int64_t n = p.num_keys[i];
  const float* const* keys = p.keys + i * p.max_keys;
  const float* q = p.q + (i * p.num_heads + h0) * dim;
  float* o = p.out + (i * p.num_heads + h0) * dim;
  if (n == 0) {
    std::fill(o, o + hn * dim, 0.0f);
    return;
  }
  for (int64_t t = 0; t < n; ++t)
    for (int64_t hh = 0; hh < hn; ++hh)
      s[hh * n + t] = dot_f32(q + hh * dim, keys[t], dim) * p.scale;
  float den[kMaxHeadGroup];
  for (int64_t hh = 0; hh < hn; ++hh) {
    float* sh = s + hh * n;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n; ++t) mx = std::max(mx, sh[t]);
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) sh[t] = exp_f32(sh[t] - mx);
    // The denominator sums the unrounded e_t; only P·V sees them rounded to bf16.
    den[hh] = sum_f32(sh, n) + exp_f32(p.sink[h0 + hh] - mx);
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) sh[t] = bf16(sh[t]);
  }
  std::fill(acc, acc + hn * dim, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const float* kv = keys[t];
    for (int64_t hh = 0; hh < hn; ++hh) {
      const float pe = s[hh * n + t];
      float* a = acc + hh * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) a[d] += pe * kv[d];
    }
  }
  for (int64_t hh = 0; hh < hn; ++hh) {
    const float* a = acc + hh * dim;
    float* oh = o + hh * dim;
    const float dh = den[hh];
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) oh[d] = bf16(a[d] / dh);
  }
}

// Query i against keys j0 .. j1−1.
MOERUN_OPT_CLONES void indexer_block(const IndexerScoreParams& p, int64_t i, int64_t j0,
                                     int64_t j1) {
  const float* q = p.q + i * p.num_heads * p.dim;
  const float* w = p.weights + i * p.num_heads;
  for (int64_t j = j0; j < j1; ++j) {
    float acc = 0.0f;
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const float s = bf16(dot_f32(q + h * p.dim, p.keys[j], p.dim));
      acc += bf16(std::max(s, 0.0f) * w[h]);
    }
    p.scores[i * p.n_keys + j] = bf16(acc);
  }
}

// Channels c0 .. c0+kN−1 of the pooled row. A compile-time channel count lets GCC vectorize
// the channel loops without run-time trip-count and alias checks (with a variable count it
// kept the scalar fallback); each channel's arithmetic is the same whatever kN.
template <int64_t kN>
__attribute__((always_inline)) inline void pool_channels(const PoolParams& p, int64_t c0) {
  float mx[kN], sum[kN], acc[kN];
  for (int64_t c = 0; c < kN; ++c) {
    mx[c] = -std::numeric_limits<float>::infinity();
    sum[c] = 0.0f;
    acc[c] = 0.0f;
  }
  for (int64_t t = 0; t < p.n_terms; ++t) {
    const float* g = p.score[t] + c0;
#pragma omp simd
    for (int64_t c = 0; c < kN; ++c) mx[c] = std::max(mx[c], g[c]);
  }
  for (int64_t t = 0; t < p.n_terms; ++t) {
    const float* g = p.score[t] + c0;
#pragma omp simd
    for (int64_t c = 0; c < kN; ++c) sum[c] += exp_f32(g[c] - mx[c]);
  }
  // exp evaluated again rather than stored: the same value, and no [n_terms, channels]
  // scratch (n_terms is 128 for the ratio-128 compressor).
  for (int64_t t = 0; t < p.n_terms; ++t) {
    const float* g = p.score[t] + c0;
    const float* v = p.kv[t] + c0;
#pragma omp simd
    for (int64_t c = 0; c < kN; ++c) acc[c] += v[c] * (exp_f32(g[c] - mx[c]) / sum[c]);
  }
  std::copy(acc, acc + kN, p.out + c0);
}

// Channels c0 .. c0+cn−1: a full block, or the tail one channel at a time.
MOERUN_OPT_CLONES void pool_block(const PoolParams& p, int64_t c0, int64_t cn) {
  if (cn == kPoolChannels) {
    pool_channels<kPoolChannels>(p, c0);
  } else {
    for (int64_t c = 0; c < cn; ++c) pool_channels<1>(p, c0 + c);
  }
}

}  // namespace

void attention(const AttentionParams& p, int num_threads) {
  const int64_t dim = p.head_dim;
  const int64_t heads = p.num_heads;
  // The largest head group that still gives every thread a task (decode has m = 1).
  int64_t group = kMaxHeadGroup;
  while (group > 1 && p.m * ((heads + group - 1) / group) < num_threads) group /= 2;
  const int64_t num_groups = (heads + group - 1) / group;
  const int64_t tasks = p.m * num_groups;
  const int64_t work = p.m * heads * p.max_keys * dim;
  const int nt = threads_for(work, num_threads);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> s(static_cast<size_t>(group * std::max<int64_t>(p.max_keys, 1)));
    std::vector<float> acc(static_cast<size_t>(group * dim));
    // Key counts differ per query (causal prefill), hence dynamic.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t h0 = (task % num_groups) * group;
      attention_task(p, task / num_groups, h0, std::min(group, heads - h0), s.data(), acc.data());
    }
  }
}

void indexer_scores(const IndexerScoreParams& p, int num_threads) {
  const int64_t blocks = (p.n_keys + kIndexerKeyBlock - 1) / kIndexerKeyBlock;
  const int64_t tasks = p.m * blocks;
  const int64_t work = p.m * p.n_keys * p.num_heads * p.dim;
  // Causal prefill leaves later blocks of early queries empty, hence dynamic.
  const int nt = threads_for(work, num_threads);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t i = task / blocks;
    const int64_t j0 = (task % blocks) * kIndexerKeyBlock;
    indexer_block(p, i, j0, std::min<int64_t>(j0 + kIndexerKeyBlock, p.key_limit[i]));
  }
}

void pool(const PoolParams& p, int num_threads) {
  const int64_t blocks = (p.dim + kPoolChannels - 1) / kPoolChannels;
  const int nt = threads_for(p.n_terms * p.dim * 8, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    pool_block(p, b * kPoolChannels, std::min(kPoolChannels, p.dim - b * kPoolChannels));
}

}  // namespace moerun::kernels::opt

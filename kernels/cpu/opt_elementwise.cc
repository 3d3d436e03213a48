// Optimized per-row ops: norms, RoPE, Hadamard (fast Walsh–Hadamard butterflies), mHC
// Sinkhorn / collapse / expand, SwiGLU and routing. fp32 arithmetic and fp32 transcendentals
// (opt_ops.h), bf16 rounding exactly where kernels.h puts it, OpenMP over rows; each row is
// one multiversioned row kernel.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/opt_ops.h"

namespace moerun::kernels::opt {
namespace {

// Below this many elements of work a parallel region costs more than it saves. Only who
// computes a row changes with it, never the arithmetic.
constexpr int64_t kParallelMinWork = 1 << 15;
// Columns per accumulator block of hc_collapse / hc_expand (kept on the stack).
constexpr int64_t kMixChunk = 256;

int threads_for(int64_t work, int num_threads) {
  return work >= kParallelMinWork ? num_threads : 1;
}

// rsqrt(mean(x²) + eps): fp32 squares (exact for bf16 inputs) summed in double, then fp32
// mean and rsqrt. An fp32 sum of 16384 positive terms (the mHC normalizer) drifts by ~1e-6
// relative, which the fp32 rms_rsqrt output would carry; double lanes cost little here (the
// op is bound by reading x) and keep the sum's order fixed by n as well.
MOERUN_OPT_CLONES float row_rsqrt(const float* x, int64_t n, float eps) {
  double acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[k + l] * x[k + l]);
  }
  for (int l = 0; k + l < n; ++l) acc[l] += static_cast<double>(x[k + l] * x[k + l]);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  const float ms = static_cast<float>(acc[0] / static_cast<double>(n));
  return 1.0f / std::sqrt(ms + eps);
}

MOERUN_OPT_CLONES void rmsnorm_row(const float* x, int64_t cols, const float* weight, float eps,
                                   float* y) {
  const float r = row_rsqrt(x, cols, eps);
  if (weight) {
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) y[k] = bf16(weight[k] * (x[k] * r));
  } else {
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) y[k] = bf16(x[k] * r);
  }
}

MOERUN_OPT_CLONES void head_rms_row(float* v, int64_t dim, float eps) {
  // The reference model squares in bf16, so the squares are rounded before the sum.
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= dim; k += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += bf16(v[k + l] * v[k + l]);
  }
  for (int l = 0; k + l < dim; ++l) acc[l] += bf16(v[k + l] * v[k + l]);
  const float ms = bf16(fold_lanes(acc) / static_cast<float>(dim));
  const float r = bf16(1.0f / std::sqrt(bf16(ms + eps)));
#pragma omp simd
  for (int64_t d = 0; d < dim; ++d) v[d] = bf16(v[d] * r);
}

MOERUN_OPT_CLONES void rope_row(float* x, int64_t heads, int64_t head_stride, int64_t half,
                                const float* c, const float* s, float sin_sign) {
  for (int64_t h = 0; h < heads; ++h) {
    float* xh = x + h * head_stride;
#pragma omp simd
    for (int64_t t = 0; t < half; ++t) {
      const float a = xh[2 * t], b = xh[2 * t + 1];
      const float cs = c[t], sn = sin_sign * s[t];
      xh[2 * t] = bf16(a * cs - b * sn);
      xh[2 * t + 1] = bf16(a * sn + b * cs);
    }
  }
}

MOERUN_OPT_CLONES void hadamard_row(float* v, int64_t n, float scale) {
  // Sylvester H_n = H_2 ⊗ H_{n/2}: log2(n) butterfly stages, each (a, b) → (a + b, a − b).
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t j0 = 0; j0 < n; j0 += 2 * h) {
      float* lo = v + j0;
      float* hi = v + j0 + h;
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) {
        const float a = lo[j], b = hi[j];
        lo[j] = a + b;
        hi[j] = a - b;
      }
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) v[j] = bf16(v[j] * scale);
}

// Sinkhorn of one token: c is [hc, hc] scratch.
void sinkhorn_token(const SinkhornParams& p, int64_t i, float* c) {
  const int64_t hc = p.hc;
  const float* m = p.mixes + i * (2 + hc) * hc;
  // Row j divided by its sum over k (+ eps after the first softmax normalization).
  auto row_normalize = [&](float add) {
    for (int64_t j = 0; j < hc; ++j) {
      float sum = 0.0f;
      for (int64_t k = 0; k < hc; ++k) sum += c[j * hc + k];
      const float s = sum + add;
      for (int64_t k = 0; k < hc; ++k) c[j * hc + k] = c[j * hc + k] / s;
    }
  };
  auto col_normalize = [&]() {
    for (int64_t k = 0; k < hc; ++k) {
      float sum = 0.0f;
      for (int64_t j = 0; j < hc; ++j) sum += c[j * hc + k];
      const float s = sum + p.eps;
      for (int64_t j = 0; j < hc; ++j) c[j * hc + k] = c[j * hc + k] / s;
    }
  };
  for (int64_t j = 0; j < hc; ++j) {
    p.pre[i * hc + j] = sigmoid_f32(m[j] * p.scale[0] + p.base[j]) + p.eps;
    p.post[i * hc + j] = 2.0f * sigmoid_f32(m[hc + j] * p.scale[1] + p.base[hc + j]);
  }
  for (int64_t j = 0; j < hc * hc; ++j) c[j] = m[2 * hc + j] * p.scale[2] + p.base[2 * hc + j];
  for (int64_t j = 0; j < hc; ++j) {
    float mx = c[j * hc];
    for (int64_t k = 1; k < hc; ++k) mx = std::max(mx, c[j * hc + k]);
    for (int64_t k = 0; k < hc; ++k) c[j * hc + k] = exp_f32(c[j * hc + k] - mx);
  }
  row_normalize(0.0f);
  for (int64_t j = 0; j < hc * hc; ++j) c[j] = c[j] + p.eps;
  col_normalize();
  for (int64_t it = 1; it < p.iters; ++it) {
    row_normalize(p.eps);
    col_normalize();
  }
  std::copy(c, c + hc * hc, p.comb + i * hc * hc);
}

// y = bf16(Σ_j w[j] · h[j][:]), the sum in j order.
MOERUN_OPT_CLONES void collapse_row(const float* h, const float* w, int64_t hc, int64_t dim,
                                    float* y) {
  float acc[kMixChunk];
  for (int64_t d0 = 0; d0 < dim; d0 += kMixChunk) {
    const int64_t dn = std::min(kMixChunk, dim - d0);
    std::fill(acc, acc + dn, 0.0f);
    for (int64_t j = 0; j < hc; ++j) {
      const float* hj = h + j * dim + d0;
      const float wj = w[j];
#pragma omp simd
      for (int64_t d = 0; d < dn; ++d) acc[d] += wj * hj[d];
    }
#pragma omp simd
    for (int64_t d = 0; d < dn; ++d) y[d0 + d] = bf16(acc[d]);
  }
}

// out = bf16(post_k · f + Σ_j comb[j][k] · res[j][:]), the sum in j order.
MOERUN_OPT_CLONES void expand_row(const float* f, const float* res, float post_k, const float* comb,
                                  int64_t k, int64_t hc, int64_t dim, float* out) {
  float acc[kMixChunk];
  for (int64_t d0 = 0; d0 < dim; d0 += kMixChunk) {
    const int64_t dn = std::min(kMixChunk, dim - d0);
    std::fill(acc, acc + dn, 0.0f);
    for (int64_t j = 0; j < hc; ++j) {
      const float* rj = res + j * dim + d0;
      const float cj = comb[j * hc + k];
#pragma omp simd
      for (int64_t d = 0; d < dn; ++d) acc[d] += cj * rj[d];
    }
#pragma omp simd
    for (int64_t d = 0; d < dn; ++d) out[d0 + d] = bf16(post_k * f[d0 + d] + acc[d]);
  }
}

// w is the routing weight, 1 for the shared expert (w · a == a exactly then).
MOERUN_OPT_CLONES void swiglu_row(const float* gate, const float* up, int64_t n, float limit,
                                  float w, float* out) {
  // out may alias gate: each element is read before it is written.
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    float u = up[c];
    u = u < -limit ? -limit : u;  // std::clamp(u, −limit, limit)
    u = limit < u ? limit : u;
    const float g = limit < gate[c] ? limit : gate[c];  // std::min(g, limit)
    const float a = g / (1.0f + exp_f32(-g)) * u;
    out[c] = bf16(w * a);
  }
}

}  // namespace

void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t cols, const float* weight,
             float eps, float* y, int64_t ldy, int num_threads) {
  const int nt = threads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < rows; ++i) rmsnorm_row(x + i * ldx, cols, weight, eps, y + i * ldy);
}

void rms_rsqrt(const float* x, int64_t ldx, int64_t rows, int64_t cols, float eps, float* r,
               int num_threads) {
  const int nt = threads_for(rows * cols, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < rows; ++i) r[i] = row_rsqrt(x + i * ldx, cols, eps);
}

void head_rms_scale_bf16(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                         int num_threads) {
  const int64_t slices = rows * heads;
  const int nt = threads_for(slices * dim, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < slices; ++i) head_rms_row(q + i * dim, dim, eps);
}

void rope(const RopeParams& p, int num_threads) {
  const int64_t half = p.rope_dim / 2;
  const float sin_sign = p.inverse ? -1.0f : 1.0f;
  const int nt = threads_for(p.rows * p.heads * p.rope_dim, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < p.rows; ++i) {
    const int64_t pos = p.positions[i];
    rope_row(p.x + i * p.row_stride, p.heads, p.head_stride, half, p.cos + pos * half,
             p.sin + pos * half, sin_sign);
  }
}

void hadamard(float* x, int64_t rows, int64_t n, int num_threads) {
  // Scale rounded to fp32 once, as the reference's (x·H)·fp32(1/√n).
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  const int nt = threads_for(rows * n * 8, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < rows; ++i) hadamard_row(x + i * n, n, scale);
}

void sinkhorn(const SinkhornParams& p, int num_threads) {
  const int nt = threads_for(p.m * p.hc * p.hc * p.iters * 4, num_threads);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> c(static_cast<size_t>(p.hc * p.hc));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < p.m; ++i) sinkhorn_token(p, i, c.data());
  }
}

void hc_collapse(const float* h, const float* pre, int64_t m, int64_t hc, int64_t dim, float* y,
                 int num_threads) {
  const int nt = threads_for(m * hc * dim, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < m; ++i)
    collapse_row(h + i * hc * dim, pre + i * hc, hc, dim, y + i * dim);
}

void hc_expand(const float* f, const float* res, const float* post, const float* comb, int64_t m,
               int64_t hc, int64_t dim, float* out, int num_threads) {
  const int64_t tasks = m * hc;
  const int nt = threads_for(tasks * hc * dim, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t i = t / hc, k = t % hc;
    expand_row(f + i * dim, res + i * hc * dim, post[i * hc + k], comb + i * hc * hc, k, hc, dim,
               out + (i * hc + k) * dim);
  }
}

void swiglu(const SwigluParams& p, int num_threads) {
  const int nt = threads_for(p.m * p.n * 4, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < p.m; ++i)
    swiglu_row(p.gate + i * p.ld, p.up + i * p.ld, p.n, p.limit,
               p.row_weight ? p.row_weight[i] : 1.0f, p.out + i * p.ld);
}

void route(const RouteParams& p, int num_threads) {
  const int64_t ne = p.num_experts;
  const int64_t k = p.k;
  const int nt = threads_for(p.m * ne * 16, num_threads);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> sc(static_cast<size_t>(ne));
    std::vector<float> top_val(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < p.m; ++i) {
      const float* z = p.logits + i * ne;
      // sqrt(softplus(z)) with torch's threshold 20, in fp32 (libm expf / log1pf).
      for (int64_t e = 0; e < ne; ++e)
        sc[e] = std::sqrt(z[e] > 20.0f ? z[e] : std::log1p(std::exp(z[e])));
      int32_t* ids = p.ids + i * k;
      if (p.hash_table) {
        const int32_t* row = p.hash_table + static_cast<int64_t>(p.tokens[i]) * p.table_cols;
        std::copy(row, row + k, ids);
      } else if (k > 0) {
        // Top-k by insertion, descending; an expert enters only if strictly better than the
        // current k-th, and lands after every kept expert with an equal or larger score, so
        // lower ids win ties (the stable descending order of topk_lower_index).
        int64_t kept = 0;
        for (int64_t e = 0; e < ne; ++e) {
          const float v = sc[e] + p.bias[e];
          if (kept == k && !(v > top_val[k - 1])) continue;
          int64_t pos = kept < k ? kept : k - 1;
          while (pos > 0 && v > top_val[pos - 1]) {
            top_val[pos] = top_val[pos - 1];
            ids[pos] = ids[pos - 1];
            --pos;
          }
          top_val[pos] = v;
          ids[pos] = static_cast<int32_t>(e);
          if (kept < k) ++kept;
        }
      }
      float total = 0.0f;
      for (int64_t j = 0; j < k; ++j) total += sc[ids[j]];
      for (int64_t j = 0; j < k; ++j) p.weights[i * k + j] = sc[ids[j]] / total * p.route_scale;
    }
  }
}

}  // namespace moerun::kernels::opt

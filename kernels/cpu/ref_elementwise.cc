// Reference kernels for the per-row ops: activation quantization, norms, RoPE, Hadamard,
// mHC mixing and SwiGLU — each in the reference model's fp32 order, sums in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/numfmt.h"
#include "kernels/cpu/canonical.h"
#include "kernels/cpu/reference.h"

namespace moerun::kernels {

void ReferenceKernels::quantize_e4m3(float* x, int64_t rows, int64_t ld, int64_t cols,
                                     int64_t block) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t b = 0; b < cols; b += block)
      numfmt::fake_quant_block_e4m3(x + i * ld + b, static_cast<size_t>(block));
}

void ReferenceKernels::quantize_e2m1(float* x, int64_t rows, int64_t ld, int64_t cols,
                                     int64_t block) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t b = 0; b < cols; b += block)
      numfmt::fake_quant_block_e2m1(x + i * ld + b, static_cast<size_t>(block));
}

namespace {
// rsqrt(mean(x²) + eps): squares rounded to fp32, their mean in double rounded once, the
// fp32 sum with eps, the rsqrt in double rounded once.
float row_rsqrt(const float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t k = 0; k < n; ++k) sum += static_cast<double>(x[k] * x[k]);
  const float ms = static_cast<float>(sum / static_cast<double>(n));
  return canonical::rsqrt(ms + eps);
}
}  // namespace

void ReferenceKernels::rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t cols,
                               const float* weight, float eps, float* y, int64_t ldy) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * ldx;
    float* yi = y + i * ldy;
    const float r = row_rsqrt(xi, cols, eps);
    for (int64_t k = 0; k < cols; ++k) {
      const float v = xi[k] * r;
      yi[k] = canonical::bf16(weight ? weight[k] * v : v);
    }
  }
}

void ReferenceKernels::rms_rsqrt(const float* x, int64_t ldx, int64_t rows, int64_t cols, float eps,
                                 float* r) {
  for (int64_t i = 0; i < rows; ++i) r[i] = row_rsqrt(x + i * ldx, cols, eps);
}

void ReferenceKernels::head_rms_scale_bf16(float* q, int64_t rows, int64_t heads, int64_t dim,
                                           float eps) {
  using canonical::bf16;
  for (int64_t i = 0; i < rows * heads; ++i) {
    float* v = q + i * dim;
    double sum = 0.0;
    for (int64_t k = 0; k < dim; ++k) sum += static_cast<double>(bf16(v[k] * v[k]));
    const float ms = bf16(static_cast<float>(sum / static_cast<double>(dim)));
    const float r = bf16(canonical::rsqrt(bf16(ms + eps)));
    for (int64_t k = 0; k < dim; ++k) v[k] = bf16(v[k] * r);
  }
}

void ReferenceKernels::rope(const RopeParams& p) {
  const int64_t half = p.rope_dim / 2;
  for (int64_t i = 0; i < p.rows; ++i) {
    const float* c = p.cos + static_cast<int64_t>(p.positions[i]) * half;
    const float* s = p.sin + static_cast<int64_t>(p.positions[i]) * half;
    for (int64_t h = 0; h < p.heads; ++h) {
      float* x = p.x + i * p.row_stride + h * p.head_stride;
      for (int64_t t = 0; t < half; ++t) {
        const double a = x[2 * t], b = x[2 * t + 1];
        const double cs = c[t], sn = p.inverse ? -static_cast<double>(s[t]) : s[t];
        x[2 * t] = canonical::bf16(static_cast<float>(a * cs - b * sn));
        x[2 * t + 1] = canonical::bf16(static_cast<float>(a * sn + b * cs));
      }
    }
  }
}

void ReferenceKernels::hadamard(float* x, int64_t rows, int64_t n) {
  const double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < rows; ++i) {
    float* v = x + i * n;
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < n; ++k)
        acc += (__builtin_popcountll(static_cast<uint64_t>(k & j)) & 1) ? -static_cast<double>(v[k])
                                                                        : static_cast<double>(v[k]);
      out[j] = acc;
    }
    for (int64_t j = 0; j < n; ++j) v[j] = canonical::bf16(static_cast<float>(out[j] * scale));
  }
}

void ReferenceKernels::sinkhorn(const SinkhornParams& p) {
  const int64_t hc = p.hc;
  const int64_t mix = (2 + hc) * hc;
  std::vector<float> c(static_cast<size_t>(hc * hc));
  auto row_normalize = [&](bool add_eps_to_sum) {
    for (int64_t j = 0; j < hc; ++j) {
      double sum = 0.0;
      for (int64_t k = 0; k < hc; ++k) sum += c[j * hc + k];
      const float s = add_eps_to_sum ? static_cast<float>(sum) + p.eps : static_cast<float>(sum);
      for (int64_t k = 0; k < hc; ++k) c[j * hc + k] = c[j * hc + k] / s;
    }
  };
  auto col_normalize = [&]() {
    for (int64_t k = 0; k < hc; ++k) {
      double sum = 0.0;
      for (int64_t j = 0; j < hc; ++j) sum += c[j * hc + k];
      const float s = static_cast<float>(sum) + p.eps;
      for (int64_t j = 0; j < hc; ++j) c[j * hc + k] = c[j * hc + k] / s;
    }
  };
  for (int64_t i = 0; i < p.m; ++i) {
    const float* m = p.mixes + i * mix;
    for (int64_t j = 0; j < hc; ++j) {
      p.pre[i * hc + j] = canonical::sigmoid(m[j] * p.scale[0] + p.base[j]) + p.eps;
      p.post[i * hc + j] = 2.0f * canonical::sigmoid(m[hc + j] * p.scale[1] + p.base[hc + j]);
    }
    for (int64_t j = 0; j < hc * hc; ++j) c[j] = m[2 * hc + j] * p.scale[2] + p.base[2 * hc + j];
    // Softmax over each row (k): exp(c − rowmax), divided by the row sum, then + eps.
    for (int64_t j = 0; j < hc; ++j) {
      float mx = c[j * hc];
      for (int64_t k = 1; k < hc; ++k) mx = std::max(mx, c[j * hc + k]);
      for (int64_t k = 0; k < hc; ++k) c[j * hc + k] = canonical::exp(c[j * hc + k] - mx);
    }
    row_normalize(false);
    for (auto& v : c) v = v + p.eps;
    col_normalize();
    for (int64_t it = 1; it < p.iters; ++it) {
      row_normalize(true);
      col_normalize();
    }
    std::copy(c.begin(), c.end(), p.comb + i * hc * hc);
  }
}

void ReferenceKernels::hc_collapse(const float* h, const float* pre, int64_t m, int64_t hc,
                                   int64_t dim, float* y) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t d = 0; d < dim; ++d) {
      double acc = 0.0;
      for (int64_t j = 0; j < hc; ++j)
        acc += static_cast<double>(pre[i * hc + j] * h[(i * hc + j) * dim + d]);
      y[i * dim + d] = canonical::bf16(static_cast<float>(acc));
    }
}

void ReferenceKernels::hc_expand(const float* f, const float* res, const float* post,
                                 const float* comb, int64_t m, int64_t hc, int64_t dim,
                                 float* out) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < hc; ++k)
      for (int64_t d = 0; d < dim; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j < hc; ++j)
          acc += static_cast<double>(comb[(i * hc + j) * hc + k] * res[(i * hc + j) * dim + d]);
        const float mixed = post[i * hc + k] * f[i * dim + d] + static_cast<float>(acc);
        out[(i * hc + k) * dim + d] = canonical::bf16(mixed);
      }
}

void ReferenceKernels::swiglu(const SwigluParams& p) {
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t c = 0; c < p.n; ++c) {
      const float u = std::clamp(p.up[i * p.ld + c], -p.limit, p.limit);
      const float g = std::min(p.gate[i * p.ld + c], p.limit);
      float a = canonical::silu(g) * u;
      if (p.row_weight) a = p.row_weight[i] * a;
      p.out[i * p.ld + c] = canonical::bf16(a);
    }
}

}  // namespace moerun::kernels

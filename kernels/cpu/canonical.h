// Scalar building blocks of the canonical numerics (golden README "Canonical numerics"),
// shared by the reference kernels and by the model code that does elementwise work outside
// the kernels. Transcendentals take an fp32 input, evaluate in double and round once.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/numfmt.h"

namespace moerun::kernels::canonical {

inline float bf16(float x) {
  return numfmt::round_to_bf16(x);
}
inline float exp(float x) {
  return static_cast<float>(std::exp(static_cast<double>(x)));
}
inline float rsqrt(float x) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(x)));
}
inline float sigmoid(float x) {
  return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x))));
}
inline float silu(float x) {
  const double d = x;
  return static_cast<float>(d / (1.0 + std::exp(-d)));
}
// torch softplus(β = 1, threshold 20).
inline float softplus(float x) {
  if (x > 20.0f) return x;
  return static_cast<float>(std::log1p(std::exp(static_cast<double>(x))));
}

}  // namespace moerun::kernels::canonical

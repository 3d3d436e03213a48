// RoPE frequency tables (spec §2.4) in the reference's fp32 steps: inverse frequencies
// 1 / fp32(base^(2i/d)), the YaRN blend for compressed layers, angles fp32(t · f_i), and
// cos/sin evaluated in double and rounded once (canonical numerics).
#include <algorithm>
#include <cmath>
#include <numbers>

#include "common/error.h"
#include "worker/model/model.h"

namespace moerun::model {

RopeTable make_rope_table(const ModelConfig& c, int64_t layer, int64_t max_position) {
  const int64_t rd = c.qk_rope_head_dim;
  const int64_t half = rd / 2;
  const double base = c.rope_base(layer);
  std::vector<float> freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(rd);
    freq[i] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(expo)));
  }
  if (c.uses_yarn(layer)) {
    const double orig = static_cast<double>(c.rope_scaling.original_max_position_embeddings);
    auto corr = [&](double rotations) {
      return static_cast<double>(rd) * std::log(orig / (rotations * 2 * std::numbers::pi)) /
             (2 * std::log(base));
    };
    const double low = std::max(std::floor(corr(c.rope_scaling.beta_fast)), 0.0);
    double high = std::min(std::ceil(corr(c.rope_scaling.beta_slow)), static_cast<double>(rd - 1));
    if (low == high) high += 0.001;
    const float factor = static_cast<float>(c.rope_scaling.factor);
    for (int64_t i = 0; i < half; ++i) {
      const float ramp = std::clamp(
          (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low), 0.0f,
          1.0f);
      const float smooth = 1.0f - ramp;
      freq[i] = freq[i] / factor * (1.0f - smooth) + freq[i] * smooth;
    }
  }
  RopeTable t;
  t.max_position = max_position;
  t.half = half;
  t.cos.resize(static_cast<size_t>(max_position * half));
  t.sin.resize(static_cast<size_t>(max_position * half));
  for (int64_t p = 0; p < max_position; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<float>(p) * freq[i];
      t.cos[p * half + i] = static_cast<float>(std::cos(angle));
      t.sin[p * half + i] = static_cast<float>(std::sin(angle));
    }
  return t;
}

}  // namespace moerun::model

#include "tools/mkmodel/weights.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <string_view>

#include "common/error.h"
#include "common/numfmt.h"
#include "common/weight_quant.h"

namespace moerun::mkmodel {
namespace {

// SplitMix64: tiny, fast, and the same on every platform (std::normal_distribution is not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() {  // Box–Muller; one value per call keeps the stream simple
    const double u1 = 1.0 - uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  uint64_t state_;
};

uint64_t tensor_seed(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a of the name, mixed with the seed
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return h ^ (seed * 0x9E3779B97F4A7C15ull);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

std::string base_name(std::string_view name) {  // "x.weight" / "x.scale" → "x"
  return std::string(name.substr(0, name.rfind('.')));
}

// Normal matrix [out, in] with variance var, times a per-block gain 2^U(-g, g).
std::vector<float> blocked_matrix(Rng& rng, int64_t out, int64_t in, double var, int64_t block_rows,
                                  int64_t block_cols, double gain_log2) {
  const int64_t brows = (out + block_rows - 1) / block_rows;
  const int64_t bcols = (in + block_cols - 1) / block_cols;
  std::vector<double> gains(static_cast<size_t>(brows * bcols));
  for (double& g : gains) g = std::exp2(rng.uniform(-gain_log2, gain_log2));
  const double sd = std::sqrt(var);
  std::vector<float> w(static_cast<size_t>(out * in));
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j)
      w[static_cast<size_t>(i * in + j)] =
          static_cast<float>(rng.normal() * sd *
                             gains[static_cast<size_t>((i / block_rows) * bcols + j / block_cols)]);
  return w;
}

std::vector<std::byte> to_bytes(const void* data, size_t n) {
  std::vector<std::byte> out(n);
  if (n) std::memcpy(out.data(), data, n);
  return out;
}

std::vector<std::byte> encode_plain(const TensorSpec& spec, const std::vector<float>& v) {
  if (spec.dtype == DType::kF32) return to_bytes(v.data(), v.size() * sizeof(float));
  MOERUN_CHECK(spec.dtype == DType::kBF16, "tensor '{}': no plain encoding for {}", spec.name,
               dtype_name(spec.dtype));
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = numfmt::f32_to_bf16(v[i]);
  return to_bytes(b.data(), b.size() * sizeof(uint16_t));
}

}  // namespace

std::vector<float> generate_values(const CheckpointSchema& schema, const TensorSpec& spec,
                                   uint64_t seed) {
  const ModelConfig& c = schema.config();
  const std::string_view name = spec.name;
  const double dim = static_cast<double>(c.hidden_size);
  Rng rng(tensor_seed(
      seed, spec.format == TensorFormat::kFp8Scale || spec.format == TensorFormat::kFp4Scale
                ? base_name(name) + ".weight"
                : spec.name));

  if (spec.format == TensorFormat::kFp8Weight || spec.format == TensorFormat::kFp4Weight) {
    const bool fp4 = spec.format == TensorFormat::kFp4Weight;
    const int64_t out = spec.shape[0];
    const int64_t in = fp4 ? spec.shape[1] * 2 : spec.shape[1];
    std::vector<float> w = fp4 ? blocked_matrix(rng, out, in, 1.0 / in, 1, 32, 0.75)
                               : blocked_matrix(rng, out, in, 1.0 / in, 128, 128, 1.0);
    if (contains(name, ".wo_a.") || contains(name, ".wo_b.")) {
      for (float& x : w) x *= 2.0f;
    }
    // The shared expert's first 8 SwiGLU channels are 4× larger (and their w2 columns 4×
    // smaller) so that the swiglu_limit clamp really happens in tests.
    if (contains(name, "shared_experts.")) {
      const int64_t hot = std::min<int64_t>(8, c.moe_intermediate_size);
      if (contains(name, ".w2.")) {
        for (int64_t i = 0; i < out; ++i)
          for (int64_t j = 0; j < hot; ++j) w[static_cast<size_t>(i * in + j)] *= 0.25f;
      } else {
        for (int64_t i = 0; i < hot; ++i)
          for (int64_t j = 0; j < in; ++j) w[static_cast<size_t>(i * in + j)] *= 4.0f;
      }
    }
    return w;
  }

  MOERUN_CHECK(spec.format == TensorFormat::kPlain, "tensor '{}' has no float values", spec.name);
  std::vector<float> v(static_cast<size_t>(spec.numel()));
  auto fill_normal = [&](double mean, double var) {
    const double sd = std::sqrt(var);
    for (float& x : v) x = static_cast<float>(mean + sd * rng.normal());
  };
  const int64_t fan_in = spec.shape.size() == 2 ? spec.shape[1] : 1;
  if (name == "embed.weight") {
    fill_normal(0.0, 1.0);
  } else if (name == "head.weight") {
    fill_normal(0.0, 4.0 / dim);
  } else if (ends_with(name, "norm.weight")) {
    fill_normal(1.0, 0.01);
  } else if (ends_with(name, "_fn")) {  // hc_attn_fn, hc_ffn_fn, hc_head_fn
    fill_normal(0.0, 1.0 / (4.0 * dim));
  } else if (ends_with(name, "_scale")) {  // hc_*_scale
    for (float& x : v) x = static_cast<float>(rng.uniform(0.3, 1.0));
  } else if (ends_with(name, "_base")) {  // hc_*_base: comb part starts near the identity
    fill_normal(0.0, 0.25);
    if (!ends_with(name, "hc_head_base")) {
      const int64_t hc = c.hc_mult;
      for (int64_t j = 0; j < hc; ++j) v[static_cast<size_t>(2 * hc + j * hc + j)] += 1.0f;
    }
  } else if (ends_with(name, "attn_sink")) {
    fill_normal(0.0, 1.0);
  } else if (ends_with(name, ".ape")) {
    fill_normal(0.0, 0.25);
  } else if (ends_with(name, "gate.weight") && contains(name, ".ffn.")) {
    fill_normal(0.0, 2.25 / dim);
  } else if (ends_with(name, "gate.bias")) {
    fill_normal(0.0, 0.0225);
  } else if (ends_with(name, "compressor.wgate.weight")) {
    fill_normal(0.0, 2.25 / static_cast<double>(fan_in));  // ×1.5 in standard deviation
  } else if (spec.shape.size() == 2) {                     // compressor wkv, indexer weights_proj
    fill_normal(0.0, 1.0 / static_cast<double>(fan_in));
  } else {
    MOERUN_THROW("tensor '{}': no value recipe", spec.name);
  }
  return v;
}

std::map<std::string, std::vector<std::byte>> generate_tensor(const CheckpointSchema& schema,
                                                              const TensorSpec& spec,
                                                              uint64_t seed) {
  std::map<std::string, std::vector<std::byte>> out;
  switch (spec.format) {
    case TensorFormat::kPlain:
      out.emplace(spec.name, encode_plain(spec, generate_values(schema, spec, seed)));
      return out;
    case TensorFormat::kHashTable: {
      // Each token maps to k distinct experts (partial Fisher–Yates per row).
      const ModelConfig& c = schema.config();
      Rng rng(tensor_seed(seed, spec.name));
      const int64_t rows = spec.shape[0], k = spec.shape[1];
      std::vector<int64_t> table(static_cast<size_t>(rows * k));
      std::vector<int64_t> perm(static_cast<size_t>(c.n_routed_experts));
      for (int64_t r = 0; r < rows; ++r) {
        for (size_t e = 0; e < perm.size(); ++e) perm[e] = static_cast<int64_t>(e);
        for (int64_t j = 0; j < k; ++j) {
          const size_t pick =
              static_cast<size_t>(j) +
              static_cast<size_t>(rng.next() % (perm.size() - static_cast<size_t>(j)));
          std::swap(perm[static_cast<size_t>(j)], perm[pick]);
          table[static_cast<size_t>(r * k + j)] = perm[static_cast<size_t>(j)];
        }
      }
      out.emplace(spec.name, to_bytes(table.data(), table.size() * sizeof(int64_t)));
      return out;
    }
    case TensorFormat::kFp8Weight:
    case TensorFormat::kFp4Weight:
    case TensorFormat::kFp8Scale:
    case TensorFormat::kFp4Scale: {
      const bool fp4 =
          spec.format == TensorFormat::kFp4Weight || spec.format == TensorFormat::kFp4Scale;
      const std::string base = base_name(spec.name);
      const TensorSpec* weight = schema.find(base + ".weight");
      const TensorSpec* scale = schema.find(base + ".scale");
      MOERUN_CHECK(weight && scale, "tensor '{}': weight/scale pair not in the schema", spec.name);
      const std::vector<float> w = generate_values(schema, *weight, seed);
      std::vector<std::byte> codes(static_cast<size_t>(weight->numel()));
      std::vector<std::byte> scales(static_cast<size_t>(scale->numel()));
      const int64_t out_dim = weight->shape[0];
      auto* c = reinterpret_cast<uint8_t*>(codes.data());
      auto* s = reinterpret_cast<uint8_t*>(scales.data());
      if (fp4) {
        numfmt::quantize_fp4_weight(w.data(), out_dim, weight->shape[1] * 2, c, s);
      } else {
        numfmt::quantize_fp8_weight(w.data(), out_dim, weight->shape[1], c, s);
      }
      out.emplace(weight->name, std::move(codes));
      out.emplace(scale->name, std::move(scales));
      return out;
    }
  }
  MOERUN_THROW("tensor '{}': unknown format", spec.name);
}

}  // namespace moerun::mkmodel

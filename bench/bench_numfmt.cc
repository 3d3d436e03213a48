// Throughput of the scalar number-format code in common/numfmt (the CPU reference path):
// e4m3 blocks of 128 and e2m1 blocks of 32 as act_quant / fp4_act_quant use them, and
// fp32 <-> bf16 conversion, each over 1M elements. Every benchmark also reports
// `speed_vs_memcpy`: memcpy time of its input bytes, measured in the same run, divided by its
// own time (1.0 = as fast as copying the input). The outputs are validated once before timing.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <benchmark/benchmark.h>

#include "common/numfmt.h"

namespace moerun::numfmt {
namespace {

constexpr size_t kNumElements = size_t{1} << 20;
constexpr size_t kE4m3Block = 128;
constexpr size_t kE2m1Block = 32;

// Deterministic activations: uniform in (−1, 1) times a per-128-block power of two in
// [2^-8, 2^8], so that block scales differ as they do in a real model.
const std::vector<float>& input() {
  static const std::vector<float> x = [] {
    std::vector<float> v(kNumElements);
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < v.size(); ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const double u = static_cast<double>(state >> 11) * 0x1p-53 * 2.0 - 1.0;
      const int gain = static_cast<int>((i / kE4m3Block * 7) % 17) - 8;
      v[i] = static_cast<float>(std::ldexp(u, gain));
    }
    return v;
  }();
  return x;
}

// Best-of-10 wall time of copying `bytes`, the baseline every benchmark is compared with.
double memcpy_seconds(size_t bytes) {
  std::vector<uint8_t> src(bytes, 1), dst(bytes);
  double best = 1e30;
  for (int rep = 0; rep < 10; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

// Wall time of the timed loop, for the ratio to memcpy (the framework's own time is not
// readable from inside the benchmark).
class LoopTimer {
 public:
  LoopTimer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

void report(benchmark::State& state, size_t input_bytes, const LoopTimer& timer) {
  const double loop_seconds = timer.seconds();
  const auto iters = static_cast<double>(state.iterations());
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kNumElements);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * input_bytes));
  state.counters["speed_vs_memcpy"] = memcpy_seconds(input_bytes) * iters / loop_seconds;
}

// ---- validation (once, before timing) ----------------------------------------------------

bool validate() {
  const std::vector<float>& x = input();
  std::vector<uint8_t> codes(kNumElements);
  for (size_t b = 0; b < kNumElements; b += kE4m3Block) {
    const int e = quantize_block_e4m3(x.data() + b, kE4m3Block, codes.data() + b);
    for (size_t i = b; i < b + kE4m3Block; ++i) {
      const double q = std::ldexp(static_cast<double>(e4m3_to_f32(codes[i])), e);
      const double bound = std::max(std::fabs(x[i]) * 0x1p-4, std::ldexp(1.0, e - 10));
      if (std::isnan(q) || std::fabs(q - x[i]) > bound) {
        std::fprintf(stderr, "e4m3 validation failed at %zu: x=%g q=%g\n", i, x[i], q);
        return false;
      }
    }
  }
  for (size_t b = 0; b < kNumElements; b += kE2m1Block) {
    const int e = quantize_block_e2m1(x.data() + b, kE2m1Block, codes.data() + b);
    for (size_t i = b; i < b + kE2m1Block; ++i) {
      const double q = std::ldexp(static_cast<double>(e2m1_to_f32(codes[i])), e);
      const double bound = std::max(std::fabs(x[i]) * 0.25, std::ldexp(0.25, e));
      if (std::fabs(q - x[i]) > bound) {
        std::fprintf(stderr, "e2m1 validation failed at %zu: x=%g q=%g\n", i, x[i], q);
        return false;
      }
    }
  }
  for (size_t i = 0; i < kNumElements; ++i) {
    const float r = bf16_to_f32(f32_to_bf16(x[i]));
    if (std::fabs(static_cast<double>(r) - x[i]) > std::fabs(x[i]) * 0x1p-8 ||
        f32_to_bf16(r) != f32_to_bf16(x[i])) {
      std::fprintf(stderr, "bf16 validation failed at %zu: x=%g r=%g\n", i, x[i], r);
      return false;
    }
  }
  return true;
}

// ---- benchmarks --------------------------------------------------------------------------

void BM_QuantizeE4m3Block128(benchmark::State& state) {
  const std::vector<float>& x = input();
  std::vector<uint8_t> codes(kNumElements);
  std::vector<int> exps(kNumElements / kE4m3Block);
  const LoopTimer timer;
  for (auto _ : state) {
    for (size_t b = 0; b < kNumElements; b += kE4m3Block) {
      exps[b / kE4m3Block] = quantize_block_e4m3(x.data() + b, kE4m3Block, codes.data() + b);
    }
    benchmark::DoNotOptimize(codes.data());
    benchmark::DoNotOptimize(exps.data());
    benchmark::ClobberMemory();
  }
  report(state, kNumElements * sizeof(float), timer);
}

void BM_QuantizeE2m1Block32(benchmark::State& state) {
  const std::vector<float>& x = input();
  std::vector<uint8_t> nibbles(kNumElements);
  std::vector<int> exps(kNumElements / kE2m1Block);
  const LoopTimer timer;
  for (auto _ : state) {
    for (size_t b = 0; b < kNumElements; b += kE2m1Block) {
      exps[b / kE2m1Block] = quantize_block_e2m1(x.data() + b, kE2m1Block, nibbles.data() + b);
    }
    benchmark::DoNotOptimize(nibbles.data());
    benchmark::DoNotOptimize(exps.data());
    benchmark::ClobberMemory();
  }
  report(state, kNumElements * sizeof(float), timer);
}

void BM_FakeQuantE4m3Block128(benchmark::State& state) {
  const std::vector<float>& x = input();
  std::vector<float> y(kNumElements);
  const LoopTimer timer;
  for (auto _ : state) {
    std::copy(x.begin(), x.end(), y.begin());  // in place: restore the input each time
    for (size_t b = 0; b < kNumElements; b += kE4m3Block) {
      fake_quant_block_e4m3(y.data() + b, kE4m3Block);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  report(state, kNumElements * sizeof(float), timer);
}

void BM_F32ToBf16(benchmark::State& state) {
  const std::vector<float>& x = input();
  std::vector<uint16_t> out(kNumElements);
  const LoopTimer timer;
  for (auto _ : state) {
    for (size_t i = 0; i < kNumElements; ++i) out[i] = f32_to_bf16(x[i]);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, kNumElements * sizeof(float), timer);
}

void BM_Bf16ToF32(benchmark::State& state) {
  const std::vector<float>& x = input();
  std::vector<uint16_t> in(kNumElements);
  for (size_t i = 0; i < kNumElements; ++i) in[i] = f32_to_bf16(x[i]);
  std::vector<float> out(kNumElements);
  const LoopTimer timer;
  for (auto _ : state) {
    for (size_t i = 0; i < kNumElements; ++i) out[i] = bf16_to_f32(in[i]);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, kNumElements * sizeof(uint16_t), timer);
}

BENCHMARK(BM_QuantizeE4m3Block128)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_QuantizeE2m1Block32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FakeQuantE4m3Block128)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_F32ToBf16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Bf16ToF32)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace moerun::numfmt

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!moerun::numfmt::validate()) return 1;
  std::fprintf(stderr, "validation passed (%zu elements)\n", moerun::numfmt::kNumElements);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

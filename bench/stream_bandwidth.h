// The memory bandwidth baseline of the benchmarks: a streaming read of a buffer far larger
// than the last-level cache, each thread reading its own contiguous part, best of `reps`.
// Four independent accumulators of 64-byte loads (AVX-512 where the CPU has it) keep the
// loop load-bound.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>

namespace moerun::bench {

inline uint64_t read_words(const uint64_t* p, size_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < n; ++i) a += p[i];
  return a ^ b ^ c ^ d;
}

__attribute__((target("avx512f"))) inline uint64_t read_words_avx512(const uint64_t* p, size_t n) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int r = 0; r < 4; ++r)
      acc[r] = _mm512_add_epi64(acc[r], _mm512_loadu_si512(p + i + 8 * static_cast<size_t>(r)));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(
      lanes, _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3])));
  uint64_t sum = read_words(p + i, n - i);
  for (const uint64_t v : lanes) sum += v;
  return sum;
}

// GB/s (1e9 bytes per second) reading `bytes` of `buf` with `threads` threads.
inline double stream_read_gbps(const void* buf, size_t bytes, int threads, int reps = 4) {
  const auto* words = static_cast<const uint64_t*>(buf);
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const size_t n = bytes / sizeof(uint64_t);
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    uint64_t sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(^ : sink)
    {
      const size_t per = n / static_cast<size_t>(omp_get_num_threads());
      const size_t t = static_cast<size_t>(omp_get_thread_num());
      sink ^= avx512 ? read_words_avx512(words + t * per, per) : read_words(words + t * per, per);
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sink == 0x123456789ull) std::printf(" ");  // keeps the reads
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / sec * 1e-9);
  }
  return best;
}

}  // namespace moerun::bench

// Token sampling shared by both kernel implementations (it is not a hot op, and both must
// pick the same token): greedy, temperature, top-k, top-p, one seeded draw per (seed, step).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace moerun::kernels {

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p);
// The uniform draw in [0, 1) used for (seed, step): SplitMix64 of the pair, top 53 bits.
double sampling_uniform(uint64_t seed, uint64_t step);

}  // namespace moerun::kernels

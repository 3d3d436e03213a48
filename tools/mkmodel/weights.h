// Deterministic random weights for synthetic DeepSeek-V4 checkpoints.
//
// Every tensor's values depend only on (seed, tensor name), so shards can be generated in any
// order or in parallel and a tensor is the same whichever shard it lands in. The scaling
// follows the recipe of the golden generator (../shared/golden/dsv4-tiny/README.md) so that
// activations stay well-scaled through all layers: matrices N(0, 1/fan_in) with per-block
// gains so that block scales differ, quantized through the real FP8 / FP4 / E8M0 paths.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/checkpoint_schema.h"

namespace moerun::mkmodel {

// Checkpoint bytes of `spec` and, for an FP8/FP4 weight, of its scale tensor too (both come
// from one float matrix). Returns {name → bytes} with one or two entries; a scale spec on its
// own returns the scale bytes (by regenerating the matrix).
std::map<std::string, std::vector<std::byte>> generate_tensor(const CheckpointSchema& schema,
                                                              const TensorSpec& spec,
                                                              uint64_t seed);

// The float values of a plain or quantized-weight tensor before quantization (logical shape:
// an FP4 weight [out, in/2] yields out·in values). Exposed for tests.
std::vector<float> generate_values(const CheckpointSchema& schema, const TensorSpec& spec,
                                   uint64_t seed);

}  // namespace moerun::mkmodel

// Device-side decoders of the checkpoint number formats (e4m3, e2m1, E8M0), the building
// blocks of the FP8/FP4 GEMMs to come. Host wrappers take host arrays, run the kernel and
// copy back, so tests can compare with common/numfmt.h bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moerun::cuda {

// out[i] = value of codes[i] in the given format (fp32). Throws moerun::Error on CUDA errors.
enum class CodeFormat { kE4m3, kE2m1, kE8m0 };
void decode_codes(CodeFormat format, const uint8_t* codes, size_t n, float* out);

}  // namespace moerun::cuda

// What SIMD the CPU offers at run time (cpuid + xgetbv), and whether AMX tiles may be used
// (Linux requires arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) per process).
#pragma once

#include <string>

namespace moerun::kernels {

struct CpuFeatures {
  bool avx2 = false;         // with FMA
  bool avx512f = false;      // with BW, VL, DQ
  bool avx512_bf16 = false;  // vdpbf16ps
  bool avx512_vbmi = false;  // vpermb / vpermi2b
  bool amx_bf16 = false;     // cpuid says AMX-TILE + AMX-BF16
  bool amx_usable = false;   // ... with avx512_bf16 and avx512_vbmi, and the kernel granted
                             // the tile state to this process: the GEMM then uses AMX for
                             // bf16/FP8/FP4 weights (results differ from the other paths in
                             // the last bits; a mixed cluster caps every node at avx512bf16)
};

// Detected once (thread-safe); MOERUN_CPU_FEATURES=portable|avx2|avx512|avx512bf16|amx caps the
// level for tests and benchmarks (never raises it above what the CPU has).
const CpuFeatures& cpu_features();
std::string describe(const CpuFeatures& f);  // "avx512-bf16+amx", "avx2", "portable"

}  // namespace moerun::kernels

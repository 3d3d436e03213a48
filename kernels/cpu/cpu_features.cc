// Run-time CPU feature detection for the optimized kernels (cpu_features.h): cpuid for what
// the silicon has, xgetbv for what the OS saves on context switches (a feature the OS does
// not save is unusable), and arch_prctl for the AMX tile data permission Linux hands out per
// process. MOERUN_CPU_FEATURES caps the result so tests and benchmarks can force each path.
#include "kernels/cpu/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/error.h"

namespace moerun::kernels {
namespace {

// Linux arch_prctl codes (asm/prctl.h) and the XSAVE component of the AMX tile data.
constexpr int kArchGetXcompPerm = 0x1022;
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

// XCR0 bits: SSE and AVX state; AVX-512 opmask, upper ZMM0-15 halves, ZMM16-31; AMX tile
// config and tile data.
constexpr uint64_t kXcr0Avx = (1u << 1) | (1u << 2);
constexpr uint64_t kXcr0Avx512 = (1u << 5) | (1u << 6) | (1u << 7);
constexpr uint64_t kXcr0Amx = (uint64_t{1} << 17) | (uint64_t{1} << 18);

constexpr std::string_view kAllowedLevels = "portable, avx2, avx512, avx512bf16, amx";

bool bit(uint32_t reg, int b) {
  return ((reg >> b) & 1u) != 0;
}

uint64_t read_xcr0() {
  uint32_t lo = 0;
  uint32_t hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// Asks the kernel for the AMX tile state; false on kernels without the permission API
// (before 5.16) or when it refuses.
bool request_amx_permission() {
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long mask = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &mask) != 0) return false;
  return ((mask >> kXfeatureXtiledata) & 1ul) != 0;
}

CpuFeatures detect() {
  CpuFeatures f;
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(1, 0, &eax, &ebx, &ecx, &edx) == 0) return f;
  const bool fma = bit(ecx, 12);
  const bool osxsave = bit(ecx, 27);
  const bool avx = bit(ecx, 28);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  if ((xcr0 & kXcr0Avx) != kXcr0Avx) return f;

  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return f;
  const uint32_t max_subleaf = eax;
  f.avx2 = fma && bit(ebx, 5);
  const bool os_avx512 = (xcr0 & kXcr0Avx512) == kXcr0Avx512;
  f.avx512f = f.avx2 && os_avx512 && bit(ebx, 16) && bit(ebx, 17) && bit(ebx, 30) && bit(ebx, 31);
  f.avx512_vbmi = f.avx512f && bit(ecx, 1);
  const bool amx_tile = bit(edx, 24);
  const bool amx_bf16 = bit(edx, 22);
  f.amx_bf16 = amx_tile && amx_bf16 && (xcr0 & kXcr0Amx) == kXcr0Amx;

  if (max_subleaf >= 1) {
    uint32_t eax1 = 0, ebx1 = 0, ecx1 = 0, edx1 = 0;
    __cpuid_count(7, 1, eax1, ebx1, ecx1, edx1);
    f.avx512_bf16 = f.avx512f && bit(eax1, 5);
  }
  // The AMX kernels also use AVX-512 (BW, BF16, VBMI) to decode weights into tiles; every CPU
  // with AMX has them. The permission is asked for last, only when it would be used.
  f.amx_usable = f.amx_bf16 && f.avx512_bf16 && f.avx512_vbmi && request_amx_permission();
  return f;
}

// Lowers `f` to at most the level named by MOERUN_CPU_FEATURES.
void apply_cap(CpuFeatures& f, std::string_view level) {
  if (level == "amx") return;
  f.amx_usable = false;
  if (level == "avx512bf16") return;
  f.avx512_bf16 = false;
  if (level == "avx512") return;
  f.avx512f = false;
  f.avx512_vbmi = false;
  if (level == "avx2") return;
  f.avx2 = false;
  if (level == "portable") return;
  MOERUN_THROW("MOERUN_CPU_FEATURES='{}' is not a feature level (allowed: {})", level,
               kAllowedLevels);
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f = detect();
    if (const char* env = std::getenv("MOERUN_CPU_FEATURES"); env != nullptr && *env != '\0')
      apply_cap(f, env);
    return f;
  }();
  return features;
}

// "+amx" exactly when the GEMM uses AMX (opt_gemm.cc uses it wherever amx_usable is set).
std::string describe(const CpuFeatures& f) {
  std::string s;
  if (f.avx512_bf16)
    s = "avx512-bf16";
  else if (f.avx512f)
    s = "avx512";
  else if (f.avx2)
    s = "avx2";
  else
    s = "portable";
  if (f.amx_usable) s += "+amx";
  return s;
}

}  // namespace moerun::kernels

// MOERUN_SIMD_CLONES: GCC function multi-versioning for hot element loops — one copy per ISA
// level (x86-64-v4, -v3, baseline), chosen once at load time by an ifunc resolver, as the build
// targets the SSE2 baseline. Left out under clang and sanitizers (ifunc resolvers run before
// their runtime is up). Such functions must not throw: GCC 12 marks their dispatcher nothrow,
// so an exception ends the process (std::terminate); they report failures through their
// return value instead.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define MOERUN_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOERUN_SIMD_CLONES
#endif

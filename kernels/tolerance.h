// How far the optimized kernels may be from the reference kernels, per op — the one place
// these numbers live (tests/unit/test_kernels_*.cc read them). Each entry says why it is not
// zero. Errors are measured per output row as
//   max |opt − ref| / max(max |ref row|, tiny)   (rel_max)   and
//   ‖opt − ref‖₂ / ‖ref‖₂                        (rel_l2),
// and as the fraction of outputs that differ at all for ops whose outputs are bf16.
#pragma once

namespace moerun::kernels::tolerance {

struct Tolerance {
  double rel_max;  // worst element error relative to the row's largest magnitude
  double rel_l2;   // relative L2 error of a row
};

// GEMMs: fp32 accumulation (AMX / AVX-512 FMA) instead of double: a K-term sum carries about
// sqrt(K)·2^-24 relative error before the bf16 output rounding, which then flips at most one
// bf16 ulp (2^-8 relative) of an output.
inline constexpr Tolerance kGemmBf16Out{1.0 / 128, 1.0 / 256};
inline constexpr Tolerance kGemmF32Out{1e-5, 1e-6};

// Per-row elementwise ops with bf16 outputs (norms, RoPE, Hadamard, mHC, SwiGLU, attention):
// fp32 sums and fp32 transcendentals differ by a few fp32 ulps, which flips a bf16 rounding
// of some outputs by one ulp.
inline constexpr Tolerance kBf16Elementwise{1.0 / 128, 1.0 / 256};
// fp32 outputs (rsqrt factors, Sinkhorn weights, compressor pooling, routing weights).
inline constexpr Tolerance kF32Elementwise{1e-5, 1e-6};

}  // namespace moerun::kernels::tolerance

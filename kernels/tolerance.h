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
// bf16 ulp (2^-8 relative) of an output. AMX (TDPBF16PS sums each K tile of 32 products its
// own way) fits the same bounds (measured worst on Sapphire/Emerald Rapids, K ≤ 1152: fp32 out
// rel_max 2.7e-7, rel_l2 1.4e-7; bf16 out rel_max 8.3e-5, rel_l2 1.5e-5).
inline constexpr Tolerance kGemmBf16Out{1.0 / 128, 1.0 / 256};
inline constexpr Tolerance kGemmF32Out{1e-5, 1e-6};

// Per-row elementwise ops with bf16 outputs (norms, RoPE, Hadamard, mHC, SwiGLU): fp32 sums
// and fp32 transcendentals differ by a few fp32 ulps, which flips the bf16 rounding of some
// outputs by one ulp — at most 2^-7 of the row's largest magnitude (measured worst: rel_max
// 1.4e-3 rmsnorm, rel_l2 2.6e-4 hc_expand).
inline constexpr Tolerance kBf16Elementwise{1.0 / 128, 1.0 / 256};
// fp32 outputs (rsqrt factors, Sinkhorn weights, compressor pooling, routing weights): fp32
// sums and exp/sigmoid within ~1 ulp instead of double rounded once — a few 1e-7 relative
// (measured worst: rel_max 6.4e-7, pool; rel_l2 3.0e-7).
inline constexpr Tolerance kF32Elementwise{1e-5, 1e-6};
// Sparse attention: an fp32 exp one ulp off can flip a bf16-rounded probability (P is bf16
// before P·V), moving a dominant key's contribution by 2^-8, and then the output's own bf16
// rounding flips: up to two bf16 ulps (measured worst: rel_max 5.8e-3, rel_l2 7.5e-4).
inline constexpr Tolerance kAttention{1.0 / 64, 1.0 / 256};
// Indexer scores: each head's fp32 dot and weighted term are rounded to bf16 before the
// 64-head sum, so several inner one-ulp flips can add up before the final bf16 rounding
// (measured worst: rel_max 1.1e-3, rel_l2 3.1e-4).
inline constexpr Tolerance kIndexerScores{1.0 / 64, 1.0 / 256};
// For ops with bf16 outputs, the fraction of outputs that differ from the reference at all:
// only near-ties of a bf16 rounding may flip, so a systematic difference (a rounding mode, an
// off-by-one scale) fails here even when each error is one ulp (measured worst: 5.2e-3, indexer
// scores).
inline constexpr double kBf16DifferFraction = 1.0 / 32;

}  // namespace moerun::kernels::tolerance

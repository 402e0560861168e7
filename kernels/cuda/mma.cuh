// The tensor-core pieces of the f16 copy's sweeps (kernels/cuda/mira_cluster.cu and
// mira_mmarows.cu), sm_80 and later: ldmatrix (four 8 x 8 tiles of 16-bit elements from shared
// memory into a warp's fragments, optionally transposed), movmatrix (an 8 x 8 fragment
// transposed in registers) and mma.sync m16n8k16 with f16 operands and f32 accumulators;
// and the f32 vectors they multiply E by, split into two f16 halves. Fragment layouts: the
// PTX ISA's (tests/cuda_emu/cuda_emu.h spells them out and emulates the instructions for the
// CPU tests).
#pragma once

#include <cuda_fp16.h>

#include "kernels/cuda/mira_fused.cuh"

namespace mira::cuda::fused {

#ifdef MIRA_CUDA_EMU
template <bool kTrans>
inline void ldmatrix(unsigned (&r)[4], const __half* p) {
  ::mira::emu::ldmatrix_x4(r, p, kTrans);
}
inline unsigned movmatrix_trans(unsigned r) {
  return ::mira::emu::movmatrix_trans(r);
}
inline void mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  ::mira::emu::mma_m16n8k16(d, a, b);
}
#else
// Lane l gives the address of row l % 8 of tile l / 8 (16-byte aligned); r[i] is tile i's
// fragment (kTrans: of its transpose). The "memory" clobber keeps the loads after the barriers
// that publish the tiles.
#define MIRA_LDMATRIX_X4(TRANS)                                                              \
  asm volatile("ldmatrix.sync.aligned.m8n8.x4" TRANS ".shared.b16 {%0, %1, %2, %3}, [%4];\n" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                              \
               : "r"(a)                                                                      \
               : "memory")
template <bool kTrans>
__device__ __forceinline__ void ldmatrix(unsigned (&r)[4], const __half* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (kTrans) {
    MIRA_LDMATRIX_X4(".trans");
  } else {
    MIRA_LDMATRIX_X4("");
  }
}
#undef MIRA_LDMATRIX_X4
// An 8 x 8 matrix M of halves held as a fragment (lane 4g + t: M(g, 2t), M(g, 2t + 1)) becomes
// its transpose held the same way (lane 4g + t: M(2t, g), M(2t + 1, g)).
__device__ __forceinline__ unsigned movmatrix_trans(unsigned r) {
  unsigned d;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(r));
  return d;
}
// d += a b (A 16 x 16 row-major, B 16 x 8 column-major, f32 accumulators).
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// An f32 x as two halves, hi = f16(x) and lo = f16((x - hi) 2^11), so hi + lo 2^-11 = x to
// ~22 significant bits wherever x >= 2^-14 (the smallest normal f16; below, the halves lose
// bits), exactly representable in f32.
constexpr float kLoScale = 2048.f;
constexpr float kMinHalf = 0x1p-14f;  // the smallest normal f16
__device__ __forceinline__ void split_half(float x, __half& hi, __half& lo) {
  hi = __float2half_rn(x);
  lo = __float2half_rn((x - __half2float(hi)) * kLoScale);
}

// The halves are stored in fragment order: within each tile of 16, the elements 2t, 2t + 1,
// 2t + 8, 2t + 9 that lane t of a B fragment holds sit together at 4t, so one 8-byte load
// fetches them.
__device__ __forceinline__ int frag_pos(int k) {
  return (k & ~15) | ((k & 7) >> 1) << 2 | ((k >> 3) & 1) << 1 | (k & 1);
}

// B fragment of the k tile at k0: lanes 0-3 hold column 0 (hi), lanes 4-7 column 1 (lo), at
// k = 2t, 2t + 1 and 2t + 8, 2t + 9 (t = lane % 4); the other lanes zeros. Every lane loads (the
// others repeat lanes 0-7's addresses: one wavefront), so the warp stays converged for the mma.
__device__ __forceinline__ void b_fragment(const __half* hi, const __half* lo, int k0, int lane, unsigned (&b)[2]) {
  const uint2 v = *reinterpret_cast<const uint2*>((lane & 4 ? lo : hi) + k0 + 4 * (lane & 3));
  b[0] = lane < 8 ? v.x : 0u;
  b[1] = lane < 8 ? v.y : 0u;
}

// A power of two 2^e with 2^-e x in [2^14, 2^15) for x > 0 normal: scale = 2^-e, unscale = 2^e.
__device__ __forceinline__ void half_scale(float x, float& scale, float& unscale) {
  const int e = static_cast<int>(__float_as_uint(x) >> 23) - 127 - 14;
  scale = __uint_as_float(static_cast<unsigned>(127 - e) << 23);
  unscale = __uint_as_float(static_cast<unsigned>(127 + e) << 23);
}

// The scale of a block's weights for the tensor-core row sums, from its smallest positive
// column sum cmin (the largest weight) and its largest cmaxb (the smallest weight): scale =
// 2^-e puts the largest weight in [2^14, 2^15). Returns whether the smallest weight times it
// stays >= 2^-14. No positive sum (every weight 0): scale 1.
__device__ __forceinline__ bool weight_scale(const FusedArgs& a, float cmin, float cmaxb, float l2max, float& scale,
                                             float& unscale) {
  scale = unscale = 1.f;
  if (!(cmin < INFINITY)) return true;
  const float wmax = mira_weight(a, cmin, l2max), wmin = mira_weight(a, cmaxb, l2max);
  half_scale(wmax, scale, unscale);
  return wmin * scale >= kMinHalf;
}

}  // namespace mira::cuda::fused

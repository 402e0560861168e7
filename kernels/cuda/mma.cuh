// The tensor-core instructions of the cluster plan's f16 sweeps (kernels/cuda/mira_cluster.cu),
// sm_80 and later: ldmatrix (four 8 x 8 tiles of 16-bit elements from shared memory into a
// warp's fragments, optionally transposed) and mma.sync m16n8k16 with f16 operands and f32
// accumulators. Fragment layouts: the PTX ISA's (tests/cuda_emu/cuda_emu.h spells them out
// and emulates both instructions for the CPU tests).
#pragma once

#include <cuda_fp16.h>

namespace mira::cuda::fused {

#ifdef MIRA_CUDA_EMU
template <bool kTrans>
inline void ldmatrix(unsigned (&r)[4], const __half* p) {
  ::mira::emu::ldmatrix_x4(r, p, kTrans);
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
// d += a b (A 16 x 16 row-major, B 16 x 8 column-major, f32 accumulators).
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

}  // namespace mira::cuda::fused

// The cluster plan of the fused MIRA assignment (MiraPlanOptions::cluster, sm_90): thread-block
// clusters of up to 16 blocks (one per SM) hold E in their shared memory, in f32 or as the f16
// copy (E * 2^15). The numerics are those of the other fused kernels; the order of the
// additions is the CPU twin's (kernels/cpu/mira_assign.h, mira_cluster_twin). Shapes:
// plan_model::cluster_shape (kernels/cpu/mira_plan_model.h).
//
// - Work mapping: a cluster holds rows_per_block rows of one view (all N where they fit: the
//   training shapes; else the view's rows in `cluster_groups` row groups, one cluster each, all
//   resident at once). Block r of a cluster owns the columns [r cols, (r + 1) cols) of those
//   rows. A row's sum crosses the cluster: each block publishes its partial row sums in shared
//   memory, and after a cluster barrier every block adds the `size` partials of each row
//   through distributed shared memory (DSMEM: a half-warp per row, one load per block, then a
//   butterfly of shuffles). A column's sum stays in its block, or, with row groups, crosses
//   the view's clusters once per pass as flag-tagged words in L2 (two slots by pass parity),
//   added in group order so every cluster has the same sums. The weights need the largest
//   column sum: each block publishes its own, and after a second cluster barrier every block
//   takes the maximum. Two cluster barriers per pass and no grid barrier.
// - Row sums: a warp per 4 rows, lane l over the column quads l, l + 32, ..., fused
//   multiply-adds, then a butterfly of xor-shuffles.
// - Column sums: threads are (quad, subset) pairs; subset s adds the rows s, s + subsets, ...
//   (fused multiply-adds), then one thread per quad adds the subsets in order.
// - The f16 copy: its last exact_passes updates and the targets read a split copy, the f16
//   cache (hi) plus the f16 of its remainder (lo) in the workspace, ~22 significant bits.
// - The f16 copy on tensor cores (FusedArgs::cluster_mma > 0): the other updates' two sweeps
//   are ldmatrix + mma.sync m16n8k16 with the weights / row inverses as a B operand of two f16
//   halves (see "The f16 copy's sweeps on tensor cores" below), a pass falling back to the
//   fused multiply-adds where the halves would lose bits.
// - Shared-memory buffers reused across passes need no double-buffering: a block rewrites its
//   row partials only after the barrier that follows every block's reads of them, and likewise
//   its maximum. The blocks read each other's shared memory only between the first cluster
//   barrier of a view and its last, which every block passes before it moves on or exits.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused.cuh"
#include "kernels/cuda/mma.cuh"

namespace cg = cooperative_groups;

namespace mira::cuda::fused {

namespace {

constexpr int kBlock = plan_model::kClusterBlock;

// Clusters exist from sm_90 on: the device code below is compiled for those targets only.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define MIRA_HAS_CLUSTERS 1

constexpr int kRows = 4;  // rows per warp batch of the row sums
// Bytes of logits over all clusters per chunk of the first pass (its second read from L2);
// tests/cuda_emu sets fewer, so that its small problems take several chunks.
#ifndef MIRA_CLUSTER_FIRST_PASS_BYTES
#define MIRA_CLUSTER_FIRST_PASS_BYTES (16u << 20)
#endif
constexpr size_t kFirstPassL2 = MIRA_CLUSTER_FIRST_PASS_BYTES;

// A block's shared memory: E (rows x ld of TE), then floats, then (tensor-core sweeps) halves,
// each region 16-byte aligned (plan_model::cluster_layout counts the same bytes). With the
// tensor-core sweeps, rows and columns are padded to tiles of 16 (c16 columns, r16 rows).
template <typename TE>
struct Smem {
  TE* E;         // rows x ld: the cache of E (f32, or f16 of E * 2^15)
  float* dslot;  // rows: this block's partial row sums, read by the whole cluster
  float* mslot;  // rows: this block's partial row maxima (first pass), read by the whole cluster
  float* rinv;   // rows: the rows' 1 / sum
  float* rmax;   // rows: the rows' maxima (the first pass forms E from them)
  float* w;      // cols: the weights of this block's columns
  float* red;    // max(subsets, groups, chunks) x c16: the column subsets' or chunks' sums, then the groups'
  // The tensor-core sweeps' B operands, f16 halves hi + lo 2^-11: the weights times the
  // block's scale (c16 each), and the row inverses times 2^15 (r16 each).
  __half *whi, *wlo, *rhi, *rlo;
};

template <typename TE>
__device__ __forceinline__ Smem<TE> smem_layout(unsigned char* base, int rows, int cols, int ld, bool mma,
                                                int red_rows) {
  const int r4 = plan_model::cluster_rows_padded(rows, mma);
  const int c16 = plan_model::cluster_cols_padded(cols, mma);
  const size_t e_bytes = (static_cast<size_t>(mma ? r4 : rows) * ld * sizeof(TE) + 15) / 16 * 16;
  Smem<TE> s;
  s.E = reinterpret_cast<TE*>(base);
  s.dslot = reinterpret_cast<float*>(base + e_bytes);
  s.mslot = s.dslot + r4;
  s.rinv = s.mslot + r4;
  s.rmax = s.rinv + r4;
  s.w = s.rmax + r4;
  s.red = s.w + c16;
  s.whi = reinterpret_cast<__half*>(s.red + static_cast<size_t>(red_rows) * c16);
  s.wlo = s.whi + c16;
  s.rhi = s.wlo + c16;
  s.rlo = s.rhi + r4;
  return s;
}

constexpr int kMaxSize = 16;  // blocks per cluster at most

// The sum (MAX: the maximum) over the cluster's blocks of the float at p in each block's
// shared memory, for the half-warp that calls it: lane l of the half loads block l's copy (0,
// or -inf for MAX, where l >= size or !active), all 16 loads at once, then a butterfly of
// xor-shuffles adds them; both partners of a step add the same two values, so every lane of
// the half gets the same bits (the twin's order). All 32 lanes of the warp must call it.
template <bool MAX>
__device__ __forceinline__ float cluster_reduce(cg::cluster_group& cl, float* p, int size, bool active) {
  const int b = threadIdx.x & (kMaxSize - 1);
  float x = MAX ? -INFINITY : 0.f;
  if (active && b < size) x = *cl.map_shared_rank(p, b);
#pragma unroll
  for (int off = kMaxSize / 2; off >= 1; off >>= 1) {
    const float y = __shfl_xor_sync(kFull, x, off);
    x = MAX ? fmaxf(x, y) : x + y;
  }
  return x;
}

// cluster_reduce over kBatchRows rows at once: the half-warp's rows first, first + stride, ...
// (those >= end idle), all their DSMEM loads issued before the butterflies, so that one load
// latency (~200 cycles between SMs) covers the batch instead of one per row. Each row's
// additions are cluster_reduce's: the same bits.
constexpr int kBatchRows = 8;
template <bool MAX>
__device__ __forceinline__ void cluster_reduce_rows(cg::cluster_group& cl, float* p, int first, int stride, int end,
                                                    int size, float (&x)[kBatchRows]) {
  const int b = threadIdx.x & (kMaxSize - 1);
#pragma unroll
  for (int u = 0; u < kBatchRows; ++u) {
    const int i = first + u * stride;
    x[u] = MAX ? -INFINITY : 0.f;
    if (i < end && b < size) x[u] = *cl.map_shared_rank(p + i, b);
  }
#pragma unroll
  for (int off = kMaxSize / 2; off >= 1; off >>= 1)
#pragma unroll
    for (int u = 0; u < kBatchRows; ++u) {
      const float y = __shfl_xor_sync(kFull, x[u], off);
      x[u] = MAX ? fmaxf(x[u], y) : x[u] + y;
    }
}

__device__ __forceinline__ void fma4(const float (&e)[kVec], float b, float (&c)[kVec]) {
#pragma unroll
  for (int u = 0; u < kVec; ++u) c[u] = fmaf(e[u], b, c[u]);
}

// Where a pass reads E of this block's rows (local index i) and column quad q: the cache...
// (row(i) once per row, then load(row, q) per quad: the row's address is not recomputed.)
template <typename TE>
struct CacheE {
  const TE* E;
  int ld;  // elements per row
  using Row = const TE*;
  __device__ __forceinline__ Row row(int i) const { return E + static_cast<size_t>(i) * ld; }
  __device__ __forceinline__ void advance(Row& r, int n) const { r += static_cast<size_t>(n) * ld; }
  __device__ __forceinline__ void load(Row r, int q, float (&v)[kVec]) const { ECache<TE>::load(r + q * kVec, v); }
  __device__ __forceinline__ void operator()(int i, int q, float (&v)[kVec]) const { load(row(i), q, v); }
};
// ... or E computed in f32 from the logits and the row maxima (0 beyond K), as the first pass
// forms it.
template <typename TIn>
struct ExactE {
  const TIn* logits;  // row 0 of this cluster's rows
  const float* rmax;
  int K, col0;
  float k2;
  bool vec;
  __device__ __forceinline__ void operator()(int i, int q, float (&v)[kVec]) const {
    const int col = col0 + q * kVec;
    load_logits4(logits + static_cast<size_t>(i) * K, col, K, vec, v);
    const float m = rmax[i];
#pragma unroll
    for (int u = 0; u < kVec; ++u) v[u] = col + u < K ? exp2f((v[u] - m) * k2) : 0.f;
  }
};

// The f16 copy split in two: hi = f16(S) in shared memory (the cache, S = E * 2^15) and lo =
// f16((S - hi) * 2^11) in a workspace that stays in L2, so hi + lo 2^-11 = S to ~22
// significant bits (exactly representable in f32, so the fused multiply-add below is exact).
// The last updates and the targets read it instead of recomputing E from the logits in HBM.
__device__ __forceinline__ void split_f16(const float (&S)[kVec], float (&hi)[kVec], float (&lo)[kVec]) {
#pragma unroll
  for (int u = 0; u < kVec; ++u) {
    __half h, l;
    split_half(S[u], h, l);
    hi[u] = __half2float(h);
    lo[u] = __half2float(l);
  }
}
struct SplitE {
  const __half* hi;  // shared memory, rows of ld
  const __half* lo;  // the workspace, row 0 of this cluster, rows of Kp from this block's column 0
  int ld, Kp;
  struct Row {
    const __half *hi, *lo;
  };
  __device__ __forceinline__ Row row(int i) const {
    return {hi + static_cast<size_t>(i) * ld, lo + static_cast<size_t>(i) * Kp};
  }
  __device__ __forceinline__ void advance(Row& r, int n) const {
    r.hi += static_cast<size_t>(n) * ld;
    r.lo += static_cast<size_t>(n) * Kp;
  }
  __device__ __forceinline__ void load(const Row& r, int q, float (&v)[kVec]) const {
    float l[kVec];
    ECache<__half>::load(r.lo + q * kVec, l);
    ECache<__half>::load(r.hi + q * kVec, v);
#pragma unroll
    for (int u = 0; u < kVec; ++u) v[u] = fmaf(l[u], 1.f / kLoScale, v[u]);
  }
  __device__ __forceinline__ void operator()(int i, int q, float (&v)[kVec]) const {
    load(row(i), q, v);
  }
};

// d_i = sum_j w_j E_ij over this block's columns for its `rows` rows, into dslot (the twin's
// warp_dot): a warp per kRows rows, lane l over the quads l, l + 32, ... A batch's rows past
// `rows` read the last row instead (no predicates in the loop) and are not stored.
template <typename Src>
__device__ __forceinline__ void row_sums(const Src& src, const float* w, float* dslot, int rows, int quads) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const float4* w4 = reinterpret_cast<const float4*>(w);
  for (int i0 = warp * kRows; i0 < rows; i0 += nwarps * kRows) {
    typename Src::Row rp[kRows];
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      rp[r] = src.row(min(i0 + r, rows - 1));
      acc[r] = 0.f;
    }
    for (int q = lane; q < quads; q += 32) {
      const float4 wq = w4[q];
      float e[kRows][kVec];
#pragma unroll
      for (int r = 0; r < kRows; ++r) src.load(rp[r], q, e[r]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        acc[r] = fmaf(wq.x, e[r][0], acc[r]);
        acc[r] = fmaf(wq.y, e[r][1], acc[r]);
        acc[r] = fmaf(wq.z, e[r][2], acc[r]);
        acc[r] = fmaf(wq.w, e[r][3], acc[r]);
      }
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1)
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] += __shfl_xor_sync(kFull, acc[r], off);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (lane == r && i0 + r < rows) dslot[i0 + r] = acc[r];
  }
}

// The column subsets' sums sum_i E_ij rinv_i: thread (quad q, subset sub) adds the rows sub,
// sub + subsets, ... in order, into red[sub][q].
template <typename Src>
__device__ __forceinline__ void column_subsets(const Src& src, const float* rinv, float* red, int rows, int quads,
                                               int subsets) {
  const int q = threadIdx.x % quads, sub = threadIdx.x / quads;
  if (sub >= subsets) return;
  float acc[kVec] = {0.f, 0.f, 0.f, 0.f};
  // Unrolled so that several rows' loads go out together; the additions stay in row order.
  typename Src::Row rp = src.row(sub);
  const float* ri = rinv + sub;
  const int n = sub < rows ? (rows - 1 - sub) / subsets + 1 : 0;  // rows sub, sub + subsets, ...
#pragma unroll 4
  for (int k = 0; k < n; ++k) {
    float e[kVec];
    src.load(rp, q, e);
    src.advance(rp, subsets);
    fma4(e, *ri, acc);
    ri += subsets;
  }
  reinterpret_cast<float4*>(red)[static_cast<size_t>(sub) * quads + q] = make_float4(acc[0], acc[1], acc[2], acc[3]);
}

// ---- The f16 copy's sweeps on tensor cores (FusedArgs::cluster_mma > 0)
// E (f16, rows of ld) is the A operand: ldmatrix tiles of 16 x 16, as they are for the row
// sums, transposed for the column sums. The B operand is a vector split into two f16 halves,
// hi = f16(x) in column 0 and lo = f16((x - hi) 2^11) in column 1 (columns 2-7 zero), so the
// accumulators hold sum E hi and sum E lo (split_half, as the split copy), and hi + lo 2^-11
// carries ~22 significant bits of x wherever x >= 2^-14 (below, the halves lose bits: such a
// pass goes to the fused multiply-adds). Row sums: x = w 2^-e, the block's weights against a power of two that puts
// its largest in [2^14, 2^15); column sums: x = rinv 2^15 (<= ~1: a row's largest element of
// the copy is 2^15 and its weight >= 1). The halves, their fragment order and the weights'
// scale: kernels/cuda/mma.cuh.

// d_i = sum_j w_j E_ij over this block's c16 columns, into dslot for its `rows` rows: warp w
// owns the row tiles w, w + warps, ..., two at a time (one B fragment for both), one ldmatrix
// and one mma per k tile; then hi + lo 2^-11 times unscale (the twin's order: each accumulator
// adds the columns in order).
__device__ __forceinline__ void mma_row_sums(const __half* E, int ld, const __half* whi, const __half* wlo,
                                             float unscale, float* dslot, int rows, int c16) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int tiles = (rows + 15) / 16, ktiles = c16 / 16;
  const int m = lane >> 3, r = lane & 7;  // lane gives row r of ldmatrix tile m
  auto store = [&](int mt, const float(&d)[4]) {
    if ((lane & 3) == 0) {
      const int row = 16 * mt + (lane >> 2);
      if (row < rows) dslot[row] = fmaf(d[1], 1.f / kLoScale, d[0]) * unscale;
      if (row + 8 < rows) dslot[row + 8] = fmaf(d[3], 1.f / kLoScale, d[2]) * unscale;
    }
  };
  for (int mt = warp; mt < tiles; mt += 2 * nwarps) {
    const bool two = mt + nwarps < tiles;  // uniform across the warp
    float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
    const __half* a0 = E + static_cast<size_t>(16 * mt + r + 8 * (m & 1)) * ld + 8 * (m >> 1);
    const __half* a1 = a0 + static_cast<size_t>(16 * nwarps) * ld;
    for (int kt = 0; kt < ktiles; ++kt) {
      unsigned af[4], bf[2];
      b_fragment(whi, wlo, 16 * kt, lane, bf);
      ldmatrix<false>(af, a0 + 16 * kt);
      mma_16816(d0, af, bf);
      if (two) {
        ldmatrix<false>(af, a1 + 16 * kt);
        mma_16816(d1, af, bf);
      }
    }
    store(mt, d0);
    if (two) store(mt + nwarps, d1);
  }
}

// The column sums sum_i E_ij rinv_i in `chunks` row chunks, chunk c the row tiles [c per,
// (c + 1) per): units (column tile, chunk) over the warps, one transposed ldmatrix and one mma
// per row tile; red[c][j] = hi + lo 2^-11, back from the row inverses' 2^15.
__device__ __forceinline__ void mma_column_chunks(const __half* E, int ld, const __half* rhi, const __half* rlo,
                                                  float* red, int rows, int c16, int chunks) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int ctiles = c16 / 16, rtiles = (rows + 15) / 16, per = (rtiles + chunks - 1) / chunks;
  const int m = lane >> 3, r = lane & 7;
  for (int u = warp; u < ctiles * chunks; u += nwarps) {
    const int ct = u % ctiles, c = u / ctiles;
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    const __half* acol = E + static_cast<size_t>(r + 8 * (m >> 1)) * ld + 16 * ct + 8 * (m & 1);
    const int t1 = min(rtiles, (c + 1) * per);
    for (int rt = c * per; rt < t1; ++rt) {
      unsigned af[4], bf[2];
      ldmatrix<true>(af, acol + static_cast<size_t>(16 * rt) * ld);
      b_fragment(rhi, rlo, 16 * rt, lane, bf);
      mma_16816(d, af, bf);
    }
    if ((lane & 3) == 0) {
      float* out = red + static_cast<size_t>(c) * c16 + 16 * ct + (lane >> 2);
      out[0] = fmaf(d[1], 1.f / kLoScale, d[0]) * (1.f / kF16Scale);
      out[8] = fmaf(d[3], 1.f / kLoScale, d[2]) * (1.f / kF16Scale);
    }
  }
}

// Every block: rinv_i = 1 / (the sum over the cluster's blocks of their partial row sums), or
// 0; a half-warp per row. After the cluster barrier that follows row_sums. With rhi (the
// tensor-core column sums next): also the halves of rinv 2^15, and *wide = 1 where one is
// positive and below 2^-14.
__device__ __forceinline__ void combine_rows(const float* dslot, float* rinv, int rows, int size, cg::cluster_group& cl,
                                             __half* rhi = nullptr, __half* rlo = nullptr, int* wide = nullptr) {
  const int halves = blockDim.x / kMaxSize, half = threadIdx.x / kMaxSize;
  for (int base = 0; base < rows; base += halves * kBatchRows) {  // uniform across the warp
    float z[kBatchRows];
    cluster_reduce_rows<false>(cl, const_cast<float*>(dslot), base + half, halves, rows, size, z);
    if ((threadIdx.x & (kMaxSize - 1)) != 0) continue;
#pragma unroll
    for (int u = 0; u < kBatchRows; ++u) {
      const int i = base + half + u * halves;
      if (i >= rows) continue;
      const float ri = z[u] > 0.f ? 1.f / z[u] : 0.f;
      rinv[i] = ri;
      if (rhi != nullptr) {
        const float x = ri * kF16Scale;
        split_half(x, rhi[frag_pos(i)], rlo[frag_pos(i)]);
        if (x > 0.f && x < kMinHalf) *wide = 1;
      }
    }
  }
}

// The rows of one view that one cluster works on (its rows [r0, r0 + rows) of view v).
template <typename TIn>
struct ClusterRows {
  const TIn* logits;  // row r0
  float* targets;     // row r0
  int v, rows;
};

template <typename TIn, typename TE>
__device__ __forceinline__ void cluster_view(const FusedArgs& a, cg::cluster_group& cl, const Smem<TE>& s,
                                             const ClusterRows<TIn>& cr, int g, float& bad, float& cmax, float* wred,
                                             long long* ph, float& cmin, float* wredmin, int* wide) {
  constexpr bool kRounded = !std::is_same<TE, float>::value;
  const int size = a.cluster, cols = a.cluster_cols, quads = cols / kVec, G = a.cluster_groups;
  const int K = a.K, rows = cr.rows;
  const int rank = static_cast<int>(cl.block_rank()), col0 = rank * cols;
  const int subsets = plan_model::cluster_subsets(quads, a.rows_per_block);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  auto mark = [&](int k) { trace_mark(a, ph, k); };
  // The f16 copy's sweeps on tensor cores: E, the weights and the row inverses padded to tiles
  // of 16 (c16 columns, r16 rows), the pads zero.
  const bool mma = kRounded && a.cluster_mma > 0;
  const int c16 = plan_model::cluster_cols_padded(cols, mma), r16 = plan_model::cluster_rows_padded(rows, mma);
  const int ld = a.cluster_ld;
  const CacheE<TE> cache{s.E, ld};
  const ExactE<TIn> exact{cr.logits, s.rmax, K, col0, a.k2, a.vec_logits};
  // The f16 copy's low halves: (V, groups * rows_per_block, Kp) in the workspace.
  __half* lo_rows = kRounded ? static_cast<__half*>(a.ecache) +
                                   (static_cast<size_t>(cr.v) * a.cluster_groups * a.rows_per_block +
                                    static_cast<size_t>(g) * a.rows_per_block) *
                                       a.Kp +
                                   col0
                             : nullptr;
  const SplitE split{reinterpret_cast<const __half*>(s.E), lo_rows, ld, a.Kp};
  if constexpr (kRounded) {
    if (mma) {
      __half* Eh = reinterpret_cast<__half*>(s.E);
      const __half z = __float2half_rn(0.f);
      for (int k = tid; k < (r16 - rows) * c16; k += blockDim.x)
        Eh[static_cast<size_t>(rows + k / c16) * ld + k % c16] = z;
      if (c16 > cols)
        for (int k = tid; k < rows * (c16 - cols); k += blockDim.x)
          Eh[static_cast<size_t>(k / (c16 - cols)) * ld + cols + k % (c16 - cols)] = z;
      for (int j = cols + tid; j < c16; j += blockDim.x) s.whi[frag_pos(j)] = s.wlo[frag_pos(j)] = z;
      for (int i = rows + tid; i < r16; i += blockDim.x) s.rhi[frag_pos(i)] = s.rlo[frag_pos(i)] = z;
      if (tid == 0) *wide = 0;
    }
  }

  // The first pass, in chunks of rows: the row maxima, then E from a second read of the same
  // logits, which then come from L2 (a chunk is ~kFirstPassL2 bytes of logits over all the
  // launch's clusters: at N 4096 x K 3000, 160 of a cluster's 512 rows; at the training shapes
  // one chunk). The same operations as in one piece: the same bits; a cluster barrier per chunk.
  const size_t row_bytes = static_cast<size_t>(K) * sizeof(TIn) * (gridDim.x / size);
  const int chunk = static_cast<int>(
      min(static_cast<size_t>(max(rows, 1)), max(static_cast<size_t>(32), kFirstPassL2 / row_bytes / 32 * 32)));
  for (int c0 = 0; c0 < rows; c0 += chunk) {
    const int c1 = min(rows, c0 + chunk);
    // This block's maxima of rows [c0, c1) (straight from the logits, -inf beyond K),
    // published for the cluster, and the non-finite logits counted.
    for (int i0 = c0 + warp * kRows; i0 < c1; i0 += nwarps * kRows) {
      float m[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) m[r] = -INFINITY;
      for (int q = lane; q < quads; q += 32) {
        const int col = col0 + q * kVec;
        float x[kRows][kVec];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (i0 + r < c1) load_logits4(cr.logits + static_cast<size_t>(i0 + r) * K, col, K, a.vec_logits, x[r]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (i0 + r >= c1) continue;
#pragma unroll
          for (int u = 0; u < kVec; ++u) {
            if (col + u < K && !isfinite(x[r][u])) bad += 1.f;
            m[r] = fmaxf(m[r], x[r][u]);
          }
        }
      }
#pragma unroll
      for (int off = 16; off >= 1; off >>= 1)
#pragma unroll
        for (int r = 0; r < kRows; ++r) m[r] = fmaxf(m[r], __shfl_xor_sync(kFull, m[r], off));
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (lane == r && i0 + r < c1) s.mslot[i0 + r] = m[r];
    }
    // The first: also, every block of the cluster has started, so its shared memory may be read.
    cl.sync();
    const int halves = blockDim.x / kMaxSize;
    for (int base = c0; base < c1; base += halves * kBatchRows) {  // a half-warp per row
      float m[kBatchRows];
      cluster_reduce_rows<true>(cl, s.mslot, base + tid / kMaxSize, halves, c1, size, m);
#pragma unroll
      for (int u = 0; u < kBatchRows; ++u) {
        const int i = base + tid / kMaxSize + u * halves;
        if (i < c1 && (tid & (kMaxSize - 1)) == 0) s.rmax[i] = m[u];
      }
    }
    __syncthreads();
    // E = exp2((L - max) k2), 0 beyond K, as the cache holds it. Several rows' loads in flight
    // per thread.
    const int nq1 = c1 * quads;
    for (int idx0 = c0 * quads + tid; idx0 < nq1; idx0 += 4 * kBlock) {
      float e[4][kVec];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int idx = idx0 + k * kBlock;
        if (idx < nq1) exact(idx / quads, idx % quads, e[k]);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int idx = idx0 + k * kBlock;
        if (idx >= nq1) continue;
        if constexpr (kRounded) {
          float S[kVec], hi[kVec], lo[kVec];
#pragma unroll
          for (int u = 0; u < kVec; ++u) S[u] = e[k][u] * kF16Scale;
          split_f16(S, hi, lo);
          ECache<TE>::store(s.E + static_cast<size_t>(idx / quads) * ld + (idx % quads) * kVec, hi);
          ECache<__half>::store(lo_rows + static_cast<size_t>(idx / quads) * a.Kp + (idx % quads) * kVec, lo);
        } else {
          ECache<TE>::store(s.E + static_cast<size_t>(idx / quads) * ld + (idx % quads) * kVec, e[k]);
        }
      }
    }
  }
  // The weights of the update from u = 1.
  const int nq = rows * quads;
  for (int j = tid; j < cols; j += blockDim.x) s.w[j] = col0 + j < K ? 1.f : 0.f;
  // ... on tensor cores (weight_scale of weights 1: 2^14; none where the block has no column).
  bool mma_rows = false;  // this pass's row sums on tensor cores
  float wunscale = 1.f;
  if constexpr (kRounded) {
    if (mma) {  // pass 0 is never on the split copy (exact_from >= 1)
      mma_rows = true;
      const float sc = col0 < K ? 0x1p14f : 1.f;
      wunscale = col0 < K ? 0x1p-14f : 1.f;
      for (int j = tid; j < cols; j += blockDim.x)
        split_half(col0 + j < K ? sc : 0.f, s.whi[frag_pos(j)], s.wlo[frag_pos(j)]);
    }
  }
  __syncthreads();
  mark(kTraceFirst);

  for (int p = 0; p <= a.iters + 1; ++p) {
    // The f16 copy's last updates and the targets read E to ~22 bits (SplitE); exact_from >
    // iters + 1 for f32.
    const bool split_pass = kRounded && p >= a.exact_from;
    if constexpr (kRounded) {
      if (split_pass) {
        row_sums(split, s.w, s.dslot, rows, quads);
      } else if (mma_rows) {
        mma_row_sums(reinterpret_cast<const __half*>(s.E), ld, s.whi, s.wlo, wunscale, s.dslot, rows, c16);
      }
    }
    if (!split_pass && !mma_rows) {
      row_sums(cache, s.w, s.dslot, rows, quads);
    }
    mark(kTraceRows);
    cl.sync();
    mark(kTraceBarrier1);
    // With the tensor cores: the row inverses' halves too, and whether they hold them.
    const bool mma_pass = mma && !split_pass;
    if (mma_pass) {
      combine_rows(s.dslot, s.rinv, rows, size, cl, s.rhi, s.rlo, wide);
    } else {
      combine_rows(s.dslot, s.rinv, rows, size, cl);
    }
    __syncthreads();
    mark(kTraceReduce);
    if (p > a.iters) break;
    const bool mma_cols = mma_pass && *wide == 0;
    // Column sums of this block's columns over the cluster's rows: subset sums, then the
    // subsets in order (tensor cores: row chunks, then the chunks in order).
    if constexpr (kRounded) {
      if (split_pass) {
        column_subsets(split, s.rinv, s.red, rows, quads, subsets);
      } else if (mma_cols) {
        mma_column_chunks(reinterpret_cast<const __half*>(s.E), ld, s.rhi, s.rlo, s.red, rows, c16, a.cluster_mma);
      }
    }
    if (!split_pass && !mma_cols) {
      column_subsets(cache, s.rinv, s.red, rows, quads, subsets);
    }
    __syncthreads();
    if (mma && tid == 0) *wide = 0;  // every thread read it before the barrier
    float c[kVec] = {0.f, 0.f, 0.f, 0.f};
    if (tid < quads && mma_cols) {
      for (int k = 0; k < a.cluster_mma; ++k) {
        const float4 t = reinterpret_cast<const float4*>(s.red + static_cast<size_t>(k) * c16)[tid];
        c[0] += t.x, c[1] += t.y, c[2] += t.z, c[3] += t.w;
      }
    } else if (tid < quads) {
      const float4* red4 = reinterpret_cast<const float4*>(s.red);
      // Four subsets' loads at a time, then their additions in subset order.
      for (int k0 = 0; k0 < subsets; k0 += 4) {
        float4 t[4] = {};  // (read only where written; the host compiler cannot tell)
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (k0 + k < subsets) t[k] = red4[static_cast<size_t>(k0 + k) * quads + tid];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (k0 + k < subsets) c[0] += t[k].x, c[1] += t[k].y, c[2] += t[k].z, c[3] += t[k].w;
      }
    }
    mark(kTraceRows);
    if (G > 1) {
      // Row groups: the view's other clusters hold the other rows. Each block publishes its
      // quads' sums as flag-tagged words (tag p + 1; slots alternate with the pass's parity,
      // so a cluster one pass ahead never overwrites a word another still waits for), then
      // threads (group, quad) poll for the G groups' words, and each quad adds them in group
      // order: the same sums, bit for bit, in every cluster of the view.
      const unsigned seq = static_cast<unsigned>(p + 1);
      uint2* base = a.ll_partial + (static_cast<size_t>(p & 1) * a.V + cr.v) * G * a.Kp + col0;
      if (tid < quads) ll_store4(base + static_cast<size_t>(g) * a.Kp + tid * kVec, c, seq);
      __syncthreads();  // red's subset sums are all read
      for (int idx = tid; idx < G * quads; idx += blockDim.x) {
        const int gg = idx / quads, q = idx % quads;
        float x[kVec];
        int n = 0;
        while (!ll_load4(base + static_cast<size_t>(gg) * a.Kp + q * kVec, seq, x)) ll_spin(n);
        reinterpret_cast<float4*>(s.red)[idx] = make_float4(x[0], x[1], x[2], x[3]);
      }
      __syncthreads();
      if (tid < quads) {
        const float4* red4 = reinterpret_cast<const float4*>(s.red);
#pragma unroll
        for (int u = 0; u < kVec; ++u) c[u] = 0.f;
        for (int gg = 0; gg < G; ++gg) {
          const float4 t = red4[static_cast<size_t>(gg) * quads + tid];
          c[0] += t.x, c[1] += t.y, c[2] += t.z, c[3] += t.w;
        }
      }
      mark(kTraceReduce);
    }
    // This block's largest column sum, published for the cluster (with the tensor cores also
    // its smallest positive one, for the block's weight scale).
    float m = fmaxf(fmaxf(c[0], c[1]), fmaxf(c[2], c[3]));
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, off));
    if (lane == 0) wred[warp] = m;
    if (mma) {
      float mn = INFINITY;
#pragma unroll
      for (int u = 0; u < kVec; ++u)
        if (c[u] > 0.f) mn = fminf(mn, c[u]);
#pragma unroll
      for (int off = 16; off >= 1; off >>= 1) mn = fminf(mn, __shfl_xor_sync(kFull, mn, off));
      if (lane == 0) wredmin[warp] = mn;
    }
    __syncthreads();
    if (warp == 0) {
      float t = lane < nwarps ? wred[lane] : 0.f;
#pragma unroll
      for (int off = 16; off >= 1; off >>= 1) t = fmaxf(t, __shfl_xor_sync(kFull, t, off));
      if (lane == 0) cmax = t;
      if (mma) {
        float tm = lane < nwarps ? wredmin[lane] : INFINITY;
#pragma unroll
        for (int off = 16; off >= 1; off >>= 1) tm = fminf(tm, __shfl_xor_sync(kFull, tm, off));
        if (lane == 0) cmin = tm;
      }
    }
    cl.sync();
    mark(kTraceBarrier2);
    // The weights of this block's columns from the largest column sum of the view (the same in
    // every block of every cluster of the view), and their halves for the next pass's row sums
    // on tensor cores where the block's scale holds them.
    const float cm = cluster_reduce<true>(cl, &cmax, size, true);  // every half-warp
    const float l2max = log2f(cm);
    bool next_mma = false;
    float wscale = 1.f, next_unscale = 1.f;
    if (mma && p + 1 < a.exact_from) next_mma = weight_scale(a, cmin, cmax, l2max, wscale, next_unscale);
    if (tid < quads) {
      const float w4[kVec] = {mira_weight(a, c[0], l2max), mira_weight(a, c[1], l2max), mira_weight(a, c[2], l2max),
                              mira_weight(a, c[3], l2max)};
      reinterpret_cast<float4*>(s.w)[tid] = make_float4(w4[0], w4[1], w4[2], w4[3]);
      if constexpr (kRounded) {
        if (next_mma)
#pragma unroll
          for (int u = 0; u < kVec; ++u)
            split_half(w4[u] * wscale, s.whi[frag_pos(kVec * tid + u)], s.wlo[frag_pos(kVec * tid + u)]);
      }
    }
    mma_rows = next_mma;
    wunscale = next_unscale;
    __syncthreads();
    mark(kTraceWeights);
  }
  // Targets w_j E_ij / sum_l w_l E_il of this block's columns (E in f32, or the split copy).
  // Four elements' loads per thread before their stores: the split copy's low halves come from
  // L2, and the compiler may not move a load above a store to the targets (both global).
  constexpr int kTargetBatch = 4;
  for (int idx0 = tid; idx0 < nq; idx0 += kTargetBatch * blockDim.x) {
    float e[kTargetBatch][kVec] = {};  // (read only where loaded)
#pragma unroll
    for (int k = 0; k < kTargetBatch; ++k) {
      const int idx = idx0 + k * blockDim.x;
      if (idx >= nq || col0 + (idx % quads) * kVec >= K) continue;
      if constexpr (kRounded) {
        split(idx / quads, idx % quads, e[k]);
      } else {
        cache(idx / quads, idx % quads, e[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kTargetBatch; ++k) {
      const int idx = idx0 + k * blockDim.x;
      const int i = idx / quads, q = idx % quads, col = col0 + q * kVec;
      if (idx >= nq || col >= K) continue;
      const float r = s.rinv[i];
      const float4 w = reinterpret_cast<const float4*>(s.w)[q];
      const float t[kVec] = {w.x * e[k][0] * r, w.y * e[k][1] * r, w.z * e[k][2] * r, w.w * e[k][3] * r};
      float* trow = cr.targets + static_cast<size_t>(i) * K;
      if (a.vec_logits) {
        *reinterpret_cast<float4*>(trow + col) = make_float4(t[0], t[1], t[2], t[3]);
      } else {
#pragma unroll
        for (int u = 0; u < kVec; ++u)
          if (col + u < K) trow[col + u] = t[u];
      }
    }
  }
  mark(kTraceLast);
  // No block leaves, or starts the next view's maxima, while another may still read its row
  // partials.
  cl.sync();
}

template <typename TIn, typename TE>
__device__ __forceinline__ void cluster_body(const FusedArgs& a) {
  cg::cluster_group cl = cg::this_cluster();
  MIRA_DYNAMIC_SMEM(smem_raw);
  __shared__ float wred[kBlock / 32], wredmin[kBlock / 32];
  __shared__ float cmax;                          // this block's largest column sum, read by the whole cluster
  __shared__ float cmin;                          // its smallest positive one (tensor-core weight scale)
  __shared__ int rinv_wide;                       // a row inverse too small for the tensor-core halves
  __shared__ long long ph[kTraceShared];          // MiraPlan::trace (trace_start)
  // The launch shape the plan's layout assumes (launch_cluster): else every index is wrong.
  if (blockDim.x != kBlock || cl.num_blocks() != static_cast<unsigned>(a.cluster)) __trap();
  const bool mma_layout = std::is_same<TE, __half>::value && a.cluster_mma > 0;
  const int quads = a.cluster_cols / kVec;
  const int red_rows = plan_model::cluster_red_rows(plan_model::cluster_subsets(quads, a.rows_per_block),
                                                    a.cluster_groups, a.cluster_mma);
  const Smem<TE> s = smem_layout<TE>(smem_raw, a.rows_per_block, a.cluster_cols, a.cluster_ld, mma_layout, red_rows);
  // Clusters are (view slot, row group) pairs: views_per_group views side by side, each over
  // cluster_groups clusters of rows_per_block rows; the view groups one after another.
  const int cidx = blockIdx.x / a.cluster;
  const int vs = cidx / a.cluster_groups, g = cidx % a.cluster_groups;
  trace_start(a, ph);
  float bad = 0.f;  // non-finite logits seen by this thread
  const int groups = (a.V + a.views_per_group - 1) / a.views_per_group;
  for (int gi = 0; gi < groups; ++gi) {
    const int v = gi * a.views_per_group + vs;
    if (v >= a.V) continue;  // uniform over the view's clusters
    // Constant indices only: indexing the parameter arrays with v would copy them to local memory.
    const TIn* logits = static_cast<const TIn*>(v == 0   ? a.logits[0]
                                                : v == 1 ? a.logits[1]
                                                : v == 2 ? a.logits[2]
                                                         : a.logits[3]);
    float* targets = v == 0 ? a.targets[0] : v == 1 ? a.targets[1] : v == 2 ? a.targets[2] : a.targets[3];
    const int r0 = g * a.rows_per_block;
    ClusterRows<TIn> cr;
    cr.logits = logits + static_cast<size_t>(r0) * a.K;
    cr.targets = targets + static_cast<size_t>(r0) * a.K;
    cr.v = v;
    cr.rows = max(0, min(a.rows_per_block, a.N - r0));
    cluster_view<TIn, TE>(a, cl, s, cr, g, bad, cmax, wred, ph, cmin, wredmin, &rinv_wide);
  }
  trace_finish(a, ph);
  if (bad > 0.f) atomicAdd(a.colsum, bad);  // the plan's workspace starts with the counter
}

// The latency of the plan's two cluster primitives, for bench/mira_assign --probe-cluster:
// clock64 cycles of `iters` cluster barriers, and of `iters` dependent DSMEM loads (thread 0
// of each block chases an index through the next block's shared memory), per block.
__device__ __forceinline__ void probe_body(int iters, long long* out) {
  cg::cluster_group cl = cg::this_cluster();
  __shared__ int next[32];
  if (threadIdx.x < 32) next[threadIdx.x] = 0;
  cl.sync();
  const long long t0 = clock64();
  for (int i = 0; i < iters; ++i) cl.sync();
  const long long t1 = clock64();
  int idx = 0;
  long long t2 = 0, t3 = 0;
  if (threadIdx.x == 0) {
    const unsigned peer = (cl.block_rank() + 1) % cl.num_blocks();
    t2 = clock64();
    for (int i = 0; i < iters; ++i) idx = *cl.map_shared_rank(next + (idx & 31), peer);
    t3 = clock64();
  }
  cl.sync();  // no block leaves while another may read its shared memory
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = t1 - t0;
    out[2 * blockIdx.x + 1] = t3 - t2 + idx;  // idx is 0: keeps the chain from being dropped
  }
}

#endif  // clusters

// Grid: views side by side x row groups clusters of a.cluster blocks (the cluster dimension
// set at launch), kBlock threads each.
template <typename TIn, typename TE>
__global__ void __launch_bounds__(kBlock, 1) mira_cluster_kernel(const __grid_constant__ FusedArgs a) {
#ifdef MIRA_HAS_CLUSTERS
  cluster_body<TIn, TE>(a);
#else
  __trap();  // thread-block clusters need sm_90; mira_plan never picks this kernel below it
#endif
}

__global__ void __launch_bounds__(kBlock, 1) mira_cluster_probe_kernel(int iters, long long* out) {
#ifdef MIRA_HAS_CLUSTERS
  probe_body(iters, out);
#else
  __trap();
#endif
}

// The tensor-core primitives as the sweeps address them (mira_mma_selftest): one warp, A and
// At (16 x 16) in shared memory with rows of 24 halves, B (16 x 8) from global memory; the
// third product transposes At's fragments with movmatrix (mira_mmarows.cu).
__global__ void mira_mma_selftest_kernel(const __half* A, const __half* At, const __half* B, float* out) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  constexpr int kLd = 24;
  __shared__ __align__(16) __half sa[16 * kLd], st[16 * kLd];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    sa[(i / 16) * kLd + i % 16] = A[i];
    st[(i / 16) * kLd + i % 16] = At[i];
  }
  __syncthreads();
  const int g = lane >> 2, t = lane & 3, m = lane >> 3, r = lane & 7;
  auto pack = [](__half lo, __half hi) {
    return static_cast<unsigned>(__half_as_ushort(lo)) | static_cast<unsigned>(__half_as_ushort(hi)) << 16;
  };
  const unsigned b[2] = {pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
                         pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
  unsigned a[4];
  float d[4] = {0.f, 0.f, 0.f, 0.f}, e[4] = {0.f, 0.f, 0.f, 0.f};
  ldmatrix<false>(a, sa + (r + 8 * (m & 1)) * kLd + 8 * (m >> 1));  // as mma_row_sums
  mma_16816(d, a, b);
  ldmatrix<true>(a, st + (r + 8 * (m >> 1)) * kLd + 8 * (m & 1));  // as mma_column_chunks
  mma_16816(e, a, b);
  // The fragments of At transposed in registers, as mira_mmarows.cu's column sums: A again.
  float f[4] = {0.f, 0.f, 0.f, 0.f};
  ldmatrix<false>(a, st + (r + 8 * (m & 1)) * kLd + 8 * (m >> 1));
  const unsigned at[4] = {movmatrix_trans(a[0]), movmatrix_trans(a[2]), movmatrix_trans(a[1]), movmatrix_trans(a[3])};
  mma_16816(f, at, b);
  for (int h = 0; h < 3; ++h) {
    const int o = 128 * h;
    const float* x = h == 0 ? d : h == 1 ? e : f;
    out[o + g * 8 + 2 * t] = x[0];
    out[o + g * 8 + 2 * t + 1] = x[1];
    out[o + (g + 8) * 8 + 2 * t] = x[2];
    out[o + (g + 8) * 8 + 2 * t + 1] = x[3];
  }
#else
  __trap();  // mma.sync with f16 operands and f32 accumulators needs sm_80
#endif
}

}  // namespace

FusedFn cluster_fn(bool bf16_in, MiraCache cache) {
  if (cache == MiraCache::F16)
    return bf16_in ? mira_cluster_kernel<__nv_bfloat16, __half> : mira_cluster_kernel<float, __half>;
  return bf16_in ? mira_cluster_kernel<__nv_bfloat16, float> : mira_cluster_kernel<float, float>;
}

namespace {

cudaLaunchConfig_t cluster_config(int clusters, int size, size_t smem, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * size));
  cfg.blockDim = dim3(kBlock);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(size);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

}  // namespace

int cluster_prepare(bool bf16_in, MiraCache cache, int* smem_static) {
  const void* fn = reinterpret_cast<const void*>(cluster_fn(bf16_in, cache));
  int dev = 0;
  MIRA_CUDA_CHECK(cudaGetDevice(&dev));
  int major = 0, optin = 0;
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 9) return 0;
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes fa{};
  MIRA_CUDA_CHECK(cudaFuncGetAttributes(&fa, fn));
  // A build without sm_90 code (MIRA_CUDA_ARCHS) runs the compute_80 PTX, whose kernel traps.
  if (fa.binaryVersion < 90 && fa.ptxVersion < 90) return 0;
  *smem_static = static_cast<int>(fa.sharedSizeBytes);
  MIRA_CUDA_CHECK(
      cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, std::max(0, optin - *smem_static)));
  // 16 blocks is beyond the portable 8: allowed where the device launches it (H100, H200).
  if (cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    return 8;
  }
  return 16;
}

int cluster_active(bool bf16_in, MiraCache cache, int size, size_t smem) {
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = cluster_config(1, size, smem, nullptr, attr);
  int n = 0;
  const cudaError_t err =
      cudaOccupancyMaxActiveClusters(&n, reinterpret_cast<const void*>(cluster_fn(bf16_in, cache)), &cfg);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // an unsupported cluster size: none run
    return 0;
  }
  return n;
}

void launch_cluster(const FusedArgs& a, bool bf16_in, MiraCache cache, int clusters, size_t smem, cudaStream_t stream) {
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t cfg = cluster_config(clusters, a.cluster, smem, stream, attr);
#ifdef MIRA_CUDA_EMU  // tests/cuda_emu: every cluster at once, as the configuration says
  auto launch = [&](const cudaLaunchConfig_t& c) {
    emu::LaunchConfig ecfg;
    ecfg.grid = c.gridDim.x * c.gridDim.y * c.gridDim.z, ecfg.block = c.blockDim.x;
    ecfg.cluster = c.attrs[0].id == cudaLaunchAttributeClusterDimension ? c.attrs[0].val.clusterDim.x : 0;
    ecfg.smem = c.dynamicSmemBytes;
    emu::launch(ecfg, cluster_fn(bf16_in, cache), a);
    return cudaSuccess;
  };
#else
  const void* fn = reinterpret_cast<const void*>(cluster_fn(bf16_in, cache));
  void* args[] = {const_cast<FusedArgs*>(&a)};
  auto launch = [&](const cudaLaunchConfig_t& c) { return cudaLaunchKernelExC(&c, fn, args); };
#endif
  if (a.cluster_groups > 1) {
    // Row groups wait on each other's column sums: a cooperative launch makes every cluster
    // resident at once, or fails with an error, where another kernel holds SMs that the plan
    // (an idle device's occupancy) counted on (the attribute combines with cluster dimensions
    // on sm_90). Unmeasured: the next GPU run of test_mira_assign_gpu launches it, and
    // launch_row_groups goes on without it if the driver refuses the combination.
    attr[1].id = cudaLaunchAttributeCooperative;
    attr[1].val.cooperative = 1;
    cfg.numAttrs = 2;
    static std::atomic<bool> refused{false};  // the driver refused cooperative + cluster once
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    MIRA_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
    MIRA_CUDA_CHECK(launch_row_groups(cfg, st != cudaStreamCaptureStatusNone, refused, launch));
  } else {
    MIRA_CUDA_CHECK(launch(cfg));
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::cuda::fused

// The probe (tests/cuda_emu has no clock to measure).
#ifndef MIRA_CUDA_EMU

namespace mira::cuda {

ClusterProbe mira_cluster_probe(int size, int iters, long long* scratch) {
  using namespace fused;  // NOLINT(google-build-using-namespace)
  ClusterProbe r;
  r.size = size;
  int smem_static = 0;
  if (cluster_prepare(false, MiraCache::F32, &smem_static) < size) return r;
  const void* fn = reinterpret_cast<const void*>(mira_cluster_probe_kernel);
  if (size > 8) MIRA_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  int dev = 0, optin = 0;
  MIRA_CUDA_CHECK(cudaGetDevice(&dev));
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  // Clusters at once with one block per SM, as the plan's blocks (~200 KB of shared memory).
  const size_t big = static_cast<size_t>(optin - smem_static - 1024);
  r.active = cluster_active(false, MiraCache::F32, size, big);
  if (r.active == 0) return r;
  // The probe's blocks take as much shared memory, so that they too sit one per SM and the
  // barrier and DSMEM latencies are those between SMs.
  int probe_static = 0;
  {
    cudaFuncAttributes fa{};
    MIRA_CUDA_CHECK(cudaFuncGetAttributes(&fa, fn));
    probe_static = static_cast<int>(fa.sharedSizeBytes);
  }
  const size_t probe_smem = static_cast<size_t>(optin - probe_static);
  MIRA_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(probe_smem)));
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = cluster_config(1, size, probe_smem, nullptr, attr);
  void* args[] = {&iters, &scratch};
  std::vector<long long> h(2 * static_cast<size_t>(size));
  for (int rep = 0; rep < 2; ++rep) {  // the first launch warms up
    MIRA_CUDA_CHECK(cudaLaunchKernelExC(&cfg, fn, args));
    MIRA_CUDA_CHECK(cudaDeviceSynchronize());
  }
  MIRA_CUDA_CHECK(cudaMemcpy(h.data(), scratch, h.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  for (int b = 0; b < size; ++b) {
    r.barrier_cycles = std::max(r.barrier_cycles, static_cast<double>(h[2 * b]) / iters);
    r.dsmem_cycles = std::max(r.dsmem_cycles, static_cast<double>(h[2 * b + 1]) / iters);
  }
  return r;
}

}  // namespace mira::cuda

#endif  // MIRA_CUDA_EMU

namespace mira::cuda {

void mira_mma_selftest(const void* A, const void* At, const void* B, float* out, cudaStream_t stream) {
  MIRA_LAUNCH(1, 32, 0, stream, fused::mira_mma_selftest_kernel)
  (static_cast<const __half*>(A), static_cast<const __half*>(At), static_cast<const __half*>(B), out);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::cuda

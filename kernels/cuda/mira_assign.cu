// MIRA assignment and Sinkhorn-Knopp on CUDA; see mira_assign.cuh for the variants and
// kernels/cpu/mira_assign.h for the numerics (rescaled weights w >= 1, zero-mass columns,
// row-stable E with row maximum 1).
//
// The fused kernel, and why it looks the way it does:
// - Work mapping: a block owns a contiguous run of rows of one view and every column; thread t
//   owns columns (ch * blockDim + t) * 4 + u (ch < NCH, u < 4), the same in every pass, so its
//   weights w and its column-sum partials c live in registers and every access to E, in shared
//   memory or the workspace, is a coalesced 16-byte (f32) or 8-byte (bf16) vector.
// - Rows go R at a time (R x 4 NCH values of E in registers): each thread forms R partial
//   row sums, a warp reduces the R of them with a transposing butterfly (R - 1 shuffles
//   instead of 5 R), warps combine through shared memory behind one __syncthreads
//   (double-buffered), and each thread then adds E_ij / r_i to its column partials from the
//   registers it already holds: E is read once per pass.
// - Column sums are made deterministic: every block writes its K partials, a grid barrier,
//   then tile t of 32 columns is summed over the blocks in a fixed order by one block (lanes
//   = columns, warps = strided block subsets, then a fixed cross-warp order), another grid
//   barrier. Two grid barriers per pass is the price of bitwise reproducible targets (opt-in,
//   MiraPlanOptions::atomic_sums: the partials added by atomics, one barrier, no such bits).
// - 768 threads at most (K <= 768 * 16), so __launch_bounds__(768, 1) leaves 80 registers
//   per thread for the R x 4 NCH values of E, 2 x 4 NCH of w and c, and addresses; see
//   fused_fn for the R that fits each NCH without spilling.
// - A batch of rows never straddles shared memory and the workspace (the plan makes the
//   shared-memory row count a multiple of R), so one base pointer serves a whole batch.
// The other kernels (unfused variant, statistics, Sinkhorn) are plain: a block per row for
// row reductions, a (column tile, row chunk) grid plus a merge kernel for column reductions,
// always summed in a fixed order.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/grid_sync.cuh"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused.cuh"

namespace cg = cooperative_groups;

namespace mira::cuda {

namespace {

using namespace fused;  // NOLINT(google-build-using-namespace): the fused kernels' shared pieces

constexpr int kRowBlock = 256;        // threads of the plain row kernels
constexpr int kColTile = 256;         // columns per block of the plain column kernels
constexpr int kRowsPerChunk = 64;     // rows per block of the plain column kernels

size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

// The pieces of a row batch shared by the passes. load_batch: E of rows [row0, row0 + R) from
// the cache, 0 beyond the block's rows (a batch never straddles shared memory and the
// workspace: smem_rows is a multiple of R).
template <int R, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void load_batch(const BlockRows<TIn, TE>& b, int row0, float (&e)[R][NCH][kVec]) {
  const TE* crow0 = b.cache_row(row0) + b.col(0);
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    if (row0 + rr < b.r1) {
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch)
        ECache<TE>::load(crow0 + static_cast<size_t>(rr) * b.a->Kp + ch * blockDim.x * kVec, e[rr][ch]);
    } else {
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
        for (int u = 0; u < kVec; ++u) e[rr][ch][u] = 0.f;
    }
  }
}

// E of rows [row0, row0 + R) recomputed in f32 from the logits and the first pass's row
// maxima, 0 beyond the block's rows and beyond K: the exact E behind a 16-bit cache.
template <int R, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void load_batch_exact(const BlockRows<TIn, TE>& b, int row0, float (&e)[R][NCH][kVec]) {
  const FusedArgs& a = *b.a;
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const int row = row0 + rr;
    if (row >= b.r1) {
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
        for (int u = 0; u < kVec; ++u) e[rr][ch][u] = 0.f;
      continue;
    }
    const float m = a.rowmax[static_cast<size_t>(b.v) * a.N + row];
#pragma unroll
    for (int ch = 0; ch < NCH; ++ch) {
      load_logits4(b.logits + static_cast<size_t>(row) * a.K, b.col(ch), a.K, a.vec_logits, e[rr][ch]);
#pragma unroll
      for (int u = 0; u < kVec; ++u) e[rr][ch][u] = b.col(ch) + u < a.K ? exp2f((e[rr][ch][u] - m) * a.k2) : 0.f;
    }
  }
}

// The passes on exact E behind a 16-bit cache (the exact updates, the targets) read the
// logits from HBM one batch at a time, between block reductions. They ask L2 for the logits
// of rows [row, row + n) of the block kRowsAhead rows ahead (prefetch.global.L2: no registers;
// holding the next batch's logits in registers, as pass_first does, spilled 8-12 bytes in the
// per-view counter kernels), so that a batch's loads wait on L2 rather than on HBM.
constexpr int kRowsAhead = 4;
template <int n, typename TIn, typename TE>
__device__ __forceinline__ void prefetch_logits(const BlockRows<TIn, TE>& b, int row) {
  const int rows = min(n, b.r1 - row);
  if (rows > 0)
    prefetch_rows_l2(b.logits + static_cast<size_t>(row) * b.a->K, b.a->K * static_cast<int>(sizeof(TIn)), rows,
                     threadIdx.x, blockDim.x);
}

// d_r = sum_j w_j E_rj over this thread's columns.
template <int R, int NCH>
__device__ __forceinline__ void row_dots(const float (&w)[NCH][kVec], const float (&e)[R][NCH][kVec], float (&d)[R]) {
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    d[rr] = 0.f;
#pragma unroll
    for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
      for (int u = 0; u < kVec; ++u) d[rr] = fmaf(w[ch][u], e[rr][ch][u], d[rr]);
  }
}

// c_j += E_rj s_r for the batch's rows below r1 (s: the rows' 1 / total, or 0).
template <int R, int NCH>
__device__ __forceinline__ void add_rows(int row0, int r1, const float (&e)[R][NCH][kVec], const float (&s)[R],
                                         float (&c)[NCH][kVec]) {
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const float sr = row0 + rr < r1 ? s[rr] : 0.f;
#pragma unroll
    for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
      for (int u = 0; u < kVec; ++u) c[ch][u] = fmaf(e[rr][ch][u], sr, c[ch][u]);
  }
}

// The first pass: E from the logits (row maxima, exp, rounding to the cache type), stored to
// the cache; c += E_ij / r_i with r_i = sum_j E_ij (the update from u = 1). RB rows at a time.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void pass_first(const BlockRows<TIn, TE>& b, float (&c)[NCH][kVec], int& parity,
                                           float& bad) {
  const FusedArgs& a = *b.a;
  // The logits of batch k + 1 are loaded before batch k's two block reductions, so their HBM
  // latency overlaps them instead of following them (the same values: the same bits). Only
  // where the batch is 8 values per thread: with 16, the 80-register cap spilled 48-80 bytes.
  constexpr bool kPrefetch = RB * NCH <= 2;
  auto load = [&](int row0, float(&x)[RB][NCH][kVec]) {
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const int row = row0 + rr;
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) {
        if (row < b.r1) {
          load_logits4(b.logits + static_cast<size_t>(row) * a.K, b.col(ch), a.K, a.vec_logits, x[rr][ch]);
        } else {
#pragma unroll
          for (int u = 0; u < kVec; ++u) x[rr][ch][u] = -INFINITY;
        }
      }
    }
  };
  float next[kPrefetch ? RB : 1][NCH][kVec];
  // L2 is also asked for the logits kRowsAhead rows ahead (prefetch_logits), so that a batch's
  // loads wait on L2 rather than HBM.
  prefetch_logits<kRowsAhead>(b, b.r0);
  if constexpr (kPrefetch)
    if (b.r0 < b.r1) load(b.r0, next);
  for (int row0 = b.r0; row0 < b.r1; row0 += RB) {
    float e[RB][NCH][kVec];
    float m[RB], d[RB];
    prefetch_logits<RB>(b, row0 + kRowsAhead);
    if constexpr (kPrefetch) {
#pragma unroll
      for (int rr = 0; rr < RB; ++rr)
#pragma unroll
        for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
          for (int u = 0; u < kVec; ++u) e[rr][ch][u] = next[rr][ch][u];
      if (row0 + RB < b.r1) load(row0 + RB, next);
    } else {
      load(row0, e);
    }
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const int row = row0 + rr;
      m[rr] = -INFINITY;
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) {
#pragma unroll
        for (int u = 0; u < kVec; ++u) {
          if (b.col(ch) + u < a.K && row < b.r1 && !isfinite(e[rr][ch][u])) bad += 1.f;
          m[rr] = fmaxf(m[rr], e[rr][ch][u]);
        }
      }
    }
    RowReduce<RB>::template allreduce<true>(m, b.red, b.red_stride, parity);
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const int row = row0 + rr;
      d[rr] = 0.f;
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
        for (int u = 0; u < kVec; ++u) {
          // Masked columns and rows get 0 (exp2 of -inf - m would be NaN for an all-masked row).
          const float y = row < b.r1 && b.col(ch) + u < a.K ? exp2f((e[rr][ch][u] - m[rr]) * a.k2) : 0.f;
          e[rr][ch][u] = ECache<TE>::round(y);  // iterate on exactly what the cache holds
          d[rr] += e[rr][ch][u];
        }
      if (row < b.r1) {
        TE* crow = b.cache_row(row);
#pragma unroll
        for (int ch = 0; ch < NCH; ++ch) ECache<TE>::store(crow + b.col(ch), e[rr][ch]);
        if (threadIdx.x == 0) a.rowmax[static_cast<size_t>(b.v) * a.N + row] = m[rr];
      }
    }
    RowReduce<RB>::template allreduce<false, true>(d, b.red, b.red_stride, parity);  // d: 1 / total
    add_rows<RB, NCH>(row0, b.r1, e, d, c);
  }
}

// Row rr of the batch at row0 whose first row p points at: rows past row_end read row_end - 1
// again (the update loops add them with a factor 0).
template <typename TE>
__device__ __forceinline__ const TE* batch_row(const TE* p, int rr, int row0, int row_end, size_t kp) {
  return p + static_cast<size_t>(rr == 0 ? 0 : min(rr, row_end - 1 - row0)) * kp;
}

// One batch of pass_update's rows [row_begin, row_end), all in shared memory or all in the
// workspace: the RB rows from row0, p at this thread's first column of row row0. No
// branch per row: a row past row_end (the last batch of a count that RB does not divide)
// reads row_end - 1 again, and add_rows adds it with a factor 0 (E is finite, the partials
// are never -0), so the same bits as loading zeros for it. Guarded loads cost ~20 of the
// loop's ~150 instructions per batch (a branch region and zeroed registers per row;
// bench/RESULTS.md, session 19); a second, unguarded copy of the loop spilled more.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void update_batch(const BlockRows<TIn, TE>& b, const TE* p, int row0, int row_end,
                                             const float (&w)[NCH][kVec], float (&c)[NCH][kVec], int& parity) {
  const size_t kp = static_cast<size_t>(b.a->Kp);
  const int cstep = static_cast<int>(blockDim.x) * kVec;
  // A 16-bit copy's batches of more than 16 values per thread (8 columns x 4 rows, 4 x 8) stay
  // packed in registers, 2 per 4 values, and are widened where used, in row_dots' and
  // add_rows' order: the same values, in 16 registers instead of 32 (unpacked they spilled
  // under the 80-register cap).
  constexpr bool kPacked = !std::is_same<TE, float>::value && RB * NCH > 4;
  float d[RB];
  if constexpr (kPacked) {
    uint2 q[RB][NCH];
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const TE* qr = batch_row(p, rr, row0, row_end, kp);
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) q[rr][ch] = ECache<TE>::load_raw(qr + ch * cstep);
    }
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      d[rr] = 0.f;
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) {
        float e[kVec];
        ECache<TE>::unpack(q[rr][ch], e);
#pragma unroll
        for (int u = 0; u < kVec; ++u) d[rr] = fmaf(w[ch][u], e[u], d[rr]);
      }
    }
    RowReduce<RB>::template allreduce<false, true>(d, b.red, b.red_stride, parity);  // d: 1 / total
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const float sr = row0 + rr < row_end ? d[rr] : 0.f;
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) {
        float e[kVec];
        ECache<TE>::unpack(q[rr][ch], e);
#pragma unroll
        for (int u = 0; u < kVec; ++u) c[ch][u] = fmaf(e[u], sr, c[ch][u]);
      }
    }
  } else {
    float e[RB][NCH][kVec];
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const TE* q = batch_row(p, rr, row0, row_end, kp);
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) ECache<TE>::load(q + ch * cstep, e[rr][ch]);
    }
    row_dots<RB, NCH>(w, e, d);
    RowReduce<RB>::template allreduce<false, true>(d, b.red, b.red_stride, parity);  // d: 1 / total
    add_rows<RB, NCH>(row0, row_end, e, d, c);
  }
}

// The rows [row_begin, row_end), p at this thread's first column of row row_begin, stepping
// RB rows per batch.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void update_rows(const BlockRows<TIn, TE>& b, const TE* p, int row_begin, int row_end,
                                            const float (&w)[NCH][kVec], float (&c)[NCH][kVec], int& parity) {
  const size_t kp = static_cast<size_t>(b.a->Kp);
  for (int row0 = row_begin; row0 < row_end; row0 += RB, p += RB * kp)
    update_batch<RB, NCH>(b, p, row0, row_end, w, c, parity);
}

// The workspace's rows staged through shared memory (MiraPlan::stage_rows): a ring of
// kStageDepth slots of RB rows after the block's smem_rows, into which each thread copies its
// own columns of the batch kStageDepth - 1 ahead with cp.async (no registers in flight, so
// nothing to spill), and from which it reads them as update_batch reads rows in shared
// memory. A thread reads only what it copied itself: cp_async_wait, no block barrier. The
// same values in the same batches: the same bits as update_rows.
constexpr int kStageDepth = 2;

// Slot `slot` of the ring at this thread's first column.
template <int RB, typename TIn, typename TE>
__device__ __forceinline__ TE* stage_slot(const BlockRows<TIn, TE>& b, int slot) {
  return b.scache + (static_cast<size_t>(b.a->smem_rows) + static_cast<size_t>(slot) * RB) * b.a->Kp + b.col(0);
}

// Copies the batch at row0 of the workspace rows (from: this thread's first column of row
// row0) into slot `slot` and closes a group (an empty one past row_end, so that every batch
// waits on the same count). Rows past row_end are not copied: update_batch reads row_end - 1
// in their place.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void stage_batch(const BlockRows<TIn, TE>& b, const TE* from, int row0, int row_end,
                                            int slot) {
  const size_t kp = static_cast<size_t>(b.a->Kp);
  const int cstep = static_cast<int>(blockDim.x) * kVec;
  if (row0 < row_end) {
    TE* to = stage_slot<RB>(b, slot);
#pragma unroll
    for (int rr = 0; rr < RB; ++rr)
      if (row0 + rr < row_end)
#pragma unroll
        for (int ch = 0; ch < NCH; ++ch)
          cp_async<kVec * sizeof(TE)>(to + rr * kp + ch * cstep, from + rr * kp + ch * cstep);
  }
  cp_async_commit();
}

// The ring's first kStageDepth - 1 batches of the workspace rows [row_begin, row_end) (src:
// this thread's first column of row row_begin), issued before the rows in shared memory so
// that they arrive while those are updated.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void stage_first(const BlockRows<TIn, TE>& b, const TE* src, int row_begin, int row_end) {
  const size_t kp = static_cast<size_t>(b.a->Kp);
#pragma unroll
  for (int s = 0; s + 1 < kStageDepth; ++s)
    stage_batch<RB, NCH>(b, src + static_cast<size_t>(s) * RB * kp, row_begin + s * RB, row_end, s);
}

template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void update_rows_staged(const BlockRows<TIn, TE>& b, const TE* src, int row_begin,
                                                   int row_end, const float (&w)[NCH][kVec], float (&c)[NCH][kVec],
                                                   int& parity) {
  const size_t kp = static_cast<size_t>(b.a->Kp);
  const TE* next = src + static_cast<size_t>(kStageDepth - 1) * RB * kp;  // the batch to copy next
  int slot = 0;
  for (int row0 = row_begin; row0 < row_end; row0 += RB, next += RB * kp) {
    // Slot slot - 1 (mod depth) was last read by this thread's previous batch: refill it.
    stage_batch<RB, NCH>(b, next, row0 + (kStageDepth - 1) * RB, row_end, slot == 0 ? kStageDepth - 1 : slot - 1);
    cp_async_wait<kStageDepth - 1>();  // this batch's group is complete
    update_batch<RB, NCH>(b, stage_slot<RB>(b, slot), row0, row_end, w, c, parity);
    slot = slot + 1 == kStageDepth ? 0 : slot + 1;
  }
  // Nothing is left in flight: the groups after the last batch's are empty.
}

// An update: r_i = sum_j w_j E_ij, c_j += E_ij / r_i, E from the cache. The hot loop: the
// block's rows in shared memory, then those in the workspace, each with a pointer that steps
// from batch to batch (not a row address worked out per batch, and shared-memory loads the
// compiler can see as such). The same batches as load_batch's loop, so the same bits: a batch
// never straddles the two (smem_rows is a multiple of RB, or all of the block's rows).
// STAGED (MiraPlan::stage_rows): the workspace's rows through the shared-memory ring of
// update_rows_staged, its first batches asked for before the rows in shared memory.
template <int RB, int NCH, bool STAGED, typename TIn, typename TE>
__device__ __forceinline__ void pass_update(const BlockRows<TIn, TE>& b, const float (&w)[NCH][kVec],
                                            float (&c)[NCH][kVec], int& parity) {
  const int split = min(b.r1, b.r0 + b.a->smem_rows);
  if constexpr (STAGED) {
    // The workspace pointer is formed twice rather than held across the shared-memory rows
    // (a register less there; it is a few integer operations per pass).
    if (split < b.r1) stage_first<RB, NCH>(b, b.cache_row(split) + b.col(0), split, b.r1);
    update_rows<RB, NCH>(b, b.scache + b.col(0), b.r0, split, w, c, parity);
    if (split < b.r1) update_rows_staged<RB, NCH>(b, b.cache_row(split) + b.col(0), split, b.r1, w, c, parity);
    return;
  }
  update_rows<RB, NCH>(b, b.scache + b.col(0), b.r0, split, w, c, parity);
  if (split < b.r1) update_rows<RB, NCH>(b, b.cache_row(split) + b.col(0), split, b.r1, w, c, parity);
}

// pass_update on exact E (load_batch_exact), R rows at a time: the last updates of a 16-bit cache.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void pass_update_exact(const BlockRows<TIn, TE>& b, const float (&w)[NCH][kVec],
                                                  float (&c)[NCH][kVec], int& parity) {
  prefetch_logits<kRowsAhead>(b, b.r0);
  for (int row0 = b.r0; row0 < b.r1; row0 += RB) {
    float e[RB][NCH][kVec];
    float d[RB];
    prefetch_logits<RB>(b, row0 + kRowsAhead);
    load_batch_exact<RB, NCH>(b, row0, e);
    row_dots<RB, NCH>(w, e, d);
    RowReduce<RB>::template allreduce<false, true>(d, b.red, b.red_stride, parity);  // d: 1 / total
    add_rows<RB, NCH>(row0, b.r1, e, d, c);
  }
}

// The last pass: T_ij = w_j E_ij / sum_l w_l E_il. With a 16-bit cache E is recomputed in
// f32 from the logits and the stored row maxima, so the targets see exact E.
template <int RB, int NCH, typename TIn, typename TE>
__device__ __forceinline__ void pass_targets(const BlockRows<TIn, TE>& b, const float (&w)[NCH][kVec], int& parity) {
  const FusedArgs& a = *b.a;
  constexpr bool kExact = !std::is_same<TE, float>::value;
  if constexpr (kExact) prefetch_logits<kRowsAhead>(b, b.r0);
  for (int row0 = b.r0; row0 < b.r1; row0 += RB) {
    float e[RB][NCH][kVec];
    float d[RB];
    if constexpr (kExact) {
      prefetch_logits<RB>(b, row0 + kRowsAhead);
      load_batch_exact<RB, NCH>(b, row0, e);
    } else {
      load_batch<RB, NCH>(b, row0, e);
    }
    row_dots<RB, NCH>(w, e, d);
    RowReduce<RB>::template allreduce<false, true>(d, b.red, b.red_stride, parity);  // d: 1 / total
#pragma unroll
    for (int rr = 0; rr < RB; ++rr) {
      const int row = row0 + rr;
      if (row >= b.r1) continue;
      const float s = d[rr];
      float* trow = b.targets + static_cast<size_t>(row) * a.K;
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch) {
        const int col = b.col(ch);
        float t[kVec];
#pragma unroll
        for (int u = 0; u < kVec; ++u) t[u] = w[ch][u] * e[rr][ch][u] * s;
        if (a.vec_logits && col < a.K) {
          *reinterpret_cast<float4*>(trow + col) = make_float4(t[0], t[1], t[2], t[3]);
        } else {
#pragma unroll
          for (int u = 0; u < kVec; ++u)
            if (col + u < a.K) trow[col + u] = t[u];
        }
      }
    }
  }
}

// Grid: views_per_group * blocks_per_view blocks, all resident (cooperative launch); block:
// ceil(K / (4 NCH)) threads rounded up to warps. R rows per batch in the update passes (R * 4
// NCH = 32 values of E in registers); the first and last passes, which hold more per row,
// take half as many.
// The fused kernel's opt-in levers (its last template argument, OPT, a set of these bits).
constexpr int kOptStaged = 1;      // MiraPlan::stage_rows: the workspace's rows staged through shared memory
constexpr int kOptAtomicSums = 2;  // MiraPlan::atomic_sums: the column sums added by atomics
// Float atomics on global memory flush subnormal inputs and results to zero (REDG...FTZ in the
// SASS), where the plain kernel's sums keep them: atomic sums are added scaled by 2^64 and
// unscaled when read (exact: powers of two; a view's sums are at most its N rows, far below
// 2^64), so that only sums below 2^-190 would flush.
constexpr float kAtomicSumScale = 0x1p64f, kAtomicSumUnscale = 0x1p-64f;

// Clears block bv's share of one view's K-vector (buffer `sums`, Kp floats) for a later pass:
// the 4-column chunks of this thread's columns whose index is bv modulo the view's blocks (no
// loop: a predicated store per chunk).
template <int NCH, typename TIn, typename TE>
__device__ __forceinline__ void clear_sums_share(const BlockRows<TIn, TE>& b, float* sums, int bv, int bpv) {
  constexpr float kZero[kVec] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int ch = 0; ch < NCH; ++ch)
    if ((ch * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x)) % bpv == bv)
      ECache<float>::store(sums + b.col(ch), kZero);
}

template <typename TIn, typename TE, int NCH, int R, int SYNC = 0, int OPT = 0>
__global__ void __launch_bounds__(kFusedMaxBlock, 1) mira_fused_kernel(const __grid_constant__ FusedArgs a) {
  constexpr bool STAGED = (OPT & kOptStaged) != 0;
  // Atomic column sums: after its rows of pass p a block adds its partials into buffer
  // p % kMiraSumBuffers of its view (zeroed before the launch) and meets the others at one
  // barrier; the next pass's weights read that buffer. Pass p (p >= 2) also clears the block's
  // share of buffer (p + 1) % kMiraSumBuffers: its last readers (the weights of pass p - 1)
  // were done before the barrier that ended pass p - 1, and its next writers (pass p + 1's
  // additions) wait for the barrier that ends pass p.
  constexpr bool kAtomic = (OPT & kOptAtomicSums) != 0;
  // Rows per batch of the first pass and the targets: half the update's, but the f16 copy's
  // packed 4-row kernel (8 columns) keeps the 2-row kernel's 1, prefetch included (over 12
  // warps RowReduce<1> sums and maxes a row as RowReduce<2> does: the same bits).
  constexpr bool kPacked4 = !std::is_same<TE, float>::value && NCH == 2 && R == 4;
  constexpr int RH = kPacked4 ? 1 : R > 1 ? R / 2 : 1;
  MIRA_DYNAMIC_SMEM(smem_raw);
  __shared__ float red[2 * 32 * R];
  __shared__ float redc[kFusedMaxBlock];  // the column reduction's (subset, column) sums
  cg::grid_group grid = cg::this_grid();
  unsigned* sync_target = fused_sync_target<SYNC>(a);

  const int vg = fused_view_group(a), bv = fused_view_block(a);
  const int groups = (a.V + a.views_per_group - 1) / a.views_per_group;
  int parity = 0;
  float bad = 0;  // non-finite logits seen by this thread

  __shared__ long long ph[kTraceShared];  // MiraPlan::trace (trace_start)
  trace_start(a, ph);
  auto mark = [&](int k) { trace_mark(a, ph, k); };

  for (int gi = 0; gi < groups; ++gi) {
    const int v = gi * a.views_per_group + vg;
    const bool active = v < a.V;  // uniform per block
    const BlockRows<TIn, TE> b = block_rows<TIn>(a, v, bv, reinterpret_cast<TE*>(smem_raw), red, 32 * R);

    for (int p = a.pass_begin; p < a.pass_end; ++p) {
      float c[NCH][kVec];
#pragma unroll
      for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
        for (int u = 0; u < kVec; ++u) c[ch][u] = 0.f;
      // ViewCounterStagger: the view groups' passes alternate from the first update on.
      if (gi == 0 && p == 1 && a.pass_begin == 0 && a.iters >= 1) fused_view_stagger<SYNC>(a, sync_target);

      if (active) {
        if (p == 0) {
          pass_first<RH, NCH>(b, c, parity, bad);
          mark(kTraceFirst);
        } else {
          // Weights from the previous pass's column sums: w_j = (c_j / max c)^(-beta), capped;
          // 0 for an empty column (including the padding beyond K).
          float w[NCH][kVec];
          if (!kAtomic && a.colsum_max) {
            // From the column reduction's log2 of each sum and its largest sum: one round of
            // loads and no block reduction (the same max, hence the same weights, as below).
#pragma unroll
            for (int ch = 0; ch < NCH; ++ch)
              ECache<float>::load(a.colsum_log2 + static_cast<size_t>(v) * a.Kp + b.col(ch), w[ch]);
            const float l2max = log2f(__uint_as_float(a.colsum_max[static_cast<size_t>(v) * (a.iters + 1) + (p - 1)]));
#pragma unroll
            for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
              for (int u = 0; u < kVec; ++u) w[ch][u] = mira_weight_l2(a, w[ch][u], l2max);
          } else {
            float cm[1] = {0.f};
            const float* src = kAtomic ? a.sums + (static_cast<size_t>((p - 1) % kMiraSumBuffers) * a.V + v) * a.Kp
                                       : a.colsum + static_cast<size_t>(v) * a.Kp;
#pragma unroll
            for (int ch = 0; ch < NCH; ++ch) ECache<float>::load(src + b.col(ch), w[ch]);
            if constexpr (kAtomic)
#pragma unroll
              for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
                for (int u = 0; u < kVec; ++u) w[ch][u] *= kAtomicSumUnscale;
#pragma unroll
            for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
              for (int u = 0; u < kVec; ++u) cm[0] = fmaxf(cm[0], w[ch][u]);
            RowReduce<1>::allreduce<true>(cm, red, 32 * R, parity);
            const float l2max = log2f(cm[0]);
#pragma unroll
            for (int ch = 0; ch < NCH; ++ch)
#pragma unroll
              for (int u = 0; u < kVec; ++u) {
                const float x = w[ch][u];
                w[ch][u] = mira_weight(a, x, l2max);
              }
          }
          mark(kTraceWeights);
          if (p <= a.iters) {
            // The last updates of a 16-bit cache read exact E (exact_from > iters otherwise).
            constexpr bool kRounded = !std::is_same<TE, float>::value;
            if (kRounded && p >= a.exact_from) {
              // A 16-bit copy's packed kernels read exact E R / 2 rows at a time, unpacked (at
              // 8 columns, 384 threads, RowReduce<2> sums each row as RowReduce<4> does).
              constexpr int kExactR = kRounded && R * NCH > 4 ? (R > 1 ? R / 2 : 1) : R;
              if constexpr (kRounded) pass_update_exact<kExactR, NCH>(b, w, c, parity);
            } else {
              pass_update<R, NCH, STAGED>(b, w, c, parity);
            }
            mark(kTraceRows);
          } else {
            pass_targets<RH, NCH>(b, w, parity);
            mark(kTraceLast);
          }
        }
      }

      if (kAtomic && p <= a.iters) {
        if (active) {
          const size_t vk = static_cast<size_t>(a.V) * a.Kp, off = static_cast<size_t>(v) * a.Kp;
          float* dst = a.sums + (p % kMiraSumBuffers) * vk + off;
#pragma unroll
          for (int ch = 0; ch < NCH; ++ch) {
            float x[kVec];
#pragma unroll
            for (int u = 0; u < kVec; ++u) x[u] = c[ch][u] * kAtomicSumScale;
            red_add4(dst + b.col(ch), x);
          }
          if (p >= 2) clear_sums_share<NCH>(b, a.sums + ((p + 1) % kMiraSumBuffers) * vk + off, bv, a.blocks_per_view);
        }
        fused_grid_sync<SYNC>(a, grid, gi == 0 && p == a.pass_begin, sync_target);
        mark(kTraceBarrier1);
      } else if (p <= a.iters) {
        const unsigned seq = static_cast<unsigned>(p + 1);
        if (active) {
          // This pass's largest-sum word starts at 0 (the sums are >= 0): cleared by the
          // view's first block before the barrier that precedes every column reduction's
          // atomicMax into it (its readers come after the next barrier).
          if (a.colsum_max && bv == 0 && threadIdx.x == 0)
            a.colsum_max[static_cast<size_t>(v) * (a.iters + 1) + p] = 0u;
          const size_t part_off = (static_cast<size_t>(v) * a.blocks_per_view + bv) * a.Kp;
#pragma unroll
          for (int ch = 0; ch < NCH; ++ch) ECache<float>::store(a.partial + part_off + b.col(ch), c[ch]);
        }
        fused_grid_sync<SYNC>(a, grid, gi == 0 && p == a.pass_begin, sync_target);
        mark(kTraceBarrier1);
        if (active) reduce_columns(a, v, bv, seq, redc);
        mark(kTraceReduce);
        if (p + 1 < a.pass_end) fused_grid_sync<SYNC>(a, grid, false, sync_target);
        mark(kTraceBarrier2);
      }
    }
  }
  trace_finish(a, ph);
  if (bad > 0.f) atomicAdd(a.colsum + static_cast<size_t>(a.V) * a.Kp, bad);
}

// Rows per batch R. NCH = 1 (K <= 3072): R = 4 compiles without spills within the 80
// registers of 768 threads (for sm_90; for sm_80 the 16-bit caches, with their second copy of
// the hot loop in pass_update_exact, spill 12 bytes); R = 8 halves the barriers but spills
// ~20-30 bytes, and is kept for the bench to decide. NCH = 2: R = 2 (no spills); NCH = 4
// (K > 6144): one row (spills 40-110 bytes).
template <typename TIn, typename TE>
FusedFn fused_fn(int nch, int batch_rows) {
  switch (nch) {
    case 1:
      if (batch_rows == 8) return mira_fused_kernel<TIn, TE, 1, 8>;
      return mira_fused_kernel<TIn, TE, 1, 4>;
    case 2:
      if constexpr (!std::is_same<TE, __nv_bfloat16>::value)
        if (batch_rows == 4) return mira_fused_kernel<TIn, TE, 2, 4>;
      return mira_fused_kernel<TIn, TE, 2, 2>;
    default:
      return mira_fused_kernel<TIn, TE, 4, 1>;
  }
}

// Rows per batch: 16 values of E per thread (4 x 4 columns, 2 x 8, 1 x 16), or 32 where
// batch_rows 8 is asked for with 4 columns per thread, or with 8 and the f32 or f16 cache (half
// the block reductions per row; at 8 columns the f16 copy's update keeps its 4 rows packed,
// update_rows; the bf16 copy keeps 2 rows).
int fused_batch_rows(int nch, int requested, MiraCache cache) {
  if (nch == 1) return requested == 8 ? 8 : 4;
  if (nch == 2) return requested == 8 && cache != MiraCache::BF16 ? 4 : 2;
  return 1;
}

template <typename TIn>
FusedFn select_fused_in(MiraCache cache, int nch, int batch_rows) {
  switch (cache) {
    case MiraCache::BF16:
      return fused_fn<TIn, __nv_bfloat16>(nch, batch_rows);
    case MiraCache::F16:
      return fused_fn<TIn, __half>(nch, batch_rows);
    default:
      return fused_fn<TIn, float>(nch, batch_rows);
  }
}

FusedFn select_fused(bool bf16_in, MiraCache cache, int nch, int batch_rows) {
  return bf16_in ? select_fused_in<__nv_bfloat16>(cache, nch, batch_rows)
                 : select_fused_in<float>(cache, nch, batch_rows);
}

// The kernels with a counter per view group (MiraPlanOptions::grid_sync, the view kinds): f32
// logits, the f32 or f16 copy, 8 columns per thread in 2-row batches (the f16 copy's packed
// 4-row batches with the plain per-view counters too); null for the rest, which keep
// cooperative barriers. A counter per view group pays only where a view group's block shares
// its SM with another's: 8 columns per thread, two blocks per SM, the views side by side (the
// auto plan of the f16 copy at N 4096).
template <int SYNC>
FusedFn fused_sync_fn(MiraCache cache, int nch, int batch_rows) {
  static_assert(view_sync(SYNC), "counter barriers per view group only");
  if (nch != 2) return nullptr;
  if (batch_rows == 4) {
    if constexpr (SYNC == static_cast<int>(GridSync::ViewCounter))
      if (cache == MiraCache::F16) return mira_fused_kernel<float, __half, 2, 4, SYNC>;
    return nullptr;
  }
  if (batch_rows != 2) return nullptr;
  if (cache == MiraCache::F32) return mira_fused_kernel<float, float, 2, 2, SYNC>;
  if (cache == MiraCache::F16) return mira_fused_kernel<float, __half, 2, 2, SYNC>;
  return nullptr;
}

// The kernels with an opt-in lever (OPT, kOptStaged or kOptAtomicSums): f32 logits, 8 columns
// per thread in 2-row batches; the f16 copy with cooperative barriers or its per-view
// counters, the f32 copy with cooperative barriers or the staggered per-view counters (each
// cache's automatic choices); both levers also for the f16 copy's packed 4-row batches
// (batch_rows 8; staged: a ring of 8 rows) with cooperative barriers or per-view counters; null
// for the rest.
template <int OPT>
FusedFn fused_opt_fn(MiraCache cache, int batch_rows, GridSync sync) {
  constexpr int kViewCounter = static_cast<int>(GridSync::ViewCounter);
  if (batch_rows == 4 && cache == MiraCache::F16) {
    if constexpr (OPT == kOptStaged || OPT == kOptAtomicSums) {
      if (sync == GridSync::Cooperative) return mira_fused_kernel<float, __half, 2, 4, 0, OPT>;
      if (sync == GridSync::ViewCounter) return mira_fused_kernel<float, __half, 2, 4, kViewCounter, OPT>;
    }
    return nullptr;
  }
  if (batch_rows != 2) return nullptr;
  if (cache == MiraCache::F16) {
    if (sync == GridSync::Cooperative) return mira_fused_kernel<float, __half, 2, 2, 0, OPT>;
    if (sync == GridSync::ViewCounter) return mira_fused_kernel<float, __half, 2, 2, kViewCounter, OPT>;
  } else if (cache == MiraCache::F32) {
    if (sync == GridSync::Cooperative) return mira_fused_kernel<float, float, 2, 2, 0, OPT>;
    if (sync == GridSync::ViewCounterStagger)
      return mira_fused_kernel<float, float, 2, 2, static_cast<int>(GridSync::ViewCounterStagger), OPT>;
  }
  return nullptr;
}

// The kernel of a plan with an opt-in lever (staged rows or atomic sums) and barriers `sync`.
FusedFn fused_opt_fn(const MiraPlan& plan, GridSync sync) {
  if (plan.stage_rows > 0) return fused_opt_fn<kOptStaged>(plan.cache, plan.batch_rows, sync);
  if (plan.atomic_sums) return fused_opt_fn<kOptAtomicSums>(plan.cache, plan.batch_rows, sync);
  return nullptr;
}

FusedFn select_fused_sync(const MiraPlan& plan, bool bf16_in, GridSync sync) {
  if (bf16_in) return nullptr;
  if (plan.stage_rows > 0 || plan.atomic_sums)
    return sync == GridSync::Cooperative ? nullptr : fused_opt_fn(plan, sync);
  if (plan.mma_rows > 0) return nullptr;  // cooperative barriers only
  const int nch = plan.cpt / kVec;
  switch (sync) {
    case GridSync::ViewCounter:
      return fused_sync_fn<static_cast<int>(GridSync::ViewCounter)>(plan.cache, nch, plan.batch_rows);
    case GridSync::ViewCounterStagger:
      return fused_sync_fn<static_cast<int>(GridSync::ViewCounterStagger)>(plan.cache, nch, plan.batch_rows);
    default:
      break;
  }
  return nullptr;
}

// ---- plain kernels (unfused variant, statistics, Sinkhorn)

// Every thread gets the block total; `sh` holds 32 floats. The leading barrier keeps a call
// from overwriting `sh` while a previous call's readers are still at it.
template <bool MAX>
__device__ float block_allreduce(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) v = rop<MAX>(v, __shfl_xor_sync(kFull, v, off));
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float t = MAX ? -INFINITY : 0.f;
  for (int w = 0; w < nw; ++w) t = rop<MAX>(t, sh[w]);
  return t;
}

// Block per row: E = exp2((L - max L) * k2) into (N, K) f32; counts non-finite logits.
template <typename TIn>
__global__ void mira_unf_exp_kernel(const TIn* L, float* E, int K, float k2, float* nonfinite) {
  __shared__ float sh[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * K;
  float m = -INFINITY, bad = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    const float x = ldg_f32(L + off + j);
    if (!isfinite(x)) bad += 1.f;
    m = fmaxf(m, x);
  }
  m = block_allreduce<true>(m, sh);
  for (int j = threadIdx.x; j < K; j += blockDim.x) E[off + j] = exp2f((ldg_f32(L + off + j) - m) * k2);
  if (bad > 0.f) atomicAdd(nonfinite, bad);
}

// Block per row: s_i = 1 / sum_j w_j E_ij (w null: all ones).
__global__ void mira_unf_rowinv_kernel(const float* E, const float* w, float* s, int K) {
  __shared__ float sh[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * K;
  float d = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) d += (w ? w[j] : 1.f) * E[off + j];
  d = block_allreduce<false>(d, sh);
  if (threadIdx.x == 0) s[blockIdx.x] = d > 0.f ? 1.f / d : 0.f;
}

// Grid (column tiles, row chunks): partial[chunk][j] = sum over the chunk's rows of X_ij * s_i
// (s null: 1).
__global__ void colsum_partial_kernel(const float* X, const float* s, float* partial, int N, int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= K) return;
  const int i0 = blockIdx.y * kRowsPerChunk, i1 = min(N, i0 + kRowsPerChunk);
  float acc = 0.f;
  for (int i = i0; i < i1; ++i) acc = fmaf(X[static_cast<size_t>(i) * K + j], s ? s[i] : 1.f, acc);
  partial[static_cast<size_t>(blockIdx.y) * K + j] = acc;
}

__global__ void colsum_merge_kernel(const float* partial, float* c, int chunks, int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= K) return;
  float acc = 0.f;
  for (int q = 0; q < chunks; ++q) acc += partial[static_cast<size_t>(q) * K + j];
  c[j] = acc;
}

// One block: w_j = (c_j / max c)^exponent capped, 0 where c_j = 0.
__global__ void mira_unf_weights_kernel(const float* c, float* w, int K, float exponent, float log2_cap) {
  __shared__ float sh[32];
  float m = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) m = fmaxf(m, c[j]);
  m = block_allreduce<true>(m, sh);
  const float l2max = log2f(m);
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    const float x = c[j];
    w[j] = x > 0.f ? exp2f(fminf(exponent * (log2f(x) - l2max), log2_cap)) : 0.f;
  }
}

// Block per row: T_ij = w_j E_ij / sum_l w_l E_il.
__global__ void mira_unf_targets_kernel(const float* E, const float* w, float* T, int K) {
  __shared__ float sh[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * K;
  float d = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) d += w[j] * E[off + j];
  d = block_allreduce<false>(d, sh);
  const float s = d > 0.f ? 1.f / d : 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) T[off + j] = w[j] * E[off + j] * s;
}

// Statistics: partial column sums of T and of -T log T over row chunks.
__global__ void stats_partial_kernel(const float* T, float* part_t, float* part_h, int N, int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= K) return;
  const int i0 = blockIdx.y * kRowsPerChunk, i1 = min(N, i0 + kRowsPerChunk);
  float st = 0.f, sh = 0.f;
  for (int i = i0; i < i1; ++i) {
    const float t = T[static_cast<size_t>(i) * K + j];
    st += t;
    if (t > 0.f) sh -= t * logf(t);
  }
  part_t[static_cast<size_t>(blockIdx.y) * K + j] = st;
  part_h[static_cast<size_t>(blockIdx.y) * K + j] = sh;
}

__global__ void stats_merge_kernel(const float* part_t, const float* part_h, double* sums, int chunks, int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= K) return;
  double st = 0, sh = 0;
  for (int q = 0; q < chunks; ++q) {
    st += part_t[static_cast<size_t>(q) * K + j];
    sh += part_h[static_cast<size_t>(q) * K + j];
  }
  sums[j] = st;
  sums[K + j] = sh;
}

// Block per row: max_j |T_ij - w_j E_ij / sum_l w_l E_il|, folded into *out (f32 bits; all
// values >= 0, so unsigned order is float order).
template <typename TIn>
__global__ void mira_kkt_kernel(const TIn* L, const float* T, const float* w, int K, float k2, unsigned* out) {
  __shared__ float sh[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * K;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < K; j += blockDim.x) m = fmaxf(m, ldg_f32(L + off + j));
  m = block_allreduce<true>(m, sh);
  float d = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) d += w[j] * exp2f((ldg_f32(L + off + j) - m) * k2);
  d = block_allreduce<false>(d, sh);
  const float s = d > 0.f ? 1.f / d : 0.f;
  float worst = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    const float u = w[j] * exp2f((ldg_f32(L + off + j) - m) * k2) * s;
    worst = fmaxf(worst, fabsf(T[off + j] - u));
  }
  worst = block_allreduce<true>(worst, sh);
  if (threadIdx.x == 0) atomicMax(out, __float_as_uint(worst));
}

// Sinkhorn: online log-sum-exp down columns, per (column tile, row chunk).
template <typename TIn>
__global__ void sk_col_partial_kernel(const TIn* L, const float* f, float* pm, float* ps, int N, int K, float inv_eps,
                                      float* nonfinite) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= K) return;
  const int i0 = blockIdx.y * kRowsPerChunk, i1 = min(N, i0 + kRowsPerChunk);
  float m = -INFINITY, s = 0.f, bad = 0.f;
  for (int i = i0; i < i1; ++i) {
    const float l = ldg_f32(L + static_cast<size_t>(i) * K + j);
    if (nonfinite && !isfinite(l)) {
      bad += 1.f;
      continue;
    }
    const float x = l * inv_eps + (f ? f[i] : 0.f);
    if (x > m) {
      s = s * expf(m - x) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  pm[static_cast<size_t>(blockIdx.y) * K + j] = m;
  ps[static_cast<size_t>(blockIdx.y) * K + j] = s;
  if (bad > 0.f) atomicAdd(nonfinite, bad);
}

__global__ void sk_col_merge_kernel(const float* pm, const float* ps, float* lse, float* lse_copy, bool neg, int chunks,
                                    int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= K) return;
  float M = -INFINITY;
  for (int q = 0; q < chunks; ++q) M = fmaxf(M, pm[static_cast<size_t>(q) * K + j]);
  float S = 0.f;
  for (int q = 0; q < chunks; ++q) {
    const float m = pm[static_cast<size_t>(q) * K + j];
    if (m > -INFINITY) S += ps[static_cast<size_t>(q) * K + j] * expf(m - M);
  }
  const float v = M + logf(S);
  lse[j] = neg ? -v : v;
  if (lse_copy) lse_copy[j] = v;
}

__global__ void sk_shift_kernel(const float* lse, const float* M, float* e, int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < K) e[j] = expf(lse[j] - M[j]);
}

__global__ void sk_finish_kernel(const float* M, const float* e, float* g, int K) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < K) g[j] = -(M[j] + logf(e[j]));
}

// Block per row: lse_i = LSE_j(x_ij + g_j); writes f_i = -lse_i, or the row softmax as targets.
template <typename TIn, bool TARGETS>
__global__ void sk_row_kernel(const TIn* L, const float* g, float* out, int K, float inv_eps) {
  __shared__ float sh[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * K;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < K; j += blockDim.x) m = fmaxf(m, ldg_f32(L + off + j) * inv_eps + g[j]);
  m = block_allreduce<true>(m, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j < K; j += blockDim.x) s += expf(ldg_f32(L + off + j) * inv_eps + g[j] - m);
  s = block_allreduce<false>(s, sh);
  const float lse = m + logf(s);
  if (TARGETS) {
    for (int j = threadIdx.x; j < K; j += blockDim.x) out[off + j] = expf(ldg_f32(L + off + j) * inv_eps + g[j] - lse);
  } else if (threadIdx.x == 0) {
    out[blockIdx.x] = -lse;
  }
}

int device_attr(cudaDeviceAttr attr, int dev) {
  int v = 0;
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, dev));
  return v;
}

int ceil_div(int64_t a, int64_t b) {
  return static_cast<int>((a + b - 1) / b);
}

// Makes fn ready to launch with plan's shape (dynamic shared memory up to the device's opt-in)
// and says whether as many of its blocks as the plan's grid fit on the device at once (the
// plan's blocks per SM with its shared memory): the test for a kernel standing in for the
// plan's own (grid barriers, staging).
bool fits_plan(FusedFn fn, const MiraPlan& plan, int dev) {
  const void* f = reinterpret_cast<const void*>(fn);
  cudaFuncAttributes fa{};
  MIRA_CUDA_CHECK(cudaFuncGetAttributes(&fa, f));
  const int optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  MIRA_CUDA_CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       std::max(0, optin - static_cast<int>(fa.sharedSizeBytes))));
  int occ = 0;
  MIRA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, f, plan.block, plan.smem_bytes));
  return static_cast<int64_t>(occ) * device_attr(cudaDevAttrMultiProcessorCount, dev) >= plan.grid;
}

// GridSync::Auto on a fused plan: plan_model::auto_barrier's choice (the per-view counters
// where a block of each view shares every SM and they measured faster; else cooperative).
GridSync auto_grid_sync(const MiraPlan& plan, bool bf16_in) {
  plan_model::BarrierCase c;
  c.vpg = plan.views_per_group;
  c.cpt = plan.cpt;
  c.batch_rows = plan.batch_rows;
  c.cache_bytes = plan.cache == MiraCache::F32 ? 4 : 2;
  c.f16 = plan.cache == MiraCache::F16;
  c.exact_passes = plan.exact_passes;
  c.default_kernel = plan.variant == MiraVariant::Fused && plan.cluster == 0 && !bf16_in && plan.mma_rows == 0;
  switch (plan_model::auto_barrier(c)) {
    case plan_model::Barrier::ViewCounter:
      return GridSync::ViewCounter;
    case plan_model::Barrier::ViewCounterStagger:
      return GridSync::ViewCounterStagger;
    case plan_model::Barrier::Cooperative:
      break;
  }
  return GridSync::Cooperative;
}

// A kind of MiraPlanOptions::grid_sync (a per-view kind) on a default fused plan: the kind
// where its kernel exists (select_fused_sync) and fits as the plan's (the same blocks per SM
// with the plan's shared memory), and workspace for the counters (128 bytes per view group,
// at least 256). Else the plan keeps cooperative barriers.
void set_grid_sync(MiraPlan& plan, GridSync kind, bool bf16_in, int dev) {
  const FusedFn fn = select_fused_sync(plan, bf16_in, kind);
  if (!fn || !fits_plan(fn, plan, dev)) return;
  plan.grid_sync = static_cast<int>(kind);
  plan.off_sync = plan.workspace_bytes;
  plan.workspace_bytes += std::max<size_t>(256, 4 * fused::kSyncCounterStride * plan.views_per_group);
}

}  // namespace

bool mira_fused_supports(int K) {
  return K >= 1 && K <= kFusedMaxK;
}

bool mira_mma_rows_fill(const MiraProblem& p, int device) {
  return static_cast<long long>(p.V) * ceil_div(p.N, 16) >= device_attr(cudaDevAttrMultiProcessorCount, device);
}

MiraPlan mira_plan(const MiraProblem& p, MiraVariant variant, const MiraPlanOptions& opts) {
  MIRA_CHECK(p.V >= 1 && p.V <= kMiraMaxViews, "mira_plan: 1 to ", kMiraMaxViews, " views, got ", p.V);
  MIRA_CHECK(p.N >= 1 && p.K >= 1, "mira_plan: empty problem (N = ", p.N, ", K = ", p.K, ")");
  MIRA_CHECK(opts.exact_passes >= 0, "mira_plan: exact_passes must be >= 0, got ", opts.exact_passes);
  MIRA_CHECK(opts.grid_sync == GridSync::Auto || opts.grid_sync == GridSync::Cooperative ||
                 opts.grid_sync == GridSync::ViewCounter || opts.grid_sync == GridSync::ViewCounterStagger,
             "mira_plan: grid_sync ", grid_sync_name(opts.grid_sync),
             " is a barrier of bench/mira_assign --probe-sync only (as the fused kernel's it measured no faster, "
             "and was removed); use auto, cooperative, view-counter or view-counter-stagger");
  const MiraCache cache = opts.cache;
  const MiraSchedule schedule = opts.schedule;
  const int min_cols_per_thread = opts.min_cols_per_thread, blocks_per_sm = opts.blocks_per_sm;
  MiraPlan plan;
  plan.variant = variant;
  plan.cache = cache;
  plan.exact_passes = cache == MiraCache::F32 ? 0 : opts.exact_passes;

  if (variant == MiraVariant::Unfused) {
    // Views run one after another through the same buffers; E in f32.
    plan.cache = MiraCache::F32;
    plan.exact_passes = 0;
    plan.chunks = ceil_div(p.N, kRowsPerChunk);
    plan.Kp = p.K;
    size_t off = 0;
    plan.off_ecache = off;
    off = align_up(off + static_cast<size_t>(p.N) * p.K * sizeof(float), 256);
    plan.off_rowmax = off;  // the row inverses s_i
    off = align_up(off + static_cast<size_t>(p.N) * sizeof(float), 256);
    plan.off_partial = off;
    off = align_up(off + static_cast<size_t>(plan.chunks) * p.K * sizeof(float), 256);
    plan.off_colsum = off;
    off = align_up(off + (static_cast<size_t>(p.K) + 1) * sizeof(float), 256);
    plan.off_w = off;
    off = align_up(off + static_cast<size_t>(p.K) * sizeof(float), 256);
    plan.workspace_bytes = off;
    plan.flag_index = p.K;
    return plan;
  }

  MIRA_CHECK(mira_fused_supports(p.K), "mira_plan: the fused kernels take K <= ", kFusedMaxK, ", got ", p.K,
             " (use MiraVariant::Unfused)");
  MIRA_CHECK(min_cols_per_thread == 0 || min_cols_per_thread == 4 || min_cols_per_thread == 8 ||
                 min_cols_per_thread == 16,
             "mira_plan: min_cols_per_thread is 0 (auto), 4, 8 or 16, got ", min_cols_per_thread);
  MIRA_CHECK(blocks_per_sm >= 0 && blocks_per_sm <= 8, "mira_plan: blocks_per_sm in 0..8, got ", blocks_per_sm);
  MIRA_CHECK(opts.cluster_size >= 0 && opts.cluster_size <= 16 && (opts.cluster_size & (opts.cluster_size - 1)) == 0,
             "mira_plan: cluster_size is 0 (auto) or a power of two up to 16, got ", opts.cluster_size);
  int dev = 0;
  MIRA_CUDA_CHECK(cudaGetDevice(&dev));
  if (opts.cluster && variant == MiraVariant::Fused && cache != MiraCache::BF16) {
    // The cluster plan where the view's E fits the shared memory of the clusters that run at
    // once (plan_model::cluster_shape).
    int smem_static = 0;
    const int max_size = cluster_prepare(p.logits_bf16, cache, &smem_static);
    const int optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    const plan_model::ClusterActive active = [&](int size, long long smem) {
      return cluster_active(p.logits_bf16, cache, size, static_cast<size_t>(smem));
    };
    // The largest size the device launches, 16 (non-portable) then 8.
    for (int cap = max_size; cap >= 8; cap /= 2) {
      const plan_model::ClusterShape cs =
          plan_model::cluster_shape(p.N, p.K, p.V, cache == MiraCache::F32 ? 4 : 2, cap, optin, smem_static, active,
                                    opts.cluster_size, opts.cluster_mma && cache == MiraCache::F16);
      if (cs.size > 0) return cluster_plan(p, cache, plan.exact_passes, cs);
    }
  }
  // The tensor-core updates (mira_mmarows.cu): column tiles per warp, or 0.
  const int mma_rows = opts.mma_rows && variant == MiraVariant::Fused && cache == MiraCache::F16 &&
                               plan.exact_passes == 0 && p.K <= kMmaRowsMaxK &&
                               device_attr(cudaDevAttrComputeCapabilityMajor, dev) >= 8
                           ? mmarows_tiles(p.K)
                           : 0;

  const int sms = device_attr(cudaDevAttrMultiProcessorCount, dev);
  const int smem_optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  const int smem_sm = device_attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
  const double l2 = device_attr(cudaDevAttrL2CacheSize, dev);

  // The candidate block shapes (kernel instantiations) and the cost model's choice among them
  // (kernels/cpu/mira_plan_model.h: measured rates, and the fit to an H200's traces).
  std::vector<plan_model::Shape> shapes;
  std::vector<FusedFn> kernels;
  auto add_shape = [&](int min_cpt, int bps) {
    plan_model::Shape sh;
    FusedFn fn = nullptr;
    if (mma_rows > 0) {
      const int warps = mmarows_warps(p.K);
      sh = plan_model::mma_row_shape(32 * warps, 16 * mma_rows * warps);
      // A block of one row tile holds 16 rows: more blocks would only add to the barriers.
      sh.max_bpv = ceil_div(p.N, 16);
      sh.smem_extra = static_cast<long long>(mmarows_extra_bytes(sh.Kp));
      fn = mmarows_fn(p.logits_bf16, mma_rows);
    } else {
      int nch = min_cpt / kVec;
      while (nch < 4 && ceil_div(p.K, kVec * nch) > kFusedMaxBlock) nch *= 2;
      const int block = ceil_div(ceil_div(p.K, kVec * nch), 32) * 32;
      const int rows = fused_batch_rows(nch, opts.batch_rows, cache);
      sh = plan_model::column_shape(kVec * nch, block, kVec * nch * block, rows);
      fn = select_fused(p.logits_bf16, cache, nch, rows);
    }
    sh.bps_fixed = bps;
    cudaFuncAttributes fa{};
    MIRA_CUDA_CHECK(cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(fn)));
    sh.smem_static = static_cast<int>(fa.sharedSizeBytes);
    // Set to the maximum once, so plans of any size can launch this instantiation.
    MIRA_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         std::max(0, smem_optin - sh.smem_static)));
    MIRA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&sh.occ0, fn, sh.block, sh.smem_extra));
    MIRA_CHECK(sh.occ0 >= 1, "mira_plan: the fused kernel does not fit an SM (", sh.block, " threads)");
    shapes.push_back(sh);
    kernels.push_back(fn);
  };
  if (mma_rows > 0) {
    add_shape(0, 1);
  } else if (min_cols_per_thread == 0 && blocks_per_sm == 0 && variant == MiraVariant::Fused &&
             ceil_div(p.K, kVec) > 512) {
    // K > 2048: 4 columns per thread would exceed 512 threads. The model weighs two half-size
    // blocks per SM (8 columns; their row reductions overlap, but twice the blocks meet at
    // every pass boundary) against one block of 768 (4 columns).
    add_shape(8, 2);
    add_shape(4, 1);
  } else {
    // Fused with K > 2048 and blocks per SM given: 8 columns per thread unless told otherwise.
    const int wide = variant == MiraVariant::Fused && ceil_div(p.K, kVec) > 512 ? 8 : 4;
    add_shape(min_cols_per_thread == 0 ? wide : min_cols_per_thread, blocks_per_sm);
  }
  plan_model::Problem mp;
  mp.V = p.V, mp.N = p.N, mp.K = p.K, mp.iters = p.iters;
  mp.cache_bytes = cache == MiraCache::F32 ? 4 : 2;
  mp.per_pass = variant == MiraVariant::PerPass;
  mp.may_side_by_side = schedule != MiraSchedule::Sequential;
  mp.may_one_by_one = schedule != MiraSchedule::Concurrent;
  const plan_model::Device md{sms, smem_optin, smem_sm, l2};
  const plan_model::Choice best = plan_model::choose(mp, md, shapes, [&](int si, long long dyn) {
    int occ = 0;
    const plan_model::Shape& sh = shapes[static_cast<size_t>(si)];
    MIRA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernels[static_cast<size_t>(si)], sh.block,
                                                                  static_cast<size_t>(dyn)));
    return occ;
  });
  MIRA_CHECK(best.shape >= 0, "mira_plan: no launch configuration fits the device");
  const plan_model::Shape& shape = shapes[static_cast<size_t>(best.shape)];
  MiraPlan fp = fused_plan(p, variant, cache, plan.exact_passes, mma_rows, shape, best);
  // Fewer rows in shared memory than fit (for measurements): the same shared memory, the rest
  // of the rows from the workspace.
  int unused = 0;
  if (opts.max_smem_rows >= 0 && fp.mma_rows == 0 && fp.smem_rows > opts.max_smem_rows) {
    unused = fp.smem_rows - opts.max_smem_rows / fp.batch_rows * fp.batch_rows;
    fp = fused_plan(p, variant, cache, plan.exact_passes, mma_rows, shape, best, 0, unused);
  }
  // The workspace's rows staged through shared memory: the ring's rows come out of those the
  // block keeps in shared memory (the same dynamic shared memory), where the plan has some in
  // the workspace to stage and its kernel exists and fits.
  if (opts.stage_rows && variant == MiraVariant::Fused && !p.logits_bf16 && fp.cpt == 8 && fp.mma_rows == 0 &&
      fp.ecache_rows_per_block > 0) {
    const FusedFn staged = fused_opt_fn<kOptStaged>(fp.cache, fp.batch_rows, GridSync::Cooperative);
    const int ring = kStageDepth * fp.batch_rows;
    if (staged && fp.smem_rows >= ring) {
      const MiraPlan sp = fused_plan(p, variant, cache, plan.exact_passes, mma_rows, shape, best, ring, unused);
      if (fits_plan(staged, sp, dev)) fp = sp;
    }
  }
  // The column sums by atomics (one launch; no kernel combines them with staging yet).
  if (opts.atomic_sums && variant == MiraVariant::Fused && !p.logits_bf16 && fp.cpt == 8 && fp.stage_rows == 0 &&
      fp.mma_rows == 0) {
    const FusedFn fn = fused_opt_fn<kOptAtomicSums>(fp.cache, fp.batch_rows, GridSync::Cooperative);
    if (fn) {
      const MiraPlan ap = fused_plan(p, variant, cache, plan.exact_passes, mma_rows, shape, best, 0, unused, true);
      if (fits_plan(fn, ap, dev)) fp = ap;
    }
  }
  const GridSync sync = opts.grid_sync == GridSync::Auto ? auto_grid_sync(fp, p.logits_bf16) : opts.grid_sync;
  if (sync != GridSync::Cooperative && variant == MiraVariant::Fused) set_grid_sync(fp, sync, p.logits_bf16, dev);
  return fp;
}

float* mira_reduce_buffer(const MiraPlan& plan, void* ws) {
  MIRA_CHECK(plan.cluster == 0, "mira_reduce_buffer: a cluster plan has no cross-rank reduction (one process)");
  return reinterpret_cast<float*>(static_cast<char*>(ws) + plan.off_colsum);
}

int64_t mira_reduce_len(const MiraProblem& p, const MiraPlan& plan, int pass) {
  MIRA_CHECK(plan.cluster == 0, "mira_reduce_len: a cluster plan has no cross-rank reduction (one process)");
  return static_cast<int64_t>(p.V) * plan.Kp + (pass == 0 ? 1 : 0);
}

const float* mira_nonfinite_count(const MiraPlan& plan, const void* ws) {
  return reinterpret_cast<const float*>(static_cast<const char*>(ws) + plan.off_colsum) + plan.flag_index;
}

namespace {

void check_problem(const MiraProblem& p) {
  MIRA_CHECK(p.V >= 1 && p.V <= kMiraMaxViews && p.N >= 1 && p.K >= 1, "mira_assign_cuda: bad problem shape");
  MIRA_CHECK(p.tau_t > 0 && p.beta >= 0 && p.beta < 1 && p.iters >= 0, "mira_assign_cuda: bad tau_t / beta / iters");
}

void launch_fused(const MiraProblem& p, const MiraPlan& plan, void* ws, int pass_begin, int pass_end,
                  cudaStream_t stream) {
  if (plan.cluster > 0) {
    MIRA_CHECK(plan.variant == MiraVariant::Fused && pass_begin == 0 && pass_end == p.iters + 2,
               "mira_assign_cuda: a cluster plan runs all passes in one launch");
    if (plan.cluster_groups > 1)  // the flag-tagged words start untagged
      MIRA_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(ws) + plan.off_ll_partial, 0,
                                      plan.workspace_bytes - plan.off_ll_partial, stream));
    launch_cluster(fused_args(p, plan, ws, pass_begin, pass_end), p.logits_bf16, plan.cache, plan.grid / plan.cluster,
                   plan.smem_bytes, stream);
    return;
  }
  const FusedFn fn = plan.grid_sync != 0 ? select_fused_sync(plan, p.logits_bf16, static_cast<GridSync>(plan.grid_sync))
                     : plan.stage_rows > 0 || plan.atomic_sums ? fused_opt_fn(plan, GridSync::Cooperative)
                     : plan.mma_rows > 0                       ? mmarows_fn(p.logits_bf16, plan.mma_rows)
                                         : select_fused(p.logits_bf16, plan.cache, plan.cpt / kVec, plan.batch_rows);
  MIRA_CHECK(fn, "mira_assign_cuda: no kernel for this plan's grid barriers (make it with mira_plan)");
  // Flag-tagged sums start untagged in each launch, and the tensor-core kernel's E lives in
  // shared memory from its first pass on: such plans run every pass in one launch.
  MIRA_CHECK(plan.mma_rows == 0 || (pass_begin == 0 && pass_end == p.iters + 2),
             "mira_assign_cuda: an mma_rows plan runs all passes in one launch");
  MIRA_CHECK(!plan.atomic_sums || (pass_begin == 0 && pass_end == p.iters + 2),
             "mira_assign_cuda: an atomic_sums plan runs all passes in one launch");
  // The atomic sums' buffers start at zero (the kernel clears each again before its reuse).
  if (plan.atomic_sums)
    MIRA_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(ws) + plan.off_sums, 0,
                                    static_cast<size_t>(kMiraSumBuffers) * p.V * plan.Kp * sizeof(float), stream));
  FusedArgs a = fused_args(p, plan, ws, pass_begin, pass_end);
#ifdef MIRA_CUDA_EMU  // tests/cuda_emu: every block at once, as a cooperative launch
  emu::LaunchConfig cfg;
  cfg.grid = static_cast<unsigned>(plan.grid), cfg.block = static_cast<unsigned>(plan.block);
  cfg.smem = plan.smem_bytes;
  emu::launch(cfg, fn, a);
#else
  void* args[] = {&a};
  MIRA_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(fn), dim3(plan.grid), dim3(plan.block),
                                              args, plan.smem_bytes, stream));
#endif
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void launch_unfused(const MiraProblem& p, const MiraPlan& plan, void* ws, cudaStream_t stream) {
  char* base = static_cast<char*>(ws);
  float* E = reinterpret_cast<float*>(base + plan.off_ecache);
  float* s = reinterpret_cast<float*>(base + plan.off_rowmax);
  float* partial = reinterpret_cast<float*>(base + plan.off_partial);
  float* c = reinterpret_cast<float*>(base + plan.off_colsum);
  float* w = reinterpret_cast<float*>(base + plan.off_w);
  const float k2 = static_cast<float>(1.4426950408889634 / (static_cast<double>(p.tau_t) * (1.0 - p.beta)));
  const float log2_cap = kLog2MaxF32 - std::ceil(std::log2(static_cast<double>(p.K)));
  const dim3 col_grid(ceil_div(p.K, kColTile), plan.chunks);
  const int col_blocks = ceil_div(p.K, kColTile);
  for (int v = 0; v < p.V; ++v) {
    if (p.logits_bf16) {
      MIRA_LAUNCH(p.N, kRowBlock, 0, stream, mira_unf_exp_kernel)
      (static_cast<const __nv_bfloat16*>(p.logits[v]), E, p.K, k2, c + p.K);
    } else {
      MIRA_LAUNCH(p.N, kRowBlock, 0, stream, mira_unf_exp_kernel)
      (static_cast<const float*>(p.logits[v]), E, p.K, k2, c + p.K);
    }
    MIRA_CUDA_LAUNCH_CHECK(stream);
    for (int pass = 0; pass <= p.iters; ++pass) {
      MIRA_LAUNCH(p.N, kRowBlock, 0, stream, mira_unf_rowinv_kernel)(E, pass == 0 ? nullptr : w, s, p.K);
      MIRA_CUDA_LAUNCH_CHECK(stream);
      MIRA_LAUNCH(col_grid, kColTile, 0, stream, colsum_partial_kernel)(E, s, partial, p.N, p.K);
      MIRA_CUDA_LAUNCH_CHECK(stream);
      MIRA_LAUNCH(col_blocks, kColTile, 0, stream, colsum_merge_kernel)(partial, c, plan.chunks, p.K);
      MIRA_CUDA_LAUNCH_CHECK(stream);
      MIRA_LAUNCH(1, 1024, 0, stream, mira_unf_weights_kernel)(c, w, p.K, -p.beta, log2_cap);
      MIRA_CUDA_LAUNCH_CHECK(stream);
    }
    MIRA_LAUNCH(p.N, kRowBlock, 0, stream, mira_unf_targets_kernel)(E, w, p.targets[v], p.K);
    MIRA_CUDA_LAUNCH_CHECK(stream);
  }
}

}  // namespace

void mira_assign_cuda(const MiraProblem& p, const MiraPlan& plan, void* ws, cudaStream_t stream) {
  check_problem(p);
  MIRA_CHECK(plan.variant != MiraVariant::PerPass,
             "mira_assign_cuda: a PerPass plan runs through mira_assign_pass_cuda");
  MIRA_CUDA_CHECK(cudaMemsetAsync(const_cast<float*>(mira_nonfinite_count(plan, ws)), 0, sizeof(float), stream));
  if (plan.variant == MiraVariant::Unfused) {
    launch_unfused(p, plan, ws, stream);
  } else {
    launch_fused(p, plan, ws, 0, p.iters + 2, stream);
  }
}

void mira_assign_pass_cuda(const MiraProblem& p, const MiraPlan& plan, int pass, void* ws, cudaStream_t stream) {
  check_problem(p);
  MIRA_CHECK(plan.variant == MiraVariant::PerPass, "mira_assign_pass_cuda: needs a PerPass plan");
  MIRA_CHECK(pass >= 0 && pass <= p.iters + 1, "mira_assign_pass_cuda: pass ", pass, " out of [0, ", p.iters + 1, "]");
  if (pass == 0)
    MIRA_CUDA_CHECK(cudaMemsetAsync(const_cast<float*>(mira_nonfinite_count(plan, ws)), 0, sizeof(float), stream));
  launch_fused(p, plan, ws, pass, pass + 1, stream);
}

// ---- statistics

size_t assign_stats_scratch_bytes(int N, int K) {
  return 2 * static_cast<size_t>(ceil_div(N, kRowsPerChunk)) * K * sizeof(float);
}

void assign_stats_sums_cuda(const float* targets, int N, int K, double* sums, void* scratch, cudaStream_t stream) {
  const int chunks = ceil_div(N, kRowsPerChunk);
  float* part_t = static_cast<float*>(scratch);
  float* part_h = part_t + static_cast<size_t>(chunks) * K;
  MIRA_LAUNCH(dim3(ceil_div(K, kColTile), chunks), kColTile, 0, stream, stats_partial_kernel)
  (targets, part_t, part_h, N, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  MIRA_LAUNCH(ceil_div(K, kColTile), kColTile, 0, stream, stats_merge_kernel)(part_t, part_h, sums, chunks, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void mira_kkt_cuda(const void* logits, bool logits_bf16, const float* targets, const float* w, int N, int K,
                   float tau_t, float beta, float* out, cudaStream_t stream) {
  const float k2 = static_cast<float>(1.4426950408889634 / (static_cast<double>(tau_t) * (1.0 - beta)));
  MIRA_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float), stream));
  auto* bits = reinterpret_cast<unsigned*>(out);
  if (logits_bf16) {
    MIRA_LAUNCH(N, kRowBlock, 0, stream, mira_kkt_kernel)
    (static_cast<const __nv_bfloat16*>(logits), targets, w, K, k2, bits);
  } else {
    MIRA_LAUNCH(N, kRowBlock, 0, stream, mira_kkt_kernel)(static_cast<const float*>(logits), targets, w, K, k2, bits);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// ---- Sinkhorn-Knopp

size_t sinkhorn_scratch_bytes(int N, int K) {
  return 2 * static_cast<size_t>(ceil_div(N, kRowsPerChunk)) * K * sizeof(float);
}

void sinkhorn_col_lse_cuda(const void* logits, bool logits_bf16, const float* f, float* lse, float* lse_copy, bool neg,
                           int N, int K, float inv_eps, float* nonfinite, void* scratch, cudaStream_t stream) {
  const int chunks = ceil_div(N, kRowsPerChunk);
  float* pm = static_cast<float*>(scratch);
  float* ps = pm + static_cast<size_t>(chunks) * K;
  const dim3 grid(ceil_div(K, kColTile), chunks);
  if (logits_bf16) {
    MIRA_LAUNCH(grid, kColTile, 0, stream, sk_col_partial_kernel)
    (static_cast<const __nv_bfloat16*>(logits), f, pm, ps, N, K, inv_eps, nonfinite);
  } else {
    MIRA_LAUNCH(grid, kColTile, 0, stream, sk_col_partial_kernel)
    (static_cast<const float*>(logits), f, pm, ps, N, K, inv_eps, nonfinite);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
  MIRA_LAUNCH(ceil_div(K, kColTile), kColTile, 0, stream, sk_col_merge_kernel)(pm, ps, lse, lse_copy, neg, chunks, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void sinkhorn_lse_shift_cuda(const float* lse, const float* M, float* e, int K, cudaStream_t stream) {
  MIRA_LAUNCH(ceil_div(K, kColTile), kColTile, 0, stream, sk_shift_kernel)(lse, M, e, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void sinkhorn_lse_finish_cuda(const float* M, const float* e, float* g, int K, cudaStream_t stream) {
  MIRA_LAUNCH(ceil_div(K, kColTile), kColTile, 0, stream, sk_finish_kernel)(M, e, g, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void sinkhorn_row_cuda(const void* logits, bool logits_bf16, const float* g, float* f, int N, int K, float inv_eps,
                       cudaStream_t stream) {
  if (logits_bf16) {
    MIRA_LAUNCH(N, kRowBlock, 0, stream, sk_row_kernel<__nv_bfloat16, false>)
    (static_cast<const __nv_bfloat16*>(logits), g, f, K, inv_eps);
  } else {
    MIRA_LAUNCH(N, kRowBlock, 0, stream, sk_row_kernel<float, false>)
    (static_cast<const float*>(logits), g, f, K, inv_eps);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void sinkhorn_targets_cuda(const void* logits, bool logits_bf16, const float* g, float* targets, int N, int K,
                           float inv_eps, cudaStream_t stream) {
  if (logits_bf16) {
    MIRA_LAUNCH(N, kRowBlock, 0, stream, sk_row_kernel<__nv_bfloat16, true>)
    (static_cast<const __nv_bfloat16*>(logits), g, targets, K, inv_eps);
  } else {
    MIRA_LAUNCH(N, kRowBlock, 0, stream, sk_row_kernel<float, true>)
    (static_cast<const float*>(logits), g, targets, K, inv_eps);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::cuda

// The fused MIRA assignment with a warp per row (MiraPlanOptions::warp_rows; opt-in: slower than
// the default kernel on an H200, bench/RESULTS.md sessions 8 and 15; the idea: bench/NOTES.md,
// "What 0.3 ms would take").
//
// Why: in mira_assign.cu's kernel a thread owns columns, so every row sum is a block
// reduction and a block waits on its slowest warp once per batch of rows, dozens of times per
// pass. Here a warp owns whole rows: lane l holds columns 128 t + 4 l + u (t < T chunks, u < 4)
// of every row, keeps the weights w and its column partials c for those 4 T columns in
// registers (T = 24: 192 registers, so 8 warps of ~250 registers, one block of 256 per SM),
// reduces a row with 5 shuffles and never waits for another warp while it works through its
// rows (rows r0 + warp, r0 + warp + 8, ...). A row of E is read twice per update (the row's
// dot product, then its column partials: holding it would need another 4 T registers), from
// shared memory where it fits (T = 24, f16 cache: 32 rows of 6 KB = 192 KB), else from the
// workspace.
//
// The pieces between the rows, per pass (all in a fixed order: the targets are bitwise
// reproducible, though not the bits of the other kernel, whose sums run in another order):
// - Weights: the block loads the Kp column sums once (polled, with flag-tagged words), forms
//   w in the combine buffer, and each warp copies the 4 T it needs into registers.
// - Combine: the 8 warps' partials are added in warp order through the same buffer, in 4
//   rounds of T / 4 chunks (8 x 128 x T / 4 floats: 24 KB for T = 24, which with 192 KB of E
//   is all the shared memory an SM has), and each round's sums go out as the block's partials.
// - Then mira_fused.cuh's column reduction (a block per column tile) and the grid barriers or
//   flag-tagged words, as in the other kernel.
// The first pass keeps a row's 4 T logits in registers (w is not live yet); the exact updates
// of the f16 cache and the targets recompute E from the logits in both reads of the row (the
// second read comes from L2).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused.cuh"

namespace cg = cooperative_groups;

namespace mira::cuda::fused {

namespace {

constexpr int kWarps = kWarpRowsBlock / 32;

// Lane `lane`'s columns of chunk t: 4 consecutive, from 128 t + 4 lane.
__device__ __forceinline__ int wr_col(int t, int lane) {
  return 128 * t + kVec * lane;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// E of chunk t of a row: from the cache row (EXACT false), or recomputed in f32 from the
// logits row and its maximum m (EXACT true; 0 beyond K).
template <bool EXACT, typename TIn, typename TE>
__device__ __forceinline__ void wr_load(const FusedArgs& a, const TE* crow, const TIn* lrow, float m, int t, int lane,
                                        float (&e)[kVec]) {
  const int col = wr_col(t, lane);
  if constexpr (EXACT) {
    load_logits4(lrow, col, a.K, a.vec_logits, e);
#pragma unroll
    for (int u = 0; u < kVec; ++u) e[u] = col + u < a.K ? exp2f((e[u] - m) * a.k2) : 0.f;
  } else {
    ECache<TE>::load(crow + col, e);
  }
}

// The first pass: E from the logits (row maximum, exp, rounding to the cache type), stored to
// the cache; c += E_ij / r_i with r_i = sum_j E_ij (the update from u = 1). Three reads of
// the row (the maximum; E; E back from the cache, each lane its own writes), the first two in
// loops that are not fully unrolled: a row held in registers next to c spilled.
template <int T, typename TIn, typename TE>
__device__ __forceinline__ void wr_first(const BlockRows<TIn, TE>& b, float (&c)[T][kVec], float& bad) {
  const FusedArgs& a = *b.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int row = b.r0 + warp; row < b.r1; row += kWarps) {
    const TIn* lrow = b.logits + static_cast<size_t>(row) * a.K;
    float m = -INFINITY;
#pragma unroll 4
    for (int t = 0; t < T; ++t) {
      float x[kVec];
      load_logits4(lrow, wr_col(t, lane), a.K, a.vec_logits, x);
#pragma unroll
      for (int u = 0; u < kVec; ++u) {
        if (wr_col(t, lane) + u < a.K && !isfinite(x[u])) bad += 1.f;
        m = fmaxf(m, x[u]);
      }
    }
    m = warp_max(m);
    float d4[kVec] = {0.f, 0.f, 0.f, 0.f};
    TE* crow = b.cache_row(row);
#pragma unroll 4
    for (int t = 0; t < T; ++t) {
      float x[kVec];
      load_logits4(lrow, wr_col(t, lane), a.K, a.vec_logits, x);
#pragma unroll
      for (int u = 0; u < kVec; ++u) {
        // Padding columns get 0 (exp2 of -inf - m would be NaN for an all-masked row).
        const float y = wr_col(t, lane) + u < a.K ? exp2f((x[u] - m) * a.k2) : 0.f;
        x[u] = ECache<TE>::round(y);  // iterate on exactly what the cache holds
        d4[u] += x[u];
      }
      ECache<TE>::store(crow + wr_col(t, lane), x);
    }
    if (lane == 0) a.rowmax[static_cast<size_t>(b.v) * a.N + row] = m;
    const float d = warp_sum((d4[0] + d4[1]) + (d4[2] + d4[3]));
    const float s = d > 0.f ? 1.f / d : 0.f;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float e[kVec];
      ECache<TE>::load(crow + wr_col(t, lane), e);
#pragma unroll
      for (int u = 0; u < kVec; ++u) c[t][u] = fmaf(e[u], s, c[t][u]);
    }
  }
}

// A row's sum d = sum_j w_j E_ij, in every lane: four accumulators per lane (one per u), then
// the warp's butterfly. The cached updates hold w in registers (wr), the exact updates and the
// targets read it from the staging buffer (ws, Kp floats): their E comes from the logits, and
// a row's loads in flight next to w and c in registers spilled.
template <int T, bool EXACT, typename TIn, typename TE>
__device__ __forceinline__ float wr_row_dot(const FusedArgs& a, const TE* crow, const TIn* lrow, float m,
                                            const float (&wr)[T][kVec], int lane) {
  float acc[kVec] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int t = 0; t < T; ++t) {
    float e[kVec];
    wr_load<EXACT>(a, crow, lrow, m, t, lane, e);
#pragma unroll
    for (int u = 0; u < kVec; ++u) acc[u] = fmaf(wr[t][u], e[u], acc[u]);
  }
  return warp_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
}
template <int T, bool EXACT, typename TIn, typename TE>
__device__ __forceinline__ float wr_row_dot_staged(const FusedArgs& a, const TE* crow, const TIn* lrow, float m,
                                                   const float* ws, int lane) {
  float acc[kVec] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
  for (int t = 0; t < T; ++t) {
    float e[kVec], w[kVec];
    wr_load<EXACT>(a, crow, lrow, m, t, lane, e);
    ECache<float>::load(ws + wr_col(t, lane), w);
#pragma unroll
    for (int u = 0; u < kVec; ++u) acc[u] = fmaf(w[u], e[u], acc[u]);
  }
  return warp_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// An update: r_i = sum_j w_j E_ij, c_j += E_ij / r_i; E from the cache, or exact (EXACT: the
// last updates of the f16 cache). ws: the staged weights.
template <int T, bool EXACT, typename TIn, typename TE>
__device__ __forceinline__ void wr_update(const BlockRows<TIn, TE>& b, const float* ws, float (&c)[T][kVec]) {
  const FusedArgs& a = *b.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float w[EXACT ? 1 : T][kVec];
  if constexpr (!EXACT) {
#pragma unroll
    for (int t = 0; t < T; ++t) ECache<float>::load(ws + wr_col(t, lane), w[t]);
  }
  for (int row = b.r0 + warp; row < b.r1; row += kWarps) {
    const TE* crow = EXACT ? nullptr : b.cache_row(row);
    const TIn* lrow = b.logits + static_cast<size_t>(row) * a.K;
    const float m = EXACT ? a.rowmax[static_cast<size_t>(b.v) * a.N + row] : 0.f;
    float d;
    if constexpr (EXACT) {
      d = wr_row_dot_staged<T, true>(a, crow, lrow, m, ws, lane);
    } else {
      d = wr_row_dot<T, false>(a, crow, lrow, m, w, lane);
    }
    const float s = d > 0.f ? 1.f / d : 0.f;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float e[kVec];
      wr_load<EXACT>(a, crow, lrow, m, t, lane, e);
#pragma unroll
      for (int u = 0; u < kVec; ++u) c[t][u] = fmaf(e[u], s, c[t][u]);
    }
  }
}

// The last pass: T_ij = w_j E_ij / sum_l w_l E_il, E exact (an f32 cache, or recomputed).
template <int T, typename TIn, typename TE>
__device__ __forceinline__ void wr_targets(const BlockRows<TIn, TE>& b, const float* ws) {
  constexpr bool kExact = !std::is_same<TE, float>::value;
  const FusedArgs& a = *b.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int row = b.r0 + warp; row < b.r1; row += kWarps) {
    const TE* crow = kExact ? nullptr : b.cache_row(row);
    const TIn* lrow = b.logits + static_cast<size_t>(row) * a.K;
    const float m = kExact ? a.rowmax[static_cast<size_t>(b.v) * a.N + row] : 0.f;
    const float d = wr_row_dot_staged<T, kExact>(a, crow, lrow, m, ws, lane);
    const float s = d > 0.f ? 1.f / d : 0.f;
    float* trow = b.targets + static_cast<size_t>(row) * a.K;
#pragma unroll 4
    for (int t = 0; t < T; ++t) {
      const int col = wr_col(t, lane);
      float e[kVec], w[kVec];
      wr_load<kExact>(a, crow, lrow, m, t, lane, e);
      ECache<float>::load(ws + col, w);
#pragma unroll
      for (int u = 0; u < kVec; ++u) e[u] = w[u] * e[u] * s;
      if (a.vec_logits && col < a.K) {
        *reinterpret_cast<float4*>(trow + col) = make_float4(e[0], e[1], e[2], e[3]);
      } else {
#pragma unroll
        for (int u = 0; u < kVec; ++u)
          if (col + u < a.K) trow[col + u] = e[u];
      }
    }
  }
}

// The weights of pass p from the previous pass's column sums of view v, staged by the block in
// `comb` (Kp floats): w_j = (c_j / max c)^(-beta). They stay there until wr_combine.
template <int T, bool LL>
__device__ __forceinline__ void wr_weights(const FusedArgs& a, int v, int p, float* comb, float* red, int& parity) {
  constexpr int KT = T / 8;  // 4-column groups per thread: Kp = 128 T = 4 x 256 x T / 8
  const int tid = threadIdx.x;
  float x[KT][kVec];
  if constexpr (LL) {
    const uint2* src = a.ll_colsum + static_cast<size_t>(v) * a.Kp;
    const unsigned want = static_cast<unsigned>(p);
    bool ok[KT];
#pragma unroll
    for (int k = 0; k < KT; ++k) ok[k] = ll_load4(src + kVec * (tid + kWarpRowsBlock * k), want, x[k]);
#pragma unroll
    for (int k = 0; k < KT; ++k) {
      int n = 0;
      while (!ok[k]) {
        ll_spin(n);
        ok[k] = ll_load4(src + kVec * (tid + kWarpRowsBlock * k), want, x[k]);
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < KT; ++k)
      ECache<float>::load(a.colsum + static_cast<size_t>(v) * a.Kp + kVec * (tid + kWarpRowsBlock * k), x[k]);
  }
  float cm[1] = {0.f};
#pragma unroll
  for (int k = 0; k < KT; ++k)
#pragma unroll
    for (int u = 0; u < kVec; ++u) cm[0] = fmaxf(cm[0], x[k][u]);
  RowReduce<1>::allreduce<true>(cm, red, 32, parity);
  const float l2max = log2f(cm[0]);
#pragma unroll
  for (int k = 0; k < KT; ++k) {
#pragma unroll
    for (int u = 0; u < kVec; ++u) x[k][u] = mira_weight(a, x[k][u], l2max);
    ECache<float>::store(comb + kVec * (tid + kWarpRowsBlock * k), x[k]);
  }
  __syncthreads();
}

// The block's partial column sums of view v: the warps' c added in warp order through `comb`,
// T / 4 chunks per round, each round's sums stored to the partials (LL: tagged seq).
template <int T, bool LL>
__device__ __forceinline__ void wr_combine(const FusedArgs& a, int v, int bv, const float (&c)[T][kVec], float* comb,
                                           unsigned seq) {
  constexpr int G = T / 4;  // chunks per round; 128 G columns, G / 2 per thread
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const size_t part_off = (static_cast<size_t>(v) * a.blocks_per_view + bv) * a.Kp;
  __syncthreads();  // every warp is done with the weights in comb
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int g = 0; g < G; ++g) ECache<float>::store(comb + (warp * G + g) * 128 + kVec * lane, c[r * G + g]);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < G / 2; ++k) {
      const int cc = tid + kWarpRowsBlock * k, g = cc >> 7, off = cc & 127;
      float s = 0.f;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) s += comb[(wi * G + g) * 128 + off];
      const int col = 128 * (r * G + g) + off;
      if constexpr (LL) {
        ll_store1(a.ll_partial + part_off + col, s, seq);
      } else {
        a.partial[part_off + col] = s;
      }
    }
    __syncthreads();  // the round's reads are done before the next round's (or pass's) writes
  }
}

// Grid: views_per_group * blocks_per_view blocks of 256, all resident (cooperative launch).
// Dynamic shared memory: the combine buffer (256 T floats), then smem_rows rows of Kp of E.
template <typename TIn, typename TE, int T, bool LL>
__global__ void __launch_bounds__(kWarpRowsBlock, 1) mira_warprows_kernel(const __grid_constant__ FusedArgs a) {
  static_assert(T % 8 == 0, "T: a multiple of 8 chunks (the weights' staging, the combine's rounds)");
  MIRA_DYNAMIC_SMEM(smem_raw);
  float* comb = reinterpret_cast<float*>(smem_raw);
  TE* scache = reinterpret_cast<TE*>(smem_raw + static_cast<size_t>(kWarpRowsBlock) * T * sizeof(float));
  __shared__ float red[2 * 32];
  __shared__ float redc[kWarpRowsBlock];  // the column reduction's (subset, column) sums
  cg::grid_group grid = cg::this_grid();

  const int vg = blockIdx.x / a.blocks_per_view, bv = blockIdx.x % a.blocks_per_view;
  const int groups = (a.V + a.views_per_group - 1) / a.views_per_group;
  int parity = 0;
  float bad = 0;  // non-finite logits seen by this thread

  __shared__ long long ph[kTraceShared];  // MiraPlan::trace (trace_start)
  trace_start(a, ph);
  auto mark = [&](int k) { trace_mark(a, ph, k); };

  if constexpr (LL) {
    clear_flags(a, vg, bv);
    grid.sync();
  }

  for (int gi = 0; gi < groups; ++gi) {
    const int v = gi * a.views_per_group + vg;
    const bool active = v < a.V;  // uniform per block
    const BlockRows<TIn, TE> b = block_rows<TIn>(a, v, bv, scache, red, 32);

    for (int p = a.pass_begin; p < a.pass_end; ++p) {
      float c[T][kVec];
#pragma unroll
      for (int t = 0; t < T; ++t)
#pragma unroll
        for (int u = 0; u < kVec; ++u) c[t][u] = 0.f;

      if (active) {
        if (p == 0) {
          wr_first<T>(b, c, bad);
          mark(kTraceFirst);
        } else {
          wr_weights<T, LL>(a, v, p, comb, red, parity);
          mark(kTraceWeights);
          if (p <= a.iters) {
            // The last updates of the f16 cache read exact E (exact_from > iters otherwise).
            constexpr bool kRounded = !std::is_same<TE, float>::value;
            if (kRounded && p >= a.exact_from) {
              if constexpr (kRounded) wr_update<T, true>(b, comb, c);
            } else {
              wr_update<T, false>(b, comb, c);
            }
            mark(kTraceRows);
          } else {
            wr_targets<T>(b, comb);
            mark(kTraceLast);
          }
        }
      }

      if (p <= a.iters) {
        const unsigned seq = static_cast<unsigned>(p + 1);
        if (active) wr_combine<T, LL>(a, v, bv, c, comb, seq);
        if constexpr (!LL) grid.sync();
        mark(kTraceBarrier1);
        if (active) reduce_columns<LL>(a, v, bv, seq, redc);
        mark(kTraceReduce);
        if (!LL && p + 1 < a.pass_end) grid.sync();  // flag-tagged sums need no barrier
        mark(kTraceBarrier2);
      }
    }
  }
  trace_finish(a, ph);
  if (bad > 0.f) atomicAdd(a.colsum + static_cast<size_t>(a.V) * a.Kp, bad);
}

template <typename TIn, typename TE, int T>
FusedFn warprows_fn_t(bool flag_sync) {
  return flag_sync ? mira_warprows_kernel<TIn, TE, T, true> : mira_warprows_kernel<TIn, TE, T, false>;
}

template <typename TIn, typename TE>
FusedFn warprows_fn_in(int T, bool flag_sync) {
  switch (T) {
    case 8:
      return warprows_fn_t<TIn, TE, 8>(flag_sync);
    case 16:
      return warprows_fn_t<TIn, TE, 16>(flag_sync);
    default:
      return warprows_fn_t<TIn, TE, 24>(flag_sync);
  }
}

template <typename TIn>
FusedFn warprows_fn_cache(MiraCache cache, int T, bool flag_sync) {
  return cache == MiraCache::F16 ? warprows_fn_in<TIn, __half>(T, flag_sync) : warprows_fn_in<TIn, float>(T, flag_sync);
}

}  // namespace

int warprows_chunks(int K) {
  MIRA_CHECK(K >= 1 && K <= kWarpRowsMaxK, "warp_rows: K <= ", kWarpRowsMaxK, ", got ", K);
  return K <= 1024 ? 8 : K <= 2048 ? 16 : 24;
}

size_t warprows_comb_bytes(int K) {
  return static_cast<size_t>(kWarpRowsBlock) * warprows_chunks(K) * sizeof(float);
}

FusedFn warprows_fn(bool bf16_in, MiraCache cache, int K, bool flag_sync) {
  MIRA_CHECK(cache != MiraCache::BF16, "warp_rows: f32 or f16 cache");
  const int T = warprows_chunks(K);
  return bf16_in ? warprows_fn_cache<__nv_bfloat16>(cache, T, flag_sync)
                 : warprows_fn_cache<float>(cache, T, flag_sync);
}

}  // namespace mira::cuda::fused

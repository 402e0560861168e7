// The fused MIRA assignment with the f16 copy's update passes on tensor cores
// (MiraPlanOptions::mma_rows; opt-in until measured: bench/NOTES.md, "Session 16").
//
// Why: mira_assign.cu's kernel spends ~7 instructions per element of E and pass on the row
// updates (load, convert, two fused multiply-adds, their share of the block reductions), and
// an H200 profile shows it bound by issue, not memory (bench/RESULTS.md, session 15). Here both
// sweeps of an update are mma.sync m16n8k16: per 16 x 16 tile of E one 16-byte load, one mma
// for the row sums, four movmatrix and one mma for the column sums.
//
// - Work mapping: a block owns a run of rows of one view (as the default kernel) in row tiles
//   of 16, and warp w owns the column tiles [w TPW, (w + 1) TPW) of 16 columns (TPW a template
//   argument: 4, 8 or 12; K <= 16 x 16 warps x 12). E is stored tile by tile in fragment order:
//   the 512 bytes of a tile are the 32 lanes' A fragments (lane 4g + t: E(g, 2t..2t+1),
//   E(g + 8, 2t..), E(g, 2t + 8..), E(g + 8, 2t + 8..)), so one conflict-free 16-byte load per
//   lane and tile reads it, from shared memory or from the workspace (which needs no ldmatrix).
// - Row sums: A = the tile, B = the weights split into two f16 halves (hi, lo 2^11, against a
//   power of two that puts the largest weight in [2^14, 2^15): kernels/cuda/mma.cuh), so each
//   warp's accumulators hold its columns' share of w E for the 16 rows; the warps' shares meet
//   in shared memory behind one __syncthreads per row tile (the default kernel needs one per
//   2-4 rows), and every warp adds them in warp order (the same bits in every warp).
// - Column sums: A = the tile transposed (movmatrix of the fragments the row sums used, still in
//   registers), B = the row tile's 1 / row sums split the same way against their own power of
//   two; each lane adds hi + lo 2^-11 of its two columns into f32 registers.
// - Where a vector's halves would lose bits (its values spanning more than 2^28: the weights
//   of extreme column masses, or the row inverses of one row tile), that pass's row sums, or
//   that row tile's column sums, take f32 fused multiply-adds on the same fragments instead.
// - The first pass reads the logits at the fragments' places (twice: the row maxima, then E),
//   stores the tiles and runs the update with weights 1; the last pass (the targets) recomputes
//   E in f32 from the logits and the row maxima, a warp per row. The column reduction, the
//   weights' formula and the grid barriers are mira_fused.cuh's, as in the default kernel.
// A fixed order everywhere: the targets are bitwise reproducible (other bits than the default
// kernel's, as close to the f64 reference as its f16 copy).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused.cuh"
#include "kernels/cuda/mma.cuh"

namespace cg = cooperative_groups;

namespace mira::cuda::fused {

namespace {

constexpr int kMaxWarps = kMmaRowsBlock / 32;
constexpr int kTileHalves = 256;  // a 16 x 16 tile of E

__device__ __forceinline__ unsigned pack_halves(__half lo, __half hi) {
  return static_cast<unsigned>(__half_as_ushort(lo)) | static_cast<unsigned>(__half_as_ushort(hi)) << 16;
}
__device__ __forceinline__ float2 unpack_halves(unsigned r) {
  return __half22float2(*reinterpret_cast<const __half2*>(&r));
}

// A block's shared memory: the weights (Kp f32, or their halves hi, then lo 16 halves further,
// in fragment order), Kp halves of zeros (32 bytes past lo), two buffers of 16 floats per warp
// (the row tile's partial maxima or sums), then E's tiles. Kp is a multiple of 64, so hi, lo
// and the zeros start 0, 32 and 64 bytes into a 128-byte line: a B fragment's load (lanes 0-3
// hi, 4-7 lo, the rest zeros) touches each bank once.
constexpr int kWeightPad = 16;  // halves
__host__ __device__ constexpr int weight_floats(int Kp) {
  return (3 * Kp) / 2 + kWeightPad;
}
struct MmaSmem {
  float* w;
  __half* whi;
  __half* wlo;
  __half* zero;
  float* part;
  __half* E;
};
__device__ __forceinline__ MmaSmem mma_smem(unsigned char* base, int Kp) {
  MmaSmem s;
  s.w = reinterpret_cast<float*>(base);
  s.whi = reinterpret_cast<__half*>(base);
  s.wlo = s.whi + Kp + kWeightPad;
  s.zero = s.wlo + Kp + kWeightPad;
  s.part = s.w + weight_floats(Kp);
  s.E = reinterpret_cast<__half*>(s.part + 2 * kMaxWarps * 16);
  return s;
}

// How an update pass multiplies by the weights: their halves against 2^-e (unscale = 2^e), or
// (wide) f32 weights and fused multiply-adds.
struct PassWeights {
  bool wide;
  float unscale;
};

// The weights of pass p of view v into s.w, for the whole block (ends with a barrier): 1 for
// the first pass's columns, else from the previous pass's column sums (mira_weight, as every
// fused kernel). Halves unless they would lose bits, or the pass is the last (the targets take
// f32 weights in column order). A thread's TPW / 2 columns are tid + k blockDim.x (the block
// has Kp / (16 TPW) warps, so every one is < Kp): their sums' loads go out together, then
// their log2s' (a load per column behind a branch, or after a store through s.w, would wait
// on each: measured, 3 us per pass).
template <int TPW>
__device__ __forceinline__ PassWeights mma_weights(const FusedArgs& a, int v, int p, const MmaSmem& s, float* red,
                                                   int& parity) {
  constexpr int kCols = TPW / 2;
  const int tid = threadIdx.x, bd = blockDim.x;
  __half* whi = s.whi;
  __half* wlo = s.wlo;
  if (p == 0) {
    const __half one = __float2half_rn(1.f), zero = __float2half_rn(0.f);
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int j = tid + k * bd;
      if (a.mma_fallback) {
        s.w[j] = j < a.K ? 1.f : 0.f;
      } else {
        whi[frag_pos(j)] = j < a.K ? one : zero;
        wlo[frag_pos(j)] = zero;
      }
    }
    __syncthreads();
    return {a.mma_fallback, 1.f};
  }
  const float* cs = a.colsum + static_cast<size_t>(v) * a.Kp;
  const float* l2s = a.colsum_log2 ? a.colsum_log2 + static_cast<size_t>(v) * a.Kp : nullptr;
  float x[kCols], l2[kCols];
#pragma unroll
  for (int k = 0; k < kCols; ++k) x[k] = cs[tid + k * bd];
#pragma unroll
  for (int k = 0; k < kCols; ++k) l2[k] = l2s ? l2s[tid + k * bd] : 0.f;
  // The largest sum and (negated) the smallest positive one.
  float m[2] = {0.f, -INFINITY};
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    m[0] = fmaxf(m[0], x[k]);
    if (x[k] > 0.f) m[1] = fmaxf(m[1], -x[k]);
  }
  RowReduce<2>::allreduce<true>(m, red, 64, parity);
  const float l2max = log2f(m[0]);
  float scale = 1.f, unscale = 1.f;
  const bool halves = p <= a.iters && !a.mma_fallback && weight_scale(a, -m[1], m[0], l2max, scale, unscale);
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    const int j = tid + k * bd;
    const float w = mira_weight_log2(a, x[k], l2s ? l2[k] : log2f(x[k]), l2max);
    if (halves) {
      split_half(w * scale, whi[frag_pos(j)], wlo[frag_pos(j)]);
    } else {
      s.w[j] = w;
    }
  }
  __syncthreads();
  return {!halves, halves ? unscale : 1.f};
}

// Where a block's row tiles live: the first smem_tiles in shared memory, the rest in the
// workspace; tile (rt, ct) at (rt KT + ct) 256 halves.
struct Tiles {
  __half* smem;
  __half* ws;
  int smem_tiles, KT;
  __device__ __forceinline__ __half* row_tile(int rt) const {
    return rt < smem_tiles ? smem + static_cast<size_t>(rt) * KT * kTileHalves
                           : ws + static_cast<size_t>(rt - smem_tiles) * KT * kTileHalves;
  }
};

// This warp's values of the row tile's 16 rows (lanes 4g: rows g and g + 8 in v) into the
// next of the two buffers, then a barrier; returns the buffer (warp w's values at [16 w]). A
// buffer is rewritten two calls later, after every warp has passed the barrier in between.
__device__ __forceinline__ const float* publish_rows(const MmaSmem& s, int& pb, const float (&v)[2]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* part = s.part + pb * kMaxWarps * 16;
  pb ^= 1;
  if ((lane & 3) == 0) {
    part[warp * 16 + (lane >> 2)] = v[0];
    part[warp * 16 + (lane >> 2) + 8] = v[1];
  }
  __syncthreads();
  return part;
}

// Place rho of the warps' values in a publish_rows buffer, summed (MAX: their maximum) in warp
// order: over a constant bound, predicated, so that the loads go out together (a loop to
// nwarps would wait on each).
template <bool MAX>
__device__ __forceinline__ float fold_warps(const float* part, int rho, int nwarps) {
  float v[kMaxWarps];
#pragma unroll
  for (int w = 0; w < kMaxWarps; ++w) v[w] = w < nwarps ? part[w * 16 + rho] : 0.f;
  float r = MAX ? -INFINITY : 0.f;
#pragma unroll
  for (int w = 0; w < kMaxWarps; ++w)
    if (w < nwarps) r = MAX ? fmaxf(r, v[w]) : r + v[w];
  return r;
}

// The first pass's logits loads have no branches: a masked place (a row past the block's, a
// column past K) loads the view's first logit, which is in range, and is replaced by -inf
// after the load. (Loads behind such branches went out one at a time: bench/RESULTS.md,
// session 17.) VEC: FusedArgs::vec_logits (K % 4 == 0, rows 16-byte (f32) or 8-byte (bf16)
// aligned), taken once per batch of loads.
__device__ __forceinline__ float2 load_pair(const float* p) {
  return __ldg(reinterpret_cast<const float2*>(p));
}
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* p) {
  return __bfloat1622float2(__ldg(reinterpret_cast<const __nv_bfloat162*>(p)));
}
// Logits (row, col) and (row, col + 1), col even (VEC: col + 1 < K wherever col < K).
template <bool VEC, typename TIn>
__device__ __forceinline__ float2 logit_pair(const FusedArgs& a, const TIn* logits, int row, int r1, int col) {
  const bool in0 = row < r1 && col < a.K, in1 = in0 && col + 1 < a.K;
  const size_t off = static_cast<size_t>(row) * a.K + col;
  float2 v;
  if constexpr (VEC) {
    v = load_pair(logits + (in0 ? off : 0));
  } else {
    v = make_float2(ldg_f32(logits + (in0 ? off : 0)), ldg_f32(logits + (in1 ? off + 1 : 0)));
  }
  return make_float2(in0 ? v.x : -INFINITY, in1 ? v.y : -INFINITY);
}
// The first pass's E for row tile rt: the fragments' logits (-inf beyond the rows and K),
// their row maxima across the block, E = exp2((L - max) k2) rounded to the f16 copy (E 2^15),
// stored to the tile (each lane its own fragments: it reads them back without a barrier).
// Counts non-finite logits in bad. Both sweeps load kBatch tiles (8 pairs per lane, each with
// its own address) at a time (batches of 4 tiles spilled 32-40 bytes at 12 tiles per warp);
// and the next row tile's logits are asked of L2 first.
constexpr int kBatch = 2;
template <int TPW, typename TIn>
__device__ __forceinline__ void build_tile(const FusedArgs& a, const BlockRows<TIn, __half>& b, const Tiles& tiles,
                                           const MmaSmem& s, int rt, int& pb, float& bad) {
  static_assert(TPW % kBatch == 0, "whole batches of tiles");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  {
    const int n0 = b.r0 + 16 * (rt + 1), n1 = min(b.r1, n0 + 16);
    prefetch_rows_l2(b.logits + static_cast<size_t>(n0) * a.K, a.K * static_cast<int>(sizeof(TIn)), n1 - n0,
                     threadIdx.x, blockDim.x);
  }
  const int row0 = b.r0 + 16 * rt + g;  // the lane's rows: row0 and row0 + 8
  const int col0 = 16 * warp * TPW + 2 * t;
  // Fragment register q of tile i: rows row0 + 8 (q & 1), columns col0 + 16 i + 8 (q >> 1) + {0, 1}.
  auto pair = [&](auto vec, int i, int q) {
    return logit_pair<decltype(vec)::value>(a, b.logits, row0 + 8 * (q & 1), b.r1, col0 + 16 * i + 8 * (q >> 1));
  };
  // Tiles i0 .. i0 + kBatch - 1: all their loads first, in their own loop (loads interleaved
  // with the checks that use them were issued a tile at a time: measured).
  auto load_batch = [&](int i0, float2(&x)[kBatch][4]) {
    auto fill = [&](auto vec) {
#pragma unroll
      for (int di = 0; di < kBatch; ++di)
#pragma unroll
        for (int q = 0; q < 4; ++q) x[di][q] = pair(vec, i0 + di, q);
    };
    if (a.vec_logits) {
      fill(std::true_type{});
    } else {
      fill(std::false_type{});
    }
  };
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll 1
  for (int i0 = 0; i0 < TPW; i0 += kBatch) {
    float2 x[kBatch][4];
    load_batch(i0, x);
#pragma unroll
    for (int di = 0; di < kBatch; ++di)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        // Masked places hold -inf, which isfinite would count: only in-range values are counted.
        const int row = row0 + 8 * (q & 1), col = col0 + 16 * (i0 + di) + 8 * (q >> 1);
        if (row < b.r1 && col < a.K && !isfinite(x[di][q].x)) bad += 1.f;
        if (row < b.r1 && col + 1 < a.K && !isfinite(x[di][q].y)) bad += 1.f;
        mx[q & 1] = fmaxf(mx[q & 1], fmaxf(x[di][q].x, x[di][q].y));
      }
  }
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    mx[k] = fmaxf(mx[k], __shfl_xor_sync(kFull, mx[k], 1));
    mx[k] = fmaxf(mx[k], __shfl_xor_sync(kFull, mx[k], 2));
  }
  const float* part = publish_rows(s, pb, mx);
  const float m[2] = {fold_warps<true>(part, g, nwarps), fold_warps<true>(part, g + 8, nwarps)};
  if (warp == 0 && t == 0) {
    if (row0 < b.r1) a.rowmax[static_cast<size_t>(b.v) * a.N + row0] = m[0];
    if (row0 + 8 < b.r1) a.rowmax[static_cast<size_t>(b.v) * a.N + row0 + 8] = m[1];
  }
  __half* dst = tiles.row_tile(rt) + static_cast<size_t>(warp) * TPW * kTileHalves + lane * 8;
  // Masked places get 0 (exp2 of -inf - m would be NaN for an all-masked row).
  auto to_half = [&](float x, float m, bool in) {
    return __float2half_rn((in ? exp2f((x - m) * a.k2) : 0.f) * kF16Scale);  // ECache<__half>::round's value
  };
#pragma unroll 1
  for (int i0 = 0; i0 < TPW; i0 += kBatch) {
    float2 x[kBatch][4];
    load_batch(i0, x);
#pragma unroll
    for (int di = 0; di < kBatch; ++di) {
      unsigned e[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int row = row0 + 8 * (q & 1), col = col0 + 16 * (i0 + di) + 8 * (q >> 1);
        e[q] = pack_halves(to_half(x[di][q].x, m[q & 1], row < b.r1 && col < a.K),
                           to_half(x[di][q].y, m[q & 1], row < b.r1 && col + 1 < a.K));
      }
      *reinterpret_cast<uint4*>(dst + (i0 + di) * kTileHalves) = make_uint4(e[0], e[1], e[2], e[3]);
    }
  }
}

// Row tile rt's fragments from the tiles: in two branches, so that the compiler sees the
// shared-memory loads as such (ld.shared, not generic loads); the workspace's through L2
// (ld.global.cg: written by this block's first pass, never by another block).
template <int TPW>
__device__ __forceinline__ void load_tile(const Tiles& tiles, int rt, unsigned (&e)[TPW][4]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t off = static_cast<size_t>(warp) * TPW * kTileHalves + lane * 8;
  if (rt < tiles.smem_tiles) {
    const __half* src = tiles.smem + static_cast<size_t>(rt) * tiles.KT * kTileHalves + off;
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      const uint4 q = *reinterpret_cast<const uint4*>(src + i * kTileHalves);
      e[i][0] = q.x, e[i][1] = q.y, e[i][2] = q.z, e[i][3] = q.w;
    }
  } else {
    const __half* src = tiles.ws + static_cast<size_t>(rt - tiles.smem_tiles) * tiles.KT * kTileHalves + off;
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      const uint4 q = __ldcg(reinterpret_cast<const uint4*>(src + i * kTileHalves));
      e[i][0] = q.x, e[i][1] = q.y, e[i][2] = q.z, e[i][3] = q.w;
    }
  }
}

// One row tile of an update (its first row row0; rows from r1 on are padding): r_i = sum_j
// w_j E_ij over the block, then c_j += E_ij / r_i for the warp's columns; lane 4g (t = 0) holds
// columns 16 (w TPW + i) + g and + g + 8 in c[i][0], c[i][1] (the other lanes' c are never
// stored).
template <int TPW>
__device__ __forceinline__ void update_tile(const FusedArgs& a, int row0, int r1, const MmaSmem& s,
                                            const PassWeights& pw, const unsigned (&e)[TPW][4], float (&c)[TPW][2],
                                            int& pb) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int ct0 = warp * TPW;
  // This warp's share of the 16 rows' sums: rows g and g + 8 in pr (lanes t = 0).
  float pr[2] = {0.f, 0.f};
  if (!pw.wide) {
    // The B fragments (b_fragment's layout) without a select: lanes 8-31 read zeros.
    const __half* bsrc = (lane < 8 ? (lane & 4 ? s.wlo : s.whi) : s.zero) + 16 * ct0 + 4 * (lane & 3);
    float d[4][4];  // four chains of mma (tile i on chain i % 4)
#pragma unroll
    for (int k = 0; k < 4; ++k) d[k][0] = d[k][1] = d[k][2] = d[k][3] = 0.f;
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      const uint2 v = *reinterpret_cast<const uint2*>(bsrc + 16 * i);
      const unsigned bf[2] = {v.x, v.y};
      mma_16816(d[i & 3], e[i], bf);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float h[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) h[k] = fmaf(d[k][2 * r + 1], 1.f / kLoScale, d[k][2 * r]);
      pr[r] = ((h[0] + h[1]) + (h[2] + h[3])) * pw.unscale;
    }
  } else {
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      const float* wc = s.w + 16 * (ct0 + i) + 2 * t;
      const float2 w01 = *reinterpret_cast<const float2*>(wc), w89 = *reinterpret_cast<const float2*>(wc + 8);
      const float2 x0 = unpack_halves(e[i][0]), x1 = unpack_halves(e[i][1]);
      const float2 x2 = unpack_halves(e[i][2]), x3 = unpack_halves(e[i][3]);
      pr[0] = fmaf(x2.y, w89.y, fmaf(x2.x, w89.x, fmaf(x0.y, w01.y, fmaf(x0.x, w01.x, pr[0]))));
      pr[1] = fmaf(x3.y, w89.y, fmaf(x3.x, w89.x, fmaf(x1.y, w01.y, fmaf(x1.x, w01.x, pr[1]))));
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      pr[k] += __shfl_xor_sync(kFull, pr[k], 1);
      pr[k] += __shfl_xor_sync(kFull, pr[k], 2);
    }
  }
  const float* part = publish_rows(s, pb, pr);
  // Row rho = lane % 16 of the tile: its total over the warps in warp order, and x = 1 / total
  // (0 for an empty row or one past the block's rows). c_j adds S_ij x_i (S = E 2^15, and the
  // total carries the same 2^15).
  const int rho = lane & 15;
  const float tot = fold_warps<false>(part, rho, nwarps);
  const float x = row0 + rho < r1 && tot > 0.f ? 1.f / tot : 0.f;
  // Their largest and smallest positive one over the 16 rows (lanes 16-31 repeat lanes 0-15):
  // x >= 0, so its bits order as the floats, and one redux.sync each does it.
  const unsigned ux = __float_as_uint(x);
  const float xmax = __uint_as_float(__reduce_max_sync(kFull, ux));
  const float xmin = __uint_as_float(__reduce_min_sync(kFull, x > 0.f ? ux : __float_as_uint(INFINITY)));
  if (!(xmax > 0.f)) return;  // no row of the tile adds anything (uniform across the block)
  // The x of rows 2t, 2t + 1, 2t + 8, 2t + 9: the B fragment's places.
  float xr[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) xr[k] = __shfl_sync(kFull, x, 2 * t + (k & 1) + 8 * (k >> 1));
  float scale, unscale;
  half_scale(xmax, scale, unscale);
  // MiraPlan::mma_fallback (the tests) takes every row tile to the fused multiply-adds.
  if (!a.mma_fallback && xmin * scale >= kMinHalf) {
    __half hi[4], lo[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) split_half(xr[k] * scale, hi[k], lo[k]);
    unsigned sb[2] = {0u, 0u};
    if (g == 0) sb[0] = pack_halves(hi[0], hi[1]), sb[1] = pack_halves(hi[2], hi[3]);
    if (g == 1) sb[0] = pack_halves(lo[0], lo[1]), sb[1] = pack_halves(lo[2], lo[3]);
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      // The tile transposed: A(m = column, k = row).
      const unsigned at[4] = {movmatrix_trans(e[i][0]), movmatrix_trans(e[i][2]), movmatrix_trans(e[i][1]),
                              movmatrix_trans(e[i][3])};
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      mma_16816(d, at, sb);
      c[i][0] = fmaf(fmaf(d[1], 1.f / kLoScale, d[0]), unscale, c[i][0]);
      c[i][1] = fmaf(fmaf(d[3], 1.f / kLoScale, d[2]), unscale, c[i][1]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      // Lane 4g + t: rows 2t, 2t + 1 (at[0]: column g, at[1]: g + 8) and 2t + 8, 2t + 9 (at[2], at[3]).
      const float2 y0 = unpack_halves(movmatrix_trans(e[i][0])), y1 = unpack_halves(movmatrix_trans(e[i][2]));
      const float2 y2 = unpack_halves(movmatrix_trans(e[i][1])), y3 = unpack_halves(movmatrix_trans(e[i][3]));
      float v0 = fmaf(y2.y, xr[3], fmaf(y2.x, xr[2], fmaf(y0.y, xr[1], y0.x * xr[0])));
      float v1 = fmaf(y3.y, xr[3], fmaf(y3.x, xr[2], fmaf(y1.y, xr[1], y1.x * xr[0])));
      v0 += __shfl_xor_sync(kFull, v0, 1);
      v1 += __shfl_xor_sync(kFull, v1, 1);
      v0 += __shfl_xor_sync(kFull, v0, 2);
      v1 += __shfl_xor_sync(kFull, v1, 2);
      c[i][0] += v0;
      c[i][1] += v1;
    }
  }
}

// The last pass: T_ij = w_j E_ij / sum_l w_l E_il with E in f32 from the logits and the row
// maxima; a warp per row (rows r0 + warp, + warps, ...), lane l over the column quads l, l + 32.
// The warp's next row is asked of L2 first, and each sweep loads kQuads quads per lane before
// it uses any (a quad or two at a time waited on memory ~24 times per row: measured).
constexpr int kQuads = 6;
template <typename TIn>
__device__ __forceinline__ void mma_targets(const FusedArgs& a, const BlockRows<TIn, __half>& b, const float* w) {
  constexpr int kStep = 32 * kVec;  // a warp's quads: columns kStep apart per lane
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int row = b.r0 + warp; row < b.r1; row += nwarps) {
    const TIn* lrow = b.logits + static_cast<size_t>(row) * a.K;
    if (row + nwarps < b.r1)
      prefetch_rows_l2(lrow + static_cast<size_t>(nwarps) * a.K, a.K * static_cast<int>(sizeof(TIn)), 1, lane, 32);
    const float m = a.rowmax[static_cast<size_t>(b.v) * a.N + row];
    // Quads c0, c0 + kStep, ...: the logits (-inf from K on), then E in f32 (0 from K on).
    auto exact = [&](int c0, float(&y)[kQuads][kVec]) {
#pragma unroll
      for (int q = 0; q < kQuads; ++q) load_logits4(lrow, c0 + q * kStep, a.K, a.vec_logits, y[q]);
#pragma unroll
      for (int q = 0; q < kQuads; ++q)
#pragma unroll
        for (int u = 0; u < kVec; ++u) y[q][u] = c0 + q * kStep + u < a.K ? exp2f((y[q][u] - m) * a.k2) : 0.f;
    };
    float d = 0.f;
    for (int c0 = kVec * lane; c0 < a.Kp; c0 += kQuads * kStep) {
      float y[kQuads][kVec];
      exact(c0, y);
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
        const int col = c0 + q * kStep;
        if (col < a.Kp)
#pragma unroll
          for (int u = 0; u < kVec; ++u) d = fmaf(w[col + u], y[q][u], d);
      }
    }
    d = warp_sum(d);
    const float sc = d > 0.f ? 1.f / d : 0.f;
    float* trow = b.targets + static_cast<size_t>(row) * a.K;
    for (int c0 = kVec * lane; c0 < a.K; c0 += kQuads * kStep) {
      float y[kQuads][kVec];
      exact(c0, y);
#pragma unroll
      for (int q = 0; q < kQuads; ++q) {
        const int col = c0 + q * kStep;
        if (col >= a.K) continue;
#pragma unroll
        for (int u = 0; u < kVec; ++u) y[q][u] = w[col + u] * y[q][u] * sc;
        if (a.vec_logits) {
          *reinterpret_cast<float4*>(trow + col) = make_float4(y[q][0], y[q][1], y[q][2], y[q][3]);
        } else {
#pragma unroll
          for (int u = 0; u < kVec; ++u)
            if (col + u < a.K) trow[col + u] = y[q][u];
        }
      }
    }
  }
}

// Grid: views_per_group * blocks_per_view blocks, all resident (cooperative launch), one per
// SM; block: Kp / (16 TPW) warps (16 at most), Kp the multiple of 16 TPW from K up. Cooperative
// grid barriers (counter barriers, per block or per cluster, measured no faster: RESULTS.md,
// session 17).
template <int TPW, typename TIn>
__global__ void __launch_bounds__(kMmaRowsBlock, 1) mira_mmarows_kernel(const __grid_constant__ FusedArgs a) {
  MIRA_DYNAMIC_SMEM(smem_raw);
  __shared__ float red[2 * 64];                   // RowReduce<2> (the weights' largest and smallest sums)
  __shared__ float redc[kMmaRowsBlock];           // the column reduction's (subset, column) sums
  __shared__ long long ph[kTraceShared];          // MiraPlan::trace (trace_start)
  const MmaSmem s = mma_smem(smem_raw, a.Kp);
  cg::grid_group grid = cg::this_grid();
  unsigned* sync_target = fused_sync_target<0>(a);
  const int vg = blockIdx.x / a.blocks_per_view, bv = blockIdx.x % a.blocks_per_view;
  const int groups = (a.V + a.views_per_group - 1) / a.views_per_group;
  int parity = 0, pb = 0;
  float bad = 0;  // non-finite logits seen by this thread
  trace_start(a, ph);
  auto mark = [&](int k) { trace_mark(a, ph, k); };
  // The B fragments' zeros, for the whole launch (the first weights' barrier publishes them).
  for (int j = threadIdx.x; j < a.Kp; j += blockDim.x) s.zero[j] = __float2half_rn(0.f);

  for (int gi = 0; gi < groups; ++gi) {
    const int v = gi * a.views_per_group + vg;
    const bool active = v < a.V;  // uniform per block
    const BlockRows<TIn, __half> b = block_rows<TIn>(a, v, bv, s.E, red, 64);
    Tiles tiles;
    tiles.smem = s.E;
    tiles.ws = static_cast<__half*>(a.ecache) +
               (static_cast<size_t>(active ? v : 0) * a.blocks_per_view + bv) * a.ecache_rows_per_block * a.Kp;
    tiles.smem_tiles = a.smem_rows / 16;
    tiles.KT = a.Kp / 16;
    const int nt = b.r1 > b.r0 ? (b.r1 - b.r0 + 15) / 16 : 0;  // row tiles, uniform per block

    for (int p = a.pass_begin; p < a.pass_end; ++p) {
      if (p > a.iters) {  // the targets (c is not live here: registers for them)
        if (active) {
          mma_weights<TPW>(a, v, p, s, red, parity);
          mark(kTraceWeights);
          mma_targets<TIn>(a, b, s.w);
          mark(kTraceLast);
          // The next view group's first weights overwrite s.w: after every warp's targets.
          __syncthreads();
        }
        continue;
      }
      float c[TPW][2];
#pragma unroll
      for (int i = 0; i < TPW; ++i) c[i][0] = c[i][1] = 0.f;
      if (active) {
        const PassWeights pw = mma_weights<TPW>(a, v, p, s, red, parity);
        mark(kTraceWeights);
        // The first pass stores every row tile before its update (the column sums c are not
        // live while the logits' loads are in flight: registers for more of them).
        if (p == 0)
          for (int rt = 0; rt < nt; ++rt) build_tile<TPW>(a, b, tiles, s, rt, pb, bad);
        for (int rt = 0; rt < nt; ++rt) {
          unsigned e[TPW][4];
          load_tile<TPW>(tiles, rt, e);
          update_tile<TPW>(a, b.r0 + 16 * rt, b.r1, s, pw, e, c, pb);
        }
        mark(p == 0 ? kTraceFirst : kTraceRows);
      }
      {
        const unsigned seq = static_cast<unsigned>(p + 1);
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (active && (lane & 3) == 0) {
          float* part =
              a.partial + (static_cast<size_t>(v) * a.blocks_per_view + bv) * a.Kp + 16 * warp * TPW + (lane >> 2);
#pragma unroll
          for (int i = 0; i < TPW; ++i) {
            part[16 * i] = c[i][0];
            part[16 * i + 8] = c[i][1];
          }
        }
        fused_grid_sync<0>(a, grid, gi == 0 && p == a.pass_begin, sync_target);
        mark(kTraceBarrier1);
        if (active) reduce_columns(a, v, bv, seq, redc);
        mark(kTraceReduce);
        if (p + 1 < a.pass_end) fused_grid_sync<0>(a, grid, false, sync_target);
        mark(kTraceBarrier2);
      }
    }
  }
  trace_finish(a, ph);
  if (bad > 0.f) atomicAdd(a.colsum + static_cast<size_t>(a.V) * a.Kp, bad);
}

}  // namespace

int mmarows_tiles(int K) {
  return K <= 1024 ? 4 : K <= 2048 ? 8 : 12;
}

int mmarows_warps(int K) {
  const int kt = (K + 15) / 16, tpw = mmarows_tiles(K);
  return (kt + tpw - 1) / tpw;
}

size_t mmarows_extra_bytes(int Kp) {
  return static_cast<size_t>(weight_floats(Kp) + 2 * kMaxWarps * 16) * sizeof(float);
}

FusedFn mmarows_fn(bool bf16_in, int tpw) {
  switch (tpw) {
    case 4:
      return bf16_in ? mira_mmarows_kernel<4, __nv_bfloat16> : mira_mmarows_kernel<4, float>;
    case 8:
      return bf16_in ? mira_mmarows_kernel<8, __nv_bfloat16> : mira_mmarows_kernel<8, float>;
    default:
      return bf16_in ? mira_mmarows_kernel<12, __nv_bfloat16> : mira_mmarows_kernel<12, float>;
  }
}

}  // namespace mira::cuda::fused

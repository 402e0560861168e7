// CUDA kernels for BN, pooling, row normalisations and the soft cross-entropy (twins of
// kernels/cpu/nn.cpp), plus the bias add / bias gradient of the cuBLAS linear.
//
// Choices worth knowing:
// - Column reductions over (M, C) (BN statistics, BN backward sums, bias gradient) run in two
//   fixed passes: blocks of 32 channels x 16 row-threads write per-block partials in double,
//   then a second kernel adds each channel's partials in a fixed order. The number of row
//   blocks depends only on (M, C), not on the GPU, so every card gives the same bits; no
//   atomics.
// - BN statistics use sums shifted by the channel's first value (cheap, and as accurate as
//   Welford when the shift is a typical sample), per thread in f32 over at most a few hundred
//   rows, then double.
// - Where the CPU twin computes a short f32 expression, the kernel spells it with __fmul_rn /
//   __fadd_rn so nvcc does not fuse it into an FMA and f32 results match the CPU bit for bit
//   (BN apply, pooling gradients); row reductions (softmax, norms) differ from the CPU's double
//   accumulation by f32 rounding only.
// - Max-pool backward gathers: each input element rescans the (at most ceil(k/s)^2) windows
//   that contain it, with the CPU's first-maximum rule, and adds their dy in window order.
#include "kernels/cuda/nn.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>

#include "engine/env_switch.h"
#include "kernels/cuda/common.cuh"

namespace mira::gpu {

namespace {

// ---- column reductions over (M, C)

constexpr int kColTile = 32;  // channels per block: one warp reads 32 consecutive channels of a row
constexpr int kColRows = 16;  // row-threads per block (threadIdx.y)
constexpr int kColTargetBlocks = 1024;
constexpr int kColMinRowsPerThread = 4;

enum ColMode { kColStats = 0, kColBwd = 1, kColSum = 2 };

struct ColGrid {
  int tiles = 1;
  int G = 1;  // row blocks
  int64_t rows_per_block = 0;
};

ColGrid col_grid(int64_t M, int C) {
  ColGrid g;
  g.tiles = (C + kColTile - 1) / kColTile;
  int64_t G = (kColTargetBlocks + g.tiles - 1) / g.tiles;
  const int64_t by_rows = (M + kColRows * kColMinRowsPerThread - 1) / (kColRows * kColMinRowsPerThread);
  if (G > by_rows) G = by_rows;
  if (G < 1) G = 1;
  g.G = static_cast<int>(G);
  g.rows_per_block = (M + G - 1) / G;
  return g;
}

size_t col_workspace_bytes(int64_t M, int C) {
  const ColGrid g = col_grid(M, C);
  return static_cast<size_t>(g.G) * 2 * static_cast<size_t>(C) * sizeof(double);
}

// a: (M, C) x (stats), dy (bwd, sum); x: (M, C) for bwd; mean, invstd: (C) for bwd;
// part: (G, 2, C) per-block sums. Block (32, 16) covers 32 channels x rows_per_block rows;
// threadIdx.x is the channel (coalesced), threadIdx.y strides the rows.
template <int MODE, typename T>
__global__ void __launch_bounds__(kColTile* kColRows)
    col_partial_kernel(const T* a, const T* x, const float* mean, const float* invstd, int64_t M, int C,
                       int64_t rows_per_block, double* part, const T* relu_y) {
  __shared__ double s0[kColRows][kColTile + 1];
  __shared__ double s1[kColRows][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kColTile + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < M ? r0 + rows_per_block : M;
  float acc0 = 0.f, acc1 = 0.f;
  if (c < C) {
    if constexpr (MODE == kColStats) {
      const float shift = to_f(a[c]);
      for (int64_t r = r0 + ty; r < r1; r += kColRows) {
        const float d = to_f(a[r * C + c]) - shift;
        acc0 += d;
        acc1 += d * d;
      }
    } else if constexpr (MODE == kColBwd) {
      const float m = mean[c], is = invstd[c];
      for (int64_t r = r0 + ty; r < r1; r += kColRows) {
        const float g = relu_y && to_f(relu_y[r * C + c]) <= 0.f ? 0.f : to_f(a[r * C + c]);
        const float xhat = __fmul_rn(__fsub_rn(to_f(x[r * C + c]), m), is);
        acc0 += g;
        acc1 += g * xhat;
      }
    } else {
      for (int64_t r = r0 + ty; r < r1; r += kColRows) acc0 += to_f(a[r * C + c]);
    }
  }
  s0[ty][tx] = acc0;
  s1[ty][tx] = acc1;
  __syncthreads();
  if (ty == 0 && c < C) {
    double t0 = 0.0, t1 = 0.0;
#pragma unroll
    for (int i = 0; i < kColRows; ++i) {
      t0 += s0[i][tx];
      t1 += s1[i][tx];
    }
    part[(static_cast<int64_t>(blockIdx.y) * 2 + 0) * C + c] = t0;
    part[(static_cast<int64_t>(blockIdx.y) * 2 + 1) * C + c] = t1;
  }
}

// part: (G, 2, C) per-block sums -> per-channel totals, then the mode's epilogue:
//   stats: x (M, C) (row 0 is the shift) -> mean, var (C);  bwd: -> out0, out1 (C);
//   sum: db (C) (+)= total.
// Block (32, 16) per 32 channels: threadIdx.y strides the G partials in a fixed order, then
// row 0 adds the 16 per-thread sums in order. Deterministic, and short enough per thread that
// the pass costs a few microseconds even with G = 1024.
template <int MODE, typename T, typename D>
__global__ void __launch_bounds__(kColTile* kColRows)
    col_final_kernel(const double* part, int G, int64_t M, int C, const T* x, float* out0, float* out1, D* db,
                     bool acc) {
  __shared__ double s0[kColRows][kColTile + 1];
  __shared__ double s1[kColRows][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kColTile + tx;
  double a0 = 0.0, a1 = 0.0;
  if (c < C) {
    for (int g = ty; g < G; g += kColRows) {
      a0 += part[(static_cast<int64_t>(g) * 2 + 0) * C + c];
      if constexpr (MODE != kColSum) a1 += part[(static_cast<int64_t>(g) * 2 + 1) * C + c];
    }
  }
  s0[ty][tx] = a0;
  s1[ty][tx] = a1;
  __syncthreads();
  if (ty != 0 || c >= C) return;
  double t0 = 0.0, t1 = 0.0;
#pragma unroll
  for (int i = 0; i < kColRows; ++i) {
    t0 += s0[i][tx];
    t1 += s1[i][tx];
  }
  if constexpr (MODE == kColStats) {
    const double m = t0 / static_cast<double>(M);
    double v = t1 / static_cast<double>(M) - m * m;
    if (v < 0.0) v = 0.0;
    out0[c] = static_cast<float>(static_cast<double>(to_f(x[c])) + m);
    out1[c] = static_cast<float>(v);
  } else if constexpr (MODE == kColBwd) {
    out0[c] = static_cast<float>(t0);
    out1[c] = static_cast<float>(t1);
  } else {
    if (acc) t0 += static_cast<double>(to_f(db[c]));
    db[c] = from_f<D>(static_cast<float>(t0));
  }
}

template <int MODE, typename T>
ColGrid launch_col_partial(const T* a, const T* x, const float* mean, const float* invstd, int64_t M, int C,
                           void* workspace, cudaStream_t stream, const T* relu_y = nullptr) {
  const ColGrid g = col_grid(M, C);
  const dim3 block(kColTile, kColRows), grid(g.tiles, g.G);
  MIRA_LAUNCH(grid, block, 0, stream, col_partial_kernel<MODE, T>)
  (a, x, mean, invstd, M, C, g.rows_per_block, static_cast<double*>(workspace), relu_y);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  return g;
}

// ---- per-channel elementwise over (M, C): block (32, 8), threadIdx.x the channel, rows
// grid-strided over blockIdx.y; each thread keeps its channel's parameters in registers.
constexpr int kApplyRows = 8;

dim3 apply_grid(int64_t M, int C) {
  const int tiles = (C + kColTile - 1) / kColTile;
  int64_t gy = (M + kApplyRows * 4 - 1) / (kApplyRows * 4);
  if (gy < 1) gy = 1;
  if (gy > 65535) gy = 65535;
  return dim3(tiles, static_cast<unsigned>(gy));
}

// x, y: (M, C); mean, invstd, gamma, beta: (C)
template <typename T>
__global__ void __launch_bounds__(kColTile* kApplyRows)
    bn_fwd_apply_kernel(const T* x, const float* mean, const float* invstd, const float* gamma, const float* beta,
                        T* y, int64_t M, int C, bool relu) {
  const int c = blockIdx.x * kColTile + threadIdx.x;
  if (c >= C) return;
  const float m = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
  const int64_t step = static_cast<int64_t>(gridDim.y) * kApplyRows;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kApplyRows + threadIdx.y; r < M; r += step) {
    const int64_t i = r * C + c;
    const float v = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(to_f(x[i]), m), is), g), b);
    y[i] = from_f<T>(relu && v <= 0.f ? 0.f : v);
  }
}

// dy, x, dx: (M, C); mean, invstd, gamma, sum_dy, sum_dy_xhat: (C) (sums null in eval mode)
template <typename T>
__global__ void __launch_bounds__(kColTile* kApplyRows)
    bn_bwd_apply_kernel(const T* dy, const T* x, const float* mean, const float* invstd, const float* gamma,
                        const float* sum_dy, const float* sum_dy_xhat, double count, T* dx, int64_t M, int C,
                        bool acc, const T* relu_y) {
  const int c = blockIdx.x * kColTile + threadIdx.x;
  if (c >= C) return;
  const float m = mean[c], is = invstd[c];
  const float k = __fmul_rn(gamma[c], is);
  const float a = sum_dy ? static_cast<float>(static_cast<double>(sum_dy[c]) / count) : 0.f;
  const float b = sum_dy_xhat ? static_cast<float>(static_cast<double>(sum_dy_xhat[c]) / count) : 0.f;
  const int64_t step = static_cast<int64_t>(gridDim.y) * kApplyRows;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kApplyRows + threadIdx.y; r < M; r += step) {
    const int64_t i = r * C + c;
    const float xhat = __fmul_rn(__fsub_rn(to_f(x[i]), m), is);
    const float d = relu_y && to_f(relu_y[i]) <= 0.f ? 0.f : to_f(dy[i]);
    const float g = __fmul_rn(k, __fsub_rn(__fsub_rn(d, a), __fmul_rn(xhat, b)));
    dx[i] = from_f<T>(acc ? __fadd_rn(to_f(dx[i]), g) : g);
  }
}

// ---- batch norm, vectorised: V = 16 / sizeof(T) consecutive channels per thread in 16-byte
// accesses (the kernels above move 2 or 4 bytes per thread and access). The channels go in
// tiles of CT = CVT * V (CVT = min(C / V, 32) channel groups; blockIdx.y is the tile), so a
// block's RG = 256 / CVT row-threads share each tile and the reductions' partials stay small:
// at most kVecMaxBlocks blocks over all tiles and at least kVecMinRowsPerThread rows per
// thread (a first version gave every block all C channels and up to 1024 row blocks: partials
// of 16 KB x C, 32 MB at C = 2048, more than the data, and the step got slower). Thread t owns
// channel group t % CVT of its tile and walks the rows t / CVT, t / CVT + RG, ..., four loads
// in flight, so its channels' parameters stay in registers. Same arithmetic per element as
// the scalar kernels (the apply kernels give the same bits); the partial sums go to the same
// (G, 2, C) layout, which col_final_kernel reduces in a fixed order.
constexpr int kVecThreads = 256;
constexpr int kVecMaxBlocks = 512;
constexpr int kVecMinRowsPerThread = 16;  // reductions; the apply kernels take 4
constexpr int kVecApplyMinRowsPerThread = 4;

template <typename T>
struct VecOf {
  static constexpr int V = 16 / static_cast<int>(sizeof(T));
  struct alignas(16) P {
    T v[V];
  };
};

// Channel groups per tile: all C / V of them up to 32, else 32.
__host__ __device__ __forceinline__ int vec_tile_groups(int C, int V) {
  return C / V < 32 ? C / V : 32;
}

template <int MODE, typename T>
__global__ void __launch_bounds__(kVecThreads)
    col_partial_vec_kernel(const T* a, const T* x, const float* mean, const float* invstd, int64_t M, int C,
                           int64_t rows_per_block, double* part, const T* relu_y) {
  constexpr int V = VecOf<T>::V;
  using P = typename VecOf<T>::P;
  __shared__ double s0[kVecThreads * 8];  // (RG, CT) = kVecThreads * V values
  __shared__ double s1[kVecThreads * 8];
  const int CVT = vec_tile_groups(C, V), RG = kVecThreads / CVT, CT = CVT * V;
  const int t = threadIdx.x, cg = t % CVT, rg = t / CVT;
  const int ct0 = blockIdx.y * CT, c0 = ct0 + cg * V;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < M ? r0 + rows_per_block : M;
  float acc0[V], acc1[V], k0[V], k1[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    acc0[j] = 0.f;
    acc1[j] = 0.f;
    if constexpr (MODE == kColStats) {
      k0[j] = to_f(a[c0 + j]);  // the shift: row 0, as col_final_kernel expects
      k1[j] = 0.f;
    } else {
      k0[j] = mean[c0 + j];
      k1[j] = invstd[c0 + j];
    }
  }
  // U rows per round, loaded before any is used (4 for the statistics' one tensor, 2 for the
  // backward's three: 167 registers with 4); the rows a thread adds and their order are those
  // of the plain loop r = r0 + rg, r0 + rg + RG, ...
  constexpr int kVecUnroll = MODE == kColStats ? 4 : 2;
  for (int64_t rb = r0 + rg; rb < r1; rb += static_cast<int64_t>(kVecUnroll) * RG) {
    P av[kVecUnroll], xv[kVecUnroll], yv[kVecUnroll];
#pragma unroll
    for (int q = 0; q < kVecUnroll; ++q) {
      const int64_t r = rb + static_cast<int64_t>(q) * RG;
      if (r < r1) {
        const int64_t i = r * C + c0;
        av[q] = *reinterpret_cast<const P*>(a + i);
        if constexpr (MODE != kColStats) {
          xv[q] = *reinterpret_cast<const P*>(x + i);
          if (relu_y) yv[q] = *reinterpret_cast<const P*>(relu_y + i);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kVecUnroll; ++q) {
      if (rb + static_cast<int64_t>(q) * RG >= r1) break;
      if constexpr (MODE == kColStats) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float d = to_f(av[q].v[j]) - k0[j];
          acc0[j] += d;
          acc1[j] += d * d;
        }
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float g = relu_y && to_f(yv[q].v[j]) <= 0.f ? 0.f : to_f(av[q].v[j]);
          const float xhat = __fmul_rn(__fsub_rn(to_f(xv[q].v[j]), k0[j]), k1[j]);
          acc0[j] += g;
          acc1[j] += g * xhat;
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s0[rg * CT + cg * V + j] = acc0[j];
    s1[rg * CT + cg * V + j] = acc1[j];
  }
  __syncthreads();
  for (int c = t; c < CT; c += kVecThreads) {
    double t0 = 0.0, t1 = 0.0;
    for (int q = 0; q < RG; ++q) {
      t0 += s0[q * CT + c];
      t1 += s1[q * CT + c];
    }
    part[(static_cast<int64_t>(blockIdx.x) * 2 + 0) * C + ct0 + c] = t0;
    part[(static_cast<int64_t>(blockIdx.x) * 2 + 1) * C + ct0 + c] = t1;
  }
}

template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    bn_fwd_apply_vec_kernel(const T* x, const float* mean, const float* invstd, const float* gamma,
                            const float* beta, T* y, int64_t M, int C, bool relu) {
  constexpr int V = VecOf<T>::V;
  using P = typename VecOf<T>::P;
  const int CVT = vec_tile_groups(C, V), RG = kVecThreads / CVT;
  const int c0 = blockIdx.y * CVT * V + (threadIdx.x % CVT) * V;
  float m[V], is[V], g[V], b[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    m[j] = mean[c0 + j];
    is[j] = invstd[c0 + j];
    g[j] = gamma[c0 + j];
    b[j] = beta[c0 + j];
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * RG;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * RG + threadIdx.x / CVT; r < M; r += step) {
    const int64_t i = r * C + c0;
    const P xv = *reinterpret_cast<const P*>(x + i);
    P out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float v = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(to_f(xv.v[j]), m[j]), is[j]), g[j]), b[j]);
      out.v[j] = from_f<T>(relu && v <= 0.f ? 0.f : v);
    }
    *reinterpret_cast<P*>(y + i) = out;
  }
}

template <typename T>
__global__ void __launch_bounds__(kVecThreads)
    bn_bwd_apply_vec_kernel(const T* dy, const T* x, const float* mean, const float* invstd, const float* gamma,
                            const float* sum_dy, const float* sum_dy_xhat, double count, T* dx, int64_t M, int C,
                            bool acc, const T* relu_y) {
  constexpr int V = VecOf<T>::V;
  using P = typename VecOf<T>::P;
  const int CVT = vec_tile_groups(C, V), RG = kVecThreads / CVT;
  const int c0 = blockIdx.y * CVT * V + (threadIdx.x % CVT) * V;
  float m[V], is[V], k[V], a[V], b[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int c = c0 + j;
    m[j] = mean[c];
    is[j] = invstd[c];
    k[j] = __fmul_rn(gamma[c], is[j]);
    a[j] = sum_dy ? static_cast<float>(static_cast<double>(sum_dy[c]) / count) : 0.f;
    b[j] = sum_dy_xhat ? static_cast<float>(static_cast<double>(sum_dy_xhat[c]) / count) : 0.f;
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * RG;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * RG + threadIdx.x / CVT; r < M; r += step) {
    const int64_t i = r * C + c0;
    const P dv = *reinterpret_cast<const P*>(dy + i);
    const P xv = *reinterpret_cast<const P*>(x + i);
    P yv, old;
    if (relu_y) yv = *reinterpret_cast<const P*>(relu_y + i);
    if (acc) old = *reinterpret_cast<const P*>(dx + i);
    P out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xhat = __fmul_rn(__fsub_rn(to_f(xv.v[j]), m[j]), is[j]);
      const float d = relu_y && to_f(yv.v[j]) <= 0.f ? 0.f : to_f(dv.v[j]);
      const float g = __fmul_rn(k[j], __fsub_rn(__fsub_rn(d, a[j]), __fmul_rn(xhat, b[j])));
      out.v[j] = from_f<T>(acc ? __fadd_rn(to_f(old.v[j]), g) : g);
    }
    *reinterpret_cast<P*>(dx + i) = out;
  }
}

// Whether the vectorised kernels are on: by default (measured faster on an H200: the ResNet-50
// step 4 %, ResNet-18 at 32 px 13 %, bench/RESULTS.md); MIRA_BN_VEC=0 or set_bn_vectorized(false)
// for the scalar kernels.
EnvSwitch g_bn_vec("MIRA_BN_VEC", true);

// The channel layout the vectorised kernels take: V channels per thread; C / V channel groups,
// either fewer than 32 and dividing the block, or a multiple of 32 (tiles of 32 groups).
bool vec_layout_ok(int C, int V) {
  if (C <= 0 || C % V != 0) return false;
  const int CV = C / V;
  return CV < 32 ? kVecThreads % CV == 0 : CV % 32 == 0;
}

template <typename T>
bool bn_vec_ok(int C, std::initializer_list<const void*> ptrs) {
  if (!g_bn_vec.on() || !vec_layout_ok(C, VecOf<T>::V)) return false;
  for (const void* q : ptrs)
    if (q && reinterpret_cast<uintptr_t>(q) % 16 != 0) return false;
  return true;
}

struct VecGrid {
  int tiles = 1;
  int64_t G = 1;  // row blocks
};

// M rows: at least min_rows rows per thread, at most max_blocks blocks over all tiles.
VecGrid vec_grid(int64_t M, int C, int V, int64_t max_blocks = kVecMaxBlocks, int64_t min_rows = kVecMinRowsPerThread) {
  VecGrid g;
  const int CVT = vec_tile_groups(C, V);
  g.tiles = C / V / CVT;
  const int64_t RG = kVecThreads / CVT;
  const int64_t by_rows = (M + RG * min_rows - 1) / (RG * min_rows);
  g.G = std::max<int64_t>(1, std::min(by_rows, std::max<int64_t>(1, max_blocks / g.tiles)));
  return g;
}

// The apply kernels stride over the rows: more blocks than the reductions' partials allow.
dim3 vec_apply_grid(int64_t M, int C, int V) {
  const VecGrid g = vec_grid(M, C, V, 16 * kVecMaxBlocks, kVecApplyMinRowsPerThread);
  return dim3(static_cast<unsigned>(g.G), static_cast<unsigned>(g.tiles));
}

template <int MODE, typename T>
void launch_bn_reduce_vec(const T* a, const T* x, const float* mean, const float* invstd, int64_t M, int C,
                          void* workspace, float* out0, float* out1, cudaStream_t stream, const T* relu_y) {
  const VecGrid g = vec_grid(M, C, VecOf<T>::V);
  const int64_t rows_per_block = (M + g.G - 1) / g.G;
  MIRA_LAUNCH(dim3(static_cast<unsigned>(g.G), static_cast<unsigned>(g.tiles)), kVecThreads, 0, stream,
              col_partial_vec_kernel<MODE, T>)
  (a, x, mean, invstd, M, C, rows_per_block, static_cast<double*>(workspace), relu_y);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  MIRA_LAUNCH((C + kColTile - 1) / kColTile, dim3(kColTile, kColRows), 0, stream, col_final_kernel<MODE, T, float>)
  (static_cast<const double*>(workspace), static_cast<int>(g.G), M, C, MODE == kColStats ? a : x, out0, out1, nullptr,
   false);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// y: (N, O); b: (O)
template <typename T, typename B>
__global__ void __launch_bounds__(kColTile* kApplyRows) bias_add_kernel(T* y, const B* b, int64_t N, int O) {
  const int o = blockIdx.x * kColTile + threadIdx.x;
  if (o >= O) return;
  const float bo = to_f(b[o]);
  const int64_t step = static_cast<int64_t>(gridDim.y) * kApplyRows;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kApplyRows + threadIdx.y; r < N; r += step) {
    const int64_t i = r * O + o;
    y[i] = from_f<T>(__fadd_rn(to_f(y[i]), bo));
  }
}

// mean, var, invstd, running_mean, running_var: (C); one thread per channel, double arithmetic
// in the CPU twin's order.
__global__ void __launch_bounds__(256)
    bn_finalize_kernel(const float* mean, const float* var, float* invstd, float* running_mean, float* running_var,
                       int C, double momentum, double eps, double unbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  invstd[c] = static_cast<float>(1.0 / sqrt(__dadd_rn(static_cast<double>(var[c]), eps)));
  const double keep = 1.0 - momentum;
  if (running_mean)
    running_mean[c] = static_cast<float>(
        __dadd_rn(__dmul_rn(keep, static_cast<double>(running_mean[c])), __dmul_rn(momentum, static_cast<double>(mean[c]))));
  if (running_var)
    running_var[c] = static_cast<float>(__dadd_rn(__dmul_rn(keep, static_cast<double>(running_var[c])),
                                                  __dmul_rn(__dmul_rn(momentum, static_cast<double>(var[c])), unbias)));
}

__global__ void bn_pack_sums_kernel(const float* mean, const float* var, double M, int C, double* sums) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double m = static_cast<double>(mean[c]);
  sums[c] = __dmul_rn(M, m);
  sums[C + c] = __dmul_rn(M, __dadd_rn(static_cast<double>(var[c]), __dmul_rn(m, m)));
}

__global__ void bn_unpack_sums_kernel(const double* sums, double count, int C, float* mean, float* var) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double m = __ddiv_rn(sums[c], count);
  mean[c] = static_cast<float>(m);
  var[c] = static_cast<float>(fmax(0.0, __dsub_rn(__ddiv_rn(sums[C + c], count), __dmul_rn(m, m))));
}

// ---- pooling

constexpr int kThreads = 256;

// x: (N, H, W, C); y: (N, P, Q, C). One thread per output element, c fastest (coalesced).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    maxpool_fwd_kernel(const T* x, T* y, int N, int H, int W, int C, int k, int s, int p, int P, int Q) {
  const int64_t total = static_cast<int64_t>(N) * P * Q * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = static_cast<int>(i % C);
    int64_t t = i / C;
    const int q = static_cast<int>(t % Q);
    t /= Q;
    const int pi = static_cast<int>(t % P);
    const int64_t n = t / P;
    float best = -INFINITY;
    for (int r = 0; r < k; ++r) {
      const int h = pi * s - p + r;
      if (h < 0 || h >= H) continue;
      for (int u = 0; u < k; ++u) {
        const int w = q * s - p + u;
        if (w < 0 || w >= W) continue;
        const float v = to_f(x[((n * H + h) * W + w) * C + c]);
        best = best < v ? v : best;  // std::max(best, v), the CPU twin's NaN behaviour
      }
    }
    y[i] = from_f<T>(best);
  }
}

// dy: (N, P, Q, C); x, dx: (N, H, W, C). One thread per V consecutive channels of one input
// element (V = 16 / sizeof(T) in 16-byte accesses when C % V == 0 and the rows are 16-byte
// aligned, else 1), c fastest: for each window containing the element, in window order, the
// CPU twin's scan (the first valid position whose value beats all before it), lane by lane; the
// element adds dy where it is that position. The argmax is kept as the position r * k + u.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    maxpool_bwd_kernel(const T* dy, const T* x, T* dx, int N, int H, int W, int C, int k, int s, int p, int P,
                           int Q, bool acc) {
  using PackT = Pack<T, V>;
  const int CV = C / V;
  const int64_t total = static_cast<int64_t>(N) * H * W * CV;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = static_cast<int>(i % CV) * V;
    int64_t t = i / CV;
    const int w0 = static_cast<int>(t % W);
    t /= W;
    const int h0 = static_cast<int>(t % H);
    const int64_t n = t / H;
    // Windows containing (h0, w0): pi*s - p <= h0 <= pi*s - p + k - 1.
    const int nh = h0 + p - k + 1, nw = w0 + p - k + 1;
    const int p_lo = nh > 0 ? (nh + s - 1) / s : 0;
    const int q_lo = nw > 0 ? (nw + s - 1) / s : 0;
    const int p_hi = min((h0 + p) / s, P - 1);
    const int q_hi = min((w0 + p) / s, Q - 1);
    const int64_t at = ((n * H + h0) * W + w0) * C + c;
    float g[V];
    if (acc) {
      const PackT old = *reinterpret_cast<const PackT*>(dx + at);
#pragma unroll
      for (int j = 0; j < V; ++j) g[j] = to_f(old.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) g[j] = 0.f;
    }
    for (int pi = p_lo; pi <= p_hi; ++pi) {
      for (int q = q_lo; q <= q_hi; ++q) {
        const int hs = pi * s - p, ws = q * s - p;
        float best[V];
        int arg[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          best[j] = -INFINITY;
          arg[j] = -1;
        }
        for (int r = 0; r < k; ++r) {
          const int h = hs + r;
          if (h < 0 || h >= H) continue;
          for (int u = 0; u < k; ++u) {
            const int w = ws + u;
            if (w < 0 || w >= W) continue;
            const PackT xv = *reinterpret_cast<const PackT*>(x + ((n * H + h) * W + w) * C + c);
#pragma unroll
            for (int j = 0; j < V; ++j) {
              const float v = to_f(xv.v[j]);
              if (v > best[j] || arg[j] < 0) {
                best[j] = v;
                arg[j] = r * k + u;
              }
            }
          }
        }
        const int mine = (h0 - hs) * k + (w0 - ws);
        const PackT dv = *reinterpret_cast<const PackT*>(dy + ((n * P + pi) * Q + q) * C + c);
#pragma unroll
        for (int j = 0; j < V; ++j)
          if (arg[j] == mine) g[j] = __fadd_rn(g[j], to_f(dv.v[j]));
      }
    }
    PackT out;
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = from_f<T>(g[j]);
    *reinterpret_cast<PackT*>(dx + at) = out;
  }
}

// ---- im2col / col2im (NHWC). One thread per V channels of one (row, r, s) of cols; V = 16 /
// sizeof(T) when C % V == 0 and the pointers are 16-byte aligned, else 1.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    im2col_kernel(const T* x, int N, int H, int W, int C, int R, int S, int stride, int pad, int P, int Q, T* cols) {
  using PackT = Pack<T, V>;
  const int CV = C / V;
  const int64_t total = static_cast<int64_t>(N) * P * Q * R * S * CV;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int c = static_cast<int>(i % CV) * V;
    int64_t t = i / CV;
    const int rs = static_cast<int>(t % (R * S));
    const int64_t m = t / (R * S);  // output pixel (n, p, q)
    const int q = static_cast<int>(m % Q);
    const int p = static_cast<int>((m / Q) % P);
    const int64_t n = m / (static_cast<int64_t>(P) * Q);
    const int h = p * stride - pad + rs / S, w = q * stride - pad + rs % S;
    PackT v;
    if (h >= 0 && h < H && w >= 0 && w < W) {
      v = *reinterpret_cast<const PackT*>(x + ((n * H + h) * W + w) * C + c);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v.v[j] = from_f<T>(0.f);
    }
    *reinterpret_cast<PackT*>(cols + (m * R * S + rs) * C + c) = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    col2im_kernel(const float* dcols, int N, int H, int W, int C, int R, int S, int stride, int pad, int P, int Q,
                  T* dx, bool acc) {
  const int64_t total = static_cast<int64_t>(N) * H * W * C;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row = static_cast<int64_t>(R) * S * C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int c = static_cast<int>(i % C);
    int64_t t = i / C;
    const int w = static_cast<int>(t % W);
    t /= W;
    const int h = static_cast<int>(t % H);
    const int64_t n = t / H;
    float g = acc ? to_f(dx[i]) : 0.f;
    for (int r = 0; r < R; ++r) {
      const int hp = h + pad - r;  // = p * stride
      if (hp < 0 || hp % stride != 0 || hp / stride >= P) continue;
      const int p = hp / stride;
      for (int u = 0; u < S; ++u) {
        const int wq = w + pad - u;
        if (wq < 0 || wq % stride != 0 || wq / stride >= Q) continue;
        const int q = wq / stride;
        g = __fadd_rn(g, dcols[((n * P + p) * Q + q) * row + (r * S + u) * C + c]);
      }
    }
    dx[i] = from_f<T>(g);
  }
}

// x: (N, HW, C); y: (N, C). One thread per (n, c), c fastest; the sum is in double.
template <typename T>
__global__ void __launch_bounds__(kThreads) avgpool_fwd_kernel(const T* x, T* y, int N, int HW, int C) {
  const int64_t total = static_cast<int64_t>(N) * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / C;
    const int c = static_cast<int>(i % C);
    const T* in = x + n * HW * C + c;
    double acc = 0.0;
    for (int j = 0; j < HW; ++j) acc += static_cast<double>(to_f(in[static_cast<int64_t>(j) * C]));
    y[i] = from_f<T>(static_cast<float>(acc / HW));
  }
}

// dy: (N, C); dx: (N, HW, C). One thread per dx element.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    avgpool_bwd_kernel(const T* dy, T* dx, int N, int HW, int C, float inv, bool acc) {
  const int64_t total = static_cast<int64_t>(N) * HW * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = static_cast<int>(i % C);
    const int64_t n = i / (static_cast<int64_t>(HW) * C);
    const float v = __fmul_rn(to_f(dy[n * C + c]), inv);
    dx[i] = from_f<T>(acc ? __fadd_rn(to_f(dx[i]), v) : v);
  }
}

// ---- row kernels: one block per row (grid-strided over rows), threads stride the row.

int row_threads(int K) { return K <= 256 ? 64 : K <= 2048 ? 128 : 256; }
unsigned row_blocks(int N) { return static_cast<unsigned>(N < 65535 ? (N > 0 ? N : 1) : 65535); }

// x, y: (N, D); norm: (N)
template <typename T>
__global__ void __launch_bounds__(256) l2norm_fwd_kernel(const T* x, T* y, float* norm, int N, int D, float eps) {
  __shared__ float scratch[33];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + static_cast<int64_t>(n) * D;
    float ss = 0.f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      const float v = to_f(xr[d]);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float nrm = sqrtf(ss);
    if (threadIdx.x == 0) norm[n] = nrm;
    const float den = fmaxf(nrm, eps);
    T* yr = y + static_cast<int64_t>(n) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) yr[d] = from_f<T>(__fdiv_rn(to_f(xr[d]), den));
  }
}

// dy, y, dx: (N, D); norm: (N)
template <typename T>
__global__ void __launch_bounds__(256)
    l2norm_bwd_kernel(const T* dy, const T* y, const float* norm, T* dx, int N, int D, float eps, bool acc) {
  __shared__ float scratch[33];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int64_t off = static_cast<int64_t>(n) * D;
    // Below eps the denominator is the constant eps, so the map is linear.
    const bool clamped = norm[n] <= eps;
    const float den = clamped ? eps : norm[n];
    float dot = 0.f;
    if (!clamped) {
      for (int d = threadIdx.x; d < D; d += blockDim.x) dot += to_f(dy[off + d]) * to_f(y[off + d]);
      dot = block_sum(dot, scratch);
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      const float v = __fdiv_rn(__fsub_rn(to_f(dy[off + d]), __fmul_rn(dot, to_f(y[off + d]))), den);
      dx[off + d] = from_f<T>(acc ? __fadd_rn(to_f(dx[off + d]), v) : v);
    }
  }
}

// x, y: (N, K)
template <typename T>
__global__ void __launch_bounds__(256) log_softmax_fwd_kernel(const T* x, T* y, int N, int K) {
  __shared__ float scratch_f[33];
  __shared__ double scratch_d[33];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + static_cast<int64_t>(n) * K;
    float mx = -INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mx = fmaxf(mx, to_f(xr[k]));
    mx = block_max(mx, scratch_f);
    double s = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s += static_cast<double>(expf(to_f(xr[k]) - mx));
    s = block_sum(s, scratch_d);
    const float lse = mx + static_cast<float>(log(s));
    T* yr = y + static_cast<int64_t>(n) * K;
    for (int k = threadIdx.x; k < K; k += blockDim.x) yr[k] = from_f<T>(to_f(xr[k]) - lse);
  }
}

// dy, y, dx: (N, K)
template <typename T>
__global__ void __launch_bounds__(256) log_softmax_bwd_kernel(const T* dy, const T* y, T* dx, int N, int K, bool acc) {
  __shared__ double scratch[33];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int64_t off = static_cast<int64_t>(n) * K;
    double s = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s += static_cast<double>(to_f(dy[off + k]));
    const float sf = static_cast<float>(block_sum(s, scratch));
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const float v = __fsub_rn(to_f(dy[off + k]), __fmul_rn(expf(to_f(y[off + k])), sf));
      dx[off + k] = from_f<T>(acc ? __fadd_rn(to_f(dx[off + k]), v) : v);
    }
  }
}

// z: (N, K) logits; t: (N, K) targets; loss_rows, lse: (N). The loss sums in double.
template <typename T, typename TT>
__global__ void __launch_bounds__(256)
    soft_ce_fwd_kernel(const T* z, const TT* t, float* loss_rows, float* lse_out, int N, int K) {
  __shared__ float scratch_f[33];
  __shared__ double scratch_d[33];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int64_t off = static_cast<int64_t>(n) * K;
    float mx = -INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) mx = fmaxf(mx, to_f(z[off + k]));
    mx = block_max(mx, scratch_f);
    double s = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s += static_cast<double>(expf(to_f(z[off + k]) - mx));
    s = block_sum(s, scratch_d);
    const double l = static_cast<double>(mx) + log(s);
    double loss = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x)
      loss -= static_cast<double>(to_f(t[off + k])) * (static_cast<double>(to_f(z[off + k])) - l);
    loss = block_sum(loss, scratch_d);
    if (threadIdx.x == 0) {
      lse_out[n] = static_cast<float>(l);
      loss_rows[n] = static_cast<float>(loss);
    }
  }
}

// z, t, dz: (N, K); lse: (N); dloss: (1)
template <typename T, typename TT>
__global__ void __launch_bounds__(256) soft_ce_bwd_kernel(const T* z, const TT* t, const float* lse,
                                                          const float* dloss, float alpha, T* dz, int N, int K,
                                                          bool acc) {
  __shared__ double scratch[33];
  const float sc = __fmul_rn(dloss[0], alpha);
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int64_t off = static_cast<int64_t>(n) * K;
    double ts = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) ts += static_cast<double>(to_f(t[off + k]));
    const float tsum = static_cast<float>(block_sum(ts, scratch));
    const float l = lse[n];
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const float p = expf(__fsub_rn(to_f(z[off + k]), l));
      const float v = __fmul_rn(sc, __fsub_rn(__fmul_rn(p, tsum), to_f(t[off + k])));
      dz[off + k] = from_f<T>(acc ? __fadd_rn(to_f(dz[off + k]), v) : v);
    }
  }
}

}  // namespace

// ---- linear helpers

template <typename T, typename B>
void bias_add(T* y, const B* b, int64_t N, int O, cudaStream_t stream) {
  if (N <= 0 || O <= 0) return;
  MIRA_LAUNCH(apply_grid(N, O), dim3(kColTile, kApplyRows), 0, stream, bias_add_kernel<T, B>)(y, b, N, O);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

size_t col_sum_workspace_bytes(int64_t N, int O) { return col_workspace_bytes(N, O); }

template <typename T, typename D>
void col_sum(const T* dy, int64_t N, int O, D* db, bool accumulate, void* workspace, cudaStream_t stream) {
  if (O <= 0) return;
  const ColGrid g = launch_col_partial<kColSum, T>(dy, nullptr, nullptr, nullptr, N, O, workspace, stream);
  MIRA_LAUNCH(g.tiles, dim3(kColTile, kColRows), 0, stream, col_final_kernel<kColSum, T, D>)
  (static_cast<const double*>(workspace), g.G, N, O, nullptr, nullptr, nullptr, db, accumulate);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// ---- batch norm

size_t bn_workspace_bytes(int64_t M, int C) {
  size_t bytes = col_workspace_bytes(M, C);
  // The vectorised reductions' partials (G, 2, C), for whichever of V = 4 (f32) and V = 8 (bf16)
  // bn_vec_ok could take.
  if (g_bn_vec.on())
    for (int V : {4, 8})
      if (vec_layout_ok(C, V))
        bytes = std::max(bytes, static_cast<size_t>(vec_grid(M, C, V).G) * 2 * static_cast<size_t>(C) * sizeof(double));
  return bytes;
}

void set_bn_vectorized(bool on) { g_bn_vec.set(on); }
bool bn_vectorized() { return g_bn_vec.on(); }

template <typename T>
void bn_stats(const T* x, int64_t M, int C, float* mean, float* var, void* workspace, cudaStream_t stream) {
  MIRA_CHECK(M > 0, "bn_stats over zero rows");
  if (C <= 0) return;
  if (bn_vec_ok<T>(C, {x})) {
    launch_bn_reduce_vec<kColStats, T>(x, nullptr, nullptr, nullptr, M, C, workspace, mean, var, stream, nullptr);
    return;
  }
  const ColGrid g = launch_col_partial<kColStats, T>(x, nullptr, nullptr, nullptr, M, C, workspace, stream);
  MIRA_LAUNCH(g.tiles, dim3(kColTile, kColRows), 0, stream, col_final_kernel<kColStats, T, float>)
  (static_cast<const double*>(workspace), g.G, M, C, x, mean, var, nullptr, false);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void bn_finalize(const float* mean, const float* var, float* invstd, float* running_mean, float* running_var, int C,
                 double momentum, double eps, double count, cudaStream_t stream) {
  if (C <= 0) return;
  const double unbias = count > 1 ? count / (count - 1) : 1.0;
  MIRA_LAUNCH((C + 255) / 256, 256, 0, stream, bn_finalize_kernel)
  (mean, var, invstd, running_mean, running_var, C, momentum, eps, unbias);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void bn_pack_sums(const float* mean, const float* var, double M, int C, double* sums, cudaStream_t stream) {
  if (C <= 0) return;
  MIRA_LAUNCH((C + 255) / 256, 256, 0, stream, bn_pack_sums_kernel)(mean, var, M, C, sums);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

void bn_unpack_sums(const double* sums, double count, int C, float* mean, float* var, cudaStream_t stream) {
  if (C <= 0) return;
  MIRA_LAUNCH((C + 255) / 256, 256, 0, stream, bn_unpack_sums_kernel)(sums, count, C, mean, var);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void bn_fwd_apply(const T* x, const float* mean, const float* invstd, const float* gamma, const float* beta, T* y,
                  int64_t M, int C, cudaStream_t stream, bool relu) {
  if (M <= 0 || C <= 0) return;
  if (bn_vec_ok<T>(C, {x, y})) {
    MIRA_LAUNCH(vec_apply_grid(M, C, VecOf<T>::V), kVecThreads, 0, stream, bn_fwd_apply_vec_kernel<T>)
    (x, mean, invstd, gamma, beta, y, M, C, relu);
    MIRA_CUDA_LAUNCH_CHECK(stream);
    return;
  }
  MIRA_LAUNCH(apply_grid(M, C), dim3(kColTile, kApplyRows), 0, stream, bn_fwd_apply_kernel<T>)
  (x, mean, invstd, gamma, beta, y, M, C, relu);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void bn_bwd_reduce(const T* dy, const T* x, const float* mean, const float* invstd, int64_t M, int C, float* sum_dy,
                   float* sum_dy_xhat, void* workspace, cudaStream_t stream, const T* relu_y) {
  if (C <= 0) return;
  if (bn_vec_ok<T>(C, {dy, x, relu_y})) {
    launch_bn_reduce_vec<kColBwd, T>(dy, x, mean, invstd, M, C, workspace, sum_dy, sum_dy_xhat, stream, relu_y);
    return;
  }
  const ColGrid g = launch_col_partial<kColBwd, T>(dy, x, mean, invstd, M, C, workspace, stream, relu_y);
  MIRA_LAUNCH(g.tiles, dim3(kColTile, kColRows), 0, stream, col_final_kernel<kColBwd, T, float>)
  (static_cast<const double*>(workspace), g.G, M, C, x, sum_dy, sum_dy_xhat, nullptr, false);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void bn_bwd_apply(const T* dy, const T* x, const float* mean, const float* invstd, const float* gamma,
                  const float* sum_dy, const float* sum_dy_xhat, double count, T* dx, int64_t M, int C,
                  bool accumulate, cudaStream_t stream, const T* relu_y) {
  if (M <= 0 || C <= 0) return;
  if (bn_vec_ok<T>(C, {dy, x, dx, relu_y})) {
    MIRA_LAUNCH(vec_apply_grid(M, C, VecOf<T>::V), kVecThreads, 0, stream, bn_bwd_apply_vec_kernel<T>)
    (dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, dx, M, C, accumulate, relu_y);
    MIRA_CUDA_LAUNCH_CHECK(stream);
    return;
  }
  MIRA_LAUNCH(apply_grid(M, C), dim3(kColTile, kApplyRows), 0, stream, bn_bwd_apply_kernel<T>)
  (dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, dx, M, C, accumulate, relu_y);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// ---- pooling

template <typename T>
void maxpool_fwd(const T* x, T* y, int N, int H, int W, int C, int k, int s, int p, int P, int Q,
                 cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * P * Q * C;
  if (total <= 0) return;
  MIRA_LAUNCH(grid_for(total, kThreads), kThreads, 0, stream, maxpool_fwd_kernel<T>)(x, y, N, H, W, C, k, s, p, P, Q);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void maxpool_bwd(const T* dy, const T* x, T* dx, int N, int H, int W, int C, int k, int s, int p, int P, int Q,
                 bool accumulate, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * H * W * C;
  if (total <= 0) return;
  constexpr int V = 16 / sizeof(T);
  const bool aligned = [&] {
    for (const void* q : {static_cast<const void*>(dy), static_cast<const void*>(x), static_cast<const void*>(dx)})
      if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return false;
    return true;
  }();
  if (C % V == 0 && aligned) {
    MIRA_LAUNCH(grid_for(total / V, kThreads), kThreads, 0, stream, maxpool_bwd_kernel<T, V>)
    (dy, x, dx, N, H, W, C, k, s, p, P, Q, accumulate);
  } else {
    MIRA_LAUNCH(grid_for(total, kThreads), kThreads, 0, stream, maxpool_bwd_kernel<T, 1>)
    (dy, x, dx, N, H, W, C, k, s, p, P, Q, accumulate);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void avgpool_fwd(const T* x, T* y, int N, int HW, int C, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * C;
  if (total <= 0) return;
  MIRA_LAUNCH(grid_for(total, kThreads), kThreads, 0, stream, avgpool_fwd_kernel<T>)(x, y, N, HW, C);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void avgpool_bwd(const T* dy, T* dx, int N, int HW, int C, bool accumulate, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * HW * C;
  if (total <= 0) return;
  const float inv = 1.0f / static_cast<float>(HW);
  MIRA_LAUNCH(grid_for(total, kThreads), kThreads, 0, stream, avgpool_bwd_kernel<T>)(dy, dx, N, HW, C, inv, accumulate);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// ---- rows

template <typename T>
void l2norm_fwd(const T* x, T* y, float* norm, int N, int D, double eps, cudaStream_t stream) {
  if (N <= 0) return;
  MIRA_LAUNCH(row_blocks(N), row_threads(D), 0, stream, l2norm_fwd_kernel<T>)
  (x, y, norm, N, D, static_cast<float>(eps));
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void l2norm_bwd(const T* dy, const T* y, const float* norm, T* dx, int N, int D, double eps, bool accumulate,
                cudaStream_t stream) {
  if (N <= 0) return;
  MIRA_LAUNCH(row_blocks(N), row_threads(D), 0, stream, l2norm_bwd_kernel<T>)
  (dy, y, norm, dx, N, D, static_cast<float>(eps), accumulate);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void log_softmax_fwd(const T* x, T* y, int N, int K, cudaStream_t stream) {
  if (N <= 0) return;
  MIRA_LAUNCH(row_blocks(N), row_threads(K), 0, stream, log_softmax_fwd_kernel<T>)(x, y, N, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void log_softmax_bwd(const T* dy, const T* y, T* dx, int N, int K, bool accumulate, cudaStream_t stream) {
  if (N <= 0) return;
  MIRA_LAUNCH(row_blocks(N), row_threads(K), 0, stream, log_softmax_bwd_kernel<T>)(dy, y, dx, N, K, accumulate);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T, typename TT>
void soft_ce_fwd(const T* z, const TT* t, float* loss_rows, float* lse, int N, int K, cudaStream_t stream) {
  if (N <= 0) return;
  MIRA_LAUNCH(row_blocks(N), row_threads(K), 0, stream, soft_ce_fwd_kernel<T, TT>)(z, t, loss_rows, lse, N, K);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T, typename TT>
void soft_ce_bwd(const T* z, const TT* t, const float* lse, const float* dloss, float alpha, T* dz, int N, int K,
                 bool accumulate, cudaStream_t stream) {
  if (N <= 0) return;
  MIRA_LAUNCH(row_blocks(N), row_threads(K), 0, stream, soft_ce_bwd_kernel<T, TT>)
  (z, t, lse, dloss, alpha, dz, N, K, accumulate);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// ---- convolution as a matrix product

template <typename T>
void im2col(const T* x, int N, int H, int W, int C, int R, int S, int stride, int pad, int P, int Q, T* cols,
            cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * P * Q * R * S * C;
  if (total <= 0) return;
  constexpr int V = 16 / sizeof(T);
  const bool vec = C % V == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(cols) % 16 == 0;
  if (vec) {
    MIRA_LAUNCH(grid_for(total / V, kThreads), kThreads, 0, stream, im2col_kernel<T, V>)
    (x, N, H, W, C, R, S, stride, pad, P, Q, cols);
  } else {
    MIRA_LAUNCH(grid_for(total, kThreads), kThreads, 0, stream, im2col_kernel<T, 1>)
    (x, N, H, W, C, R, S, stride, pad, P, Q, cols);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename T>
void col2im(const float* dcols, int N, int H, int W, int C, int R, int S, int stride, int pad, int P, int Q, T* dx,
            bool accumulate, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * H * W * C;
  if (total <= 0) return;
  MIRA_LAUNCH(grid_for(total, kThreads), kThreads, 0, stream, col2im_kernel<T>)
  (dcols, N, H, W, C, R, S, stride, pad, P, Q, dx, accumulate);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

#define MIRA_INST(T)                                                                                                 \
  template void bias_add<T, float>(T*, const float*, int64_t, int, cudaStream_t);                                   \
  template void col_sum<T, float>(const T*, int64_t, int, float*, bool, void*, cudaStream_t);                       \
  template void bn_stats<T>(const T*, int64_t, int, float*, float*, void*, cudaStream_t);                           \
  template void bn_fwd_apply<T>(const T*, const float*, const float*, const float*, const float*, T*, int64_t, int, \
                                cudaStream_t, bool);                                                                 \
  template void bn_bwd_reduce<T>(const T*, const T*, const float*, const float*, int64_t, int, float*, float*,      \
                                 void*, cudaStream_t, const T*);                                                     \
  template void bn_bwd_apply<T>(const T*, const T*, const float*, const float*, const float*, const float*,         \
                                const float*, double, T*, int64_t, int, bool, cudaStream_t, const T*);               \
  template void maxpool_fwd<T>(const T*, T*, int, int, int, int, int, int, int, int, int, cudaStream_t);            \
  template void maxpool_bwd<T>(const T*, const T*, T*, int, int, int, int, int, int, int, int, int, bool,           \
                               cudaStream_t);                                                                        \
  template void im2col<T>(const T*, int, int, int, int, int, int, int, int, int, int, T*, cudaStream_t);            \
  template void col2im<T>(const float*, int, int, int, int, int, int, int, int, int, int, T*, bool, cudaStream_t);  \
  template void avgpool_fwd<T>(const T*, T*, int, int, int, cudaStream_t);                                          \
  template void avgpool_bwd<T>(const T*, T*, int, int, int, bool, cudaStream_t);                                    \
  template void l2norm_fwd<T>(const T*, T*, float*, int, int, double, cudaStream_t);                                \
  template void l2norm_bwd<T>(const T*, const T*, const float*, T*, int, int, double, bool, cudaStream_t);          \
  template void log_softmax_fwd<T>(const T*, T*, int, int, cudaStream_t);                                           \
  template void log_softmax_bwd<T>(const T*, const T*, T*, int, int, bool, cudaStream_t);                           \
  template void soft_ce_fwd<T, T>(const T*, const T*, float*, float*, int, int, cudaStream_t);                      \
  template void soft_ce_bwd<T, T>(const T*, const T*, const float*, const float*, float, T*, int, int, bool,        \
                                  cudaStream_t);
MIRA_INST(float)
MIRA_INST(__nv_bfloat16)
#undef MIRA_INST

// Mixed precision: bf16 activations with f32 parameters / targets.
template void bias_add<__nv_bfloat16, __nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, int64_t, int,
                                                     cudaStream_t);
template void col_sum<__nv_bfloat16, __nv_bfloat16>(const __nv_bfloat16*, int64_t, int, __nv_bfloat16*, bool, void*,
                                                    cudaStream_t);
template void soft_ce_fwd<__nv_bfloat16, float>(const __nv_bfloat16*, const float*, float*, float*, int, int,
                                                cudaStream_t);
template void soft_ce_bwd<__nv_bfloat16, float>(const __nv_bfloat16*, const float*, const float*, const float*, float,
                                                __nv_bfloat16*, int, int, bool, cudaStream_t);

}  // namespace mira::gpu

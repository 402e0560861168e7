// The cluster plan of the fused MIRA assignment (MiraPlanOptions::cluster, sm_90): one
// thread-block cluster per view holds all of that view's E in f32 in its blocks' shared memory,
// for the shapes where it fits (N x K up to ~0.8 M at 16 blocks: the training shapes of one
// GPU, N 64-256 per view at K 3000). The numerics are those of the other fused kernels; the
// order of the additions is the CPU twin's (kernels/cpu/mira_assign.h, mira_cluster_twin).
//
// - Work mapping: block r of a cluster owns the columns [r cols, (r + 1) cols) of every row of
//   its view (plan_model::cluster_layout), so a column's sum never leaves its block. A row's
//   sum does: each block publishes its N partial row sums in shared memory, and after a
//   cluster barrier every block adds the `size` partials of each row through
//   distributed shared memory (DSMEM: a half-warp per row, one load per block, then a butterfly
//   of shuffles). The weights need the largest column sum: each block
//   publishes its own largest, and after a second cluster barrier every block takes the
//   maximum. Two cluster barriers per pass, no grid barrier, nothing through L2 but the logits
//   and the targets.
// - Row sums: a warp per 4 rows, lane l over the column quads l, l + 32, ... (16-byte loads of
//   E and w), fused multiply-adds, then a butterfly of xor-shuffles.
// - Column sums: threads are (quad, subset) pairs; subset s adds the rows s, s + subsets, ...
//   (fused multiply-adds), then one thread per quad adds the subsets in order.
// - Buffers reused across passes need no double-buffering: a block rewrites its row partials
//   only after the barrier that follows every block's reads of them, and likewise its maximum.
// - The blocks read each other's shared memory only between the first cluster barrier and the
//   last, which every block passes before it exits.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused.cuh"

namespace cg = cooperative_groups;

namespace mira::cuda::fused {

namespace {

constexpr int kBlock = plan_model::kClusterBlock;

// Clusters exist from sm_90 on: the device code below is compiled for those targets only.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define MIRA_HAS_CLUSTERS 1

constexpr int kRows = 4;  // rows per warp batch of the row sums

// A block's shared memory, in floats, each region 16-byte aligned (plan_model::cluster_layout
// counts the same bytes).
struct Smem {
  float* E;      // N x cols
  float* dslot;  // N: this block's partial row sums, read by the whole cluster
  float* mslot;  // N: this block's partial row maxima (first pass), read by the whole cluster
  float* rinv;   // N: the rows' 1 / sum (the row maxima during the first pass)
  float* w;      // cols: the weights of this block's columns
  float* red;    // subsets x cols: the column subsets' sums
};

__device__ __forceinline__ Smem smem_layout(float* base, int N, int cols) {
  const int n4 = (N + 3) / 4 * 4;
  Smem s;
  s.E = base;
  s.dslot = s.E + static_cast<size_t>(N) * cols;
  s.mslot = s.dslot + n4;
  s.rinv = s.mslot + n4;
  s.w = s.rinv + n4;
  s.red = s.w + cols;
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

__device__ __forceinline__ float4 fma4(float4 a, float b, float4 c) {
  return make_float4(fmaf(a.x, b, c.x), fmaf(a.y, b, c.y), fmaf(a.z, b, c.z), fmaf(a.w, b, c.w));
}

// d_i = sum_j w_j E_ij over this block's columns for every row, into dslot (the twin's warp_dot).
__device__ __forceinline__ void row_sums(const Smem& s, int N, int quads) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const float4* E4 = reinterpret_cast<const float4*>(s.E);
  const float4* w4 = reinterpret_cast<const float4*>(s.w);
  for (int i0 = warp * kRows; i0 < N; i0 += nwarps * kRows) {
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
    for (int q = lane; q < quads; q += 32) {
      const float4 w = w4[q];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (i0 + r < N) {
          const float4 e = E4[static_cast<size_t>(i0 + r) * quads + q];
          acc[r] = fmaf(w.x, e.x, acc[r]);
          acc[r] = fmaf(w.y, e.y, acc[r]);
          acc[r] = fmaf(w.z, e.z, acc[r]);
          acc[r] = fmaf(w.w, e.w, acc[r]);
        }
      }
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1)
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] += __shfl_xor_sync(kFull, acc[r], off);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (lane == r && i0 + r < N) s.dslot[i0 + r] = acc[r];
  }
}

// Every block: rinv_i = 1 / (the sum over the cluster's blocks of their partial row sums), or
// 0; a half-warp per row. After the cluster barrier that follows row_sums.
__device__ __forceinline__ void combine_rows(const Smem& s, int N, int size, cg::cluster_group& cl) {
  const int halves = blockDim.x / kMaxSize, half = threadIdx.x / kMaxSize;
  for (int base = 0; base < N; base += halves) {  // uniform across the warp
    const int i = base + half;
    const float z = cluster_reduce<false>(cl, s.dslot + min(i, N - 1), size, i < N);
    if (i < N && (threadIdx.x & (kMaxSize - 1)) == 0) s.rinv[i] = z > 0.f ? 1.f / z : 0.f;
  }
}

template <typename TIn>
__device__ __forceinline__ void cluster_body(const FusedArgs& a) {
  cg::cluster_group cl = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float wred[kBlock / 32];
  __shared__ float cmax;                          // this block's largest column sum, read by the whole cluster
  __shared__ long long ph[kMiraTracePhases + 2];  // MiraPlan::trace (trace_start)

  const int size = a.cluster, cols = a.cluster_cols, quads = cols / kVec;
  const int N = a.N, K = a.K;
  const int rank = static_cast<int>(cl.block_rank());
  const int v = blockIdx.x / size;
  const int col0 = rank * cols;
  const int subsets = max(1, min(static_cast<int>(blockDim.x) / quads, N));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const Smem s = smem_layout(reinterpret_cast<float*>(smem_raw), N, cols);
  float4* E4 = reinterpret_cast<float4*>(s.E);
  // Constant indices only: indexing the parameter arrays with v would copy them to local memory.
  const TIn* logits = static_cast<const TIn*>(v == 0   ? a.logits[0]
                                              : v == 1 ? a.logits[1]
                                              : v == 2 ? a.logits[2]
                                                       : a.logits[3]);
  float* targets = v == 0 ? a.targets[0] : v == 1 ? a.targets[1] : v == 2 ? a.targets[2] : a.targets[3];
  trace_start(a, ph);
  auto mark = [&](int k) { trace_mark(a, ph, k); };

  // The logits of this block's columns (-inf beyond K), several loads in flight per thread.
  float bad = 0.f;  // non-finite logits seen by this thread
  const int nq = N * quads;
  for (int idx0 = tid; idx0 < nq; idx0 += 4 * kBlock) {
    float x[4][kVec];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int idx = idx0 + k * kBlock;
      if (idx < nq)
        load_logits4(logits + static_cast<size_t>(idx / quads) * K, col0 + (idx % quads) * kVec, K, a.vec_logits, x[k]);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int idx = idx0 + k * kBlock;
      if (idx >= nq) continue;
      const int col = col0 + (idx % quads) * kVec;
#pragma unroll
      for (int u = 0; u < kVec; ++u)
        if (col + u < K && !isfinite(x[k][u])) bad += 1.f;
      E4[idx] = make_float4(x[k][0], x[k][1], x[k][2], x[k][3]);
    }
  }
  __syncthreads();
  // This block's row maxima, published for the cluster.
  for (int i = warp; i < N; i += nwarps) {
    float m = -INFINITY;
    for (int q = lane; q < quads; q += 32) {
      const float4 e = E4[static_cast<size_t>(i) * quads + q];
      m = fmaxf(fmaxf(m, e.x), fmaxf(fmaxf(e.y, e.z), e.w));
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, off));
    if (lane == 0) s.mslot[i] = m;
  }
  cl.sync();  // also: every block of the cluster has started, so its shared memory may be read
  for (int base = 0; base < N; base += blockDim.x / kMaxSize) {  // a half-warp per row
    const int i = base + tid / kMaxSize;
    const float m = cluster_reduce<true>(cl, s.mslot + min(i, N - 1), size, i < N);
    if (i < N && (tid & (kMaxSize - 1)) == 0) s.rinv[i] = m;
  }
  __syncthreads();
  // E = exp2((L - max) k2) in place, 0 beyond K; the weights of the update from u = 1.
  for (int idx = tid; idx < nq; idx += blockDim.x) {
    const int col = col0 + (idx % quads) * kVec;
    const float m = s.rinv[idx / quads];
    float4 e = E4[idx];
    e.x = col < K ? exp2f((e.x - m) * a.k2) : 0.f;
    e.y = col + 1 < K ? exp2f((e.y - m) * a.k2) : 0.f;
    e.z = col + 2 < K ? exp2f((e.z - m) * a.k2) : 0.f;
    e.w = col + 3 < K ? exp2f((e.w - m) * a.k2) : 0.f;
    E4[idx] = e;
  }
  for (int j = tid; j < cols; j += blockDim.x) s.w[j] = col0 + j < K ? 1.f : 0.f;
  __syncthreads();
  mark(kTraceFirst);

  for (int p = 0; p <= a.iters + 1; ++p) {
    row_sums(s, N, quads);
    mark(kTraceRows);
    cl.sync();
    mark(kTraceBarrier1);
    combine_rows(s, N, size, cl);
    __syncthreads();
    mark(kTraceReduce);
    if (p > a.iters) break;
    // Column sums of this block's columns: subset sums, then the subsets in order.
    const int q = tid % quads, sub = tid / quads;
    if (sub < subsets) {
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      // Unrolled so that several rows' loads go out together; the additions stay in row order.
#pragma unroll 4
      for (int i = sub; i < N; i += subsets) acc = fma4(E4[static_cast<size_t>(i) * quads + q], s.rinv[i], acc);
      reinterpret_cast<float4*>(s.red)[static_cast<size_t>(sub) * quads + q] = acc;
    }
    __syncthreads();
    float4 c = make_float4(0.f, 0.f, 0.f, 0.f);
    float m = 0.f;
    if (tid < quads) {
      const float4* red4 = reinterpret_cast<const float4*>(s.red);
      // Four subsets' loads at a time, then their additions in subset order.
      for (int k0 = 0; k0 < subsets; k0 += 4) {
        float4 t[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (k0 + k < subsets) t[k] = red4[static_cast<size_t>(k0 + k) * quads + tid];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (k0 + k < subsets) c.x += t[k].x, c.y += t[k].y, c.z += t[k].z, c.w += t[k].w;
      }
      m = fmaxf(fmaxf(c.x, c.y), fmaxf(c.z, c.w));
    }
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, off));
    if (lane == 0) wred[warp] = m;
    __syncthreads();
    if (warp == 0) {
      float t = lane < nwarps ? wred[lane] : 0.f;
#pragma unroll
      for (int off = 16; off >= 1; off >>= 1) t = fmaxf(t, __shfl_xor_sync(kFull, t, off));
      if (lane == 0) cmax = t;
    }
    mark(kTraceRows);
    cl.sync();
    mark(kTraceBarrier2);
    // The weights of this block's columns from the largest column sum of the view.
    const float cm = cluster_reduce<true>(cl, &cmax, size, true);  // every half-warp
    if (tid < quads) {
      const float l2max = log2f(cm);
      const float4 w = make_float4(mira_weight(a, c.x, l2max), mira_weight(a, c.y, l2max), mira_weight(a, c.z, l2max),
                                   mira_weight(a, c.w, l2max));
      reinterpret_cast<float4*>(s.w)[tid] = w;
    }
    __syncthreads();
    mark(kTraceWeights);
  }
  // Targets w_j E_ij / sum_l w_l E_il of this block's columns.
  for (int idx = tid; idx < nq; idx += blockDim.x) {
    const int i = idx / quads, qq = idx % quads, col = col0 + qq * kVec;
    if (col >= K) continue;
    const float r = s.rinv[i];
    const float4 e = E4[idx], w = reinterpret_cast<const float4*>(s.w)[qq];
    const float t[kVec] = {w.x * e.x * r, w.y * e.y * r, w.z * e.z * r, w.w * e.w * r};
    float* trow = targets + static_cast<size_t>(i) * K;
    if (a.vec_logits) {
      *reinterpret_cast<float4*>(trow + col) = make_float4(t[0], t[1], t[2], t[3]);
    } else {
#pragma unroll
      for (int u = 0; u < kVec; ++u)
        if (col + u < K) trow[col + u] = t[u];
    }
  }
  mark(kTraceLast);
  cl.sync();  // no block leaves while another may still read its row partials
  trace_finish(a, ph);
  if (bad > 0.f) atomicAdd(a.colsum + static_cast<size_t>(a.V) * a.Kp, bad);
}

#endif  // clusters

// Grid: V clusters of a.cluster blocks (cluster dimension set at launch), kBlock threads each.
template <typename TIn>
__global__ void __launch_bounds__(kBlock, 1) mira_cluster_kernel(const __grid_constant__ FusedArgs a) {
#ifdef MIRA_HAS_CLUSTERS
  cluster_body<TIn>(a);
#else
  __trap();  // thread-block clusters need sm_90; mira_plan never picks this kernel below it
#endif
}

}  // namespace

FusedFn cluster_fn(bool bf16_in) {
  return bf16_in ? mira_cluster_kernel<__nv_bfloat16> : mira_cluster_kernel<float>;
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

int cluster_prepare(bool bf16_in, int* smem_static) {
  const void* fn = reinterpret_cast<const void*>(cluster_fn(bf16_in));
  int dev = 0;
  MIRA_CUDA_CHECK(cudaGetDevice(&dev));
  int major = 0, optin = 0;
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 9) return 0;
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes fa{};
  MIRA_CUDA_CHECK(cudaFuncGetAttributes(&fa, fn));
  *smem_static = static_cast<int>(fa.sharedSizeBytes);
  MIRA_CUDA_CHECK(
      cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, std::max(0, optin - *smem_static)));
  // 16 blocks is beyond the portable 8: allowed where the device launches it (H100, H200).
  MIRA_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  return 16;
}

int cluster_active(bool bf16_in, int size, size_t smem) {
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = cluster_config(1, size, smem, nullptr, attr);
  int n = 0;
  const cudaError_t err = cudaOccupancyMaxActiveClusters(&n, reinterpret_cast<const void*>(cluster_fn(bf16_in)), &cfg);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // an unsupported cluster size: none run
    return 0;
  }
  return n;
}

void launch_cluster(const FusedArgs& a, bool bf16_in, size_t smem, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = cluster_config(a.V, a.cluster, smem, stream, attr);
  if (bf16_in) {
    MIRA_CUDA_CHECK(cudaLaunchKernelEx(&cfg, mira_cluster_kernel<__nv_bfloat16>, a));
  } else {
    MIRA_CUDA_CHECK(cudaLaunchKernelEx(&cfg, mira_cluster_kernel<float>, a));
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::cuda::fused

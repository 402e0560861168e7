// Row-wise top-k by radix selection. One block per row (work: the row's N candidates strided
// over the block's threads, coalesced):
// 1. Four passes of 8-bit histograms (shared-memory atomics on integer counts) over the
//    order-preserving keys find the key T of the k-th best value and how many candidates
//    equal to T are needed.
// 2. When more candidates equal T than are needed, eight passes over their 64-bit indices find
//    the index bound that keeps the smallest ones (the tie rule of the CPU twin).
// 3. One pass collects the k winners into shared memory (slot order is irrelevant), a bitonic
//    sort orders them by (key descending, index ascending) and the block writes them out.
// Integer counts only, so the result is exact and independent of scheduling; x is read 5 times
// (13 with ties at the boundary), which is small next to the GEMM that produced it.
#include "kernels/cuda/topk.cuh"

#include "kernels/cpu/topk.h"  // kTopkMaxK
#include "kernels/cuda/check.h"

namespace mira::gpu {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t key_of(float v) {
  v += 0.0f;  // -0.0 -> +0.0
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ bool better(uint32_t ka, int64_t ia, uint32_t kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// x (R, N) stride ldx; out_val, out_idx (R, k); kpow2 = k rounded up to a power of two.
// Grid: one block per row; block: kThreads threads.
__global__ void topk_rows_kernel(const float* __restrict__ x, int64_t N, int64_t ldx, int64_t col_offset, int k,
                                 int kpow2, float* out_val, int64_t* out_idx, bool merge) {
  MIRA_DYNAMIC_SMEM(smem);
  int64_t* sel_idx = reinterpret_cast<int64_t*>(smem);
  uint32_t* sel_key = reinterpret_cast<uint32_t*>(sel_idx + kpow2);
  float* sel_val = reinterpret_cast<float*>(sel_key + kpow2);
  __shared__ unsigned int hist[256];
  __shared__ unsigned int s_bin, s_remaining;
  __shared__ unsigned long long s_ibin;
  __shared__ int s_slot;

  const int tid = threadIdx.x;
  const int64_t r = blockIdx.x;
  const float* row = x + r * ldx;
  float* pv = out_val + r * k;
  int64_t* pi = out_idx + r * k;
  const int64_t extra = merge ? k : 0;
  const int64_t M = N + extra;
  auto load = [&](int64_t j, float& v, int64_t& idx) {
    if (j < extra) {
      v = pv[j];
      idx = pi[j];
    } else {
      v = row[j - extra];
      idx = col_offset + (j - extra);
    }
  };

  // 1. The key T of the k-th best candidate.
  uint32_t prefix = 0, mask = 0;
  unsigned int remaining = k;  // candidates still to take among those matching the prefix
  unsigned int eq_count = 0;   // candidates whose key equals T (the last pass's bin)
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t j = tid; j < M; j += blockDim.x) {
      float v;
      int64_t idx;
      load(j, v, idx);
      const uint32_t key = key_of(v);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      unsigned int acc = 0;
      int b = 255;
      for (; b > 0; --b) {
        if (acc + hist[b] >= remaining) break;
        acc += hist[b];
      }
      s_bin = b;
      s_remaining = remaining - acc;
    }
    __syncthreads();
    prefix |= s_bin << shift;
    mask |= 255u << shift;
    remaining = s_remaining;
    eq_count = hist[s_bin];
    __syncthreads();
  }
  const uint32_t T = prefix;

  // 2. Among candidates with key T, keep the `remaining` smallest indices: idx <= ibound.
  unsigned long long ibound = ~0ull;
  if (eq_count > remaining) {
    unsigned long long iprefix = 0, imask = 0;
    unsigned int need = remaining;
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      for (int64_t j = tid; j < M; j += blockDim.x) {
        float v;
        int64_t idx;
        load(j, v, idx);
        const unsigned long long u = static_cast<unsigned long long>(idx);
        if (key_of(v) == T && (u & imask) == iprefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned int acc = 0;
        int b = 0;
        for (; b < 255; ++b) {
          if (acc + hist[b] >= need) break;
          acc += hist[b];
        }
        s_ibin = static_cast<unsigned long long>(b);
        s_remaining = need - acc;
      }
      __syncthreads();
      iprefix |= s_ibin << shift;
      imask |= 255ull << shift;
      need = s_remaining;
      __syncthreads();
    }
    ibound = iprefix;  // indices are distinct, so exactly `remaining` are <= the bound
  }

  // 3. Collect, sort, write.
  if (tid == 0) s_slot = 0;
  __syncthreads();
  for (int64_t j = tid; j < M; j += blockDim.x) {
    float v;
    int64_t idx;
    load(j, v, idx);
    const uint32_t key = key_of(v);
    if (key > T || (key == T && static_cast<unsigned long long>(idx) <= ibound)) {
      const int s = atomicAdd(&s_slot, 1);
      sel_key[s] = key;
      sel_idx[s] = idx;
      sel_val[s] = v;
    }
  }
  __syncthreads();
  for (int i = k + tid; i < kpow2; i += blockDim.x) {  // padding sorts last
    sel_key[i] = 0;
    sel_idx[i] = INT64_MAX;
    sel_val[i] = 0.f;
  }
  __syncthreads();
  for (int size = 2; size <= kpow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < kpow2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool best_first = (i & size) == 0;
          const bool swap = best_first ? better(sel_key[j], sel_idx[j], sel_key[i], sel_idx[i])
                                       : better(sel_key[i], sel_idx[i], sel_key[j], sel_idx[j]);
          if (swap) {
            const uint32_t tk = sel_key[i];
            sel_key[i] = sel_key[j];
            sel_key[j] = tk;
            const int64_t ti = sel_idx[i];
            sel_idx[i] = sel_idx[j];
            sel_idx[j] = ti;
            const float tv = sel_val[i];
            sel_val[i] = sel_val[j];
            sel_val[j] = tv;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += blockDim.x) {
    pv[i] = sel_val[i];
    pi[i] = sel_idx[i];
  }
}

}  // namespace

void topk_rows(const float* x, int64_t R, int64_t N, int64_t ldx, int64_t col_offset, int k, float* out_val,
               int64_t* out_idx, bool merge, cudaStream_t stream) {
  MIRA_CHECK(k >= 1 && k <= cpu::kTopkMaxK, "topk_rows: k = ", k, " outside [1, ", cpu::kTopkMaxK, "]");
  MIRA_CHECK(N + (merge ? k : 0) >= k, "topk_rows: k = ", k, " exceeds the ", N, " candidates of a row");
  MIRA_CHECK(R < (int64_t(1) << 31), "topk_rows: too many rows (", R, ")");
  if (R == 0) return;
  int kpow2 = 1;
  while (kpow2 < k) kpow2 <<= 1;
  const size_t shmem = static_cast<size_t>(kpow2) * (sizeof(int64_t) + sizeof(uint32_t) + sizeof(float));
  MIRA_LAUNCH(static_cast<unsigned>(R), kThreads, shmem, stream, topk_rows_kernel)
  (x, N, ldx, col_offset, k, kpow2, out_val, out_idx, merge);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::gpu

#include "kernels/cuda/check.h"
#include "kernels/cuda/optim.cuh"

namespace mira::gpu {

namespace {

// Grid-stride loop, one element per thread per step; memory bound (12 bytes per element).
__global__ void ema_update_kernel(float* __restrict__ ema,         // (n) teacher parameters
                                  const float* __restrict__ online,  // (n) student parameters
                                  int64_t n, float a, float b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    ema[i] = a * ema[i] + b * online[i];
  }
}

constexpr int kThreads = 256;

// Block-wide sum of two doubles; every thread gets the result.
__device__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kThreads / 32], sb[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kThreads / 32 ? sa[lane] : 0.0;
    b = lane < kThreads / 32 ? sb[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, o);
      b += __shfl_down_sync(0xffffffffu, b, o);
    }
    if (lane == 0) {
      sa[0] = a;
      sb[0] = b;
    }
  }
  __syncthreads();
  a = sa[0];
  b = sb[0];
}

// One block per chunk: partial ||p||^2 and ||g + wd p||^2 of LARS segments.
__global__ void lars_partial_kernel(const float* __restrict__ p,                 // (flat) parameters
                                    const float* __restrict__ g,                 // (flat) gradients
                                    const cpu::ParamSegment* __restrict__ segs,  // (nseg)
                                    const OptimChunk* __restrict__ chunks,       // (nchunks)
                                    double* __restrict__ partial,                // (2 * nchunks)
                                    float wd) {
  const OptimChunk c = chunks[blockIdx.x];
  const cpu::ParamSegment s = segs[c.segment];
  double pn = 0, dn = 0;
  if ((s.flags & cpu::ParamSegment::kDecay) && !(s.flags & cpu::ParamSegment::kFrozen)) {
    for (int64_t i = c.begin + threadIdx.x; i < c.begin + c.numel; i += blockDim.x) {
      const float d = g[i] + wd * p[i];
      pn += double(p[i]) * p[i];
      dn += double(d) * d;
    }
  }
  block_sum2(pn, dn);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = pn;
    partial[2 * blockIdx.x + 1] = dn;
  }
}

// One thread per segment adds its chunks' partials in order (chunks of a segment are
// consecutive), so the result does not depend on scheduling.
__global__ void lars_norms_kernel(const OptimChunk* __restrict__ chunks,  // (nchunks)
                                  const double* __restrict__ partial,     // (2 * nchunks)
                                  double* __restrict__ norms,             // (2 * nseg)
                                  int nchunks, int nseg) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= nseg) return;
  // Binary search for the first chunk of segment s.
  int lo = 0, hi = nchunks;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (chunks[mid].segment < s) lo = mid + 1; else hi = mid;
  }
  double pn = 0, dn = 0;
  for (int c = lo; c < nchunks && chunks[c].segment == s; ++c) {
    pn += partial[2 * c];
    dn += partial[2 * c + 1];
  }
  norms[2 * s] = sqrt(pn);
  norms[2 * s + 1] = sqrt(dn);
}

// One block per chunk: the momentum and parameter update.
__global__ void sgd_update_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ mu,
                                  const cpu::ParamSegment* __restrict__ segs, const OptimChunk* __restrict__ chunks,
                                  const double* __restrict__ norms,  // (2 * nseg) or null without LARS
                                  float lr, float momentum, float weight_decay, float eta) {
  const OptimChunk c = chunks[blockIdx.x];
  const cpu::ParamSegment s = segs[c.segment];
  if (s.flags & cpu::ParamSegment::kFrozen) return;
  const bool decay = s.flags & cpu::ParamSegment::kDecay;
  const float wd = decay ? weight_decay : 0.0f;
  float q = 1.0f;
  if (norms && decay) {
    const double pn = norms[2 * c.segment], dn = norms[2 * c.segment + 1];
    if (pn > 0 && dn > 0) q = float(eta * pn / dn);
  }
  for (int64_t i = c.begin + threadIdx.x; i < c.begin + c.numel; i += blockDim.x) {
    const float d = (g[i] + wd * p[i]) * q;
    const float m = momentum * mu[i] + d;
    mu[i] = m;
    p[i] -= lr * m;
  }
}

}  // namespace

void ema_update(float* ema, const float* online, int64_t n, double m, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < 4096 ? want : 4096);
  MIRA_LAUNCH(blocks, kThreads, 0, stream, ema_update_kernel)
  (ema, online, n, static_cast<float>(m), static_cast<float>(1.0 - m));
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

int optim_chunk_count(const cpu::ParamSegment* segs, int nseg) {
  int64_t n = 0;
  for (int s = 0; s < nseg; ++s) n += (segs[s].numel + kOptimChunk - 1) / kOptimChunk;
  return static_cast<int>(n);
}

void optim_make_chunks(const cpu::ParamSegment* segs, int nseg, OptimChunk* out) {
  int k = 0;
  for (int s = 0; s < nseg; ++s)
    for (int64_t b = 0; b < segs[s].numel; b += kOptimChunk) {
      const int64_t len = segs[s].numel - b < kOptimChunk ? segs[s].numel - b : kOptimChunk;
      out[k++] = OptimChunk{s, segs[s].offset + b, len};
    }
}

void sgd_step(float* p, const float* g, float* mu, const cpu::ParamSegment* segs, int nseg, const OptimChunk* chunks,
              int nchunks, double* partial, double* norms, double lr, double momentum, double weight_decay, bool lars,
              double eta, cudaStream_t stream) {
  if (nchunks == 0) return;
  if (lars) {
    MIRA_LAUNCH(nchunks, kThreads, 0, stream, lars_partial_kernel)(p, g, segs, chunks, partial, float(weight_decay));
    MIRA_CUDA_LAUNCH_CHECK(stream);
    MIRA_LAUNCH((nseg + 127) / 128, 128, 0, stream, lars_norms_kernel)(chunks, partial, norms, nchunks, nseg);
    MIRA_CUDA_LAUNCH_CHECK(stream);
  }
  MIRA_LAUNCH(nchunks, kThreads, 0, stream, sgd_update_kernel)
  (p, g, mu, segs, chunks, lars ? norms : nullptr, float(lr), float(momentum), float(weight_decay), float(eta));
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::gpu

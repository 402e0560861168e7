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
}  // namespace

void ema_update(float* ema, const float* online, int64_t n, double m, cudaStream_t stream) {
  if (n == 0) return;
  const int threads = 256;
  const int64_t want = (n + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 4096 ? want : 4096);
  ema_update_kernel<<<blocks, threads, 0, stream>>>(ema, online, n, static_cast<float>(m), static_cast<float>(1.0 - m));
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace mira::gpu

// CUDA twins of kernels/cpu/optim.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mira::gpu {

// ema (n), online (n): f32 master weights
void ema_update(float* ema, const float* online, int64_t n, double m, cudaStream_t stream);

}  // namespace mira::gpu

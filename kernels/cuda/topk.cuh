// Row-wise top-k on the GPU, twin of kernels/cpu/topk.h (read its comment for the order,
// ties and the streaming `merge` mode): the same arguments plus the stream, f32 only, and
// bitwise the same result as the CPU twin for the same input.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mira::gpu {

// x: (R, N) row stride ldx, on the device; out_val, out_idx: (R, k) on the device.
void topk_rows(const float* x, int64_t R, int64_t N, int64_t ldx, int64_t col_offset, int k, float* out_val,
               int64_t* out_idx, bool merge, cudaStream_t stream);

}  // namespace mira::gpu

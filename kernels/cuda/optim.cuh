// CUDA twins of kernels/cpu/optim.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/optim.h"

namespace mira::gpu {

// ema (n), online (n): f32 master weights
void ema_update(float* ema, const float* online, int64_t n, double m, cudaStream_t stream);

// Work unit of the optimiser kernels: a slice of one segment (at most kChunk elements).
struct OptimChunk {
  int32_t segment;
  int64_t begin;  // element offset in the flat buffers
  int64_t numel;
};
constexpr int64_t kOptimChunk = 32768;

// Number of chunks for the segments (the caller uploads the chunk table once).
int optim_chunk_count(const cpu::ParamSegment* segs, int nseg);
void optim_make_chunks(const cpu::ParamSegment* segs, int nseg, OptimChunk* out);

// Same update as cpu::sgd_step. segs (nseg) and chunks (nchunks) are device arrays;
// partial (2 * nchunks) and norms (2 * nseg) are device scratch. Deterministic: per-chunk
// partial sums are combined per segment in chunk order.
void sgd_step(float* p, const float* g, float* mu, const cpu::ParamSegment* segs, int nseg, const OptimChunk* chunks,
              int nchunks, double* partial, double* norms, double lr, double momentum, double weight_decay, bool lars,
              double eta, cudaStream_t stream);

}  // namespace mira::gpu

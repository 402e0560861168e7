// The engine's view of the CUDA backend: plain functions on Tensors and raw pointers, defined
// in engine/cuda/*.cpp in CUDA builds and by engine/cuda/no_cuda.cpp (which throws) otherwise,
// so device-agnostic engine code needs no #ifdef.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/tensor.h"

namespace mira::cuda {

bool built_with_cuda();
int device_count();  // 0 without a driver or device; never throws
void set_device(int index);
void synchronize();  // the engine's stream on the current device

// Caching allocator (no cudaMalloc per step once warm).
void* device_alloc(size_t bytes, int device);
void device_free(void* p, int device);
void* pinned_alloc(size_t bytes);
void pinned_free(void* p);
struct MemoryStats {
  size_t allocated_bytes = 0;  // in live tensors
  size_t reserved_bytes = 0;   // held from the driver, live + cached
  size_t peak_allocated_bytes = 0;
  size_t device_mallocs = 0;  // cudaMalloc calls
  size_t cache_hits = 0;
};
MemoryStats memory_stats(int device = 0);
void empty_cache(int device = 0);

// Copies on the engine's stream; kinds inferred from the devices. Host memory in the copy
// must stay valid until the stream reaches it, so the functions synchronise unless the host
// side is pinned.
void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes, bool host_pinned);
void memset_zero(void* dst, size_t bytes);
// Elementwise conversion between dtypes on the device (f32 <-> bf16, u8 -> f32, ...).
void cast(const void* src, DType src_t, void* dst, DType dst_t, int64_t n);
void fill(void* dst, DType t, int64_t n, double value);

}  // namespace mira::cuda

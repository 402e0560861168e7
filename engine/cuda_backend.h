// The engine's view of the CUDA backend: plain functions on Tensors and raw pointers, defined
// in engine/cuda/*.cpp in CUDA builds and by engine/cuda/no_cuda.cpp (which throws) otherwise,
// so device-agnostic engine code needs no #ifdef.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/tensor.h"

namespace mira::cuda {

bool built_with_cuda();
int device_count();  // 0 without a driver or device; never throws
void set_device(int index);
void synchronize();  // the engine's stream on the current device
// Timing events for the profiler (engine/profile.h): record one on the engine's stream; the
// elapsed time between two (waits for the second); release returns one to a pool.
void* timing_event_record();
float timing_event_elapsed_ms(void* start, void* stop);
bool timing_event_done(void* event);  // reached by its stream (never blocks, never throws)
void timing_event_release(void* event);
// The vectorised batch-norm kernels (kernels/cuda/nn.cuh): MIRA_BN_VEC=1, or this (tests, benches).
void set_bn_vectorized(bool on);
bool bn_vectorized();
// Convolutions on small maps as im2col + cuBLAS (engine/cuda/ops_cuda.cpp): MIRA_CONV_GEMM=1, or this.
void set_conv_gemm(bool on);
bool conv_gemm();
uint64_t conv_gemm_calls();  // convolution calls that took that path so far (tests)

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

// NCCL (CUDA builds with NCCL): reductions of device buffers across processes. A group is
// made from a unique id that rank 0 creates and the others receive (over MPI). Operations
// run on the engine's stream and are polled: when one has not completed within timeout_s, the
// group is aborted and a mira::Error names the operation (a dead or hung rank).
bool nccl_available();
constexpr int kNcclIdBytes = 128;
void nccl_unique_id(char* id /* kNcclIdBytes */);
struct NcclGroup;
std::shared_ptr<NcclGroup> nccl_group(const char* id, int rank, int world, int device);
// data: n values of dtype (f32/f64/bf16) on the group's device, reduced in place. Every NCCL
// operation of a group runs on the group's own stream, in the order the host issued them (two
// streams feeding one communicator could reach the GPU in different orders on different ranks
// and deadlock); the stream first waits for the work queued so far on the engine's stream, and
// the engine's stream waits for the result. The host does not wait: completion, NCCL's
// asynchronous errors and the timeout are checked by nccl_drain (and nccl_wait), which callers
// run before reading a device result on the host (Communicator::drain).
void nccl_allreduce(NcclGroup& g, void* data, int64_t n, DType dtype, bool is_max, double timeout_s);
// Waits until every reduction queued so far has completed; on a timeout or an NCCL error the
// group is aborted (the reductions' kernels return) and a mira::Error says why.
void nccl_drain(NcclGroup& g, double timeout_s);
// Non-blocking for the GPU too: the engine's stream does not wait for the result until
// nccl_wait, so it keeps running backward kernels meanwhile; nccl_wait orders the engine's
// stream after it and polls it on the host (timeout, asynchronous errors).
struct NcclPending;
std::shared_ptr<NcclPending> nccl_allreduce_start(NcclGroup& g, void* data, int64_t n, DType dtype);
void nccl_wait(NcclPending& p, double timeout_s);

}  // namespace mira::cuda

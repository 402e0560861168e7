// The CUDA build's engine/cuda_backend.h: device queries, copies, memsets, casts and fills, all
// issued on the CudaContext stream of the device involved. The allocator entry points live in
// engine/cuda/device_memory.cpp.
#include <cstring>
#include <mutex>
#include <vector>

#include "engine/cuda/context.h"
#include "engine/cuda/device_guard.h"
#include "engine/cuda_backend.h"
#include "kernels/cuda/nn.cuh"
#include "kernels/cuda/pointwise.cuh"

namespace mira::cuda {

bool built_with_cuda() { return true; }

int device_count() {
  // Cached: the count cannot change during a run, and the query costs a driver call.
  static const int count = [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();  // no driver / no device: not an error for a CPU run
      return 0;
    }
    return n;
  }();
  return count;
}

void set_device(int index) {
  MIRA_CHECK(index >= 0 && index < device_count(), "cuda:", index, " does not exist (", device_count(),
             " CUDA devices)");
  MIRA_CUDA_CHECK(cudaSetDevice(index));
}

void synchronize() {
  if (device_count() == 0) return;
  MIRA_CUDA_CHECK(cudaStreamSynchronize(CudaContext::get().stream()));
}

namespace {
// One pool for the process: the engine drives one device per process (events are recorded on
// the current device's stream).
std::mutex g_event_mu;
std::vector<cudaEvent_t> g_event_pool;
}  // namespace

void* timing_event_record() {
  cudaEvent_t e = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_event_mu);
    if (!g_event_pool.empty()) {
      e = g_event_pool.back();
      g_event_pool.pop_back();
    }
  }
  if (!e) MIRA_CUDA_CHECK(cudaEventCreate(&e));
  MIRA_CUDA_CHECK(cudaEventRecord(e, CudaContext::get().stream()));
  return e;
}

float timing_event_elapsed_ms(void* start, void* stop) {
  MIRA_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(stop)));
  float ms = 0;
  MIRA_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(stop)));
  return ms;
}

bool timing_event_done(void* event) { return cudaEventQuery(static_cast<cudaEvent_t>(event)) == cudaSuccess; }

void timing_event_release(void* event) {
  std::lock_guard<std::mutex> lock(g_event_mu);
  g_event_pool.push_back(static_cast<cudaEvent_t>(event));
}

void set_bn_vectorized(bool on) { gpu::set_bn_vectorized(on); }
bool bn_vectorized() { return gpu::bn_vectorized(); }

void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes, bool host_pinned) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  // The stream of the device that holds the source (or the destination, for uploads) carries
  // the copy; cudaMemcpyDefault infers the direction from the addresses (unified addressing),
  // including device-to-device across GPUs.
  DeviceGuard guard(src_dev.is_cuda() ? src_dev.index : dst_dev.index);
  cudaStream_t stream = CudaContext::get().stream();
  MIRA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  // A pageable host buffer may be reused or freed as soon as we return, and a download must be
  // complete before the caller reads it: wait unless the host side is pinned.
  const bool host_involved = dst_dev.is_cpu() || src_dev.is_cpu();
  if (host_involved && !host_pinned) MIRA_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void memset_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  MIRA_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, CudaContext::get().stream()));
}

void cast(const void* src, DType src_t, void* dst, DType dst_t, int64_t n) {
  if (n <= 0) return;
  MIRA_CHECK(src_t != DType::F64 && dst_t != DType::F64, "cast: f64 tensors live on the CPU only");
  cudaStream_t stream = CudaContext::get().stream();
  if (src_t == dst_t) {
    MIRA_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(src_t), cudaMemcpyDeviceToDevice,
                                    stream));
    return;
  }
  gpu::cast(src, static_cast<int>(src_t), dst, static_cast<int>(dst_t), n, stream);
}

void fill(void* dst, DType t, int64_t n, double value) {
  MIRA_CHECK(t != DType::F64, "fill: f64 tensors live on the CPU only");
  gpu::fill(dst, static_cast<int>(t), n, value, CudaContext::get().stream());
}

}  // namespace mira::cuda

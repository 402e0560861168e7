// The GPU augmentation's host side: the data stream and its events, the augmenter's device
// buffers; the kernels are data/augment_kernels.cu.
#include <cuda_runtime.h>

#include "data/augment_cuda.h"
#include "data/augment_kernels.cuh"
#include "engine/cuda/context.h"
#include "engine/cuda/device_guard.h"
#include "engine/cuda_backend.h"
#include "kernels/cuda/check.h"

namespace mira::data {

GpuAugmenter::~GpuAugmenter() {
  if (d_jobs_) cuda::device_free(d_jobs_, device_);
  if (d_scratch_) cuda::device_free(d_scratch_, device_);
}

GpuStaging::GpuStaging(int device) : device_(device) {
  cuda::DeviceGuard guard(device_);
  cudaStream_t s = nullptr;
  MIRA_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
}

// A destructor must not throw: the results of these calls are deliberately not checked (an
// error here means the device is already lost, and the next checked call reports it).
GpuStaging::~GpuStaging() {
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));  // nothing in flight reads freed memory
  for (void* e : events_)
    if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void* GpuStaging::event(int id) {
  MIRA_CHECK(id >= 0, "GpuStaging: negative event id");
  if (static_cast<size_t>(id) >= events_.size()) {
    events_.resize(id + 1, nullptr);
    recorded_.resize(id + 1, false);
  }
  if (!events_[id]) {
    cudaEvent_t e = nullptr;
    MIRA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events_[id] = e;
  }
  return events_[id];
}

void GpuStaging::record_on_data(int id) {
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event(id)), static_cast<cudaStream_t>(stream_)));
  recorded_[id] = true;
}

void GpuStaging::record_on_compute(int id) {
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event(id)), cuda::CudaContext::get().stream()));
  recorded_[id] = true;
}

void GpuStaging::data_waits(int id) {
  if (static_cast<size_t>(id) >= recorded_.size() || !recorded_[id]) return;
  MIRA_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_), static_cast<cudaEvent_t>(events_[id]), 0));
}

void GpuStaging::compute_waits(int id) {
  if (static_cast<size_t>(id) >= recorded_.size() || !recorded_[id]) return;
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(
      cudaStreamWaitEvent(cuda::CudaContext::get().stream(), static_cast<cudaEvent_t>(events_[id]), 0));
}

void GpuStaging::host_waits(int id) {
  if (static_cast<size_t>(id) >= recorded_.size() || !recorded_[id]) return;
  MIRA_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[id])));
}

void GpuStaging::host_waits_data() { MIRA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_))); }

void GpuStaging::copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cuda::DeviceGuard guard(device_);
  MIRA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream_)));
}

void GpuAugmenter::reserve(size_t jobs, size_t scratch_floats, void* stream) {
  MIRA_CUDA_CHECK(cudaGetDevice(&device_));
  // Growing frees the old buffers: let the kernels that use them finish first (the caching
  // allocator may hand the memory to work on another stream at once).
  if ((jobs > jobs_cap_ && d_jobs_) || (scratch_floats > scratch_cap_ && d_scratch_))
    MIRA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  bool grew = false;
  if (jobs > jobs_cap_) {
    grew = true;
    if (d_jobs_) cuda::device_free(d_jobs_, device_);
    d_jobs_ = cuda::device_alloc(jobs * sizeof(GpuViewJob), device_);
    jobs_cap_ = jobs;
  }
  if (scratch_floats > scratch_cap_) {
    if (d_scratch_) cuda::device_free(d_scratch_, device_);
    d_scratch_ = static_cast<float*>(cuda::device_alloc(scratch_floats * sizeof(float), device_));
    scratch_cap_ = scratch_floats;
    grew = true;
  }
  // The caching allocator knows no streams: a block just handed out may have been freed on the
  // host while kernels queued on the engine's stream still use it. Before another stream writes
  // it, that stream waits for everything queued on the engine's stream so far.
  cudaStream_t compute = cuda::CudaContext::get().stream();
  if (grew && static_cast<cudaStream_t>(stream) != compute) {
    cudaEvent_t e = nullptr;
    MIRA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    MIRA_CUDA_CHECK(cudaEventRecord(e, compute));
    MIRA_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), e, 0));
    MIRA_CUDA_CHECK(cudaEventDestroy(e));
  }
}

void GpuAugmenter::run(const uint8_t* d_src, const std::vector<GpuViewJob>& jobs, const ViewSpec& v,
                       const MultiCropRecipe& recipe, void* d_out, DType out_type, void* stream_ptr) {
  // From pageable memory the driver stages the copy, and may make the host wait for the stream
  // to reach it: fine for tests and benchmarks, the loader passes pinned jobs instead.
  run(d_src, jobs.data(), static_cast<int>(jobs.size()), v, recipe, d_out, out_type, stream_ptr);
}

void GpuAugmenter::run(const uint8_t* d_src, const GpuViewJob* jobs, int N, const ViewSpec& v,
                       const MultiCropRecipe& recipe, void* d_out, DType out_type, void* stream_ptr) {
  MIRA_CHECK(out_type == DType::F32 || out_type == DType::BF16, "GPU augmentation writes f32 or bf16, not ",
             dtype_name(out_type));
  if (N <= 0) return;
  for (int i = 0; i < N; ++i)
    MIRA_CHECK(!jobs[i].blur || (jobs[i].radius >= 1 && jobs[i].radius <= 15), "GPU blur radius ", jobs[i].radius,
               " outside 1..15");
  const int S = v.size;
  const size_t plane = static_cast<size_t>(N) * S * S * 3;
  cudaStream_t stream = stream_ptr ? static_cast<cudaStream_t>(stream_ptr) : cuda::CudaContext::get().stream();
  reserve(static_cast<size_t>(N), 2 * plane, stream);
  MIRA_CUDA_CHECK(
      cudaMemcpyAsync(d_jobs_, jobs, static_cast<size_t>(N) * sizeof(GpuViewJob), cudaMemcpyHostToDevice, stream));
  const GpuViewJob* dj = static_cast<const GpuViewJob*>(d_jobs_);
  launch_augment(d_src, dj, jobs, N, view_consts(v, recipe, out_type == DType::BF16), d_scratch_, d_scratch_ + plane,
                 d_out, stream);
}

}  // namespace mira::data

// CudaContext: one per device, created on first use by the thread that first needs it.
//
// - The stream is non-blocking: it does not synchronise with the legacy default stream, so
//   every engine operation (kernels, cuBLAS, cuDNN, copies, memsets) must be issued on it.
// - cuBLAS keeps CUBLAS_DEFAULT_MATH: with CUBLAS_COMPUTE_32F an f32 GEMM then runs in full
//   f32 (no TF32), so CUDA results stay within f32 rounding of the CPU backend; bf16 GEMMs use
//   tensor cores regardless.
// - Contexts are never destroyed: their handles must outlive tensors held in static objects,
//   and destroying cuBLAS/cuDNN handles after the CUDA runtime has begun to unload crashes.
//   The driver reclaims everything at process exit.
#include "engine/cuda/context.h"

#include <atomic>
#include <mutex>

#include "engine/cuda_backend.h"

namespace mira::cuda {

namespace {
constexpr int kMaxDevices = 64;
std::atomic<CudaContext*> g_contexts[kMaxDevices];
std::mutex g_create_mu;
}  // namespace

CudaContext& CudaContext::get() {
  int dev = 0;
  MIRA_CUDA_CHECK(cudaGetDevice(&dev));
  MIRA_CHECK(dev >= 0 && dev < kMaxDevices, "CUDA device index ", dev, " beyond the engine's limit of ", kMaxDevices);
  CudaContext* ctx = g_contexts[dev].load(std::memory_order_acquire);
  if (ctx) return *ctx;
  std::lock_guard<std::mutex> lock(g_create_mu);
  ctx = g_contexts[dev].load(std::memory_order_acquire);
  if (!ctx) {
    ctx = new CudaContext(dev);
    g_contexts[dev].store(ctx, std::memory_order_release);
  }
  return *ctx;
}

CudaContext::CudaContext(int device) : device_(device) {
  try {
    MIRA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MIRA_CUBLAS_CHECK(cublasCreate(&cublas_));
    MIRA_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    MIRA_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    MIRA_CUDNN_CHECK(cudnnCreate(&cudnn_));
    MIRA_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
  } catch (...) {
    if (cudnn_) cudnnDestroy(cudnn_);
    if (cublas_) cublasDestroy(cublas_);
    if (stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

CudaContext::~CudaContext() {
  if (workspace_) device_free(workspace_, device_);
  if (cudnn_) cudnnDestroy(cudnn_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaContext::workspace(size_t bytes) {
  if (bytes <= workspace_bytes_) return workspace_;
  // Grow by at least half again so a run of slightly larger requests does not reallocate each
  // time. The old block goes back to the cache in stream order, which is safe for work queued
  // on this context's stream (see engine/cuda/device_memory.cpp).
  size_t grow = workspace_bytes_ + workspace_bytes_ / 2;
  if (grow < bytes) grow = bytes;
  if (workspace_) {
    device_free(workspace_, device_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
  }
  workspace_ = device_alloc(grow, device_);
  workspace_bytes_ = grow;
  return workspace_;
}

}  // namespace mira::cuda

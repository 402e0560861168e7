// CudaContext: the one owner of the engine's per-device CUDA state: the compute stream, the
// cuBLAS and cuDNN handles, the cuDNN algorithm cache and workspace. No other globals hold
// handles or streams. Only compiled in CUDA builds.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "kernels/cuda/check.h"

#define MIRA_CUBLAS_CHECK(expr)                                                                 \
  do {                                                                                          \
    cublasStatus_t mira_st_ = (expr);                                                           \
    if (mira_st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::mira::throw_error(__FILE__, __LINE__, #expr,                                            \
                          std::string("cuBLAS error: ") + cublasGetStatusString(mira_st_));     \
  } while (0)

#define MIRA_CUDNN_CHECK(expr)                                                                  \
  do {                                                                                          \
    cudnnStatus_t mira_st_ = (expr);                                                            \
    if (mira_st_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::mira::throw_error(__FILE__, __LINE__, #expr,                                            \
                          std::string("cuDNN error: ") + cudnnGetErrorString(mira_st_));        \
  } while (0)

namespace mira::cuda {

class CudaContext {
 public:
  // The context of the current device, created on first use.
  static CudaContext& get();
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  // Scratch for cuDNN and other kernels, grown on demand, valid until the next call.
  void* workspace(size_t bytes);

  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
  ~CudaContext();

 private:
  explicit CudaContext(int device);
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace mira::cuda

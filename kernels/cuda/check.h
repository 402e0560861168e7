// Check macros for CUDA runtime calls and kernel launches; they throw mira::Error naming the
// expression, file and line. Set MIRA_SYNC_CHECK=1 in the environment to synchronise after
// every launch, which turns an asynchronous fault into an error at the launch that caused it.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>

#include "engine/error.h"

namespace mira::cuda_detail {
inline bool sync_check_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("MIRA_SYNC_CHECK");
    return v && v[0] == '1';
  }();
  return on;
}
}  // namespace mira::cuda_detail

#define MIRA_CUDA_CHECK(expr)                                                                   \
  do {                                                                                          \
    cudaError_t mira_err_ = (expr);                                                             \
    if (mira_err_ != cudaSuccess)                                                               \
      ::mira::throw_error(__FILE__, __LINE__, #expr,                                            \
                          std::string("CUDA error: ") + cudaGetErrorString(mira_err_));         \
  } while (0)

// A kernel launch, kernel<<<grid, block, smem, stream>>>(args...), written
// MIRA_LAUNCH(grid, block, smem, stream, kernel)(args...): tests/cuda_emu runs it on the CPU.
#ifdef MIRA_CUDA_EMU
#define MIRA_LAUNCH(grid, block, smem, stream, ...) \
  (::mira::emu::Launcher((grid), (block), (smem)) % [](auto... mira_a_) { __VA_ARGS__(mira_a_...); })
#else
#define MIRA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

// A kernel's dynamic shared memory as `unsigned char name[]`, 16-byte aligned (tests/cuda_emu:
// the emulated block's buffer).
#ifdef MIRA_CUDA_EMU
#define MIRA_DYNAMIC_SMEM(name) unsigned char* const name = ::mira::emu::dynamic_smem()
#else
#define MIRA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// After every kernel launch: launch-configuration errors always, execution errors when
// MIRA_SYNC_CHECK=1.
// A stream being captured into a CUDA graph cannot be synchronised: the check then waits for
// the graph's launch.
#define MIRA_CUDA_LAUNCH_CHECK(stream)                                                          \
  do {                                                                                          \
    MIRA_CUDA_CHECK(cudaGetLastError());                                                        \
    if (::mira::cuda_detail::sync_check_enabled()) {                                           \
      cudaStreamCaptureStatus mira_cap_ = cudaStreamCaptureStatusNone;                          \
      MIRA_CUDA_CHECK(cudaStreamIsCapturing((stream), &mira_cap_));                             \
      if (mira_cap_ == cudaStreamCaptureStatusNone) MIRA_CUDA_CHECK(cudaStreamSynchronize(stream)); \
    }                                                                                           \
  } while (0)

namespace mira::cuda {

// A cudaLaunchKernelEx configuration of a 1-D grid with, in `attr`, the cooperative attribute
// (all blocks resident at once) where asked, then a cluster dimension along x where cluster > 0.
inline cudaLaunchConfig_t launch_config(int grid, int block, size_t smem, cudaStream_t stream, bool cooperative,
                                        int cluster, cudaLaunchAttribute (&attr)[2]) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(static_cast<unsigned>(block));
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  unsigned n = 0;
  if (cooperative) {
    attr[n].id = cudaLaunchAttributeCooperative;
    attr[n++].val.cooperative = 1;
  }
  if (cluster > 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = static_cast<unsigned>(cluster);
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = 1;
  }
  cfg.numAttrs = n;
  return cfg;
}

}  // namespace mira::cuda

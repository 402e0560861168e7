// Makes `device` current for a scope and restores the previous device after it. Errors while
// restoring are ignored (destructors must not throw); switching to `device` is checked.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/check.h"

namespace mira::cuda {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MIRA_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) {
      MIRA_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

}  // namespace mira::cuda

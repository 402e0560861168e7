#include "engine/optim.h"

#include "kernels/cpu/optim.h"

#ifdef MIRA_HAS_CUDA
#include "engine/cuda/context.h"
#include "kernels/cuda/optim.cuh"
#endif

namespace mira {

void ema_update(const Tensor& ema, const Tensor& online, double m) {
  MIRA_CHECK(ema.ndim() == 1 && online.ndim() == 1 && online.numel() >= ema.numel(),
             "ema_update: flat buffers expected, got ", ema.str(), " and ", online.str());
  MIRA_CHECK(ema.dtype() == online.dtype() && ema.device() == online.device(), "ema_update: ", ema.str(), " vs ",
             online.str());
  MIRA_CHECK(m >= 0.0 && m <= 1.0, "ema_update: momentum ", m, " outside [0, 1]");
  const int64_t n = ema.numel();
  if (ema.is_cuda()) {
#ifdef MIRA_HAS_CUDA
    MIRA_CHECK(ema.dtype() == DType::F32, "ema_update on CUDA needs f32 master weights");
    gpu::ema_update(ema.data<float>(), online.data<float>(), n, m, cuda::CudaContext::get().stream());
#else
    MIRA_FAIL("this build has no CUDA backend");
#endif
  } else if (ema.dtype() == DType::F32) {
    cpu::ema_update<float>(ema.data<float>(), online.data<float>(), n, m);
  } else if (ema.dtype() == DType::F64) {
    cpu::ema_update<double>(ema.data<double>(), online.data<double>(), n, m);
  } else {
    MIRA_FAIL("ema_update: unsupported dtype ", dtype_name(ema.dtype()));
  }
}

}  // namespace mira

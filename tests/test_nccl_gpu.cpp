// labels: gpu
// The NCCL path with one rank (a group of one process): all-reduce sum and max of device
// buffers in f32, f64 and bf16 leave them unchanged and complete within the timeout.
// Multi-rank NCCL runs go through mpirun (docs/distributed.md).
#include <cstdio>
#include <cstdlib>

#include "engine/cuda_backend.h"
#include "testing.h"

using namespace mira;

TEST_CASE("NCCL group of one rank: all-reduce sum and max") {
  if (!cuda::nccl_available()) {
    std::printf("SKIPPED: this build has no NCCL\n");
    std::exit(77);
  }
  char id[cuda::kNcclIdBytes];
  cuda::nccl_unique_id(id);
  auto g = cuda::nccl_group(id, 0, 1, 0);
  for (DType t : {DType::F32, DType::BF16}) {
    Tensor x = Tensor::randn({1000}, 1, 0, 1, DType::F32).to(Device::cuda(), t);
    std::vector<double> before = x.to_vector();
    cuda::nccl_allreduce(*g, x.raw(), x.numel(), t, false, 30.0);
    CHECK(x.to_vector() == before);
    cuda::nccl_allreduce(*g, x.raw(), x.numel(), t, true, 30.0);
    CHECK(x.to_vector() == before);
  }
  Tensor empty = Tensor::empty({0}, DType::F32, Device::cuda());
  CHECK_NOTHROW(cuda::nccl_allreduce(*g, empty.raw(), 0, DType::F32, false, 30.0));
}

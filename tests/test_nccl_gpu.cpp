// labels: gpu
// The NCCL path with one rank (a group of one process): all-reduce sum and max of device
// buffers in f32, f64 and bf16 leave them unchanged and complete within the timeout; the
// non-blocking start/wait pair (gradient buckets) too, several in flight at once, ordered
// before later work on the engine's stream.
// Multi-rank NCCL runs go through mpirun (docs/distributed.md).
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "engine/cuda_backend.h"
#include "testing.h"

using namespace mira;

namespace {
// A group of this process alone on GPU 0; without NCCL in the build the test is skipped.
std::shared_ptr<cuda::NcclGroup> one_rank_group() {
  if (!cuda::nccl_available()) {
    std::printf("SKIPPED: this build has no NCCL\n");
    std::exit(77);
  }
  char id[cuda::kNcclIdBytes];
  cuda::nccl_unique_id(id);
  return cuda::nccl_group(id, 0, 1, 0);
}
}  // namespace

TEST_CASE("NCCL group of one rank: all-reduce sum and max") {
  auto g = one_rank_group();
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

TEST_CASE("NCCL group of one rank: non-blocking all-reduces in flight together") {
  auto g = one_rank_group();
  std::vector<Tensor> xs;
  std::vector<std::vector<double>> before;
  std::vector<std::shared_ptr<cuda::NcclPending>> pending;
  for (int i = 0; i < 4; ++i) {
    xs.push_back(Tensor::randn({1000 + 7 * i}, 10 + i, 0, 1, DType::F32).to(Device::cuda()));
    before.push_back(xs.back().to_vector());
    pending.push_back(cuda::nccl_allreduce_start(*g, xs.back().raw(), xs.back().numel(), DType::F32));
  }
  // A blocking reduction issued while the others are in flight queues behind them (f32: the
  // engine keeps no f64 tensors on CUDA).
  Tensor y = Tensor::randn({300}, 99, 0, 1, DType::F32).to(Device::cuda());
  const std::vector<double> yb = y.to_vector();
  cuda::nccl_allreduce(*g, y.raw(), y.numel(), DType::F32, false, 30.0);
  for (auto& p : pending) cuda::nccl_wait(*p, 30.0);
  for (size_t i = 0; i < xs.size(); ++i) CHECK(xs[i].to_vector() == before[i]);
  CHECK(y.to_vector() == yb);
  auto empty = cuda::nccl_allreduce_start(*g, nullptr, 0, DType::F32);
  CHECK_NOTHROW(cuda::nccl_wait(*empty, 30.0));
}

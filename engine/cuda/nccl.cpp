// NCCL groups for device-buffer reductions (see engine/cuda_backend.h). Without NCCL in the
// build the functions say so; the MPI communicator then stages device buffers through the host.
#include <chrono>
#include <cstring>
#include <thread>

#include "engine/cuda/context.h"
#include "engine/cuda/device_guard.h"
#include "engine/cuda_backend.h"

#ifdef MIRA_HAS_NCCL
#include <nccl.h>

#define MIRA_NCCL_CHECK(expr)                                                                   \
  do {                                                                                          \
    ncclResult_t mira_r_ = (expr);                                                              \
    if (mira_r_ != ncclSuccess)                                                                 \
      ::mira::throw_error(__FILE__, __LINE__, #expr, std::string("NCCL error: ") + ncclGetErrorString(mira_r_)); \
  } while (0)
#endif

namespace mira::cuda {

#ifdef MIRA_HAS_NCCL

static_assert(sizeof(ncclUniqueId) == kNcclIdBytes, "ncclUniqueId size");

struct NcclGroup {
  ncclComm_t comm = nullptr;
  int device = 0;
  bool aborted = false;
  ~NcclGroup() {
    if (comm && !aborted) ncclCommDestroy(comm);
  }
};

bool nccl_available() { return true; }

void nccl_unique_id(char* id) {
  ncclUniqueId u;
  MIRA_NCCL_CHECK(ncclGetUniqueId(&u));
  std::memcpy(id, &u, sizeof u);
}

std::shared_ptr<NcclGroup> nccl_group(const char* id, int rank, int world, int device) {
  DeviceGuard guard(device);
  ncclUniqueId u;
  std::memcpy(&u, id, sizeof u);
  auto g = std::make_shared<NcclGroup>();
  g->device = device;
  MIRA_NCCL_CHECK(ncclCommInitRank(&g->comm, world, u, rank));
  return g;
}

void nccl_allreduce(NcclGroup& g, void* data, int64_t n, DType dtype, bool is_max, double timeout_s) {
  MIRA_CHECK(!g.aborted, "NCCL: the group was aborted after an earlier failure");
  ncclDataType_t t;
  switch (dtype) {
    case DType::F32: t = ncclFloat32; break;
    case DType::F64: t = ncclFloat64; break;
    case DType::BF16: t = ncclBfloat16; break;
    default: MIRA_FAIL("NCCL all-reduce: unsupported dtype ", dtype_name(dtype));
  }
  if (n == 0) return;
  DeviceGuard guard(g.device);
  cudaStream_t stream = CudaContext::get().stream();
  MIRA_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(n), t, is_max ? ncclMax : ncclSum, g.comm, stream));
  // Poll instead of blocking, so a dead peer becomes an error instead of a hang.
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) MIRA_CUDA_CHECK(q);
    ncclResult_t async = ncclSuccess;
    MIRA_NCCL_CHECK(ncclCommGetAsyncError(g.comm, &async));
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (async != ncclSuccess || waited > timeout_s) {
      ncclCommAbort(g.comm);
      g.aborted = true;
      MIRA_FAIL("NCCL all-reduce of ", n, " values ",
                async != ncclSuccess ? std::string("failed: ") + ncclGetErrorString(async)
                                     : "did not complete within " + std::to_string(timeout_s) + " s",
                ": another rank has died or hangs");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

#else

struct NcclGroup {};
bool nccl_available() { return false; }
void nccl_unique_id(char*) { MIRA_FAIL("this build has no NCCL"); }
std::shared_ptr<NcclGroup> nccl_group(const char*, int, int, int) { MIRA_FAIL("this build has no NCCL"); }
void nccl_allreduce(NcclGroup&, void*, int64_t, DType, bool, double) { MIRA_FAIL("this build has no NCCL"); }

#endif

}  // namespace mira::cuda

// NCCL groups for device-buffer reductions (see engine/cuda_backend.h). Without NCCL in the
// build the functions say so; the MPI communicator then stages device buffers through the host.
#include <chrono>
#include <deque>
#include <string>
#include <utility>
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
  cudaStream_t stream = nullptr;  // every operation of the group runs here, in issue order
  // Reductions queued by nccl_allreduce whose completion the host has not seen yet (their end
  // events, oldest first, with their lengths): polled by nccl_drain.
  std::deque<std::pair<cudaEvent_t, int64_t>> outstanding;
  std::string abort_reason;
  ~NcclGroup() {
    for (auto& o : outstanding) cudaEventDestroy(o.first);
    if (comm && !aborted) ncclCommDestroy(comm);
    if (stream) cudaStreamDestroy(stream);
  }
};

struct NcclPending {
  NcclGroup* group = nullptr;  // owned by the communicator, which outlives its pending operations
  cudaEvent_t done = nullptr;
  int64_t n = 0;
  ~NcclPending() {
    if (done) cudaEventDestroy(done);
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
  MIRA_CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
  MIRA_NCCL_CHECK(ncclCommInitRank(&g->comm, world, u, rank));
  return g;
}

namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    default: MIRA_FAIL("NCCL all-reduce: unsupported dtype ", dtype_name(dtype));
  }
}

// Queues the all-reduce on the group's stream after the engine stream's current work; returns
// the event that marks its end (the engine's stream already waits for it).
// compute_waits: the engine's stream waits for the result right away (blocking semantics:
// later work sees it); else only at nccl_wait, so backward kernels keep running meanwhile.
cudaEvent_t enqueue(NcclGroup& g, void* data, int64_t n, DType dtype, bool is_max, bool compute_waits) {
  MIRA_CHECK(!g.aborted, "NCCL: the group was aborted after an earlier failure: ", g.abort_reason);
  const ncclDataType_t t = nccl_type(dtype);
  cudaStream_t compute = CudaContext::get().stream();
  cudaEvent_t ready = nullptr, done = nullptr;
  MIRA_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  MIRA_CUDA_CHECK(cudaEventRecord(ready, compute));
  MIRA_CUDA_CHECK(cudaStreamWaitEvent(g.stream, ready, 0));
  MIRA_CUDA_CHECK(cudaEventDestroy(ready));  // released once the stream has passed it
  MIRA_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(n), t, is_max ? ncclMax : ncclSum, g.comm, g.stream));
  MIRA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  MIRA_CUDA_CHECK(cudaEventRecord(done, g.stream));
  if (compute_waits) MIRA_CUDA_CHECK(cudaStreamWaitEvent(compute, done, 0));
  return done;
}

// Polls `done` instead of blocking, so a dead peer becomes an error instead of a hang.
void poll(NcclGroup& g, cudaEvent_t done, int64_t n, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t q = cudaEventQuery(done);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) MIRA_CUDA_CHECK(q);
    ncclResult_t async = ncclSuccess;
    MIRA_NCCL_CHECK(ncclCommGetAsyncError(g.comm, &async));
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (async != ncclSuccess || waited > timeout_s) {
      ncclCommAbort(g.comm);
      g.aborted = true;
      g.abort_reason = "NCCL all-reduce of " + std::to_string(n) + " values " +
                       (async != ncclSuccess ? std::string("failed: ") + ncclGetErrorString(async)
                                             : "did not complete within " + std::to_string(timeout_s) + " s") +
                       ": another rank has died or hangs";
      MIRA_FAIL(g.abort_reason);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace

void nccl_allreduce(NcclGroup& g, void* data, int64_t n, DType dtype, bool is_max, double timeout_s) {
  if (n == 0) return;
  DeviceGuard guard(g.device);
  // No host wait (SyncBN calls this for every BN layer): the result is ordered before later
  // work on the engine's stream; the host sees completion, errors and timeouts at nccl_drain.
  g.outstanding.emplace_back(enqueue(g, data, n, dtype, is_max, true), n);
  while (!g.outstanding.empty() && cudaEventQuery(g.outstanding.front().first) == cudaSuccess) {
    cudaEventDestroy(g.outstanding.front().first);
    g.outstanding.pop_front();
  }
  if (g.outstanding.size() > 4096) nccl_drain(g, timeout_s);  // bounded bookkeeping
}

void nccl_drain(NcclGroup& g, double timeout_s) {
  MIRA_CHECK(!g.aborted, "NCCL: the group was aborted after an earlier failure: ", g.abort_reason);
  DeviceGuard guard(g.device);
  while (!g.outstanding.empty()) {
    const auto [e, n] = g.outstanding.front();
    poll(g, e, n, timeout_s);  // throws (after aborting the group) on a timeout or NCCL error
    cudaEventDestroy(e);
    g.outstanding.pop_front();
  }
}

std::shared_ptr<NcclPending> nccl_allreduce_start(NcclGroup& g, void* data, int64_t n, DType dtype) {
  auto p = std::make_shared<NcclPending>();
  p->n = n;
  if (n == 0) return p;
  DeviceGuard guard(g.device);
  p->group = &g;
  p->done = enqueue(g, data, n, dtype, false, false);
  return p;
}

void nccl_wait(NcclPending& p, double timeout_s) {
  if (!p.done) return;
  NcclGroup& g = *p.group;
  MIRA_CHECK(!g.aborted, "NCCL: the group was aborted after an earlier failure: ", g.abort_reason);
  DeviceGuard guard(g.device);
  MIRA_CUDA_CHECK(cudaStreamWaitEvent(CudaContext::get().stream(), p.done, 0));
  poll(g, p.done, p.n, timeout_s);
  // Everything queued on the group's stream before this reduction has completed too.
  while (!g.outstanding.empty() && cudaEventQuery(g.outstanding.front().first) == cudaSuccess) {
    cudaEventDestroy(g.outstanding.front().first);
    g.outstanding.pop_front();
  }
}

#else

struct NcclGroup {};
struct NcclPending {};
bool nccl_available() { return false; }
void nccl_unique_id(char*) { MIRA_FAIL("this build has no NCCL"); }
std::shared_ptr<NcclGroup> nccl_group(const char*, int, int, int) { MIRA_FAIL("this build has no NCCL"); }
void nccl_allreduce(NcclGroup&, void*, int64_t, DType, bool, double) { MIRA_FAIL("this build has no NCCL"); }
std::shared_ptr<NcclPending> nccl_allreduce_start(NcclGroup&, void*, int64_t, DType) {
  MIRA_FAIL("this build has no NCCL");
}
void nccl_wait(NcclPending&, double) { MIRA_FAIL("this build has no NCCL"); }
void nccl_drain(NcclGroup&, double) { MIRA_FAIL("this build has no NCCL"); }

#endif

}  // namespace mira::cuda

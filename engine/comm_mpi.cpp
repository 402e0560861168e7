#include "engine/comm_mpi.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/cuda_backend.h"
#include "engine/error.h"

#ifdef MIRA_HAS_MPI
// The C API only: Open MPI's and MPICH's deprecated C++ bindings need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace mira {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(v)) return true;
  }
  return false;
}

#ifdef MIRA_HAS_MPI

bool mpi_available() { return true; }

namespace {

#define MIRA_MPI_CHECK(expr)                                                            \
  do {                                                                                  \
    int mira_rc_ = (expr);                                                              \
    if (mira_rc_ != MPI_SUCCESS) {                                                      \
      char mira_msg_[MPI_MAX_ERROR_STRING];                                             \
      int mira_len_ = 0;                                                                \
      MPI_Error_string(mira_rc_, mira_msg_, &mira_len_);                                \
      ::mira::throw_error(__FILE__, __LINE__, #expr, std::string("MPI error: ") + mira_msg_); \
    }                                                                                   \
  } while (0)

class MpiComm final : public Communicator {
 public:
  explicit MpiComm(double timeout_s) : timeout_s_(timeout_s) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      MIRA_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
      owns_mpi_ = true;
    }
    // Errors come back as codes (and become mira::Error) instead of aborting the job.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MIRA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MIRA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  void allreduce_sum(float* d, int64_t n) override { host(d, n, MPI_FLOAT, MPI_SUM, "all-reduce (sum)"); }
  void allreduce_sum(double* d, int64_t n) override { host(d, n, MPI_DOUBLE, MPI_SUM, "all-reduce (sum)"); }
  void allreduce_max(float* d, int64_t n) override { host(d, n, MPI_FLOAT, MPI_MAX, "all-reduce (max)"); }
  void allreduce_max(double* d, int64_t n) override { host(d, n, MPI_DOUBLE, MPI_MAX, "all-reduce (max)"); }
  void allreduce_sum(void* data, int64_t n, DType dtype, Device device) override {
    any(data, n, dtype, device, MPI_SUM);
  }
  void allreduce_max(void* data, int64_t n, DType dtype, Device device) override {
    any(data, n, dtype, device, MPI_MAX);
  }
  void barrier() override {
    MPI_Request req;
    MIRA_MPI_CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &req));
    wait(req, "barrier", 0);
  }

  void drain() override {
    if (nccl_) cuda::nccl_drain(*nccl_, timeout_s_);
  }

  // Host buffers: MPI_Iallreduce, completed in wait() (MPI progresses it inside later MPI calls,
  // e.g. SyncBN's reductions during the backward pass). Device buffers: NCCL on the group's
  // stream; without NCCL, the blocking staged reduction.
  std::unique_ptr<PendingReduce> allreduce_sum_start(void* data, int64_t n, DType dtype, Device device) override {
    MIRA_CHECK(dtype == DType::F32 || dtype == DType::F64, "MPI all-reduce takes f32 or f64, got ", dtype_name(dtype));
    if (device.is_cpu()) {
      MIRA_CHECK(n >= 0 && n <= INT32_MAX, "MPI all-reduce: length ", n, " out of range");
      auto p = std::make_unique<MpiPending>(this, n);
      if (n > 0) {
        MIRA_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n),
                                      dtype == DType::F32 ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &p->req));
        p->active = true;
      }
      return p;
    }
    if (cuda::nccl_available()) {
      return std::make_unique<NcclPendingReduce>(cuda::nccl_allreduce_start(nccl_for(device.index), data, n, dtype),
                                                 timeout_s_);
    }
    return Communicator::allreduce_sum_start(data, n, dtype, device);
  }

 private:
  struct MpiPending final : PendingReduce {
    MpiPending(MpiComm* c, int64_t count) : comm(c), n(count) {}
    void wait() override {
      if (!active) return;
      active = false;
      comm->wait(req, "all-reduce (sum, started during the backward pass)", n);
    }
    MpiComm* comm;
    int64_t n;
    MPI_Request req = MPI_REQUEST_NULL;
    bool active = false;
  };
  struct NcclPendingReduce final : PendingReduce {
    NcclPendingReduce(std::shared_ptr<cuda::NcclPending> p, double t) : pending(std::move(p)), timeout_s(t) {}
    void wait() override { cuda::nccl_wait(*pending, timeout_s); }
    std::shared_ptr<cuda::NcclPending> pending;
    double timeout_s;
  };

  void host(void* data, int64_t n, MPI_Datatype t, MPI_Op op, const char* what) {
    MIRA_CHECK(n >= 0 && n <= INT32_MAX, "MPI ", what, ": length ", n, " out of range");
    if (n == 0) return;
    MPI_Request req;
    MIRA_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), t, op, MPI_COMM_WORLD, &req));
    wait(req, what, n);
  }
  // Device buffers: NCCL in CUDA builds that have it, else staged through the host.
  void any(void* data, int64_t n, DType dtype, Device device, MPI_Op op) {
    MIRA_CHECK(dtype == DType::F32 || dtype == DType::F64, "MPI all-reduce takes f32 or f64, got ", dtype_name(dtype));
    const MPI_Datatype t = dtype == DType::F32 ? MPI_FLOAT : MPI_DOUBLE;
    if (device.is_cpu()) {
      host(data, n, t, op, "all-reduce");
      return;
    }
    if (cuda::nccl_available()) {
      cuda::nccl_allreduce(nccl_for(device.index), data, n, dtype, op == MPI_MAX, timeout_s_);
      return;
    }
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    std::vector<char> staged(bytes);
    cuda::copy(staged.data(), Device::cpu(), data, device, bytes, false);
    host(staged.data(), n, t, op, "all-reduce (staged from the GPU)");
    cuda::copy(data, device, staged.data(), Device::cpu(), bytes, false);
  }
  // The NCCL group of this process's GPU, made at the first device reduction: rank 0's
  // ncclUniqueId is broadcast over MPI (every rank reaches this call in the same order).
  cuda::NcclGroup& nccl_for(int device) {
    if (!nccl_ || nccl_device_ != device) {
      char id[cuda::kNcclIdBytes] = {};
      if (rank_ == 0) cuda::nccl_unique_id(id);
      MPI_Request req;
      MIRA_MPI_CHECK(MPI_Ibcast(id, cuda::kNcclIdBytes, MPI_BYTE, 0, MPI_COMM_WORLD, &req));
      wait(req, "broadcast of the NCCL id", cuda::kNcclIdBytes);
      nccl_ = cuda::nccl_group(id, rank_, world_, device);
      nccl_device_ = device;
    }
    return *nccl_;
  }
  void wait(MPI_Request& req, const char* what, int64_t n) {
    const auto start = std::chrono::steady_clock::now();
    int spins = 0;
    for (;;) {
      int done = 0;
      MIRA_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > timeout_s_) {
        MIRA_FAIL("rank ", rank_, " of ", world_, ": MPI ", what, " of ", n, " values did not complete within ",
                  timeout_s_, " s: another rank has died or hangs");
      }
      // Spin briefly (collectives are usually quick), then back off to spare the CPU.
      if (++spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(spins > 100000 ? 1000 : 50));
    }
  }
  double timeout_s_;
  int rank_ = 0, world_ = 1;
  bool owns_mpi_ = false;
  std::shared_ptr<cuda::NcclGroup> nccl_;
  int nccl_device_ = -1;
};

std::unique_ptr<Communicator>& world_slot() {
  static std::unique_ptr<Communicator> comm;
  return comm;
}

}  // namespace

Communicator& world_comm(double timeout_s) {
  static std::once_flag once;
  std::call_once(once, [&] {
    if (launched_by_mpi()) world_slot() = std::make_unique<MpiComm>(timeout_s);
  });
  return world_slot() ? *world_slot() : local_comm();
}

void abort_world(int exit_code) {
  if (world_slot() && world_slot()->world_size() > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

#else  // no MPI in this build

bool mpi_available() { return false; }

void abort_world(int) {}

Communicator& world_comm(double) {
  MIRA_CHECK(!launched_by_mpi() || std::getenv("MIRA_ALLOW_NO_MPI"),
             "this process was started by an MPI launcher but the build has no MPI: every rank would train "
             "alone (rebuild with Open MPI installed, or set MIRA_ALLOW_NO_MPI=1)");
  return local_comm();
}

#endif

}  // namespace mira

// Communicator: the one interface through which the engine talks to the other processes of a
// run (gradient all-reduce, synchronised BatchNorm statistics, MIRA's column sums). Every rank
// calls the same collectives in the same order; a collective returns when its result is in
// place. One process uses LocalComm, whose collectives do nothing, so single-GPU code is the
// multi-GPU code with world_size() == 1.
//
// Implementations planned: MPI for host buffers and NCCL for device buffers, with NCCL
// bootstrapped over MPI (docs/design.md, "Distributed"). They derive from Communicator and
// need nothing else from the engine. ThreadComm (below) runs ranks as threads of one process:
// it is how tests check that several ranks give the same result as one rank holding the
// whole batch.
//
// Device buffers: the reduction is ordered on the engine's CUDA stream
// (CudaContext::get().stream()) after the work already queued there, and later work on that
// stream sees the result; whether the call itself blocks the host is up to the implementation
// (LocalComm: no; ThreadComm: yes; NCCL: no). Sums keep the buffer's dtype; implementations
// reduce in rank order where they can, so all ranks get bitwise the same result.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "engine/dtype.h"
#include "engine/tensor.h"

namespace mira {

// A reduction started by Communicator::allreduce_sum_start. wait() returns when the result is
// in place (for device buffers: ordered before later work on the engine's stream) or throws
// (a rank died or hangs). Destroying a handle that was never waited for is allowed only while
// unwinding from an error: the process is about to stop the run.
class PendingReduce {
 public:
  virtual ~PendingReduce() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Host buffers, in place.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_max(float* data, int64_t n) = 0;
  virtual void allreduce_max(double* data, int64_t n) = 0;

  // Buffers on any device (F32 or F64), in place; see the file comment for CUDA ordering.
  virtual void allreduce_sum(void* data, int64_t n, DType dtype, Device device) = 0;
  virtual void allreduce_max(void* data, int64_t n, DType dtype, Device device) = 0;

  virtual void barrier() = 0;

  // Returns when every collective started so far has completed on its device; a dead or hung
  // peer surfaces here as an error within the timeout. Device reductions may not make the host
  // wait (NCCL): call this before reading on the host a device result that depends on one.
  virtual void drain() {}

  // Non-blocking sum (F32 or F64, any device): starts the reduction and returns; the buffer must
  // not be touched until the handle's wait(). Started reductions match across ranks in the
  // order they were started, interleaved freely with the blocking collectives above (every rank
  // must make the same sequence of calls). The default runs the blocking reduction at once and
  // returns a finished handle (LocalComm, ThreadComm, and device buffers staged through the
  // host); MPI overlaps host buffers, NCCL device buffers (on its own stream).
  virtual std::unique_ptr<PendingReduce> allreduce_sum_start(void* data, int64_t n, DType dtype, Device device);

  // For each value, its smallest and largest over the ranks (one max-reduction of x and -x):
  // equal on every rank iff lo == hi. Host doubles; every rank must pass as many.
  std::vector<std::pair<double, double>> min_max(const std::vector<double>& x);

  // A contiguous tensor, in place, on its own device.
  void allreduce_sum(Tensor& t) { allreduce_sum(t.raw(), t.numel(), t.dtype(), t.device()); }
  void allreduce_max(Tensor& t) { allreduce_max(t.raw(), t.numel(), t.dtype(), t.device()); }
};

// One process: every collective is a no-op (arguments are still checked).
class LocalComm final : public Communicator {
 public:
  using Communicator::allreduce_max;  // keep the Tensor overloads visible
  using Communicator::allreduce_sum;
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void allreduce_sum(float* data, int64_t n) override;
  void allreduce_sum(double* data, int64_t n) override;
  void allreduce_max(float* data, int64_t n) override;
  void allreduce_max(double* data, int64_t n) override;
  void allreduce_sum(void* data, int64_t n, DType dtype, Device device) override;
  void allreduce_max(void* data, int64_t n, DType dtype, Device device) override;
  void barrier() override {}
};

// The process-wide LocalComm (default argument of ops that take a communicator).
Communicator& local_comm();

// world_size communicators whose ranks are threads of this process: communicator r must be
// used by one thread only, and every rank's thread must make the same calls. Reductions run
// in rank order in double, so every rank receives bitwise the same result, and a run split
// over W thread-ranks differs from one rank holding the whole batch only by the order of the
// final W-term sums. CUDA buffers are staged through the host (correct, not fast). Holds the
// shared state alive as long as any of the communicators lives.
std::vector<std::unique_ptr<Communicator>> make_thread_comms(int world_size);

}  // namespace mira

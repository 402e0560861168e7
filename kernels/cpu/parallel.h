// The CPU kernels' thread pool. Work is split into tasks whose number and contents depend on
// the shapes only, and each task's result does not depend on which thread runs it, so the
// results are the same bits for any number of threads (users: the convolutions of
// kernels/cpu/conv.cpp, batch norm in kernels/cpu/nn.cpp, the element-wise loops of
// kernels/cpu/pointwise.cpp; tests/test_ops.cpp checks 1 against 2 and 3 threads).
//
// Threads: MIRA_CPU_THREADS, else the hardware threads divided by the ranks an MPI launcher
// started on this machine (Open MPI, MPICH and MVAPICH tell them). OpenBLAS runs one thread
// per call (kernels/cpu/gemm.cpp): the products are split into blocks here instead.
#pragma once

#include <cstdint>
#include <functional>

namespace mira::cpu {

// Threads parallel_for uses (>= 1), the calling thread included.
int parallel_workers();
// Overrides MIRA_CPU_THREADS (n >= 1; 0 goes back to it; for tests and benchmarks). Not while
// a parallel_for runs.
void set_parallel_workers(int n);

// Runs fn(task, worker) for every task in [0, n), worker in [0, parallel_workers()): a worker
// runs one task at a time, so per-worker scratch indexed by `worker` is safe. The caller is
// worker 0 and returns once every task is done; the first exception a task throws is rethrown
// then. A call from inside a task, or while another thread's call holds the pool, runs its
// tasks in order on the calling thread (worker 0), and so does every call in a process forked
// after the pool started its threads.
void parallel_for(int n, const std::function<void(int task, int worker)>& fn);

// [0, n) in chunks of `chunk` (the last one shorter): fn(k, begin, end) for chunk k, as tasks
// of parallel_for. Callers derive `chunk` from the shapes only, so the bits stay the same for
// any number of threads.
template <typename F>
void parallel_chunks(int64_t n, int64_t chunk, const F& fn) {
  parallel_for(static_cast<int>((n + chunk - 1) / chunk), [&](int k, int) {
    const int64_t begin = k * chunk;
    fn(k, begin, begin + chunk < n ? begin + chunk : n);
  });
}

}  // namespace mira::cpu

// Grid-wide barriers for persistent launches (all blocks resident at once), as alternatives to
// cooperative_groups' grid.sync(), which costs ~1.3-1.5 us on an H200 at 128-264 blocks
// (bench/RESULTS.md, session 15: two of them per pass are ~20 % of the fused MIRA kernel).
// bench/mira_assign --probe-sync times each kind (kernels/cuda/sync_probe.cu); nothing in the
// assignment uses them until a GPU run says one is cheaper.
//
// - CountBarrier: one 32-bit counter that only rises. Each arrival adds 1 with release
//   semantics at GPU scope; the k-th barrier waits, with acquire loads, until the counter reaches
//   k * arrivals. No reset between barriers (the difference to the target is read as signed,
//   so the counter may wrap), but it must be 0 when the first barrier starts.
// - count_sync: every block arrives (thread 0, after a __syncthreads, so the block's writes are
//   ordered before the arrival; the __syncthreads after the wait orders the block's reads after
//   the other blocks' writes).
// - cluster_count_sync (sm_90): the blocks of a thread-block cluster meet at the cluster's
//   hardware barrier (~0.23 us), then one thread per cluster arrives on the counter and waits,
//   and the cluster meets again: 1/size as many arrivals on the one address.
// Ordering across blocks follows from causality order being transitive in the PTX memory model:
// a write, then a CTA or cluster barrier, then a release at GPU scope that an acquire in
// another block reads, then that block's barrier.
#pragma once

#include <cooperative_groups.h>

namespace mira::cuda::fused {

#ifdef MIRA_CUDA_EMU  // tests/cuda_emu: the host's atomics (x86-TSO) and a yielding poll
__device__ __forceinline__ void arrive_release(unsigned* p) {
  __atomic_fetch_add(p, 1u, __ATOMIC_RELEASE);
}
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
__device__ __forceinline__ void sync_spin(int& n) {
  ::mira::emu::spin_wait(n);
}
#else
__device__ __forceinline__ void arrive_release(unsigned* p) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// A block still waiting after ~2^26 polls (seconds) waits for an arrival that will not come (a
// block that is not resident, or a counter that did not start at 0): trap, so that the launch
// fails with an error instead of hanging the process.
__device__ __forceinline__ void sync_spin(int& n) {
  if (++n > (1 << 26)) __trap();
}
#endif

// One thread per arriving unit: arrives on `count` (0 before the first barrier), then waits
// until it reaches `target`, k * arrivals at the k-th barrier.
__device__ __forceinline__ void counter_arrive_wait(unsigned* count, unsigned target) {
  arrive_release(count);
  int n = 0;
  while (static_cast<int>(load_acquire(count) - target) < 0) sync_spin(n);
}

// Every thread of every block; target matters in thread 0 only (callers may keep it there, in
// shared memory, to spare a register in every thread).
__device__ __forceinline__ void count_sync(unsigned* count, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) counter_arrive_wait(count, target);
  __syncthreads();
}

// Clusters exist from sm_90 on (and in the emulator). target: in thread 0 of the cluster's
// block 0.
#if defined(MIRA_CUDA_EMU) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_count_sync(unsigned* count, unsigned target,
                                                   cooperative_groups::cluster_group& cl) {
  cl.sync();
  if (cl.block_rank() == 0 && threadIdx.x == 0) counter_arrive_wait(count, target);
  cl.sync();
}
#endif

}  // namespace mira::cuda::fused

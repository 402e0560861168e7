// The grid barriers of kernels/cuda/grid_sync.cuh on the device, against cooperative_groups'
// grid.sync(): their cost (bench/mira_assign --probe-sync) and whether they order memory
// (every barrier is also checked: blocks write before it and read each other's words after).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace mira::cuda {

enum class GridSync {
  // MiraPlanOptions only: mira_plan picks (plan_model::auto_barrier); never a plan's or a probe's.
  Auto = -1,
  Cooperative = 0,  // cooperative_groups::this_grid().sync()
  // The probe's only: as the fused assignment's barriers they measured no faster (an H200,
  // bench/RESULTS.md, sessions 17 and 19) and were removed in session 24 (commit ec4e164 has them).
  Counter = 1,         // count_sync: one arrival per block
  ClusterCounter = 2,  // cluster_count_sync (sm_90): one arrival per cluster
  // The fused assignment's only (not a probe's): a counter per view group, so that views side
  // by side never wait for each other; Stagger also holds the second view's first update until
  // the first view's is done everywhere, so that their pass boundaries alternate
  // (mira_fused.cuh, fused_grid_sync). (An interleaved stagger, block b in group b % groups,
  // was for launches that place blocks depth-first; an H200's place them breadth-first, and it
  // measured slower: removed in session 24.)
  ViewCounter = 3,
  ViewCounterStagger = 4,
};
const char* grid_sync_name(GridSync kind);
// A counter per view group (ViewCounter and its staggered kinds)?
constexpr bool grid_sync_per_view(GridSync kind) {
  return kind == GridSync::ViewCounter || kind == GridSync::ViewCounterStagger;
}

// Device memory a run over `blocks` blocks of `threads` needs, and where its results are: the
// number of failed checks (one unsigned) and each block's clock64 cycles over the timed barriers.
size_t sync_probe_scratch_bytes(int blocks, int threads);
unsigned* sync_probe_errors(void* scratch);
long long* sync_probe_cycles(void* scratch, int blocks, int threads);

// One launch of `blocks` blocks of `threads` threads (a multiple of 32; `cluster` blocks per
// cluster for ClusterCounter, dividing `blocks`; smem bytes of dynamic shared memory each, to
// set how many share an SM), all resident at once (a cooperative launch): `checks` barriers,
// each checked (every thread writes a word before it and reads another block's thread's word
// after it), then `iters` timed barriers. The scratch (sync_probe_scratch_bytes)
// is cleared first. Asynchronous on `stream`.
void sync_probe_launch(GridSync kind, int blocks, int threads, int cluster, size_t smem, int checks, int iters,
                       void* scratch, cudaStream_t stream);

// On the current GPU: blocks_per_sm blocks of kSyncProbeThreads on every SM (with shared memory as the
// fused kernel's two or one per SM take), fewer to make whole clusters (of 1 to 8); 0 blocks
// where the kind or cluster size does not run there (clusters need sm_90). Two launches (the
// first warms up); errors: the failed checks of both; cycles: the second's slowest block's
// mean per barrier.
struct SyncProbe {
  GridSync kind = GridSync::Cooperative;
  int blocks = 0, cluster = 1;
  double cycles = 0;
  unsigned errors = 0;
};
// scratch: device memory of at least sync_probe_scratch_bytes(SMs * blocks_per_sm,
// kSyncProbeThreads) bytes.
constexpr int kSyncProbeThreads = 384;  // the fused kernel's block at N 4096 (8 columns x 2 blocks per SM)
SyncProbe mira_sync_probe(GridSync kind, int blocks_per_sm, int cluster, int checks, int iters, void* scratch,
                          size_t scratch_bytes);

}  // namespace mira::cuda

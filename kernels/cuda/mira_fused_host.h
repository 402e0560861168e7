// The host side of the fused MIRA assignment kernels that needs no device: their arguments
// (FusedArgs, filled from a problem, its plan and the workspace) and the cluster plan's
// geometry and workspace layout from its shape. Plain C++ (mira_fused_host.cpp), so that
// tests/cuda_emu can run mira_cluster.cu's device code on the CPU with the same arguments as
// a launch on a GPU.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <functional>

#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/mira_assign.cuh"

namespace mira::cuda::fused {

constexpr int kVec = 4;               // consecutive columns per thread and vector access
constexpr float kLog2MaxF32 = 124.f;  // K weights of at most 2^(124 - log2 K): sums < 2^124
// The f16 cache holds S = E * 2^15 (mira_fused.cuh, ECache<__half>).
constexpr float kF16Scale = 32768.f;
constexpr int kF16Log2Scale = 15;

struct FusedArgs {
  const void* logits[kMiraMaxViews];
  float* targets[kMiraMaxViews];
  int V, N, K, Kp;
  int views_per_group, blocks_per_view, rows_per_block, smem_rows;
  int64_t ecache_rows_per_block;
  float k2;        // log2(e) / (tau_t (1 - beta)): E = exp2((L - max) * k2)
  float exponent;  // -beta
  float log2_cap;
  int iters, pass_begin, pass_end;
  int exact_from;      // 16-bit caches: updates p >= exact_from read exact E (the cluster plan: its split copy)
  bool vec_logits;     // K % 4 == 0 and rows aligned: vector loads of logits / stores of targets
  void* ecache;        // (V, blocks_per_view, ecache_rows_per_block, Kp) of TE
  float* partial;      // (V, blocks_per_view, Kp)
  float* colsum;       // (V, Kp) + the non-finite counter
  float* colsum_log2;  // null, or (V, Kp): log2f of each sum, written with it (MiraPlan::log2_sums)
  // null, or (V, iters + 1): the bits of pass p's largest column sum of view v at
  // [v * (iters + 1) + p], atomicMax'ed by the column reduction (MiraPlan::max_sums)
  unsigned* colsum_max;
  float* rowmax;       // (V, N)
  // null, or (kMiraSumBuffers, V, Kp): the column sums added by atomics (MiraPlan::atomic_sums)
  float* sums;
  // The cluster plan's flag-tagged partials (row groups > 1): null, or {float, pass + 1} words.
  uint2* ll_partial;
  unsigned long long* trace;  // null, or (grid, kMiraTraceWords): clock64 sums and the SM (MiraPlan::trace)
  // The cluster plan (MiraPlan::cluster): blocks per cluster, columns per block, clusters per
  // view (row groups of rows_per_block rows).
  int cluster, cluster_cols, cluster_groups;
  // Elements per row of E in a block's shared memory; > 0: the f16 copy's sweeps on tensor
  // cores, the column sums in this many row chunks (plan_model::cluster_layout).
  int cluster_ld, cluster_mma;
  // The tensor-core updates (MiraPlan::mma_fallback): every pass as a wide one.
  bool mma_fallback;
  // The default kernel's counter barriers per view group (MiraPlan::grid_sync; its kind is
  // the kernel's template argument): the counters (null: none).
  unsigned* sync_count;
};

// The kernel arguments of passes [pass_begin, pass_end) of problem p under plan, with the
// workspace at ws (checks the views' pointers; vector access where K and their alignment allow).
FusedArgs fused_args(const MiraProblem& p, const MiraPlan& plan, void* ws, int pass_begin, int pass_end);

// The fused / per-pass plan (the column kernels and the tensor-core kernel) of p from the cost model's choice
// (plan_model::choose) among its candidate shapes: launch geometry, shared memory, workspace.
// mma_rows: MiraPlan::mma_rows (0, or the tensor-core kernel's column tiles per warp).
// stage_rows: MiraPlan::stage_rows (0, or the staging ring's rows, taken from the choice's
// rows in shared memory); unused_rows: rows of the choice's shared memory left unused
// (MiraPlanOptions::max_smem_rows), their rows read from the workspace; atomic_sums:
// MiraPlan::atomic_sums (the sums' buffers instead of the partials, log2 sums and largest sums).
MiraPlan fused_plan(const MiraProblem& p, MiraVariant variant, MiraCache cache, int exact_passes, int mma_rows,
                    const plan_model::Shape& sh, const plan_model::Choice& best, int stage_rows = 0,
                    int unused_rows = 0, bool atomic_sums = false);

// The cluster plan of p for a shape from plan_model::cluster_shape (cs.size > 0): launch
// geometry, shared memory and workspace layout; variant Fused, the given cache (F32 or F16)
// and exact passes.
MiraPlan cluster_plan(const MiraProblem& p, MiraCache cache, int exact_passes, const plan_model::ClusterShape& cs);

// Launches the cluster plan with row groups, whose clusters wait on each other: cfg (a cluster
// dimension in cfg.attrs[0]) plus the cooperative attribute in cfg.attrs[1], so that every
// cluster is resident at once or the launch fails. If the driver refuses that combination
// (cudaErrorNotSupported or cudaErrorInvalidValue, errors of the call, not of the kernel), it
// launches once more without it, warns on stderr, and remembers the refusal in `refused` so
// later launches go without it at once: residency then rests on the plan's occupancy check
// (cudaOccupancyMaxActiveClusters), and a stranded group traps after its polls. Any other
// error, an error while a stream is being captured (the capture is then invalid), or one
// without the attribute is returned as it is. `launch` performs the launch
// (cudaLaunchKernelExC on a GPU; the tests inject refusals).
cudaError_t launch_row_groups(cudaLaunchConfig_t cfg, bool capturing, std::atomic<bool>& refused,
                              const std::function<cudaError_t(const cudaLaunchConfig_t&)>& launch);

}  // namespace mira::cuda::fused

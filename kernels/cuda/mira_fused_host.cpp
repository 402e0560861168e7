// The fused kernels' arguments and the cluster plan's layout (mira_fused_host.h).
#include "kernels/cuda/mira_fused_host.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/error.h"

namespace mira::cuda::fused {

namespace {

size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

}  // namespace

FusedArgs fused_args(const MiraProblem& p, const MiraPlan& plan, void* ws, int pass_begin, int pass_end) {
  FusedArgs a{};
  bool vec = p.K % kVec == 0;
  for (int v = 0; v < p.V; ++v) {
    a.logits[v] = p.logits[v];
    a.targets[v] = p.targets[v];
    MIRA_CHECK(p.logits[v] && p.targets[v], "mira_assign_cuda: null pointer for view ", v);
    const size_t align = p.logits_bf16 ? 8 : 16;
    vec = vec && reinterpret_cast<uintptr_t>(p.logits[v]) % align == 0 &&
          reinterpret_cast<uintptr_t>(p.targets[v]) % 16 == 0;
  }
  a.V = p.V, a.N = p.N, a.K = p.K, a.Kp = plan.Kp;
  a.views_per_group = plan.views_per_group;
  a.blocks_per_view = plan.blocks_per_view;
  a.rows_per_block = plan.rows_per_block;
  a.smem_rows = plan.smem_rows;
  a.ecache_rows_per_block = plan.ecache_rows_per_block;
  a.k2 = static_cast<float>(1.4426950408889634 / (static_cast<double>(p.tau_t) * (1.0 - p.beta)));
  a.exponent = -p.beta;
  // Row sums of the f16 cache carry its 2^15 scale.
  a.log2_cap =
      kLog2MaxF32 - (plan.cache == MiraCache::F16 ? kF16Log2Scale : 0) - std::ceil(std::log2(static_cast<double>(p.K)));
  a.iters = p.iters;
  a.exact_from = p.iters + 1 - std::min(plan.exact_passes, p.iters);
  a.pass_begin = pass_begin, a.pass_end = pass_end;
  a.vec_logits = vec;
  char* base = static_cast<char*>(ws);
  a.ecache = base + plan.off_ecache;
  a.partial = plan.atomic_sums ? nullptr : reinterpret_cast<float*>(base + plan.off_partial);
  a.colsum = reinterpret_cast<float*>(base + plan.off_colsum);
  a.colsum_log2 = plan.log2_sums ? reinterpret_cast<float*>(base + plan.off_colsum_log2) : nullptr;
  a.colsum_max = plan.max_sums ? reinterpret_cast<unsigned*>(base + plan.off_colsum_max) : nullptr;
  a.rowmax = reinterpret_cast<float*>(base + plan.off_rowmax);
  a.sums = plan.atomic_sums ? reinterpret_cast<float*>(base + plan.off_sums) : nullptr;
  a.ll_partial = plan.cluster_groups > 1 ? reinterpret_cast<uint2*>(base + plan.off_ll_partial) : nullptr;
  a.trace = plan.trace;
  a.cluster = plan.cluster;
  a.cluster_cols = plan.cluster_cols;
  a.cluster_groups = plan.cluster_groups;
  a.cluster_ld = plan.cluster_ld;
  a.cluster_mma = plan.cluster_mma;
  a.mma_fallback = plan.mma_fallback;
  a.sync_count = plan.grid_sync != 0 ? reinterpret_cast<unsigned*>(base + plan.off_sync) : nullptr;
  return a;
}

MiraPlan fused_plan(const MiraProblem& p, MiraVariant variant, MiraCache cache, int exact_passes, int mma_rows,
                    const plan_model::Shape& sh, const plan_model::Choice& best, int stage_rows, int unused_rows,
                    bool atomic_sums) {
  MiraPlan plan;
  plan.variant = variant;
  plan.cache = cache;
  plan.exact_passes = cache == MiraCache::F32 ? 0 : exact_passes;
  plan.mma_rows = mma_rows;
  plan.cpt = sh.cpt;
  plan.block = sh.block;
  plan.Kp = sh.Kp;
  plan.batch_rows = sh.batch_rows;
  const size_t row_bytes = static_cast<size_t>(plan.Kp) * (cache == MiraCache::F32 ? 4 : 2);
  const size_t smem_extra = static_cast<size_t>(sh.smem_extra);
  plan.views_per_group = best.vpg;
  plan.blocks_per_view = best.bpv;
  plan.grid = best.vpg * best.bpv;
  plan.rows_per_block = best.rpb;
  // The staging ring (stage_rows > 0) takes rows of the same shared memory after the kept ones.
  MIRA_CHECK(stage_rows >= 0 && unused_rows >= 0 && stage_rows + unused_rows <= best.smem_rows,
             "fused_plan: a staging ring of ", stage_rows, " rows and ", unused_rows, " unused in ", best.smem_rows);
  plan.stage_rows = stage_rows;
  plan.smem_rows = best.smem_rows - stage_rows - unused_rows;
  plan.smem_bytes = static_cast<size_t>(best.smem_rows) * row_bytes + smem_extra;
  plan.ecache_rows_per_block = plan_model::stored_rows(sh, best.rpb) - plan.smem_rows;

  size_t off = 0;
  plan.off_ecache = off;
  off = align_up(off + static_cast<size_t>(p.V) * best.bpv * plan.ecache_rows_per_block * row_bytes, 256);
  MIRA_CHECK(!atomic_sums || (variant == MiraVariant::Fused && mma_rows == 0),
             "fused_plan: atomic column sums are for the default kernel's one launch");
  plan.atomic_sums = atomic_sums;
  plan.off_partial = off;
  if (!atomic_sums) off = align_up(off + static_cast<size_t>(p.V) * best.bpv * plan.Kp * sizeof(float), 256);
  if (atomic_sums) {
    plan.off_sums = off;
    off = align_up(off + static_cast<size_t>(kMiraSumBuffers) * p.V * plan.Kp * sizeof(float), 256);
  }
  plan.off_colsum = off;
  off = align_up(off + (static_cast<size_t>(p.V) * plan.Kp + 1) * sizeof(float), 256);
  plan.off_rowmax = off;
  off = align_up(off + static_cast<size_t>(p.V) * p.N * sizeof(float), 256);
  // One launch for all passes: the sums a block reads are the ones the reduction wrote (with
  // PerPass they are summed over ranks between launches, after any log2 could be taken).
  plan.log2_sums = variant == MiraVariant::Fused && !atomic_sums;
  if (plan.log2_sums) {
    plan.off_colsum_log2 = off;
    off = align_up(off + static_cast<size_t>(p.V) * plan.Kp * sizeof(float), 256);
  }
  // The tensor-core kernel reduces its weights' range (largest and smallest sum) itself.
  plan.max_sums = plan.log2_sums && mma_rows == 0;
  if (plan.max_sums) {
    plan.off_colsum_max = off;
    off = align_up(off + static_cast<size_t>(p.V) * (p.iters + 1) * sizeof(unsigned), 256);
  }
  plan.workspace_bytes = off;
  plan.flag_index = static_cast<int64_t>(p.V) * plan.Kp;
  return plan;
}

MiraPlan cluster_plan(const MiraProblem& p, MiraCache cache, int exact_passes, const plan_model::ClusterShape& cs) {
  MIRA_CHECK(cs.size > 0 && (cache == MiraCache::F32 || cache == MiraCache::F16),
             "cluster_plan: a cluster shape and the f32 or f16 cache");
  MiraPlan plan;
  plan.variant = MiraVariant::Fused;
  plan.cache = cache;
  plan.exact_passes = cache == MiraCache::F32 ? 0 : exact_passes;
  plan.cluster = cs.size;
  plan.cluster_cols = cs.cols;
  plan.cluster_groups = cs.groups;
  plan.cluster_ld = cs.ld;
  plan.cluster_mma = cache == MiraCache::F16 ? cs.mma_chunks : 0;
  plan.cpt = kVec;
  plan.block = plan_model::kClusterBlock;
  plan.views_per_group = cs.views_side_by_side;
  plan.blocks_per_view = cs.groups * cs.size;
  plan.grid = cs.views_side_by_side * plan.blocks_per_view;
  plan.rows_per_block = cs.rows;
  plan.smem_rows = cs.rows;
  plan.smem_bytes = static_cast<size_t>(cs.smem);
  plan.Kp = cs.size * cs.cols;
  // The workspace: the non-finite counter (colsum[0]: the plan has no column sums there), the
  // f16 copy's low halves, then with row groups the flag-tagged column sums of each group, in
  // two slots (pass parity).
  plan.off_colsum = 0;
  plan.flag_index = 0;
  size_t off = 256;
  if (cache == MiraCache::F16) {  // the split copy's low halves (mira_cluster.cu, SplitE)
    plan.off_ecache = off;
    off = align_up(off + static_cast<size_t>(p.V) * cs.groups * cs.rows * plan.Kp * sizeof(uint16_t), 256);
  }
  if (cs.groups > 1) {
    plan.off_ll_partial = off;
    off = align_up(off + 2 * static_cast<size_t>(p.V) * cs.groups * plan.Kp * sizeof(uint2), 256);
  }
  plan.workspace_bytes = off;
  return plan;
}

cudaError_t launch_row_groups(cudaLaunchConfig_t cfg, bool capturing, std::atomic<bool>& refused,
                              const std::function<cudaError_t(const cudaLaunchConfig_t&)>& launch) {
  MIRA_CHECK(cfg.numAttrs == 2 && cfg.attrs[1].id == cudaLaunchAttributeCooperative,
             "launch_row_groups: the cooperative attribute goes second");
  if (refused.load(std::memory_order_relaxed)) cfg.numAttrs = 1;
  const cudaError_t err = launch(cfg);
  if (cfg.numAttrs == 1 || capturing || (err != cudaErrorNotSupported && err != cudaErrorInvalidValue)) return err;
  refused.store(true, std::memory_order_relaxed);
  std::fprintf(stderr,
               "mira: the driver refused a cooperative launch with a cluster dimension (%s); the cluster plan's "
               "row groups launch without it from now on\n",
               cudaGetErrorString(err));
  cfg.numAttrs = 1;
  return launch(cfg);
}

}  // namespace mira::cuda::fused

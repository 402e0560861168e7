// The fused kernels' arguments and the cluster plan's layout (mira_fused_host.h).
#include "kernels/cuda/mira_fused_host.h"

#include <algorithm>
#include <cmath>

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
  a.partial = reinterpret_cast<float*>(base + plan.off_partial);
  a.colsum = reinterpret_cast<float*>(base + plan.off_colsum);
  a.colsum_log2 = plan.log2_sums ? reinterpret_cast<float*>(base + plan.off_colsum_log2) : nullptr;
  a.rowmax = reinterpret_cast<float*>(base + plan.off_rowmax);
  a.ll_partial =
      plan.flag_sync || plan.cluster_groups > 1 ? reinterpret_cast<uint2*>(base + plan.off_ll_partial) : nullptr;
  a.ll_colsum = plan.flag_sync ? reinterpret_cast<uint2*>(base + plan.off_ll_colsum) : nullptr;
  a.trace = plan.trace;
  a.cluster = plan.cluster;
  a.cluster_cols = plan.cluster_cols;
  a.cluster_groups = plan.cluster_groups;
  return a;
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

}  // namespace mira::cuda::fused

#pragma once
// The launch-plan cost model of the fused MIRA assignment kernels (kernels/cuda/mira_assign.cu,
// mira_plan), as plain host code: the CUDA side describes the device and the candidate block
// shapes and asks which plan to run; tests/test_mira_plan_model.cpp checks, without a GPU, that
// the model picks what was measured fastest (bench/RESULTS.md, 2026-11-27).
//
// A plan: a block shape (a kernel instantiation: columns per thread, threads per block), how
// many views run side by side (vpg; V / vpg groups one after another), blocks per view, and how
// many of a block's rows of E stay in shared memory (the rest go to a workspace in L2 or HBM).
#include <functional>
#include <vector>

namespace mira::plan_model {

struct Device {
  int sms = 0;
  int smem_optin = 0;  // max dynamic + static shared memory per block (bytes)
  int smem_sm = 0;     // shared memory per SM (bytes)
  double l2 = 0;       // L2 bytes
};

struct Shape {
  int cpt = 0;                    // columns per thread (warp rows: a lane's columns)
  int block = 0;                  // threads per block
  int Kp = 0;                     // padded row length of E
  int batch_rows = 1;             // rows per register batch: shared-memory rows are a multiple of it
  int bps_fixed = 0;              // blocks per SM asked for (0: the model picks)
  int smem_static = 0;            // the instantiation's static shared memory (bytes)
  int occ0 = 0;                   // blocks per SM with no row cache (the occupancy calculator's)
  int max_bpv = 0;                // blocks per view at most (0: N, a row per block at least)
  long long smem_extra = 0;       // dynamic shared memory ahead of the rows of E (bytes)
  double rate_1 = 0, rate_2 = 0;  // update-pass elements/s per SM at 1 / >= 2 blocks per SM
  double offchip = 1;             // share of the L2 / HBM rates its off-chip rows reach
};

// Measured rates (H200, bench/RESULTS.md 2026-11-27) for the two kinds of kernel.
Shape column_shape(int cpt, int block, int Kp, int batch_rows);  // mira_assign.cu's kernel
Shape warp_row_shape(int cpt, int block, int Kp);                // mira_warprows.cu's

struct Problem {
  int V = 1, N = 1, K = 1, iters = 30;
  int cache_bytes = 4;                                  // bytes per element of E's working copy
  bool per_pass = false;                                // one launch per pass: E never stays on chip
  bool may_side_by_side = true, may_one_by_one = true;  // the schedule asked for
};

struct Choice {
  int shape = -1, vpg = 0, bpv = 0, rpb = 0, smem_rows = 0, bps = 0;
  double cost = 0;  // seconds per launch, as the model predicts
};

// Blocks of a shape that fit an SM with this much dynamic shared memory.
using Occupancy = std::function<int(int shape, long long dyn_smem)>;

// The cheapest plan over the shapes (ties go to the earlier shape); shape = -1 when none fits.
Choice choose(const Problem& p, const Device& d, const std::vector<Shape>& shapes, const Occupancy& occupancy);

// ---- the cluster plan (kernels/cuda/mira_cluster.cu, MiraPlanOptions::cluster; sm_90)
// One thread-block cluster per view keeps all of the view's E in f32 in its blocks' shared
// memory: block r of a cluster of `size` owns columns [r cols, (r + 1) cols) of every row, so a
// column's sum never leaves its block and a pass needs two cluster barriers, no grid barrier.
constexpr int kClusterBlock = 1024;                 // threads per block
constexpr int kClusterWork = 32;                    // elements of E per thread and pass the automatic size aims at
constexpr int kClusterMaxCols = 4 * kClusterBlock;  // columns per block at most (a quad per thread)

struct ClusterShape {
  int size = 0;        // blocks per cluster (a power of two); 0: E does not fit
  int cols = 0;        // columns per block, a multiple of 4
  int subsets = 0;     // row subsets of the column sums: threads (column quad, subset)
  long long smem = 0;  // dynamic shared memory per block (bytes)
};

// The shape of one cluster for N rows of K columns (cols, subsets and smem filled; size as given).
ClusterShape cluster_layout(int N, int K, int size);
// The cluster size for N x K: `asked` (> 0) if it fits, else the smallest power of two up to
// max_size whose blocks hold at most kClusterWork elements per thread, else max_size; size 0
// when E does not fit in max_size blocks of smem_optin - smem_static bytes.
ClusterShape cluster_shape(int N, int K, int max_size, int smem_optin, int smem_static, int asked = 0);

}  // namespace mira::plan_model

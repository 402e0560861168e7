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
  int row_tile = 1;               // E stored in tiles of this many rows (a block's rows rounded up to them)
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
Shape mma_row_shape(int block, int Kp);                          // mira_mmarows.cu's
// Rows of E a block stores: its rows rounded up to the shape's row tiles.
inline int stored_rows(const Shape& sh, int rows_per_block) {
  return (rows_per_block + sh.row_tile - 1) / sh.row_tile * sh.row_tile;
}

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

// ---- the default kernel's grid barriers (MiraPlanOptions::grid_sync = GridSync::Auto)
// Which barriers the automatic choice gives a plan of the default kernel (one launch, no
// tensor-core rows). A counter per view group pays
// only with the views side by side at 8 columns x 2 rows per batch, where each SM holds a
// block of each view; measured on an H200 (bench/RESULTS.md, session 19): for the f16 copy the
// plain counters (0.650 to 0.643 ms at N 4096, 0.295 to 0.289 at N 1024; staggered they lost:
// 0.663, 0.295), for the f32 copy the staggered ones (0.286 to 0.279 ms at N 1024, its auto
// plan; 0.989 to 0.976 at N 4096 side by side). Untried elsewhere (exact passes, bf16 copy):
// the cooperative barriers stay.
enum class Barrier { Cooperative, ViewCounter, ViewCounterStagger };
struct BarrierCase {
  int vpg = 1;                 // views side by side
  int cpt = 0;                 // columns per thread
  int batch_rows = 0;          // rows per register batch
  int cache_bytes = 4;         // E's working copy: 4 (f32) or 2
  bool f16 = false;            // a 2-byte copy in f16 (else bf16)
  int exact_passes = 0;        // exact updates at the end (16-bit copies)
  bool default_kernel = true;  // the plan runs the default kernel as above
};
Barrier auto_barrier(const BarrierCase& c);

// ---- the cluster plan (kernels/cuda/mira_cluster.cu, MiraPlanOptions::cluster; sm_90)
// A thread-block cluster holds the E of `rows` rows of one view in its blocks' shared memory
// (f32, or the f16 cache): block r of a cluster of `size` owns columns [r cols, (r + 1) cols)
// of those rows, so row sums cross the cluster (DSMEM) and column sums cross only the view's
// `groups` clusters (flag-tagged words in L2; nothing when one cluster holds the whole view).
constexpr int kClusterBlock = 512;                  // threads per block
constexpr int kClusterWork = 64;                    // elements of E per thread and pass the automatic size aims at
constexpr int kClusterMaxCols = 4 * kClusterBlock;  // columns per block at most (a quad per thread)

struct ClusterShape {
  int size = 0;                // blocks per cluster (a power of two); 0: no cluster plan
  int cols = 0;                // columns per block, a multiple of 4
  int subsets = 0;             // row subsets of the column sums: threads (column quad, subset)
  int rows = 0;                // rows per cluster
  int groups = 1;              // clusters per view (row groups)
  int views_side_by_side = 1;  // views at once; the rest one after another
  long long smem = 0;          // dynamic shared memory per block (bytes)
  int ld = 0;                  // elements per row of E in shared memory (cols, or the mma layout's)
  int mma_chunks = 0;          // > 0: the f16 copy's sweeps on tensor cores, the column sums in this many row chunks
};

// The tensor-core layout of the f16 copy (mma): columns padded to tiles of 16, rows of
// cols16 + 8 halves (so that the 8 row addresses of an ldmatrix fall in distinct banks), rows
// padded to tiles of 16.
constexpr int kMmaTile = 16;
constexpr int kMmaRowPad = 8;
constexpr int kClusterWarps = kClusterBlock / 32;
// A block's layout extents, shared by cluster_layout and the kernel's shared-memory map
// (constexpr: device code calls them too). Rows of the row arrays: a multiple of 4, or of a
// tile with the tensor-core layout; columns of the weights and column sums: cols, or whole
// tiles; the column sums' row subsets (threads are column quad x subset) and the rows of the
// buffer that holds the subsets', groups' or row chunks' sums.
constexpr int cluster_rows_padded(int rows, bool mma) {
  return mma ? (rows + kMmaTile - 1) / kMmaTile * kMmaTile : (rows + 3) / 4 * 4;
}
constexpr int cluster_cols_padded(int cols, bool mma) {
  return mma ? (cols + kMmaTile - 1) / kMmaTile * kMmaTile : cols;
}
constexpr int cluster_subsets(int quads, int rows) {
  return kClusterBlock / quads < rows ? (kClusterBlock / quads > 1 ? kClusterBlock / quads : 1) : (rows > 1 ? rows : 1);
}
constexpr int cluster_red_rows(int subsets, int groups, int mma_chunks) {
  return subsets > groups ? (subsets > mma_chunks ? subsets : mma_chunks) : (groups > mma_chunks ? groups : mma_chunks);
}
// The row chunks of the column sums on tensor cores: col_tiles x chunks units of work over the
// block's warps, each a chunk's row tiles in order; the fewest chunks of the least work per warp.
int mma_chunks(int col_tiles, int row_tiles);

// The layout of a cluster of `size` blocks holding `rows` rows of K columns, te_bytes per
// element of E, in a view of `groups` clusters (cols, subsets, ld, mma_chunks and smem
// filled); mma (te_bytes 2 only): the tensor-core layout above.
ClusterShape cluster_layout(int rows, int K, int size, int te_bytes = 4, int groups = 1, bool mma = false);

// Clusters of `size` blocks with `smem` bytes of dynamic shared memory each that run at once.
using ClusterActive = std::function<int(int size, long long smem)>;

// The cluster plan for V views of N x K, E in te_bytes per element, blocks of smem_optin -
// smem_static bytes, clusters of up to max_size blocks (`asked` > 0: that size only):
// - one cluster per view where a view fits: the smallest size whose blocks hold at most
//   kClusterWork elements per thread, else the largest that fits;
// - else row groups: the largest size, and the fewest groups that fit, if that many clusters
//   run at once (the groups wait on each other).
// Views run side by side when all their clusters run at once, else one after another. The
// automatic sizes stop where a block would get no column quad (K = 3: one block).
ClusterShape cluster_shape(int N, int K, int V, int te_bytes, int max_size, int smem_optin, int smem_static,
                           const ClusterActive& active, int asked = 0, bool mma = false);

}  // namespace mira::plan_model

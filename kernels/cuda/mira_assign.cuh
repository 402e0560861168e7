// CUDA launchers of the MIRA assignment and of Sinkhorn-Knopp; the numerics are those of
// kernels/cpu/mira_assign.h (read its file comment first), in f32 with f32 accumulation.
// Raw device pointers only: the caller allocates the workspace the plan asks for.
//
// MIRA variants (all give the same targets up to f32 rounding; each is checked against the
// CPU reference in tests/test_mira_assign_gpu.cpp and bench/mira_assign):
// - Fused: one cooperative, persistent launch runs every pass of every view. Each block owns
//   a fixed set of rows and keeps as many of them as fit in shared memory (E in f32, or bf16
//   with MiraCache::BF16), the rest in a workspace that stays in L2 when it fits; the K-length
//   column sums are reduced deterministically (per-block partials, fixed order) between two
//   grid-wide barriers per pass. Views run side by side on disjoint blocks, or one after the
//   other on the whole GPU when that keeps more of E on chip (MiraSchedule).
// - PerPass: the fused kernel cut at the all-reduce: one cooperative launch per pass (the
//   iteration count plus two), E in the workspace, and the caller sums the column sums over
//   ranks between launches. Plain stream work, so it can be captured in a CUDA graph.
// - Fused with MiraPlanOptions::cluster (sm_90, f32 cache, where a view's E fits one cluster's
//   shared memory: the training shapes of one GPU): a thread-block cluster per view, its
//   blocks splitting the columns, so that a pass needs two cluster barriers and no grid
//   barrier (kernels/cuda/mira_cluster.cu). Opt-in: on an H200 faster only up to N 64 per view
//   (bench/RESULTS.md, session 15).
// - Fused with MiraPlanOptions::mma_rows (f16 copy, no exact updates, K <= 3072, sm_80): the
//   default kernel's blocks and passes with the updates' two sweeps on tensor cores
//   (kernels/cuda/mira_mmarows.cu). Opt-in: on an H200 slower than the default kernel with
//   the same f16 copy (0.729 against 0.649 ms at N 4096; bench/RESULTS.md, session 17).
// - Unfused: six small kernels and four launches per iteration, E in the workspace (a bench
//   baseline, and the path for K > 12288 where the fused kernel's registers do not reach).
// MiraCache::BF16 / F16 store E in 16 bits during the iteration (bf16; or f16 of E * 2^15, 3
// more significant bits): half the bytes, so N 4096 x K 3000 fits in shared memory, for ~2e-4
// (bf16) or ~3e-5 (f16) absolute error in the targets. The targets recompute E in f32 from the
// logits and the row maxima, and so do the last MiraPlanOptions::exact_passes updates, each of
// which shrinks that error ~3x (the iteration contracts; f16 with 3: within ~2x of the f32
// kernel's own error). kernels/cpu/mira_assign.h (WorkingCopy) is the CPU twin. Opt-in; the
// default is f32.
//
// Weights on the GPU are capped at 2^(124 - ceil(log2 K)) (f16 cache: 2^(109 - ...); CPU:
// 2^(1020 - ...)) so that row sums and their inverses stay normal f32; the cap only binds when
// column masses differ by more than ~1e30, where f32 cannot represent E's ratios anyway.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/sync_probe.cuh"

namespace mira::cuda {

constexpr int kMiraMaxViews = 4;
// MiraPlan::atomic_sums: the column sums' buffers, used in turn by the passes (a pass's sums
// are read in the next pass while the pass after clears the third).
constexpr int kMiraSumBuffers = 3;

enum class MiraVariant : int { Fused, PerPass, Unfused };
enum class MiraCache : int { F32, BF16, F16 };
enum class MiraSchedule : int { Auto, Concurrent, Sequential };

// V views of this rank's N rows each; the K-length column sums (and so the targets) are
// per view. logits[v]: (N, K) f32 or bf16 (logits_bf16); targets[v]: (N, K) f32.
struct MiraProblem {
  const void* logits[kMiraMaxViews] = {};
  float* targets[kMiraMaxViews] = {};
  int V = 1;
  int N = 0;
  int K = 0;
  bool logits_bf16 = false;
  float tau_t = 0.225f;
  float beta = 2.0f / 3.0f;
  int iters = 30;
};

// Launch geometry and workspace layout, decided on the host for one problem shape and device.
struct MiraPlan {
  MiraVariant variant = MiraVariant::Fused;
  MiraCache cache = MiraCache::F32;
  int exact_passes = 0;     // 16-bit caches: the last updates that read exact E
  int cpt = 4;              // columns per thread (fused / per-pass)
  int batch_rows = 4;       // rows per register batch (fused / per-pass)
  int cluster = 0;          // > 0: the cluster plan (see mira_plan) with this many blocks per view
  int cluster_cols = 0;     // the cluster plan: columns per block
  int cluster_groups = 0;   // the cluster plan: clusters per view (row groups of rows_per_block)
  int cluster_ld = 0;       // the cluster plan: elements per row of E in shared memory
  int cluster_mma = 0;  // the cluster plan, f16 copy: > 0, its sweeps on tensor cores (row chunks of the column sums)
  int mma_rows = 0;     // > 0: the f16 copy's updates on tensor cores (see mira_plan), column tiles of 16 per warp
  bool mma_fallback = false;  // mma_rows, for the tests: every update on the f32 fused multiply-adds of wide passes
  // > 0: the workspace's rows staged through a ring of this many rows of shared memory, after
  // the smem_rows rows (MiraPlanOptions::stage_rows)
  int stage_rows = 0;
  // The column sums added by every block into one K-vector per view and pass with vector
  // float atomics (MiraPlanOptions::atomic_sums): kMiraSumBuffers * V * Kp floats at off_sums,
  // buffer p % kMiraSumBuffers for pass p, zeroed before the launch and cleared in turn.
  bool atomic_sums = false;
  size_t off_sums = 0;
  // The default fused kernel's grid barriers after the launch's first (MiraPlanOptions::
  // grid_sync): GridSync as int, and the counters' place in the workspace.
  int grid_sync = 0;
  size_t off_sync = 0;
  int block = 256;          // threads per block
  int grid = 0;             // blocks (cooperative: all resident)
  int views_per_group = 1;  // views side by side; V / views_per_group groups one after another
  int blocks_per_view = 0;
  int rows_per_block = 0;
  int smem_rows = 0;      // rows per block held in shared memory
  size_t smem_bytes = 0;  // dynamic shared memory per block
  int Kp = 0;             // padded row length of E in shared memory and the workspace
  size_t workspace_bytes = 0;
  int chunks = 0;  // unfused: row chunks of the column reduction
  // Byte offsets into the workspace. colsum holds the column sums (V * Kp floats; unfused: K)
  // and, right after them, the non-finite counter (so one all-reduce carries both).
  size_t off_ecache = 0, off_partial = 0, off_colsum = 0, off_rowmax = 0, off_w = 0;
  size_t off_ll_partial = 0;  // the cluster plan with row groups: tagged partials
  // Fused (one launch): the column reduction also stores
  // log2 of each sum (V * Kp floats at off_colsum_log2), so each block's weights need no log2f
  // of their own (a ~30-instruction polynomial per column and pass in every block).
  bool log2_sums = false;
  size_t off_colsum_log2 = 0;
  // The default kernel with log2_sums: the column reduction also publishes each pass's largest
  // column sum per view (V * (iters + 1) words at off_colsum_max, atomicMax of its bits), so
  // each block's weights need neither the sums themselves nor a block reduction of their max.
  bool max_sums = false;
  size_t off_colsum_max = 0;
  int64_t ecache_rows_per_block = 0;  // rows of E per block held in the workspace
  int64_t flag_index = 0;             // index of the non-finite counter in colsum
  // Fused / per-pass, for performance work: null, or device memory of grid * kMiraTraceWords
  // u64 that each launch overwrites with block b's clock64 cycles per phase at
  // [b * kMiraTraceWords + k]: first pass, weights, update rows, last pass (targets), grid
  // barrier 1 (with the partials' store), column reduction, grid barrier 2, whole launch;
  // then the SM the block ran on (%smid; 0 in tests/cuda_emu); then the block's timeline,
  // kMiraTraceMarks words of clock64 << 4 | phase: the launch's start (phase 7, whole launch),
  // then the end of each phase in the order they ran, as far as the words go (~8 passes), 0
  // after the last. Blocks on one SM share its clock, so the timeline shows whether they ran
  // their phases at the same time.
  unsigned long long* trace = nullptr;
};
constexpr int kMiraTracePhases = 8;
constexpr int kMiraTraceMarks = 48;
constexpr int kMiraTraceWords = kMiraTracePhases + 1 + kMiraTraceMarks;

// How to run a problem; the defaults are the engine's. cache: E's working copy (f32 exact, or
// 16 bits, see above); exact_passes >= 0 (16-bit caches only; clipped to iters).
// batch_rows: 4 (default) or 8: 8 doubles the rows per register batch of the fused kernel
// (half the block reductions per row) at 4 columns per thread (4 -> 8 rows), and at 8 with the
// f32 cache (2 -> 4 rows); MiraPlan::batch_rows says what was taken.
// min_cols_per_thread: 0 (auto), 4, 8 or 16 (the block has K / cols threads); blocks_per_sm: 0
// (the cost model picks) or that many blocks per SM, or as many as fit if fewer. Both 0 for
// the fused variant with K > 2048: the cost model weighs 8 columns per thread at 2 blocks per
// SM (their row reductions overlap each other's latency: K = 3000, N = 4096 on an H200, update
// passes 434 instead of 644 us per launch) against 4 columns at 1 block of 768 (half the
// blocks at each pass boundary: better where there are few rows per block); else 4, and 8
// for K > 2048 with blocks_per_sm given. The schedule (views side by side or one after
// another) comes from the same model, fitted to an H200's traces (kernels/cpu/mira_plan_model.h).
// cluster (Fused, f32 or f16 cache, sm_90; MiraPlan::cluster says whether it took):
// kernels/cuda/mira_cluster.cu, thread-block clusters of up to 16 blocks each holding the E of
// a run of rows of one view in shared memory, block r owning a slice of the columns of those
// rows. Where one cluster holds the whole view (N x K up to ~0.8 M in f32 on an H100: the
// training shapes) a pass crosses two cluster barriers and nothing else; otherwise the view's
// clusters (row groups, all resident at once) exchange their column sums as flag-tagged words
// (N 4096 x K 3000 would take the f16 cache in 8 clusters of 16, which an H200 cannot hold at
// once: no cluster plan there). With the f16 cache the last
// exact_passes updates and the targets read a split copy (f16 of E * 2^15 in shared memory
// plus f16 of the remainder in the workspace, ~22 significant bits) instead of recomputing E
// from the logits. Other bits than the default kernel
// (other summation order); the CPU twin mira_cluster_twin has its order. cluster_size: 0 (the
// plan picks) or a power of two up to 16. Opt-in (measured: docs/assignment.md).
// cluster_mma (the cluster plan with the f16 copy; MiraPlan::cluster_mma says whether it
// took): the updates on the f16 copy sweep it on tensor cores (mma.sync m16n8k16, f32
// accumulators), with the weights and the row inverses as B operands split into two f16
// halves (~22 significant bits) against a per-block power-of-two scale; a block falls back to
// the fused multiply-adds for a pass whose weights, or row inverses, span more than the
// halves hold (2^28). Other bits than the plan without it, as close to the f64 reference.
// mma_rows (Fused, f16 cache, exact_passes 0, K <= 3072, sm_80; MiraPlan::mma_rows says
// whether it took): kernels/cuda/mira_mmarows.cu, one block of up to 512 threads per SM whose
// warps own column tiles of 16; E stored in tiles of 16 x 16 in mma fragment order, each
// update's row sums and column sums one mma.sync m16n8k16 per tile against the weights / row
// inverses split into two f16 halves (~22 significant bits; f32 fused multiply-adds where
// their values span more than the halves hold). Other bits than the default kernel (other
// summation order), as close to the f64 reference as the f16 copy. batch_rows,
// min_cols_per_thread and blocks_per_sm do not apply; grid_sync does for f32 logits at K
// 2049-3072.
struct MiraPlanOptions {
  MiraCache cache = MiraCache::F32;
  int exact_passes = 0;
  MiraSchedule schedule = MiraSchedule::Auto;
  int batch_rows = 4;
  int min_cols_per_thread = 0;
  int blocks_per_sm = 0;
  bool cluster = false;
  int cluster_size = 0;
  bool cluster_mma = false;
  bool mma_rows = false;
  // The default fused kernel at 8 columns per thread in 2-row batches, f32 logits, the f16
  // or f32 copy (and the f16 copy's packed 4-row batches, batch_rows 8: a ring of 8 rows),
  // with the plan's automatic barriers or cooperative ones: the block's rows in
  // the workspace staged through shared memory (mira_assign.cu, update_rows_staged). Each
  // thread copies its own columns of the next batch with cp.async into a ring of 2 batches
  // taken from the rows the block would keep in shared memory, so that their latency overlaps
  // the batch before, with no registers waiting on them (loading them into registers instead,
  // session 18's rows_ahead, spilled and measured slower; removed). The same bits.
  // Elsewhere (no rows in the workspace, no other kernel) MiraPlan::stage_rows stays 0.
  // Opt-in: not yet measured.
  bool stage_rows = false;
  // For measurements (bench rows "smemN"): at most this many rows of E per block kept in shared
  // memory (rounded down to whole batches), the rest read from the workspace, with the plan's
  // shared memory and blocks unchanged; -1: as many as fit. The default column kernels (not
  // mma_rows or the cluster plan). The same bits.
  int max_smem_rows = -1;
  // The default fused kernel at 8 columns per thread in 2-row batches, f32 logits, the f16 or
  // f32 copy (and the f16 copy's packed 4-row batches, batch_rows 8), one launch (Fused, not
  // PerPass), with the plan's automatic barriers or cooperative ones (the packed batches: or
  // per-view counters), rows not staged: each block adds its partial column sums into the
  // pass's sums with vector float atomics (red.global.add.v4.f32 on sm_90; four scalar ones
  // before) instead of storing them for a column reduction between two grid barriers. One
  // grid barrier per pass instead of two, and no reduction phase; the weights then take the
  // largest sum with a block reduction. The order of the additions varies from run to run, so
  // the targets are not bitwise reproducible (within f32 rounding of the deterministic
  // kernel's). Elsewhere MiraPlan::atomic_sums stays false. Opt-in: not yet measured.
  bool atomic_sums = false;
  // The default fused kernel (one launch): its grid barriers after the first as counter
  // barriers (kernels/cuda/grid_sync.cuh) instead of cooperative groups'. ViewCounter /
  // ViewCounterStagger: a counter per view group, so that views side by side never wait for
  // each other (kernels only for 8 columns per thread at two blocks per SM, where each SM
  // holds a block of each view; else cooperative barriers); Stagger makes their passes
  // alternate (mira_fused.cuh, fused_view_stagger). The same bits. Auto (the default): the
  // per-view counters where they measured faster, for the f16 copy plain and for the f32 copy
  // staggered (plan_model::auto_barrier; 1-2.5 % on an H200, bench/RESULTS.md session 19),
  // else cooperative barriers. Counter and ClusterCounter (one counter for the whole grid, per
  // block or per cluster) are the probe's only (bench/mira_assign --probe-sync): as the fused
  // kernels' barriers they measured no faster, and mira_plan refuses them.
  GridSync grid_sync = GridSync::Auto;
};

// Plans for the current device. Fused and PerPass need K <= 12288 (else use Unfused).
MiraPlan mira_plan(const MiraProblem& p, MiraVariant variant, const MiraPlanOptions& opts = {});
// Can the fused / per-pass kernel take this K? (K <= 12288: 768 threads x 16 columns)
bool mira_fused_supports(int K);
// Does every SM of `device` get a row tile of 16 from the tensor-core updates
// (MiraPlanOptions::mma_rows): V ceil(N / 16) >= SMs? Where not, they ran slower than the
// default kernel (an H200, N 64 and 256: 0.30-0.33 against 0.20 ms; bench/RESULTS.md, session
// 17), so the engine's op asks for them only where this holds.
bool mira_mma_rows_fill(const MiraProblem& p, int device);

// Fused and Unfused: the whole assignment of every view, on `stream`. The workspace must hold
// plan.workspace_bytes and stay untouched until the work completes.
void mira_assign_cuda(const MiraProblem& p, const MiraPlan& plan, void* workspace, cudaStream_t stream);

// PerPass: pass 0 (E, initial update) .. iters (updates) and iters + 1 (targets). After every
// pass p <= iters, sum mira_reduce_buffer over ranks (mira_reduce_len(plan, p) floats,
// device memory) before launching pass p + 1.
void mira_assign_pass_cuda(const MiraProblem& p, const MiraPlan& plan, int pass, void* workspace, cudaStream_t stream);
float* mira_reduce_buffer(const MiraPlan& plan, void* workspace);
int64_t mira_reduce_len(const MiraProblem& p, const MiraPlan& plan, int pass);

// The cluster plan's primitives on this device (bench/mira_assign --probe-cluster): clock64
// cycles per cluster barrier and per dependent DSMEM load in a cluster of `size` blocks (the
// slowest block's mean over `iters`), and how many such clusters of one ~200 KB block per SM
// run at once; all 0 where the device has no clusters of that size. scratch: device memory of
// 2 * size long longs.
struct ClusterProbe {
  int size = 0;
  double barrier_cycles = 0, dsmem_cycles = 0;
  int active = 0;
};
ClusterProbe mira_cluster_probe(int size, int iters, long long* scratch);

// The tensor-core primitives as the sweeps address them (sm_80 and later), for the tests: A,
// At (A transposed) 16 x 16 and B 16 x 8, row-major f16 in device memory; out (384 floats of
// device memory) gets D = A B (16 x 8, row-major) three times: through ldmatrix of A, as the
// cluster plan's row sums load E; through ldmatrix.trans of At, as its column sums do; and
// through ldmatrix of At with its fragments transposed by movmatrix, as the tensor-core
// updates' column sums transpose E's (kernels/cuda/mira_mmarows.cu).
void mira_mma_selftest(const void* A, const void* At, const void* B, float* out, cudaStream_t stream);

// Number of non-finite logits seen (a float in device memory, exact up to 2^24; in the reduce
// buffer, so after pass 0's all-reduce it counts every rank). Valid once pass 0 has run.
const float* mira_nonfinite_count(const MiraPlan& plan, const void* workspace);

// ---- statistics (collapse monitoring), one view
// sums: (2K) f64 out: sum_i T_ij, then sum_i -T_ij log T_ij per column. scratch: stats_scratch_bytes.
size_t assign_stats_scratch_bytes(int N, int K);
void assign_stats_sums_cuda(const float* targets, int N, int K, double* sums, void* scratch, cudaStream_t stream);
// max_ij |T_ij - w_j E_ij / sum_l w_l E_il| with E recomputed from the logits; w: (K) f32 KKT
// weights (wbar^a, see mira_weights_from_mass); out: one f32, overwritten.
void mira_kkt_cuda(const void* logits, bool logits_bf16, const float* targets, const float* w, int N, int K,
                   float tau_t, float beta, float* out, cudaStream_t stream);

// ---- Sinkhorn-Knopp (log domain), one view; x = L / eps.
// lse: (K) out, log-sum-exp over this rank's rows of x_ij + f_i (f: (N) or null for 0); also
// copied to lse_copy when not null (the multi-rank merge needs two). neg = true writes -lse
// instead (one rank: that is g). nonfinite: float counter to add to, or null.
size_t sinkhorn_scratch_bytes(int N, int K);
void sinkhorn_col_lse_cuda(const void* logits, bool logits_bf16, const float* f, float* lse, float* lse_copy, bool neg,
                           int N, int K, float inv_eps, float* nonfinite, void* scratch, cudaStream_t stream);
// Multi-rank merge of per-rank column LSEs: with M = max over ranks of lse (all-reduced),
// e = exp(lse - M) (then all-reduced by sum), g = -(M + log e).
void sinkhorn_lse_shift_cuda(const float* lse, const float* M, float* e, int K, cudaStream_t stream);
void sinkhorn_lse_finish_cuda(const float* M, const float* e, float* g, int K, cudaStream_t stream);
// f_i = -LSE_j(x_ij + g_j)
void sinkhorn_row_cuda(const void* logits, bool logits_bf16, const float* g, float* f, int N, int K, float inv_eps,
                       cudaStream_t stream);
// targets_i = softmax_j(x_ij + g_j)
void sinkhorn_targets_cuda(const void* logits, bool logits_bf16, const float* g, float* targets, int N, int K,
                           float inv_eps, cudaStream_t stream);

}  // namespace mira::cuda

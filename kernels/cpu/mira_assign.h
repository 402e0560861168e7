// The MIRA assignment (paper Eq. 4-7, official fixed-point iteration) and the Sinkhorn-Knopp
// baseline (SwAV) on the CPU. These are the reference every CUDA variant is tested against and
// the no-GPU backend. T (float or double) is the type of logits and targets; everything that
// is summed or exponentiated across a row or a column is carried in double.
//
// MIRA, as the official code runs it, with P = softmax(L / (tau_t (1 - beta))), a = -beta/(1-beta):
//   c = colsum(P)            (all-reduced),  v = (c / N)^(1 - beta)             [update from u = 1]
//   iters times: c_j = sum_i P_ij / sum_l v_l^a P_il (all-reduced), v = (c / N)^(1 - beta)
//   T_ij = v_j^a P_ij / sum_l v_l^a P_il
// What this file does instead, each step identical in exact arithmetic:
// - The weight v^a = (c/N)^(-beta) is formed directly from c (no pow of a pow), and rescaled so
//   the most popular column gets weight 1: w_j = (c_j / max c)^(-beta) >= 1. T is invariant to
//   scaling w, so nothing changes, but then every row sum r_i >= 1 (its argmax column has
//   P = 1 below and w >= 1), no division by zero can occur and 1/r stays normal.
// - P is kept unnormalised, E_ij = exp((L_ij - max_l L_il) / tau'), with row maximum exactly 1:
//   the row normalisation of P cancels in P_ij / r_i, so E gives the same c and T.
// - A column with zero mass (c_j = 0: E underflowed to 0 in every row, as for logits of -100
//   against +100 at small tau) gets weight 0 instead of (0)^(-beta) = inf; its E entries are 0,
//   so the official code would produce inf * 0 = NaN there, and the limit of the exact problem
//   as that column's mass goes to 0 is zero weight.
// - Weights are capped at 2^(1020 - ceil(log2 K)) so K of them still sum to a finite double; the
//   cap binds only when column masses differ by more than ~1e300, far beyond anything a finite
//   f32 logit produces at tau' >= 0.01.
// Multi-process: each rank holds its own rows; the K-length column sums are summed over ranks
// through `AssignReduce` before every weight update (a null reduce means one process).
//
// Sinkhorn-Knopp (SwAV's distributed_sinkhorn: Q = exp(L/eps), normalise prototypes to 1/K and
// samples to 1/B alternately, `iters` times, rows of the result sum to 1) runs in the log
// domain with potentials f (per sample) and g (per prototype): the same sequence of
// normalisations, but finite for any finite logits (exp(L/eps) overflows f32 at L/eps > 88).
#pragma once

#include <cmath>
#include <cstdint>

namespace mira::cpu {

// Sums (and maxima) over ranks of host double buffers, in place; every rank must call them in
// the same order. A null pointer, or null members, mean one process.
struct AssignReduce {
  void (*sum)(double* data, int64_t n, void* ctx) = nullptr;
  void (*max)(double* data, int64_t n, void* ctx) = nullptr;
  void* ctx = nullptr;
};

// log2 of the largest column weight: K weights of at most this size sum to at most 2^log2_max.
inline double mira_weight_log2_cap(int64_t K, double log2_max) {
  return log2_max - std::ceil(std::log2(static_cast<double>(K > 1 ? K : 1)));
}

// Column weights from column masses x (>= 0), w_j = (x_j / max x)^exponent with exponent <= 0,
// so w >= 1; 0 where x_j = 0 (a column with no mass keeps none); capped at 2^log2_cap.
// exponent = -beta gives the iteration's v^a from column sums c; exponent = -beta/(1-beta) gives
// wbar^a (the KKT weights) from the marginal.
void mira_weights_from_mass(const double* x, double* w, int64_t K, double exponent, double log2_cap);

// The working copy of E during the iteration (the CUDA kernels' MiraCache; CPU twin here).
// Exact keeps E as T. BF16 rounds each E_ij to bf16 (8 significant bits, f32's exponent
// range); F16 rounds E_ij * 2^15 to f16 (11 significant bits for E >= 2^-29, fewer below,
// 0 below 2^-40). The rounded copy serves the initial update and all but the last
// `exact_passes` updates; those, and the targets, use exact E. The iteration contracts, so
// each exact update shrinks the rounding's effect on the targets (by ~2-3x per update at N
// 4096, K 3000: docs/assignment.md); the GPU keeps a 16-bit copy on chip where f32 does not fit.
enum class WorkingCopy { Exact, BF16, F16 };
struct MiraNumerics {
  WorkingCopy copy = WorkingCopy::Exact;
  int exact_passes = 0;  // >= 0; clipped to iters
};
// x rounded as the working copy holds it (x in [0, 1]; Exact: x itself).
float working_copy_round(float x, WorkingCopy copy);

// The CPU twin of the CUDA cluster plan (kernels/cuda/mira_cluster.cu, MiraPlan::cluster): f32
// logits and targets, and the kernel's f32 operations in its order (fused multiply-adds where it
// has them) for its launch shape (plan_model::cluster_layout): clusters of `size` blocks owning
// `cols` columns each, over `rows` rows each (groups of rows; 0: all N), `subsets` row subsets
// in the column sums. Weights as the kernel forms them: (c_j / max c)^(-beta), capped at
// 2^(124 - ceil(log2 K)) (2^(109 - ...) with the f16 copy). copy: Exact (the f32 cache) or
// F16, with the last exact_passes updates and the targets, as MiraNumerics, on the kernel's
// split copy (f16 of E * 2^15 plus f16 of the remainder: ~22 significant bits). Only
// exp2f and log2f may differ from the GPU's by an ulp or two, so the two agree to within the
// f32 rounding of E.
// mma_chunks > 0 (F16 only): the kernel's tensor-core sweeps (MiraPlanOptions::cluster_mma)
// on the f16 copy, with the row chunks of its column sums (plan_model::cluster_layout), and the
// CUDA emulator's order inside an mma (tests/cuda_emu/cuda_emu.h: the products in k order).
struct ClusterTwinShape {
  int size = 1, cols = 4, subsets = 1, rows = 0, mma_chunks = 0;
};
void mira_cluster_twin(const float* logits, float* targets, int64_t N, int64_t K, float tau_t, float beta, int iters,
                       const ClusterTwinShape& shape, const MiraNumerics& num = {});

// Doubles of workspace the functions below need.
int64_t mira_assign_work_size(int64_t N, int64_t K);      // 2K + 1
int64_t sinkhorn_assign_work_size(int64_t N, int64_t K);  // N + 3K + 1
int64_t assign_stats_work_size(int64_t N, int64_t K);     // 2K + 1

// MIRA targets. logits: (N, K) this rank's rows; targets: (N, K), may not alias logits (it holds
// E during the iteration); work: mira_assign_work_size doubles. iters >= 0 is the official
// `iters` (the number of updates after the initial one). Throws mira::Error for a non-finite
// logit on any rank (collectively, so no rank is left waiting in a reduction). num: the
// working copy (default exact).
template <typename T>
void mira_assign_fwd(const T* logits, T* targets, int64_t N, int64_t K, double tau_t, double beta, int iters,
                     double* work, const AssignReduce* reduce = nullptr, const MiraNumerics& num = {});

// Sinkhorn-Knopp targets; logits, targets: (N, K), rows of targets sum to 1; iters >= 1
// (SwAV uses eps = 0.05, 3 iterations); work: sinkhorn_assign_work_size doubles.
template <typename T>
void sinkhorn_assign_fwd(const T* logits, T* targets, int64_t N, int64_t K, double eps, int iters, double* work,
                         const AssignReduce* reduce = nullptr);

// Collapse monitoring, over all ranks.
struct AssignStatsOut {
  double kkt_residual = NAN;    // max_ij |T_ij - normalise_i(wbar^a * P)_j|; NaN when not asked for
  double target_entropy = 0;    // mean_i H(T_i), nats
  double marginal_entropy = 0;  // H(wbar), nats; log K at equipartition
};

// wbar: (K) out, mean_i T_ij over all ranks. The KKT residual of MIRA's condition (paper Eq. 5)
// needs the logits and (tau_t, beta); pass logits = nullptr to skip it (Sinkhorn).
// work: assign_stats_work_size doubles.
template <typename T>
void assign_stats(const T* logits, const T* targets, int64_t N, int64_t K, double tau_t, double beta, double* wbar,
                  double* work, AssignStatsOut* out, const AssignReduce* reduce = nullptr);

}  // namespace mira::cpu

// Assignment ops: MIRA's pseudo-labels (paper Eq. 4-7, the official fixed-point iteration) and
// the Sinkhorn-Knopp baseline of SwAV. Targets carry no gradient. Numerics, robustness and the
// GPU variants are explained in kernels/cpu/mira_assign.h and kernels/cuda/mira_assign.cuh;
// docs/assignment.md is the user-level account.
//
// Multi-process runs pass their Communicator: each rank holds its own rows, and the K-length
// column sums are summed over ranks before the loop and in every iteration (the logits are
// never gathered). Every rank must call the op with the same K, tau_t, beta and iters.
#pragma once

#include <string>
#include <vector>

#include "engine/comm.h"
#include "engine/tensor.h"

namespace mira {

// Over all ranks; for collapse monitoring (a collapsed assignment has a low marginal entropy).
struct AssignStats {
  Tensor wbar;                  // (K) f64 on the CPU: mean_i T_ij over the global batch
  double kkt_residual = 0;      // MIRA: max_ij |T_ij - normalise_i(wbar^a * P)_j|; Sinkhorn: NaN
  double target_entropy = 0;    // mean_i H(T_i), nats
  double marginal_entropy = 0;  // H(wbar), nats; log K at equipartition
};

// CUDA variant (kernels/cuda/mira_assign.cuh); the CPU path ignores it. Auto: Fused for one
// process, PerPass for several, Unfused where K is too large for either (K > 12288).
enum class AssignKernel { Auto, Fused, PerPass, Unfused };

// MIRA's working copy of E = exp((L - max) / tau') during the iteration
// (kernels/cpu/mira_assign.h): F32 exact; BF16 or F16 (E * 2^15) halve it, which lets the CUDA
// kernel keep all of it on chip where f32 does not fit, at ~2e-4 (bf16) or ~3e-5 (f16) absolute
// error in the targets; the last `exact_passes` updates go back to exact E and shrink that error
// (f16 with 3: within ~2x of the f32 kernel's own; docs/assignment.md). The CPU computes the same
// numerics (it rounds each E it reads), so results agree across devices, except where CUDA
// runs the unfused kernels (K > 12288, or asked for), which keep E in f32.
enum class AssignWorkingCopy { F32, BF16, F16 };
// "f32", "bf16" or "f16" (config key mira.working_copy, bench/mira_assign --working-copy);
// anything else throws mira::Error naming the value.
AssignWorkingCopy parse_assign_working_copy(const std::string& name);

struct AssignOptions {
  AssignKernel kernel = AssignKernel::Auto;
  AssignWorkingCopy working_copy = AssignWorkingCopy::F32;
  int exact_passes = 0;  // >= 0; with a 16-bit working copy, clipped to iters
  // CUDA, one process, f32 or f16 working copy: the cluster plan where it applies (sm_90;
  // kernels/cuda/mira_cluster.cu), else the default fused kernel. Other summation order, as
  // close to the reference. Opt-in: on an H200 faster only up to N 64 per view (bench/RESULTS.md,
  // session 15; config mira.assign_plan "cluster").
  bool cluster_plan = false;
  // With the cluster plan and the f16 working copy: its sweeps on tensor cores (MiraPlanOptions::
  // cluster_mma; config mira.assign_plan "cluster-mma"). Opt-in (measured: docs/assignment.md).
  bool cluster_mma = false;
  // CUDA, one process, the f16 working copy, no exact passes, K <= 3072, sm_80, and a row tile
  // of 16 for every SM (V ceil(N / 16) >= SMs): the updates on tensor cores
  // (MiraPlanOptions::mma_rows, kernels/cuda/mira_mmarows.cu), else the default fused kernel.
  // Other summation order, as close to the reference. Opt-in: on an H200 slower than the
  // default kernel with the f16 copy (bench/RESULTS.md, session 17; config mira.assign_plan
  // "mma-rows").
  bool mma_rows = false;
  // CUDA: read back the count of non-finite logits and throw if there are any. This
  // synchronises the stream once per call; turn it off while capturing a CUDA graph.
  bool check_finite = true;
};

// logits: (N, K) f32, f64 (CPU only) or bf16 -> targets (N, K), f64 for f64 logits, else f32,
// on the logits' device. tau_t > 0, beta in [0, 1), iters >= 0 (the official code uses 30).
// Throws mira::Error for bad arguments or a NaN / Inf logit on any rank.
Tensor mira_assign(const Tensor& logits, double tau_t, double beta, int iters, Communicator& comm = local_comm(),
                   AssignStats* stats = nullptr, const AssignOptions& opts = {});

// Several views (e.g. MIRA's two global crops) of the same shape, dtype and device, each with
// its own targets and column sums; on CUDA they share one launch. stats: one entry per view.
std::vector<Tensor> mira_assign(const std::vector<Tensor>& views, double tau_t, double beta, int iters,
                                Communicator& comm = local_comm(), std::vector<AssignStats>* stats = nullptr,
                                const AssignOptions& opts = {});

// SwAV's Sinkhorn-Knopp: eps > 0 (0.05), iters >= 1 (3). Rows of the result sum to 1.
Tensor sinkhorn_assign(const Tensor& logits, double eps = 0.05, int iters = 3, Communicator& comm = local_comm(),
                       AssignStats* stats = nullptr, const AssignOptions& opts = {});

}  // namespace mira

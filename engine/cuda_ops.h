// CUDA implementations of the engine's ops, on Tensors already validated and allocated by
// engine/ops.cpp (same meaning as the CPU kernels in kernels/cpu/, which are their test
// oracles). Defined in engine/cuda/ops_cuda.cpp; only called in CUDA builds.
// Float tensors are f32 or bf16 (compute and accumulation in f32); BN statistics, running
// statistics and reduction outputs are f32 tensors of shape (C).
#pragma once

#include "engine/tensor.h"
#include "kernels/cpu/conv.h"

namespace mira::cuda {

// cuDNN, NHWC, OHWI weights; algorithms chosen once per (shape, dtype, direction) and cached.
void conv2d_fwd(const ConvShape& s, const Tensor& x, const Tensor& w, Tensor& y);
void conv2d_bwd_data(const ConvShape& s, const Tensor& dy, const Tensor& w, Tensor& dx, bool accumulate);
void conv2d_bwd_filter(const ConvShape& s, const Tensor& dy, const Tensor& x, Tensor& dw, bool accumulate);

// cuBLAS; b and db may be undefined (no bias).
void linear_fwd(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
void linear_bwd_data(const Tensor& dy, const Tensor& w, Tensor& dx, bool accumulate);
void linear_bwd_weight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor& db, bool accumulate);

// Batch norm on x viewed as (M, C); mean/var/invstd/sums/running stats f32 (C).
void bn_stats(const Tensor& x, Tensor& mean, Tensor& var);
// running_mean / running_var may be undefined (eval mode: invstd only).
void bn_finalize(const Tensor& mean, const Tensor& var, Tensor& invstd, Tensor& running_mean, Tensor& running_var,
                 double momentum, double eps, double count);
// SyncBN: sums = 2C f64 values in device memory (the engine keeps no f64 tensors on CUDA: a
// byte buffer), M * mean and M * (var + mean^2); unpack: mean, var of `count` rows from them.
void bn_pack_sums(const Tensor& mean, const Tensor& var, double M, void* sums);
void bn_unpack_sums(const void* sums, double count, Tensor& mean, Tensor& var);
void bn_fwd_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& gamma,
                  const Tensor& beta, Tensor& y, bool relu = false);
// relu_y (defined for batch_norm_relu): the fused ReLU's output, masking dy.
void bn_bwd_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd, Tensor& sum_dy,
                   Tensor& sum_dy_xhat, const Tensor& relu_y = Tensor());
// sum_dy / sum_dy_xhat undefined: eval-mode backward.
void bn_bwd_apply(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& gamma,
                  const Tensor& sum_dy, const Tensor& sum_dy_xhat, double count, Tensor& dx, bool accumulate,
                  const Tensor& relu_y = Tensor());

void relu_fwd(const Tensor& x, Tensor& y);
void relu_bwd(const Tensor& dy, const Tensor& y, Tensor& dx, bool accumulate);
void add_relu_fwd(const Tensor& a, const Tensor& b, Tensor& y);
void add_fwd(const Tensor& a, const Tensor& b, Tensor& y);
// dx (+)= alpha * dy
void axpy(double alpha, const Tensor& dy, Tensor& dx, bool accumulate);
// y[0] = alpha * sum(x)  (y has one element, same dtype)
void sum(const Tensor& x, double alpha, Tensor& y);
// dx (+)= dy[0] * alpha
void broadcast_scalar_bwd(const Tensor& dy, double alpha, Tensor& dx, bool accumulate);

void maxpool_fwd(const Tensor& x, Tensor& y, int k, int s, int p);
void maxpool_bwd(const Tensor& dy, const Tensor& x, Tensor& dx, int k, int s, int p, bool accumulate);
void avgpool_fwd(const Tensor& x, Tensor& y);
void avgpool_bwd(const Tensor& dy, Tensor& dx, bool accumulate);

void l2norm_fwd(const Tensor& x, Tensor& y, Tensor& norm, double eps);
void l2norm_bwd(const Tensor& dy, const Tensor& y, const Tensor& norm, Tensor& dx, double eps, bool accumulate);
void log_softmax_fwd(const Tensor& x, Tensor& y);
void log_softmax_bwd(const Tensor& dy, const Tensor& y, Tensor& dx, bool accumulate);
// loss_rows (N) and lse (N) are f32.
void soft_ce_fwd(const Tensor& z, const Tensor& t, Tensor& loss_rows, Tensor& lse);
void soft_ce_bwd(const Tensor& z, const Tensor& t, const Tensor& lse, const Tensor& dloss, double alpha, Tensor& dz,
                 bool accumulate);

}  // namespace mira::cuda

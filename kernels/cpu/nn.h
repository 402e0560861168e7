// CPU kernels for the layers of ResNet and the MIRA heads (twins of kernels/cuda/nn.cu).
// T is float or double; statistics accumulate in double. Backward kernels take `accumulate`
// (true adds into the gradient buffer, false overwrites it).
#pragma once

#include <cstdint>

namespace mira::cpu {

// ---- linear: y (N, O) = x (N, I) w^T, w (O, I), optional bias b (O)
template <typename T>
void linear_fwd(const T* x, const T* w, const T* b, T* y, int N, int I, int O);
template <typename T>
void linear_bwd_data(const T* dy, const T* w, T* dx, int N, int I, int O, bool accumulate);
// dw (O, I); db (O) or null
template <typename T>
void linear_bwd_weight(const T* dy, const T* x, T* dw, T* db, int N, int I, int O, bool accumulate);

// ---- batch norm over rows: x (M, C), M = N*H*W for NHWC images or N for features.
// Batch mean and biased variance per channel (C), two passes accumulated in double.
template <typename T>
void bn_stats(const T* x, int64_t M, int C, T* mean, T* var);
// invstd = 1 / sqrt(var + eps); when running stats are given (training), PyTorch's update:
// running = (1 - momentum) * running + momentum * batch, with the variance made unbiased by
// count / (count - 1). All (C).
template <typename T>
void bn_finalize(const T* mean, const T* var, T* invstd, T* running_mean, T* running_var, int C, double momentum,
                 double eps, double count);
// Synchronised BN: a rank's (mean, var) over M rows -> sums (2C, f64): M * mean and
// M * (var + mean^2); and back: mean and (biased, clamped at 0) var of `count` rows from the
// sums over every rank.
template <typename T>
void bn_pack_sums(const T* mean, const T* var, double M, int C, double* sums);
template <typename T>
void bn_unpack_sums(const double* sums, double count, int C, T* mean, T* var);
// y = (x - mean) * invstd * gamma + beta; relu: then y = y <= 0 ? 0 : y (NaN kept, as relu_fwd)
template <typename T>
void bn_fwd_apply(const T* x, const T* mean, const T* invstd, const T* gamma, const T* beta, T* y,
                  int64_t M, int C, bool relu = false);
// sum_dy[c] = sum dy, sum_dy_xhat[c] = sum dy * (x - mean) * invstd
template <typename T>
// relu_y (optional, batch_norm_relu): the fused ReLU's output; dy counts only where it is > 0.
void bn_bwd_reduce(const T* dy, const T* x, const T* mean, const T* invstd, int64_t M, int C,
                   T* sum_dy, T* sum_dy_xhat, const T* relu_y = nullptr);
// Training mode (sums given, count = rows over all ranks):
//   dx = gamma * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)
// Eval mode (sums null): dx = gamma * invstd * dy.
template <typename T>
void bn_bwd_apply(const T* dy, const T* x, const T* mean, const T* invstd, const T* gamma,
                  const T* sum_dy, const T* sum_dy_xhat, double count, T* dx, int64_t M, int C,
                  bool accumulate, const T* relu_y = nullptr);

// ---- pooling, NHWC
// Max pool with window k, stride s, padding p (padding never wins: it is -inf).
// x: (N, H, W, C); y: (N, P, Q, C)
template <typename T>
void maxpool_fwd(const T* x, T* y, int N, int H, int W, int C, int k, int s, int p, int P, int Q);
// Routes dy to the first maximum of each window (PyTorch's choice for ties).
template <typename T>
void maxpool_bwd(const T* dy, const T* x, T* dx, int N, int H, int W, int C, int k, int s, int p, int P, int Q,
                 bool accumulate);
// Global average pool: x (N, H, W, C) -> y (N, C)
template <typename T>
void avgpool_fwd(const T* x, T* y, int N, int HW, int C);
template <typename T>
void avgpool_bwd(const T* dy, T* dx, int N, int HW, int C, bool accumulate);

// ---- row L2 normalisation: y = x / max(||x||, eps) (torch.nn.functional.normalize)
// x, y: (N, D); norm: (N) saved for the backward
template <typename T>
void l2norm_fwd(const T* x, T* y, T* norm, int N, int D, double eps);
template <typename T>
void l2norm_bwd(const T* dy, const T* y, const T* norm, T* dx, int N, int D, double eps, bool accumulate);

// ---- softmax family over rows of (N, K)
template <typename T>
void log_softmax_fwd(const T* x, T* y, int N, int K);
// dx = dy - softmax * rowsum(dy), softmax = exp(y)
template <typename T>
void log_softmax_bwd(const T* dy, const T* y, T* dx, int N, int K, bool accumulate);
// Soft-target cross-entropy per row: loss_i = -sum_j t_ij log_softmax(z_i)_j; lse (N) saved.
template <typename T>
void soft_ce_fwd(const T* z, const T* t, T* loss_rows, T* lse, int N, int K);
// dz = dloss[0] * alpha * (softmax(z) * sum_j t_ij - t); alpha = 1/N for the batch mean.
// dloss is one element (on the device in the CUDA twin, so no host round trip).
template <typename T>
void soft_ce_bwd(const T* z, const T* t, const T* lse, const T* dloss, T alpha, T* dz, int N, int K,
                 bool accumulate);

}  // namespace mira::cpu

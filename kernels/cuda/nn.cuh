// CUDA kernels for the layers of ResNet and the MIRA heads: twins of kernels/cpu/nn.h (linear
// itself is cuBLAS, in engine/cuda/ops_cuda.cpp; its bias add and bias gradient are here).
// T is float or __nv_bfloat16 for activations and their gradients; arithmetic is f32, and
// per-channel / per-row statistics (mean, var, invstd, gamma, beta, sums, norms, lse, losses)
// are f32. Backward kernels take `accumulate` (true adds into the gradient, false overwrites).
// Column reductions over (M, C) take a device workspace sized by the *_workspace_bytes helper;
// they use no atomics and a launch shape that depends only on (M, C), so results are bitwise
// reproducible on every GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace mira::gpu {

// ---- linear helpers. y: (N, O), b: (O) of type B (f32 or T)
template <typename T, typename B>
void bias_add(T* y, const B* b, int64_t N, int O, cudaStream_t stream);
// db (O) (+)= sum over rows of dy (N, O), accumulated in f32 per thread and double across threads.
size_t col_sum_workspace_bytes(int64_t N, int O);
template <typename T, typename D>
void col_sum(const T* dy, int64_t N, int O, D* db, bool accumulate, void* workspace, cudaStream_t stream);

// ---- batch norm over rows: x (M, C), M = N*H*W (NHWC images) or N (features).
size_t bn_workspace_bytes(int64_t M, int C);
// Vectorised batch-norm kernels (16-byte accesses; see nn.cu for when they apply): on by default
// (measured faster on an H200, bench/RESULTS.md); MIRA_BN_VEC=0 or set_bn_vectorized(false)
// turns them off.
void set_bn_vectorized(bool on);
bool bn_vectorized();
// Batch mean and biased variance per channel (C). Shifted sums (shift = the first row) per
// thread in f32, combined across threads and blocks in double.
template <typename T>
void bn_stats(const T* x, int64_t M, int C, float* mean, float* var, void* workspace, cudaStream_t stream);
// invstd = 1/sqrt(var + eps); running stats (may be null) updated with PyTorch's rule and the
// unbiased variance var * count / (count - 1). All (C), computed in double.
void bn_finalize(const float* mean, const float* var, float* invstd, float* running_mean, float* running_var, int C,
                 double momentum, double eps, double count, cudaStream_t stream);
// SyncBN (twins of kernels/cpu/nn.h): (mean, var) of M rows <-> f64 sums (2C).
void bn_pack_sums(const float* mean, const float* var, double M, int C, double* sums, cudaStream_t stream);
void bn_unpack_sums(const double* sums, double count, int C, float* mean, float* var, cudaStream_t stream);
// y = (x - mean) * invstd * gamma + beta; relu: then y <= 0 ? 0 : y (NaN kept)
template <typename T>
void bn_fwd_apply(const T* x, const float* mean, const float* invstd, const float* gamma, const float* beta, T* y,
                  int64_t M, int C, cudaStream_t stream, bool relu = false);
// sum_dy[c] = sum dy, sum_dy_xhat[c] = sum dy * (x - mean) * invstd
template <typename T>
// relu_y (optional, batch_norm_relu): the fused ReLU's output; dy counts only where it is > 0.
void bn_bwd_reduce(const T* dy, const T* x, const float* mean, const float* invstd, int64_t M, int C, float* sum_dy,
                   float* sum_dy_xhat, void* workspace, cudaStream_t stream, const T* relu_y = nullptr);
// Training (sums given): dx = gamma * invstd * (dy - sum_dy/count - xhat * sum_dy_xhat/count);
// eval (sums null): dx = gamma * invstd * dy.
template <typename T>
void bn_bwd_apply(const T* dy, const T* x, const float* mean, const float* invstd, const float* gamma,
                  const float* sum_dy, const float* sum_dy_xhat, double count, T* dx, int64_t M, int C,
                  bool accumulate, cudaStream_t stream, const T* relu_y = nullptr);

// ---- pooling, NHWC. x: (N, H, W, C); y: (N, P, Q, C); padding is -inf.
template <typename T>
void maxpool_fwd(const T* x, T* y, int N, int H, int W, int C, int k, int s, int p, int P, int Q,
                 cudaStream_t stream);
// Gathers, without atomics: each input element adds dy of every window whose first maximum
// it is (PyTorch's choice for ties, the CPU twin's rule), in window order.
template <typename T>
void maxpool_bwd(const T* dy, const T* x, T* dx, int N, int H, int W, int C, int k, int s, int p, int P, int Q,
                 bool accumulate, cudaStream_t stream);
// ---- convolution as a matrix product (engine/cuda/ops_cuda.cpp's GEMM path for small maps).
// cols: (N*P*Q, R*S*C) row-major, column (r * S + s) * C + c: the OHWI filters (K, R*S*C) times
// it is the convolution; zero where the window reads padding.
template <typename T>
void im2col(const T* x, int N, int H, int W, int C, int R, int S, int stride, int pad, int P, int Q, T* cols,
            cudaStream_t stream);
// dx (N, H, W, C) (+)= for each element, the sum over the (r, s) that read it of dcols (f32,
// laid out as cols), in (r, s) order: a gather, no atomics.
template <typename T>
void col2im(const float* dcols, int N, int H, int W, int C, int R, int S, int stride, int pad, int P, int Q, T* dx,
            bool accumulate, cudaStream_t stream);

// Global average pool: x (N, HW, C) -> y (N, C)
template <typename T>
void avgpool_fwd(const T* x, T* y, int N, int HW, int C, cudaStream_t stream);
template <typename T>
void avgpool_bwd(const T* dy, T* dx, int N, int HW, int C, bool accumulate, cudaStream_t stream);

// ---- rows of (N, D): y = x / max(||x||, eps); norm (N) f32 saved for the backward.
template <typename T>
void l2norm_fwd(const T* x, T* y, float* norm, int N, int D, double eps, cudaStream_t stream);
template <typename T>
void l2norm_bwd(const T* dy, const T* y, const float* norm, T* dx, int N, int D, double eps, bool accumulate,
                cudaStream_t stream);

// ---- softmax family over rows of (N, K)
template <typename T>
void log_softmax_fwd(const T* x, T* y, int N, int K, cudaStream_t stream);
// dx = dy - exp(y) * rowsum(dy)
template <typename T>
void log_softmax_bwd(const T* dy, const T* y, T* dx, int N, int K, bool accumulate, cudaStream_t stream);
// loss_rows (N) = -sum_j t_ij log_softmax(z_i)_j, lse (N); z (N, K) of T, t (N, K) of TT.
template <typename T, typename TT>
void soft_ce_fwd(const T* z, const TT* t, float* loss_rows, float* lse, int N, int K, cudaStream_t stream);
// dz = dloss[0] * alpha * (softmax(z) * sum_j t_ij - t); dloss one f32 element on the device.
template <typename T, typename TT>
void soft_ce_bwd(const T* z, const TT* t, const float* lse, const float* dloss, float alpha, T* dz, int N, int K,
                 bool accumulate, cudaStream_t stream);

}  // namespace mira::gpu

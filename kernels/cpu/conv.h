// 2-D convolution on the CPU, NHWC activations and OHWI (K, R, S, C) weights: im2col of a group
// of images into a (G*P*Q, R*S*C) matrix, then one GEMM per group (groups of about 1 MiB: the
// matrix stays in cache between im2col and the GEMM, see conv2d_group). 1x1 stride-1 unpadded convs
// (half of ResNet-50's) skip im2col: the batch already is that matrix. Twin of the cuDNN path.
// Groups (row chunks for 1x1) are the tasks of the CPU thread pool (kernels/cpu/parallel.h); the
// filter gradient sums them into up to 8 partial sums, added in a fixed order: the same bits for
// any number of threads.
#pragma once

#include <cstdint>

namespace mira {

struct ConvShape {
  int N = 0, H = 0, W = 0, C = 0;  // input
  int K = 0, R = 0, S = 0;         // filters (K, R, S, C)
  int stride = 1, pad = 0;
  int P = 0, Q = 0;  // output height, width
  static ConvShape make(int N, int H, int W, int C, int K, int R, int S, int stride, int pad) {
    ConvShape s{N, H, W, C, K, R, S, stride, pad, 0, 0};
    s.P = (H + 2 * pad - R) / stride + 1;
    s.Q = (W + 2 * pad - S) / stride + 1;
    return s;
  }
  bool is_pointwise() const { return R == 1 && S == 1 && stride == 1 && pad == 0; }
};

namespace cpu {

// Images per im2col group: as many as fit a 1 MiB (f32) matrix, at least 1. Depends on the
// shape only, so results do not depend on anything else.
int conv2d_group(const ConvShape& s);
// Scratch the caller provides (elements of T), for parallel_workers() at the time of the call:
// one group's im2col matrix per worker (0 for pointwise) for the forward and data gradient; the
// filter gradient also holds up to 7 partial sums of the filter's size.
int64_t conv2d_workspace_elems(const ConvShape& s);
int64_t conv2d_bwd_filter_workspace_elems(const ConvShape& s);

// x: (N, H, W, C); w: (K, R, S, C); y: (N, P, Q, K)
template <typename T>
void conv2d_fwd(const ConvShape& s, const T* x, const T* w, T* y, T* workspace);
// dy: (N, P, Q, K); w: (K, R, S, C); dx: (N, H, W, C)
template <typename T>
void conv2d_bwd_data(const ConvShape& s, const T* dy, const T* w, T* dx, T* workspace, bool accumulate);
// dy: (N, P, Q, K); x: (N, H, W, C); dw: (K, R, S, C)
template <typename T>
void conv2d_bwd_filter(const ConvShape& s, const T* dy, const T* x, T* dw, T* workspace, bool accumulate);

}  // namespace cpu
}  // namespace mira

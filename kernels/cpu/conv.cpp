#include "kernels/cpu/conv.h"

#include <cstring>

#include "kernels/cpu/gemm.h"

namespace mira::cpu {

int64_t conv2d_workspace_elems(const ConvShape& s) {
  return s.is_pointwise() ? 0 : static_cast<int64_t>(s.P) * s.Q * s.R * s.S * s.C;
}

namespace {

// One image (H, W, C) -> col (P*Q, R*S*C), zeros where the window hangs over the border.
template <typename T>
void im2col(const ConvShape& s, const T* x, T* col) {
  const int64_t row = static_cast<int64_t>(s.R) * s.S * s.C;
  for (int p = 0; p < s.P; ++p) {
    for (int q = 0; q < s.Q; ++q) {
      T* out = col + (static_cast<int64_t>(p) * s.Q + q) * row;
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        for (int t = 0; t < s.S; ++t) {
          const int w = q * s.stride - s.pad + t;
          T* dst = out + (static_cast<int64_t>(r) * s.S + t) * s.C;
          if (h < 0 || h >= s.H || w < 0 || w >= s.W) {
            std::memset(dst, 0, sizeof(T) * s.C);
          } else {
            std::memcpy(dst, x + (static_cast<int64_t>(h) * s.W + w) * s.C, sizeof(T) * s.C);
          }
        }
      }
    }
  }
}

// Adds col (P*Q, R*S*C) back into one image (H, W, C).
template <typename T>
void col2im_add(const ConvShape& s, const T* col, T* x) {
  const int64_t row = static_cast<int64_t>(s.R) * s.S * s.C;
  for (int p = 0; p < s.P; ++p) {
    for (int q = 0; q < s.Q; ++q) {
      const T* in = col + (static_cast<int64_t>(p) * s.Q + q) * row;
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        if (h < 0 || h >= s.H) continue;
        for (int t = 0; t < s.S; ++t) {
          const int w = q * s.stride - s.pad + t;
          if (w < 0 || w >= s.W) continue;
          const T* src = in + (static_cast<int64_t>(r) * s.S + t) * s.C;
          T* dst = x + (static_cast<int64_t>(h) * s.W + w) * s.C;
          for (int c = 0; c < s.C; ++c) dst[c] += src[c];
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void conv2d_fwd(const ConvShape& s, const T* x, const T* w, T* y, T* ws) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  if (s.is_pointwise()) {  // the whole batch is one (N*H*W, C) x (C, K) product
    gemm<T>(false, true, s.N * PQ, s.K, RSC, T(1), x, RSC, w, RSC, T(0), y, s.K);
    return;
  }
  for (int n = 0; n < s.N; ++n) {
    im2col(s, x + static_cast<int64_t>(n) * s.H * s.W * s.C, ws);
    gemm<T>(false, true, PQ, s.K, RSC, T(1), ws, RSC, w, RSC, T(0), y + static_cast<int64_t>(n) * PQ * s.K, s.K);
  }
}

template <typename T>
void conv2d_bwd_data(const ConvShape& s, const T* dy, const T* w, T* dx, T* ws, bool acc) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  if (s.is_pointwise()) {
    gemm<T>(false, false, s.N * PQ, RSC, s.K, T(1), dy, s.K, w, RSC, acc ? T(1) : T(0), dx, RSC);
    return;
  }
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C;
  if (!acc) std::memset(dx, 0, sizeof(T) * img * s.N);
  for (int n = 0; n < s.N; ++n) {
    gemm<T>(false, false, PQ, RSC, s.K, T(1), dy + static_cast<int64_t>(n) * PQ * s.K, s.K, w, RSC, T(0), ws, RSC);
    col2im_add(s, ws, dx + n * img);
  }
}

template <typename T>
void conv2d_bwd_filter(const ConvShape& s, const T* dy, const T* x, T* dw, T* ws, bool acc) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  if (s.is_pointwise()) {
    gemm<T>(true, false, s.K, RSC, s.N * PQ, T(1), dy, s.K, x, RSC, acc ? T(1) : T(0), dw, RSC);
    return;
  }
  for (int n = 0; n < s.N; ++n) {
    im2col(s, x + static_cast<int64_t>(n) * s.H * s.W * s.C, ws);
    const T beta = (acc || n > 0) ? T(1) : T(0);
    gemm<T>(true, false, s.K, RSC, PQ, T(1), dy + static_cast<int64_t>(n) * PQ * s.K, s.K, ws, RSC, beta, dw, RSC);
  }
}

#define MIRA_INST(T)                                                                     \
  template void conv2d_fwd<T>(const ConvShape&, const T*, const T*, T*, T*);             \
  template void conv2d_bwd_data<T>(const ConvShape&, const T*, const T*, T*, T*, bool);  \
  template void conv2d_bwd_filter<T>(const ConvShape&, const T*, const T*, T*, T*, bool);
MIRA_INST(float)
MIRA_INST(double)
#undef MIRA_INST

}  // namespace mira::cpu

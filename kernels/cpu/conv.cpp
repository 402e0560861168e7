#include "kernels/cpu/conv.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/isa.h"

namespace mira::cpu {

int conv2d_group(const ConvShape& s) {
  const int64_t per_image = static_cast<int64_t>(s.P) * s.Q * s.R * s.S * s.C;
  // 256 Ki elements (1 MiB of f32): the matrix stays in a core's L2 between im2col writing it
  // and the GEMM reading it. 16 MiB groups made it a round trip through DRAM: the tiny-ResNet
  // CPU step ran 20 % slower (bench/RESULTS.md, session 6).
  const int64_t budget = int64_t(256) << 10;  // elements
  const int64_t g = per_image > 0 ? budget / per_image : 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g, s.N)));
}

int64_t conv2d_workspace_elems(const ConvShape& s) {
  return s.is_pointwise() ? 0 : static_cast<int64_t>(conv2d_group(s)) * s.P * s.Q * s.R * s.S * s.C;
}

namespace {

// The filter taps t in [t0, t1) of output column q fall inside the image: for every filter row
// r they read one contiguous run of (t1 - t0) * C input values (consecutive taps are
// consecutive input pixels, whatever the stride), which im2col / col2im move as one span.
struct TapSpan {
  int w0, t0, t1;  // input column of tap 0; the valid taps
};
inline TapSpan tap_span(const ConvShape& s, int q) {
  const int w0 = q * s.stride - s.pad;
  return {w0, std::max(0, -w0), std::min(s.S, s.W - w0)};
}

// One image (H, W, C) -> col (P*Q, R*S*C), zeros where the window hangs over the border.
// Plain loops, not memcpy/memset: spans are 16..1536 values, where the library calls'
// overhead dominated (11 % of a tiny-ResNet step).
template <typename T>
MIRA_CPU_CLONES void im2col(const ConvShape& s, const T* x, T* col) {
  const int SC = s.S * s.C;
  const int64_t row = static_cast<int64_t>(s.R) * SC;
  for (int p = 0; p < s.P; ++p) {
    for (int q = 0; q < s.Q; ++q) {
      const TapSpan sp = tap_span(s, q);
      T* out = col + (static_cast<int64_t>(p) * s.Q + q) * row;
      for (int r = 0; r < s.R; ++r) {
        T* __restrict__ dst = out + static_cast<int64_t>(r) * SC;
        const int h = p * s.stride - s.pad + r;
        if (h < 0 || h >= s.H || sp.t1 <= sp.t0) {
          for (int i = 0; i < SC; ++i) dst[i] = T(0);
          continue;
        }
        const int lo = sp.t0 * s.C, hi = sp.t1 * s.C;
        const T* __restrict__ src = x + (static_cast<int64_t>(h) * s.W + sp.w0 + sp.t0) * s.C;  // tap t0's pixel
        for (int i = 0; i < lo; ++i) dst[i] = T(0);
        for (int i = lo; i < hi; ++i) dst[i] = src[i - lo];
        for (int i = hi; i < SC; ++i) dst[i] = T(0);
      }
    }
  }
}

// Adds col (P*Q, R*S*C) back into one image (H, W, C).
template <typename T>
MIRA_CPU_CLONES void col2im_add(const ConvShape& s, const T* col, T* x) {
  const int SC = s.S * s.C;
  const int64_t row = static_cast<int64_t>(s.R) * SC;
  for (int p = 0; p < s.P; ++p) {
    for (int q = 0; q < s.Q; ++q) {
      const TapSpan sp = tap_span(s, q);
      if (sp.t1 <= sp.t0) continue;
      const T* in = col + (static_cast<int64_t>(p) * s.Q + q) * row;
      const int lo = sp.t0 * s.C, hi = sp.t1 * s.C;
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        if (h < 0 || h >= s.H) continue;
        const T* __restrict__ src = in + static_cast<int64_t>(r) * SC;
        T* __restrict__ dst = x + (static_cast<int64_t>(h) * s.W + sp.w0 + sp.t0) * s.C;  // tap t0's pixel
        for (int i = lo; i < hi; ++i) dst[i - lo] += src[i];
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
  const int G = conv2d_group(s);
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C, col = static_cast<int64_t>(PQ) * RSC;
  for (int n0 = 0; n0 < s.N; n0 += G) {
    const int g = std::min(G, s.N - n0);
    for (int i = 0; i < g; ++i) im2col(s, x + (n0 + i) * img, ws + i * col);
    gemm<T>(false, true, g * PQ, s.K, RSC, T(1), ws, RSC, w, RSC, T(0), y + static_cast<int64_t>(n0) * PQ * s.K, s.K);
  }
}

template <typename T>
void conv2d_bwd_data(const ConvShape& s, const T* dy, const T* w, T* dx, T* ws, bool acc) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  if (s.is_pointwise()) {
    gemm<T>(false, false, s.N * PQ, RSC, s.K, T(1), dy, s.K, w, RSC, acc ? T(1) : T(0), dx, RSC);
    return;
  }
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C, col = static_cast<int64_t>(PQ) * RSC;
  if (!acc) std::memset(dx, 0, sizeof(T) * img * s.N);
  const int G = conv2d_group(s);
  for (int n0 = 0; n0 < s.N; n0 += G) {
    const int g = std::min(G, s.N - n0);
    gemm<T>(false, false, g * PQ, RSC, s.K, T(1), dy + static_cast<int64_t>(n0) * PQ * s.K, s.K, w, RSC, T(0), ws,
            RSC);
    for (int i = 0; i < g; ++i) col2im_add(s, ws + i * col, dx + (n0 + i) * img);
  }
}

template <typename T>
void conv2d_bwd_filter(const ConvShape& s, const T* dy, const T* x, T* dw, T* ws, bool acc) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  if (s.is_pointwise()) {
    gemm<T>(true, false, s.K, RSC, s.N * PQ, T(1), dy, s.K, x, RSC, acc ? T(1) : T(0), dw, RSC);
    return;
  }
  const int G = conv2d_group(s);
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C, col = static_cast<int64_t>(PQ) * RSC;
  for (int n0 = 0; n0 < s.N; n0 += G) {
    const int g = std::min(G, s.N - n0);
    for (int i = 0; i < g; ++i) im2col(s, x + (n0 + i) * img, ws + i * col);
    const T beta = (acc || n0 > 0) ? T(1) : T(0);
    gemm<T>(true, false, s.K, RSC, g * PQ, T(1), dy + static_cast<int64_t>(n0) * PQ * s.K, s.K, ws, RSC, beta, dw,
            RSC);
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

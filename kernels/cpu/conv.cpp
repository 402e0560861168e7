#include "kernels/cpu/conv.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/parallel.h"

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

namespace {

// Rows of a 1x1 stride-1 convolution's batch matrix per task: about 256 Ki elements of input
// and output together (the same budget as an im2col group), from the shape only.
int64_t pointwise_rows(const ConvShape& s) {
  const int64_t per_row = static_cast<int64_t>(s.C) + s.K;
  return std::max<int64_t>(1, (int64_t(256) << 10) / per_row);
}

// Tasks: im2col groups, or row chunks of a 1x1 convolution.
int64_t conv2d_tasks(const ConvShape& s) {
  if (s.is_pointwise()) {
    const int64_t M = static_cast<int64_t>(s.N) * s.P * s.Q, rows = pointwise_rows(s);
    return (M + rows - 1) / rows;
  }
  const int G = conv2d_group(s);
  return (s.N + G - 1) / G;
}

// The filter gradient's partial sums: task t adds into slot t % slots, each slot in task order,
// then the slots are added in order. A function of the shape only, like the tasks.
constexpr int64_t kFilterSlots = 8;
int64_t filter_slots(const ConvShape& s) {
  return std::min<int64_t>(kFilterSlots, conv2d_tasks(s));
}

int64_t group_elems(const ConvShape& s) {
  return static_cast<int64_t>(conv2d_group(s)) * s.P * s.Q * s.R * s.S * s.C;
}

}  // namespace

int64_t conv2d_workspace_elems(const ConvShape& s) {
  return s.is_pointwise() ? 0 : parallel_workers() * group_elems(s);
}

int64_t conv2d_bwd_filter_workspace_elems(const ConvShape& s) {
  return conv2d_workspace_elems(s) + (filter_slots(s) - 1) * static_cast<int64_t>(s.K) * s.R * s.S * s.C;
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
  if (s.is_pointwise()) {  // the batch is the (N*H*W, C) matrix: row chunks times (C, K)
    parallel_chunks(static_cast<int64_t>(s.N) * PQ, pointwise_rows(s), [&](int64_t, int64_t m0, int64_t m1) {
      gemm<T>(false, true, static_cast<int>(m1 - m0), s.K, RSC, T(1), x + m0 * RSC, RSC, w, RSC, T(0), y + m0 * s.K,
              s.K);
    });
    return;
  }
  const int G = conv2d_group(s);
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C, col = static_cast<int64_t>(PQ) * RSC;
  parallel_for(static_cast<int>(conv2d_tasks(s)), [&](int t, int worker) {
    const int n0 = t * G, g = std::min(G, s.N - n0);
    T* cols = ws + worker * group_elems(s);
    for (int i = 0; i < g; ++i) im2col(s, x + (n0 + i) * img, cols + i * col);
    gemm<T>(false, true, g * PQ, s.K, RSC, T(1), cols, RSC, w, RSC, T(0), y + static_cast<int64_t>(n0) * PQ * s.K, s.K);
  });
}

template <typename T>
void conv2d_bwd_data(const ConvShape& s, const T* dy, const T* w, T* dx, T* ws, bool acc) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  if (s.is_pointwise()) {
    parallel_chunks(static_cast<int64_t>(s.N) * PQ, pointwise_rows(s), [&](int64_t, int64_t m0, int64_t m1) {
      gemm<T>(false, false, static_cast<int>(m1 - m0), RSC, s.K, T(1), dy + m0 * s.K, s.K, w, RSC, acc ? T(1) : T(0),
              dx + m0 * RSC, RSC);
    });
    return;
  }
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C, col = static_cast<int64_t>(PQ) * RSC;
  if (!acc) std::memset(dx, 0, sizeof(T) * img * s.N);
  const int G = conv2d_group(s);
  parallel_for(static_cast<int>(conv2d_tasks(s)), [&](int t, int worker) {
    const int n0 = t * G, g = std::min(G, s.N - n0);
    T* cols = ws + worker * group_elems(s);
    gemm<T>(false, false, g * PQ, RSC, s.K, T(1), dy + static_cast<int64_t>(n0) * PQ * s.K, s.K, w, RSC, T(0), cols,
            RSC);
    for (int i = 0; i < g; ++i) col2im_add(s, cols + i * col, dx + (n0 + i) * img);  // this task's images only
  });
}

template <typename T>
void conv2d_bwd_filter(const ConvShape& s, const T* dy, const T* x, T* dw, T* ws, bool acc) {
  const int PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  const int64_t dw_elems = static_cast<int64_t>(s.K) * RSC;
  const int64_t tasks = conv2d_tasks(s), slots = filter_slots(s);
  // Slot 0 is dw itself (adding to what it holds when acc), slots 1.. follow the im2col scratch.
  T* extra = ws + conv2d_workspace_elems(s);
  auto slot_sum = [&](int64_t k) { return k == 0 ? dw : extra + (k - 1) * dw_elems; };
  const int G = conv2d_group(s);
  const int64_t img = static_cast<int64_t>(s.H) * s.W * s.C, col = static_cast<int64_t>(PQ) * RSC;
  const int64_t M = static_cast<int64_t>(s.N) * PQ, rows = pointwise_rows(s);
  parallel_for(static_cast<int>(slots), [&](int k, int worker) {
    T* sum = slot_sum(k);
    for (int64_t t = k; t < tasks; t += slots) {
      const T beta = (t == k && !(k == 0 && acc)) ? T(0) : T(1);
      if (s.is_pointwise()) {
        const int64_t m0 = t * rows, m = std::min(rows, M - m0);
        gemm<T>(true, false, s.K, RSC, static_cast<int>(m), T(1), dy + m0 * s.K, s.K, x + m0 * RSC, RSC, beta, sum,
                RSC);
      } else {
        const int n0 = static_cast<int>(t) * G, g = std::min(G, s.N - n0);
        T* cols = ws + worker * group_elems(s);
        for (int i = 0; i < g; ++i) im2col(s, x + (n0 + i) * img, cols + i * col);
        gemm<T>(true, false, s.K, RSC, g * PQ, T(1), dy + static_cast<int64_t>(n0) * PQ * s.K, s.K, cols, RSC, beta,
                sum, RSC);
      }
    }
  });
  if (slots <= 1) return;
  // dw += slot 1 + slot 2 + ..., in slot order for every element (chunks of 64 Ki elements).
  parallel_chunks(dw_elems, int64_t(64) << 10, [&](int64_t, int64_t e0, int64_t e1) {
    for (int64_t k = 1; k < slots; ++k) {
      const T* __restrict__ src = slot_sum(k);
      for (int64_t e = e0; e < e1; ++e) dw[e] += src[e];
    }
  });
}

#define MIRA_INST(T)                                                                     \
  template void conv2d_fwd<T>(const ConvShape&, const T*, const T*, T*, T*);             \
  template void conv2d_bwd_data<T>(const ConvShape&, const T*, const T*, T*, T*, bool);  \
  template void conv2d_bwd_filter<T>(const ConvShape&, const T*, const T*, T*, T*, bool);
MIRA_INST(float)
MIRA_INST(double)
#undef MIRA_INST

}  // namespace mira::cpu

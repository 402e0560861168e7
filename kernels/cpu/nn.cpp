#include "kernels/cpu/nn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pointwise.h"

namespace mira::cpu {

namespace {

// Linear layers on the thread pool: each task computes a fixed block of output columns (or,
// for the weight gradient, of output rows): about 64 Ki output elements and at least 64
// columns per task, from the shape only, so the bits do not depend on the threads.
int64_t linear_cols(int64_t rows, int64_t cols) {
  return std::min(cols, std::max<int64_t>(64, ((int64_t(64) << 10) + rows - 1) / std::max<int64_t>(rows, 1)));
}
template <typename F>
void for_col_blocks(int64_t rows, int64_t cols, const F& body) {
  parallel_chunks(cols, linear_cols(rows, cols),
                  [&](int64_t, int64_t c0, int64_t c1) { body(static_cast<int>(c0), static_cast<int>(c1 - c0)); });
}

}  // namespace

template <typename T>
void linear_fwd(const T* x, const T* w, const T* b, T* y, int N, int I, int O) {
  for_col_blocks(N, O, [&](int o0, int on) {  // y[:, o0 : o0 + on] = x W[o0 : o0 + on]^T (+ b)
    if (b) {
      for (int n = 0; n < N; ++n) std::memcpy(y + static_cast<int64_t>(n) * O + o0, b + o0, sizeof(T) * on);
    }
    gemm<T>(false, true, N, on, I, T(1), x, I, w + static_cast<int64_t>(o0) * I, I, b ? T(1) : T(0), y + o0, O);
  });
}

template <typename T>
void linear_bwd_data(const T* dy, const T* w, T* dx, int N, int I, int O, bool acc) {
  for_col_blocks(N, I, [&](int i0, int in) {  // dx[:, i0 : i0 + in] = dy W[:, i0 : i0 + in]
    gemm<T>(false, false, N, in, O, T(1), dy, O, w + i0, I, acc ? T(1) : T(0), dx + i0, I);
  });
}

template <typename T>
void linear_bwd_weight(const T* dy, const T* x, T* dw, T* db, int N, int I, int O, bool acc) {
  for_col_blocks(I, O, [&](int o0, int on) {  // dW[o0 : o0 + on, :] = dy[:, o0 : o0 + on]^T x
    gemm<T>(true, false, on, I, N, T(1), dy + o0, O, x, I, acc ? T(1) : T(0), dw + static_cast<int64_t>(o0) * I, I);
    if (db) {
      for (int o = o0; o < o0 + on; ++o) {
        double s = 0;
        for (int n = 0; n < N; ++n) s += dy[static_cast<int64_t>(n) * O + o];
        db[o] = static_cast<T>(acc ? db[o] + s : s);
      }
    }
  });
}

namespace {

// Batch-norm rows per task on the thread pool: about 64 Ki elements. The reductions sum each
// chunk's rows in f64, then the chunks in order: a function of the shape, the same bits for
// any number of threads (kernels/cpu/parallel.h).
int64_t bn_chunk_rows(int C) {
  return std::max<int64_t>(1, (int64_t(64) << 10) / std::max(1, C));
}
int bn_chunks(int64_t M, int C) {
  const int64_t rows = bn_chunk_rows(C);
  return static_cast<int>(std::max<int64_t>(1, (M + rows - 1) / rows));
}
// Runs body(chunk, m0, m1) for every chunk of rows [m0, m1) on the thread pool.
template <typename F>
void for_row_chunks(int64_t M, int C, const F& body) {
  parallel_chunks(M, bn_chunk_rows(C), body);
}
// out[c] = sum over chunks k, in order, of part[k * C + c].
void sum_chunks(const std::vector<double>& part, int chunks, int C, double* out) {
  for (int c = 0; c < C; ++c) out[c] = 0.0;
  for (int k = 0; k < chunks; ++k)
    for (int c = 0; c < C; ++c) out[c] += part[static_cast<size_t>(k) * C + c];
}

template <typename T>
MIRA_CPU_CLONES void bn_sum_rows(const T* x, int64_t M, int C, double* sum) {
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * C;
    for (int c = 0; c < C; ++c) sum[c] += row[c];
  }
}

template <typename T>
MIRA_CPU_CLONES void bn_sqdev_rows(const T* x, int64_t M, int C, const double* mean, double* var) {
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * C;
    for (int c = 0; c < C; ++c) {
      const double d = row[c] - mean[c];
      var[c] += d * d;
    }
  }
}

}  // namespace

template <typename T>
void bn_stats(const T* x, int64_t M, int C, T* mean_out, T* var_out) {
  const int chunks = bn_chunks(M, C);
  std::vector<double> part(static_cast<size_t>(chunks) * C, 0.0), mean(C), var(C);
  // Each task sums into its own vector, then stores it: partial sums of neighbouring chunks
  // share cache lines, which two threads adding to them row after row fought over.
  for_row_chunks(M, C, [&](int k, int64_t m0, int64_t m1) {
    std::vector<double> acc(C, 0.0);
    bn_sum_rows(x + m0 * C, m1 - m0, C, acc.data());
    std::copy(acc.begin(), acc.end(), part.begin() + static_cast<std::ptrdiff_t>(k) * C);
  });
  sum_chunks(part, chunks, C, mean.data());
  for (int c = 0; c < C; ++c) mean[c] /= static_cast<double>(M);
  for_row_chunks(M, C, [&](int k, int64_t m0, int64_t m1) {
    std::vector<double> acc(C, 0.0);
    bn_sqdev_rows(x + m0 * C, m1 - m0, C, mean.data(), acc.data());
    std::copy(acc.begin(), acc.end(), part.begin() + static_cast<std::ptrdiff_t>(k) * C);
  });
  sum_chunks(part, chunks, C, var.data());
  for (int c = 0; c < C; ++c) {
    mean_out[c] = static_cast<T>(mean[c]);
    var_out[c] = static_cast<T>(var[c] / static_cast<double>(M));
  }
}

template <typename T>
void bn_finalize(const T* mean, const T* var, T* invstd, T* running_mean, T* running_var, int C, double momentum,
                 double eps, double count) {
  const double unbias = count > 1 ? count / (count - 1) : 1.0;
  for (int c = 0; c < C; ++c) {
    invstd[c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var[c]) + eps));
    if (running_mean) running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * mean[c]);
    if (running_var) running_var[c] = static_cast<T>((1 - momentum) * running_var[c] + momentum * var[c] * unbias);
  }
}

template <typename T>
void bn_pack_sums(const T* mean, const T* var, double M, int C, double* sums) {
  for (int c = 0; c < C; ++c) {
    const double m = static_cast<double>(mean[c]);
    sums[c] = M * m;
    sums[C + c] = M * (static_cast<double>(var[c]) + m * m);
  }
}

template <typename T>
void bn_unpack_sums(const double* sums, double count, int C, T* mean, T* var) {
  for (int c = 0; c < C; ++c) {
    const double m = sums[c] / count;
    mean[c] = static_cast<T>(m);
    var[c] = static_cast<T>(std::max(0.0, sums[C + c] / count - m * m));
  }
}

namespace {

template <typename T>
MIRA_CPU_CLONES void bn_fwd_apply_rows(const T* x, const T* mean, const T* invstd, const T* gamma, const T* beta, T* y,
                                       int64_t M, int C, bool relu) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * C;
    T* yr = y + m * C;
    if (relu) {
      for (int c = 0; c < C; ++c) {
        const T v = (xr[c] - mean[c]) * invstd[c] * gamma[c] + beta[c];
        yr[c] = v <= T(0) ? T(0) : v;
      }
    } else {
      for (int c = 0; c < C; ++c) yr[c] = (xr[c] - mean[c]) * invstd[c] * gamma[c] + beta[c];
    }
  }
}

}  // namespace

template <typename T>
void bn_fwd_apply(const T* x, const T* mean, const T* invstd, const T* gamma, const T* beta, T* y, int64_t M, int C,
                  bool relu) {
  for_row_chunks(M, C, [&](int, int64_t m0, int64_t m1) {
    bn_fwd_apply_rows(x + m0 * C, mean, invstd, gamma, beta, y + m0 * C, m1 - m0, C, relu);
  });
}

namespace {

// sum_dy[c] += dy (masked by relu_y > 0 when given), sum_dy_xhat[c] += dy * xhat, over M rows.
template <typename T>
MIRA_CPU_CLONES void bn_bwd_reduce_rows(const T* dy, const T* x, const T* mean, const T* invstd, int64_t M, int C,
                                        double* sum_dy, double* sum_dy_xhat, const T* relu_y) {
  // Two copies of the row loop (with and without the ReLU mask), so neither tests a pointer
  // per element and both vectorise.
  auto rows = [&](auto masked) {
    for (int64_t m = 0; m < M; ++m) {
      const T* __restrict__ dr = dy + m * C;
      const T* __restrict__ xr = x + m * C;
      const T* __restrict__ yr = masked ? relu_y + m * C : dr;
      for (int c = 0; c < C; ++c) {
        const T d = masked ? relu_mask(yr[c], dr[c]) : dr[c];
        sum_dy[c] += d;
        sum_dy_xhat[c] += static_cast<double>(d) * ((xr[c] - mean[c]) * invstd[c]);
      }
    }
  };
  if (relu_y)
    rows(std::true_type{});
  else
    rows(std::false_type{});
}

}  // namespace

template <typename T>
void bn_bwd_reduce(const T* dy, const T* x, const T* mean, const T* invstd, int64_t M, int C, T* sum_dy_out,
                   T* sum_dy_xhat_out, const T* relu_y) {
  const int chunks = bn_chunks(M, C);
  std::vector<double> p_dy(static_cast<size_t>(chunks) * C, 0.0), p_xh(p_dy.size(), 0.0), s_dy(C), s_xh(C);
  for_row_chunks(M, C, [&](int k, int64_t m0, int64_t m1) {
    std::vector<double> a_dy(C, 0.0), a_xh(C, 0.0);  // the task's own (see bn_stats)
    bn_bwd_reduce_rows(dy + m0 * C, x + m0 * C, mean, invstd, m1 - m0, C, a_dy.data(), a_xh.data(),
                       relu_y ? relu_y + m0 * C : nullptr);
    std::copy(a_dy.begin(), a_dy.end(), p_dy.begin() + static_cast<std::ptrdiff_t>(k) * C);
    std::copy(a_xh.begin(), a_xh.end(), p_xh.begin() + static_cast<std::ptrdiff_t>(k) * C);
  });
  sum_chunks(p_dy, chunks, C, s_dy.data());
  sum_chunks(p_xh, chunks, C, s_xh.data());
  for (int c = 0; c < C; ++c) {
    sum_dy_out[c] = static_cast<T>(s_dy[c]);
    sum_dy_xhat_out[c] = static_cast<T>(s_xh[c]);
  }
}

namespace {

template <typename T>
MIRA_CPU_CLONES void bn_bwd_apply_rows(const T* dy, const T* x, const T* mean, const T* invstd, const T* k, const T* a,
                                       const T* b, T* dx, int64_t M, int C, bool acc, const T* relu_y) {
  auto rows = [&](auto masked) {
    for (int64_t m = 0; m < M; ++m) {
      const T* __restrict__ dr = dy + m * C;
      const T* __restrict__ xr = x + m * C;
      const T* __restrict__ yr = masked ? relu_y + m * C : dr;
      T* __restrict__ out = dx + m * C;
      for (int c = 0; c < C; ++c) {
        const T xhat = (xr[c] - mean[c]) * invstd[c];
        const T d = masked ? relu_mask(yr[c], dr[c]) : dr[c];
        const T g = k[c] * (d - a[c] - xhat * b[c]);
        out[c] = acc ? out[c] + g : g;
      }
    }
  };
  if (relu_y)
    rows(std::true_type{});
  else
    rows(std::false_type{});
}

}  // namespace

template <typename T>
void bn_bwd_apply(const T* dy, const T* x, const T* mean, const T* invstd, const T* gamma, const T* sum_dy,
                  const T* sum_dy_xhat, double count, T* dx, int64_t M, int C, bool acc, const T* relu_y) {
  std::vector<T> k(C), a(C), b(C);
  for (int c = 0; c < C; ++c) {
    k[c] = gamma[c] * invstd[c];
    a[c] = sum_dy ? static_cast<T>(sum_dy[c] / count) : T(0);
    b[c] = sum_dy_xhat ? static_cast<T>(sum_dy_xhat[c] / count) : T(0);
  }
  for_row_chunks(M, C, [&](int, int64_t m0, int64_t m1) {
    bn_bwd_apply_rows(dy + m0 * C, x + m0 * C, mean, invstd, k.data(), a.data(), b.data(), dx + m0 * C, m1 - m0, C, acc,
                      relu_y ? relu_y + m0 * C : nullptr);
  });
}

template <typename T>
MIRA_CPU_CLONES void maxpool_fwd(const T* x, T* y, int N, int H, int W, int C, int k, int s, int p, int P, int Q) {
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < P; ++i)
      for (int j = 0; j < Q; ++j) {
        T* out = y + ((static_cast<int64_t>(n) * P + i) * Q + j) * C;
        for (int c = 0; c < C; ++c) out[c] = -std::numeric_limits<T>::infinity();
        for (int r = 0; r < k; ++r) {
          const int h = i * s - p + r;
          if (h < 0 || h >= H) continue;
          for (int t = 0; t < k; ++t) {
            const int w = j * s - p + t;
            if (w < 0 || w >= W) continue;
            const T* in = x + ((static_cast<int64_t>(n) * H + h) * W + w) * C;
            for (int c = 0; c < C; ++c) out[c] = std::max(out[c], in[c]);
          }
        }
      }
}

template <typename T>
MIRA_CPU_CLONES void maxpool_bwd(const T* dy, const T* x, T* dx, int N, int H, int W, int C, int k, int s, int p, int P,
                                 int Q, bool acc) {
  if (!acc) std::memset(dx, 0, sizeof(T) * static_cast<int64_t>(N) * H * W * C);
  std::vector<int64_t> arg(C);
  std::vector<T> best(C);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < P; ++i)
      for (int j = 0; j < Q; ++j) {
        std::fill(best.begin(), best.end(), -std::numeric_limits<T>::infinity());
        std::fill(arg.begin(), arg.end(), -1);
        for (int r = 0; r < k; ++r) {
          const int h = i * s - p + r;
          if (h < 0 || h >= H) continue;
          for (int t = 0; t < k; ++t) {
            const int w = j * s - p + t;
            if (w < 0 || w >= W) continue;
            const int64_t base = ((static_cast<int64_t>(n) * H + h) * W + w) * C;
            for (int c = 0; c < C; ++c)
              if (x[base + c] > best[c] || arg[c] < 0) {
                best[c] = x[base + c];
                arg[c] = base + c;
              }
          }
        }
        const T* g = dy + ((static_cast<int64_t>(n) * P + i) * Q + j) * C;
        for (int c = 0; c < C; ++c)
          if (arg[c] >= 0) dx[arg[c]] += g[c];
      }
}

template <typename T>
void avgpool_fwd(const T* x, T* y, int N, int HW, int C) {
  std::vector<double> acc(C);
  for (int n = 0; n < N; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int i = 0; i < HW; ++i) {
      const T* in = x + (static_cast<int64_t>(n) * HW + i) * C;
      for (int c = 0; c < C; ++c) acc[c] += in[c];
    }
    for (int c = 0; c < C; ++c) y[static_cast<int64_t>(n) * C + c] = static_cast<T>(acc[c] / HW);
  }
}

template <typename T>
void avgpool_bwd(const T* dy, T* dx, int N, int HW, int C, bool acc) {
  const T inv = T(1) / static_cast<T>(HW);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < HW; ++i) {
      T* out = dx + (static_cast<int64_t>(n) * HW + i) * C;
      const T* g = dy + static_cast<int64_t>(n) * C;
      for (int c = 0; c < C; ++c) out[c] = acc ? out[c] + g[c] * inv : g[c] * inv;
    }
}

template <typename T>
void l2norm_fwd(const T* x, T* y, T* norm, int N, int D, double eps) {
  for (int n = 0; n < N; ++n) {
    const T* xr = x + static_cast<int64_t>(n) * D;
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
    const T nrm = static_cast<T>(std::sqrt(ss));
    norm[n] = nrm;
    const T den = std::max(nrm, static_cast<T>(eps));
    for (int d = 0; d < D; ++d) y[static_cast<int64_t>(n) * D + d] = xr[d] / den;
  }
}

template <typename T>
void l2norm_bwd(const T* dy, const T* y, const T* norm, T* dx, int N, int D, double eps, bool acc) {
  for (int n = 0; n < N; ++n) {
    const T* g = dy + static_cast<int64_t>(n) * D;
    const T* yr = y + static_cast<int64_t>(n) * D;
    T* out = dx + static_cast<int64_t>(n) * D;
    // Below eps the denominator is the constant eps, so the map is linear.
    const bool clamped = norm[n] <= static_cast<T>(eps);
    const T den = clamped ? static_cast<T>(eps) : norm[n];
    double dot = 0;
    if (!clamped)
      for (int d = 0; d < D; ++d) dot += static_cast<double>(g[d]) * yr[d];
    for (int d = 0; d < D; ++d) {
      const T v = (g[d] - static_cast<T>(dot) * yr[d]) / den;
      out[d] = acc ? out[d] + v : v;
    }
  }
}

template <typename T>
void log_softmax_fwd(const T* x, T* y, int N, int K) {
  for (int n = 0; n < N; ++n) {
    const T* xr = x + static_cast<int64_t>(n) * K;
    T mx = *std::max_element(xr, xr + K);
    double s = 0;
    for (int k = 0; k < K; ++k) s += std::exp(static_cast<double>(xr[k] - mx));
    const T lse = mx + static_cast<T>(std::log(s));
    for (int k = 0; k < K; ++k) y[static_cast<int64_t>(n) * K + k] = xr[k] - lse;
  }
}

template <typename T>
void log_softmax_bwd(const T* dy, const T* y, T* dx, int N, int K, bool acc) {
  for (int n = 0; n < N; ++n) {
    const T* g = dy + static_cast<int64_t>(n) * K;
    const T* yr = y + static_cast<int64_t>(n) * K;
    T* out = dx + static_cast<int64_t>(n) * K;
    double s = 0;
    for (int k = 0; k < K; ++k) s += g[k];
    for (int k = 0; k < K; ++k) {
      const T v = g[k] - std::exp(yr[k]) * static_cast<T>(s);
      out[k] = acc ? out[k] + v : v;
    }
  }
}

template <typename T>
void soft_ce_fwd(const T* z, const T* t, T* loss_rows, T* lse, int N, int K) {
  for (int n = 0; n < N; ++n) {
    const T* zr = z + static_cast<int64_t>(n) * K;
    const T* tr = t + static_cast<int64_t>(n) * K;
    T mx = *std::max_element(zr, zr + K);
    double s = 0;
    for (int k = 0; k < K; ++k) s += std::exp(static_cast<double>(zr[k] - mx));
    const double l = mx + std::log(s);
    double loss = 0;
    for (int k = 0; k < K; ++k) loss -= static_cast<double>(tr[k]) * (zr[k] - l);
    lse[n] = static_cast<T>(l);
    loss_rows[n] = static_cast<T>(loss);
  }
}

template <typename T>
void soft_ce_bwd(const T* z, const T* t, const T* lse, const T* dloss, T alpha, T* dz, int N, int K, bool acc) {
  const T sc = dloss[0] * alpha;
  for (int n = 0; n < N; ++n) {
    const T* zr = z + static_cast<int64_t>(n) * K;
    const T* tr = t + static_cast<int64_t>(n) * K;
    T* out = dz + static_cast<int64_t>(n) * K;
    double tsum = 0;
    for (int k = 0; k < K; ++k) tsum += tr[k];
    for (int k = 0; k < K; ++k) {
      const T v = sc * (std::exp(zr[k] - lse[n]) * static_cast<T>(tsum) - tr[k]);
      out[k] = acc ? out[k] + v : v;
    }
  }
}

#define MIRA_INST(T)                                                                                        \
  template void linear_fwd<T>(const T*, const T*, const T*, T*, int, int, int);                             \
  template void linear_bwd_data<T>(const T*, const T*, T*, int, int, int, bool);                            \
  template void linear_bwd_weight<T>(const T*, const T*, T*, T*, int, int, int, bool);                      \
  template void bn_stats<T>(const T*, int64_t, int, T*, T*);                                                \
  template void bn_finalize<T>(const T*, const T*, T*, T*, T*, int, double, double, double);                \
  template void bn_pack_sums<T>(const T*, const T*, double, int, double*);                                \
  template void bn_unpack_sums<T>(const double*, double, int, T*, T*);                                      \
  template void bn_fwd_apply<T>(const T*, const T*, const T*, const T*, const T*, T*, int64_t, int, bool);   \
  template void bn_bwd_reduce<T>(const T*, const T*, const T*, const T*, int64_t, int, T*, T*, const T*);   \
  template void bn_bwd_apply<T>(const T*, const T*, const T*, const T*, const T*, const T*, const T*,       \
                                double, T*, int64_t, int, bool, const T*);                                  \
  template void maxpool_fwd<T>(const T*, T*, int, int, int, int, int, int, int, int, int);                  \
  template void maxpool_bwd<T>(const T*, const T*, T*, int, int, int, int, int, int, int, int, int, bool);  \
  template void avgpool_fwd<T>(const T*, T*, int, int, int);                                                \
  template void avgpool_bwd<T>(const T*, T*, int, int, int, bool);                                          \
  template void l2norm_fwd<T>(const T*, T*, T*, int, int, double);                                          \
  template void l2norm_bwd<T>(const T*, const T*, const T*, T*, int, int, double, bool);                    \
  template void log_softmax_fwd<T>(const T*, T*, int, int);                                                 \
  template void log_softmax_bwd<T>(const T*, const T*, T*, int, int, bool);                                 \
  template void soft_ce_fwd<T>(const T*, const T*, T*, T*, int, int);                                       \
  template void soft_ce_bwd<T>(const T*, const T*, const T*, const T*, T, T*, int, int, bool);
MIRA_INST(float)
MIRA_INST(double)
#undef MIRA_INST

}  // namespace mira::cpu

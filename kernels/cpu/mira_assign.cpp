#include "kernels/cpu/mira_assign.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/error.h"

namespace mira::cpu {

namespace {

void reduce_sum(const AssignReduce* r, double* data, int64_t n) {
  if (r && r->sum) r->sum(data, n, r->ctx);
}
void reduce_max(const AssignReduce* r, double* data, int64_t n) {
  if (r && r->max) r->max(data, n, r->ctx);
}

void check_args(int64_t N, int64_t K, double a, const char* a_name, int iters, int min_iters, const char* op) {
  MIRA_CHECK(N > 0 && K > 0, op, ": empty input (N = ", N, ", K = ", K, ")");
  MIRA_CHECK(std::isfinite(a) && a > 0, op, ": ", a_name, " must be a positive finite number, got ", a);
  MIRA_CHECK(iters >= min_iters, op, ": iters must be >= ", min_iters, ", got ", iters);
}

// E_ij as the pass reads it: exact, or rounded as the working copy holds it.
struct ExactE {
  template <typename T>
  double operator()(T e) const {
    return static_cast<double>(e);
  }
};
struct RoundedE {
  WorkingCopy copy;
  template <typename T>
  double operator()(T e) const {
    return static_cast<double>(working_copy_round(static_cast<float>(e), copy));
  }
};

// sum_j w_j e_j (w = null: all ones) with four accumulators in a fixed order: the compiler may
// not reassociate one running sum, four independent ones keep the FP units busy.
template <typename T, typename Load = ExactE>
double row_dot(const T* e, const double* w, int64_t K, Load ld = {}) {
  double a[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= K; j += 4)
    for (int u = 0; u < 4; ++u) a[u] += (w ? w[j + u] : 1.0) * ld(e[j + u]);
  for (; j < K; ++j) a[0] += (w ? w[j] : 1.0) * ld(e[j]);
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// One pass over the rows: r_i = sum_j w_j E_ij, c_j = sum_i E_ij / r_i (w = null: all ones).
// r_i >= 1 by construction (see the header); the guard only keeps a broken invariant from
// turning into a NaN.
template <typename T, typename Load>
void column_pass(const T* E, const double* w, double* c, int64_t N, int64_t K, Load ld) {
  std::fill(c, c + K, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const T* e = E + i * K;
    const double r = row_dot(e, w, K, ld);
    const double s = r > 0 ? 1.0 / r : 0.0;
    for (int64_t j = 0; j < K; ++j) c[j] += ld(e[j]) * s;
  }
}
template <typename T>
void column_pass(const T* E, const double* w, double* c, int64_t N, int64_t K, WorkingCopy copy) {
  if (copy == WorkingCopy::Exact) {
    column_pass(E, w, c, N, K, ExactE{});
  } else {
    column_pass(E, w, c, N, K, RoundedE{copy});
  }
}

// Row-stable softmax numerator E_i = exp((L_i - max L_i) * inv_tau), row max exactly 1.
// Returns false (and leaves the row zero) when the row holds a NaN or an infinity.
template <typename T>
bool exp_row(const T* l, T* e, int64_t K, double inv_tau) {
  double m = -std::numeric_limits<double>::infinity();
  bool finite = true;
  for (int64_t j = 0; j < K; ++j) {
    const double v = static_cast<double>(l[j]);
    finite = finite && std::isfinite(v);
    m = std::max(m, v);
  }
  if (!finite) {
    std::fill(e, e + K, T(0));
    return false;
  }
  for (int64_t j = 0; j < K; ++j) e[j] = static_cast<T>(std::exp((static_cast<double>(l[j]) - m) * inv_tau));
  return true;
}

constexpr double kLog2Max = 1020.0;  // double weights: K of them sum to < 2^1020 < DBL_MAX

}  // namespace

float working_copy_round(float x, WorkingCopy copy) {
  if (copy == WorkingCopy::Exact || !std::isfinite(x)) return x;
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  if (copy == WorkingCopy::BF16) {
    b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;  // round to nearest even, 8 bits kept
  } else {
    // f16 of x * 2^15 (exact scaling), back in units of x: 11 significant bits at or above
    // the f16 normal range (x >= 2^-29), a fixed step of 2^-39 below it; both round to
    // nearest even (nearbyint in the default rounding mode).
    const float s = std::fabs(x) * 32768.f;
    if (s >= 0x1p-14f) {
      b = (b + 0xfffu + ((b >> 13) & 1u)) & 0xffffe000u;
    } else {
      const float r = std::nearbyint(s * 0x1p24f) * 0x1p-24f / 32768.f;
      return std::copysign(r, x);
    }
  }
  float y;
  std::memcpy(&y, &b, sizeof y);
  return y;
}

void mira_weights_from_mass(const double* x, double* w, int64_t K, double exponent, double log2_cap) {
  double xmax = 0;
  for (int64_t j = 0; j < K; ++j) xmax = std::max(xmax, x[j]);
  if (!(xmax > 0)) {  // no mass anywhere (cannot happen with one row): uniform weights
    std::fill(w, w + K, 1.0);
    return;
  }
  const double l2max = std::log2(xmax);
  for (int64_t j = 0; j < K; ++j) {
    if (x[j] > 0) {
      // (log2 x_j - log2 xmax) <= 0 and exponent <= 0, so the product is >= 0 and w_j >= 1.
      w[j] = std::exp2(std::min(exponent * (std::log2(x[j]) - l2max), log2_cap));
    } else {
      w[j] = 0;
    }
  }
}

int64_t mira_assign_work_size(int64_t, int64_t K) {
  return 2 * K + 1;
}
int64_t sinkhorn_assign_work_size(int64_t N, int64_t K) {
  return N + 3 * K + 1;
}
int64_t assign_stats_work_size(int64_t, int64_t K) {
  return 2 * K + 1;
}

template <typename T>
void mira_assign_fwd(const T* logits, T* targets, int64_t N, int64_t K, double tau_t, double beta, int iters,
                     double* work, const AssignReduce* reduce, const MiraNumerics& num) {
  check_args(N, K, tau_t, "tau_t", iters, 0, "mira_assign");
  MIRA_CHECK(beta >= 0 && beta < 1, "mira_assign: beta must be in [0, 1), got ", beta);
  const double tau_p = tau_t * (1.0 - beta);
  MIRA_CHECK(tau_p > 0 && std::isfinite(1.0 / tau_p), "mira_assign: tau_t * (1 - beta) = ", tau_p, " is too small");
  MIRA_CHECK(logits != targets, "mira_assign: targets may not alias logits");
  MIRA_CHECK(num.exact_passes >= 0, "mira_assign: exact_passes must be >= 0, got ", num.exact_passes);
  const double inv_tau = 1.0 / tau_p;
  const double log2_cap = mira_weight_log2_cap(K, kLog2Max);
  double* w = work;
  double* c = work + K;  // K column sums + 1 slot counting non-finite logits (reduced with them)
  T* E = targets;        // the targets buffer holds E until the last pass

  int64_t bad = 0;
  for (int64_t i = 0; i < N; ++i) bad += exp_row(logits + i * K, E + i * K, K, inv_tau) ? 0 : 1;

  // Initial update (from u = 1): c = colsum(P).
  column_pass(E, static_cast<const double*>(nullptr), c, N, K, num.copy);
  c[K] = static_cast<double>(bad);
  reduce_sum(reduce, c, K + 1);
  MIRA_CHECK(c[K] == 0, "mira_assign: the logits contain NaN or Inf (", c[K], " rows over all ranks)");
  mira_weights_from_mass(c, w, K, -beta, log2_cap);

  const int exact_from = iters - std::min(num.exact_passes, iters);  // updates [exact_from, iters) use exact E
  for (int it = 0; it < iters; ++it) {
    column_pass(E, w, c, N, K, it >= exact_from ? WorkingCopy::Exact : num.copy);
    reduce_sum(reduce, c, K);
    mira_weights_from_mass(c, w, K, -beta, log2_cap);
  }

  for (int64_t i = 0; i < N; ++i) {
    T* e = E + i * K;
    const double r = row_dot(e, w, K);
    const double s = r > 0 ? 1.0 / r : 0.0;
    for (int64_t j = 0; j < K; ++j) e[j] = static_cast<T>(w[j] * static_cast<double>(e[j]) * s);
  }
}

// The cluster plan's arithmetic (header). Row sums are those of a warp: lane l sums the
// column quads l, l + 32, ... of its block with fused multiply-adds, then a butterfly of
// xor-shuffles adds the lanes (both partners of a step add the same two values, so every lane
// ends with the same bits); the blocks' sums, one per lane of a half-warp (0 beyond the cluster
// size), are added by the same butterfly over 16 lanes. Column sums: in each group of rows,
// subset s adds the group's rows s, s + subsets, ... with fused multiply-adds, then the subsets
// are added in order; then the groups' sums in group order. The f16 copy is iterated on as
// working_copy_round gives it: the kernel's E * 2^15 scales every row sum by exactly 2^15 and
// its inverse by 2^-15, so the column sums are the same. Its last updates and the targets use
// the kernel's split copy, hi + lo 2^-11 with lo the f16 of the remainder, instead of exact E.
// With the tensor-core sweeps (mma_chunks > 0), the updates on the f16 copy: a block's row sums
// are sum_j E_ij hi_j and sum_j E_ij lo_j over its columns in order, hi and lo the f16 halves of
// its weights times its scale 2^-e (the largest in [2^14, 2^15)), combined as hi + lo 2^-11
// times 2^e; the column sums of a cluster's rows likewise in row chunks, with the halves of the
// row inverses (in units of E, the kernel's rinv 2^15), the chunks then added in order. A block
// (rows) or cluster (columns) whose smallest operand would fall below 2^-14 uses the fused
// multiply-adds for that pass, as the kernel does.
void mira_cluster_twin(const float* logits, float* targets, int64_t N, int64_t K, float tau_t, float beta, int iters,
                       const ClusterTwinShape& sh, const MiraNumerics& num) {
  const int size = sh.size, cols = sh.cols, subsets = sh.subsets;
  const int64_t rows = sh.rows > 0 ? sh.rows : N;
  MIRA_CHECK(N > 0 && K > 0 && size >= 1 && size <= 16 && cols % 4 == 0 && static_cast<int64_t>(size) * cols >= K &&
                 subsets >= 1 && num.copy != WorkingCopy::BF16 && sh.mma_chunks >= 0,
             "mira_cluster_twin: bad shape");
  const bool f16 = num.copy == WorkingCopy::F16;
  const bool mma = f16 && sh.mma_chunks > 0;
  const float k2 = static_cast<float>(1.4426950408889634 / (static_cast<double>(tau_t) * (1.0 - beta)));
  const float exponent = -beta;
  const float log2_cap = static_cast<float>(124.0 - (f16 ? 15.0 : 0.0) - std::ceil(std::log2(static_cast<double>(K))));
  const int exact_from = iters + 1 - std::min(num.exact_passes, iters);
  const int64_t Kp = static_cast<int64_t>(size) * cols, quads = cols / 4, groups = (N + rows - 1) / rows;
  std::vector<float> Ex(static_cast<size_t>(N * Kp)), Ec, w(static_cast<size_t>(Kp)), r(static_cast<size_t>(N)),
      c(static_cast<size_t>(Kp)), cg(static_cast<size_t>(groups * Kp));
  for (int64_t i = 0; i < N; ++i) {
    float m = -INFINITY;
    for (int64_t j = 0; j < K; ++j) m = std::fmax(m, logits[i * K + j]);
    for (int64_t j = 0; j < Kp; ++j) Ex[i * Kp + j] = j < K ? std::exp2((logits[i * K + j] - m) * k2) : 0.f;
  }
  // The f16 copy (hi) and, for its last updates and the targets, the split copy hi + lo 2^-11
  // of the kernel's S = E * 2^15 (~22 significant bits), both back in units of E.
  std::vector<float> Es;
  if (f16) {
    auto round_f16 = [](float v) { return working_copy_round(v * 0x1p-15f, WorkingCopy::F16) * 32768.f; };
    Ec.resize(Ex.size());
    Es.resize(Ex.size());
    for (size_t k = 0; k < Ex.size(); ++k) {
      const float S = Ex[k] * 32768.f, hi = round_f16(S), lo = round_f16((S - hi) * 2048.f);
      Ec[k] = hi * 0x1p-15f;
      Es[k] = std::fma(lo, 1.f / 2048.f, hi) * 0x1p-15f;
    }
  }
  for (int64_t j = 0; j < Kp; ++j) w[j] = j < K ? 1.f : 0.f;
  // The tensor-core sweeps' operands: the weights' halves and each block's 2^e (the update from
  // u = 1: weights 1 at 2^-14, or none), and whether the block's row sums take them.
  auto round_h = [](float v) { return working_copy_round(v * 0x1p-15f, WorkingCopy::F16) * 32768.f; };
  std::vector<float> whi(static_cast<size_t>(Kp)), wlo(static_cast<size_t>(Kp)),
      unscale(static_cast<size_t>(size), 1.f);
  std::vector<char> mma_rows(static_cast<size_t>(size), 0);
  auto split = [&](float x, float& hi, float& lo) {
    hi = round_h(x);
    lo = round_h((x - hi) * 2048.f);
  };
  if (mma)  // pass 0 is never on the split copy (exact_from >= 1)
    for (int b = 0; b < size; ++b) {
      mma_rows[b] = 1;
      const bool any = static_cast<int64_t>(b) * cols < K;
      unscale[b] = any ? 0x1p-14f : 1.f;
      for (int64_t j = static_cast<int64_t>(b) * cols; j < static_cast<int64_t>(b + 1) * cols; ++j)
        split(j < K ? (any ? 0x1p14f : 1.f) : 0.f, whi[j], wlo[j]);
    }
  // Lane l of a half-warp holds block l's partial (0 beyond size); xor-shuffles add them.
  auto butterfly = [](float(&x)[16]) {
    for (int off = 8; off >= 1; off /= 2) {
      float next[16];
      for (int l = 0; l < 16; ++l) next[l] = x[l] + x[l ^ off];
      std::copy(next, next + 16, x);
    }
    return x[0];
  };
  for (int p = 0; p <= iters + 1; ++p) {
    const std::vector<float>& E = !f16 ? Ex : p < exact_from ? Ec : Es;
    const bool mma_pass = mma && p < exact_from;
    auto mma_dot = [&](int64_t i, int b) {
      float hi = 0.f, lo = 0.f;
      for (int64_t j = static_cast<int64_t>(b) * cols; j < static_cast<int64_t>(b + 1) * cols; ++j) {
        hi = std::fma(E[i * Kp + j], whi[j], hi);
        lo = std::fma(E[i * Kp + j], wlo[j], lo);
      }
      return std::fma(lo, 1.f / 2048.f, hi) * unscale[b];
    };
    auto warp_dot = [&](int64_t i, int b) {
      float lane[32];
      for (int l = 0; l < 32; ++l) {
        float acc = 0.f;
        for (int64_t q = l; q < quads; q += 32)
          for (int u = 0; u < 4; ++u) {
            const int64_t j = b * cols + 4 * q + u;
            acc = std::fma(w[j], E[i * Kp + j], acc);
          }
        lane[l] = acc;
      }
      for (int off = 16; off >= 1; off /= 2) {
        float next[32];
        for (int l = 0; l < 32; ++l) next[l] = lane[l] + lane[l ^ off];
        std::copy(next, next + 32, lane);
      }
      return lane[0];
    };
    for (int64_t i = 0; i < N; ++i) {
      float x[16] = {};
      for (int b = 0; b < size; ++b) x[b] = mma_pass && mma_rows[b] ? mma_dot(i, b) : warp_dot(i, b);
      const float z = butterfly(x);
      r[i] = z > 0.f ? 1.f / z : 0.f;
    }
    if (p > iters) break;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t r0 = g * rows, n = std::min(rows, N - r0);
      bool wide = false;
      for (int64_t l = 0; l < n; ++l) wide = wide || (r[r0 + l] > 0.f && r[r0 + l] < 0x1p-14f);
      if (mma_pass && !wide) {
        std::vector<float> rhi(static_cast<size_t>(n)), rlo(static_cast<size_t>(n));
        for (int64_t l = 0; l < n; ++l) split(r[r0 + l], rhi[l], rlo[l]);
        const int64_t tiles = (n + 15) / 16, per = (tiles + sh.mma_chunks - 1) / sh.mma_chunks;
        for (int64_t j = 0; j < Kp; ++j) {
          float t = 0.f;
          for (int c = 0; c < sh.mma_chunks; ++c) {
            float hi = 0.f, lo = 0.f;
            for (int64_t l = 16 * c * per; l < std::min(n, 16 * (c + 1) * per); ++l) {
              hi = std::fma(E[(r0 + l) * Kp + j], rhi[l], hi);
              lo = std::fma(E[(r0 + l) * Kp + j], rlo[l], lo);
            }
            t += std::fma(lo, 1.f / 2048.f, hi);
          }
          cg[g * Kp + j] = t;
        }
        continue;
      }
      for (int64_t j = 0; j < Kp; ++j) {
        float t = 0.f;
        for (int s = 0; s < subsets; ++s) {
          float acc = 0.f;
          for (int64_t l = s; l < n; l += subsets) acc = std::fma(E[(r0 + l) * Kp + j], r[r0 + l], acc);
          t += acc;
        }
        cg[g * Kp + j] = t;
      }
    }
    float cmax = 0.f;
    for (int64_t j = 0; j < Kp; ++j) {
      float t = 0.f;
      for (int64_t g = 0; g < groups; ++g) t += cg[g * Kp + j];
      c[j] = t;
      cmax = std::fmax(cmax, t);
    }
    const float l2max = std::log2(cmax);
    auto weight = [&](float x) {
      return x > 0.f ? std::exp2(std::fmin(exponent * (std::log2(x) - l2max), log2_cap)) : 0.f;
    };
    for (int64_t j = 0; j < Kp; ++j) w[j] = weight(c[j]);
    // The next pass's tensor-core operands (the kernel's weight_scale).
    if (mma && p + 1 < exact_from)
      for (int b = 0; b < size; ++b) {
        const int64_t j0 = static_cast<int64_t>(b) * cols, j1 = j0 + cols;
        float cmin = INFINITY, cmaxb = 0.f;
        for (int64_t j = j0; j < j1; ++j) {
          if (c[j] > 0.f) cmin = std::fmin(cmin, c[j]);
          cmaxb = std::fmax(cmaxb, c[j]);
        }
        float scale = 1.f;
        unscale[b] = 1.f;
        mma_rows[b] = 1;
        if (cmin < INFINITY) {
          const float wmax = weight(cmin), wmin = weight(cmaxb);
          uint32_t bits;
          std::memcpy(&bits, &wmax, 4);
          const int e = static_cast<int>(bits >> 23) - 127 - 14;
          scale = std::ldexp(1.f, -e);
          unscale[b] = std::ldexp(1.f, e);
          mma_rows[b] = wmin * scale >= 0x1p-14f;
        }
        for (int64_t j = j0; j < j1; ++j) split(w[j] * scale, whi[j], wlo[j]);
      }
  }
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) targets[i * K + j] = w[j] * (f16 ? Es : Ex)[i * Kp + j] * r[i];
}

// ---- Sinkhorn-Knopp in the log domain. With x = L / eps:
//   g_j = -LSE_i(x_ij + f_i)   (normalise prototypes; f = 0 at first, constants drop out)
//   f_i = -LSE_j(x_ij + g_j)   (normalise samples)
// SwAV's `iters` iterations are g, (f, g) x (iters - 1), and its final Q * B is the row
// softmax of x + g (the last sample normalisation).

namespace {

// g_j = -LSE over all ranks' rows of (x_ij + f_i); M, S: K scratch each; one extra slot in M
// carries the non-finite count on the first call.
template <typename T>
void column_lse(const T* logits, const double* f, double* g, double* M, double* S, int64_t N, int64_t K, double inv_eps,
                const AssignReduce* reduce, bool check_finite) {
  std::fill(M, M + K, -std::numeric_limits<double>::infinity());
  int64_t bad = 0;
  for (int64_t i = 0; i < N; ++i) {
    const T* l = logits + i * K;
    const double fi = f ? f[i] : 0.0;
    for (int64_t j = 0; j < K; ++j) {
      const double v = static_cast<double>(l[j]) * inv_eps + fi;
      if (check_finite && !std::isfinite(v)) {
        ++bad;
        continue;
      }
      M[j] = std::max(M[j], v);
    }
  }
  if (check_finite) {
    double b = static_cast<double>(bad);
    reduce_sum(reduce, &b, 1);
    MIRA_CHECK(b == 0, "sinkhorn_assign: the logits contain NaN or Inf (", b, " values over all ranks)");
  }
  reduce_max(reduce, M, K);
  std::fill(S, S + K, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const T* l = logits + i * K;
    const double fi = f ? f[i] : 0.0;
    for (int64_t j = 0; j < K; ++j) S[j] += std::exp(static_cast<double>(l[j]) * inv_eps + fi - M[j]);
  }
  reduce_sum(reduce, S, K);
  for (int64_t j = 0; j < K; ++j) g[j] = -(M[j] + std::log(S[j]));  // S_j >= 1: the max term is exp(0)
}

// Log-sum-exp of x_ij + g_j over row i.
template <typename T>
double row_lse(const T* l, const double* g, int64_t K, double inv_eps) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < K; ++j) m = std::max(m, static_cast<double>(l[j]) * inv_eps + g[j]);
  double s = 0;
  for (int64_t j = 0; j < K; ++j) s += std::exp(static_cast<double>(l[j]) * inv_eps + g[j] - m);
  return m + std::log(s);
}

}  // namespace

template <typename T>
void sinkhorn_assign_fwd(const T* logits, T* targets, int64_t N, int64_t K, double eps, int iters, double* work,
                         const AssignReduce* reduce) {
  check_args(N, K, eps, "eps", iters, 1, "sinkhorn_assign");
  const double inv_eps = 1.0 / eps;
  MIRA_CHECK(std::isfinite(inv_eps), "sinkhorn_assign: eps = ", eps, " is too small");
  double* f = work;
  double* g = f + N;
  double* M = g + K;
  double* S = M + K;

  column_lse(logits, static_cast<const double*>(nullptr), g, M, S, N, K, inv_eps, reduce, true);
  for (int it = 1; it < iters; ++it) {
    for (int64_t i = 0; i < N; ++i) f[i] = -row_lse(logits + i * K, g, K, inv_eps);
    column_lse(logits, f, g, M, S, N, K, inv_eps, reduce, false);
  }
  for (int64_t i = 0; i < N; ++i) {
    const T* l = logits + i * K;
    T* t = targets + i * K;
    const double lse = row_lse(l, g, K, inv_eps);
    for (int64_t j = 0; j < K; ++j) t[j] = static_cast<T>(std::exp(static_cast<double>(l[j]) * inv_eps + g[j] - lse));
  }
}

template <typename T>
void assign_stats(const T* logits, const T* targets, int64_t N, int64_t K, double tau_t, double beta, double* wbar,
                  double* work, AssignStatsOut* out, const AssignReduce* reduce) {
  MIRA_CHECK(N > 0 && K > 0, "assign_stats: empty input");
  // wbar (as sums), then the entropy sum and the row count, reduced together.
  double* sums = work;  // K column sums + entropy sum + row count
  std::fill(sums, sums + K + 2, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const T* t = targets + i * K;
    for (int64_t j = 0; j < K; ++j) {
      const double v = static_cast<double>(t[j]);
      sums[j] += v;
      if (v > 0) sums[K] -= v * std::log(v);
    }
  }
  sums[K + 1] = static_cast<double>(N);
  reduce_sum(reduce, sums, K + 2);
  const double n_global = sums[K + 1];
  out->target_entropy = sums[K] / n_global;
  double hm = 0;
  for (int64_t j = 0; j < K; ++j) {
    wbar[j] = sums[j] / n_global;
    if (wbar[j] > 0) hm -= wbar[j] * std::log(wbar[j]);
  }
  out->marginal_entropy = hm;
  out->kkt_residual = NAN;
  if (!logits) return;

  // KKT (paper Eq. 5): T_i = normalise(wbar^a * P_i), a = -beta / (1 - beta).
  MIRA_CHECK(beta >= 0 && beta < 1 && tau_t > 0, "assign_stats: bad tau_t / beta");
  double* wk = work;  // reuses the sums: they are no longer needed
  mira_weights_from_mass(wbar, wk, K, -beta / (1.0 - beta), mira_weight_log2_cap(K, kLog2Max));
  const double inv_tau = 1.0 / (tau_t * (1.0 - beta));
  double kkt = 0;
  for (int64_t i = 0; i < N; ++i) {
    const T* l = logits + i * K;
    const T* t = targets + i * K;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < K; ++j) m = std::max(m, static_cast<double>(l[j]));
    double r = 0;
    for (int64_t j = 0; j < K; ++j) r += wk[j] * std::exp((static_cast<double>(l[j]) - m) * inv_tau);
    const double s = r > 0 ? 1.0 / r : 0.0;
    for (int64_t j = 0; j < K; ++j) {
      const double u = wk[j] * std::exp((static_cast<double>(l[j]) - m) * inv_tau) * s;
      kkt = std::max(kkt, std::fabs(static_cast<double>(t[j]) - u));
    }
  }
  reduce_max(reduce, &kkt, 1);
  out->kkt_residual = kkt;
}

#define MIRA_INSTANTIATE(T)                                                                                           \
  template void mira_assign_fwd<T>(const T*, T*, int64_t, int64_t, double, double, int, double*, const AssignReduce*, \
                                   const MiraNumerics&);                                                              \
  template void sinkhorn_assign_fwd<T>(const T*, T*, int64_t, int64_t, double, int, double*, const AssignReduce*);    \
  template void assign_stats<T>(const T*, const T*, int64_t, int64_t, double, double, double*, double*,               \
                                AssignStatsOut*, const AssignReduce*);
MIRA_INSTANTIATE(float)
MIRA_INSTANTIATE(double)
#undef MIRA_INSTANTIATE

}  // namespace mira::cpu

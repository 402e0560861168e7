// labels: cpu
// The MIRA assignment and Sinkhorn-Knopp on the CPU: the properties of spec section 1 (KKT
// condition, optimality, beta = 0, permutation, split batch over ranks, convergence rate), the
// official iteration itself, extreme and degenerate inputs, and argument errors.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <thread>

#include "engine/comm.h"
#include "engine/mira_assign.h"
#include "engine/npy.h"
#include "engine/rng.h"
#include "kernels/cpu/mira_assign.h"
#include "kernels/cpu/mira_plan_model.h"
#include "testing.h"

using namespace mira;
using mira::testing::allclose;
using mira::testing::Tol;

namespace {

std::vector<double> randn(int64_t n, uint64_t seed, double stddev) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = stddev * philox_normal(seed, static_cast<uint64_t>(i));
  return v;
}

// The official function (train.py, `mira`), transcribed literally in double: softmax, then
// v = (colsum / N)^(1 - beta), iters updates with v^(-beta/(1-beta)), final normalisation.
std::vector<double> official_mira(const std::vector<double>& L, int64_t N, int64_t K, double tau, double beta,
                                  int iters) {
  std::vector<double> k(L.size());
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, z = 0;
    for (int64_t j = 0; j < K; ++j) m = std::max(m, L[i * K + j] / tau / (1 - beta));
    for (int64_t j = 0; j < K; ++j) z += std::exp(L[i * K + j] / tau / (1 - beta) - m);
    for (int64_t j = 0; j < K; ++j) k[i * K + j] = std::exp(L[i * K + j] / tau / (1 - beta) - m) / z;
  }
  std::vector<double> v(K, 0.0), temp(K);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) v[j] += k[i * K + j];
  for (auto& x : v) x = std::pow(x / N, 1 - beta);
  for (int it = 0; it < iters; ++it) {
    std::fill(temp.begin(), temp.end(), 0.0);
    for (int64_t i = 0; i < N; ++i) {
      double r = 0;
      for (int64_t j = 0; j < K; ++j) r += std::pow(v[j], -beta / (1 - beta)) * k[i * K + j];
      for (int64_t j = 0; j < K; ++j) temp[j] += k[i * K + j] / r;
    }
    for (int64_t j = 0; j < K; ++j) v[j] = std::pow(temp[j] / N, 1 - beta);
  }
  std::vector<double> t(L.size());
  for (int64_t i = 0; i < N; ++i) {
    double r = 0;
    for (int64_t j = 0; j < K; ++j) r += std::pow(v[j], -beta / (1 - beta)) * k[i * K + j];
    for (int64_t j = 0; j < K; ++j) t[i * K + j] = std::pow(v[j], -beta / (1 - beta)) * k[i * K + j] / r;
  }
  return t;
}

// SwAV's distributed_sinkhorn for one process, transcribed literally in double.
std::vector<double> swav_sinkhorn(const std::vector<double>& L, int64_t B, int64_t K, double eps, int iters) {
  std::vector<double> Q(L.size());  // (B, K) here; SwAV holds the transpose
  double total = 0;
  for (size_t i = 0; i < L.size(); ++i) total += Q[i] = std::exp(L[i] / eps);
  for (auto& q : Q) q /= total;
  for (int it = 0; it < iters; ++it) {
    for (int64_t j = 0; j < K; ++j) {  // rows of Q^T: prototypes sum to 1/K
      double s = 0;
      for (int64_t i = 0; i < B; ++i) s += Q[i * K + j];
      for (int64_t i = 0; i < B; ++i) Q[i * K + j] /= s * K;
    }
    for (int64_t i = 0; i < B; ++i) {  // columns of Q^T: samples sum to 1/B
      double s = 0;
      for (int64_t j = 0; j < K; ++j) s += Q[i * K + j];
      for (int64_t j = 0; j < K; ++j) Q[i * K + j] /= s * B;
    }
  }
  for (auto& q : Q) q *= B;
  return Q;
}

// Paper Eq. 4 at W (rows on the simplex), one process:
//   mean_i KL(W_i || softmax(L_i / tau)) - beta * (H(mean_i W_i) - mean_i H(W_i)).
double objective(const std::vector<double>& L, const std::vector<double>& W, int64_t N, int64_t K, double tau,
                 double beta) {
  double kl = 0, h_rows = 0;
  std::vector<double> wbar(K, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, z = 0;
    for (int64_t j = 0; j < K; ++j) m = std::max(m, L[i * K + j] / tau);
    for (int64_t j = 0; j < K; ++j) z += std::exp(L[i * K + j] / tau - m);
    const double lse = m + std::log(z);
    for (int64_t j = 0; j < K; ++j) {
      const double w = W[i * K + j];
      wbar[j] += w / N;
      if (w > 0) {
        kl += w * (std::log(w) - (L[i * K + j] / tau - lse));
        h_rows -= w * std::log(w);
      }
    }
  }
  double h_marg = 0;
  for (double w : wbar)
    if (w > 0) h_marg -= w * std::log(w);
  return kl / N - beta * (h_marg - h_rows / N);
}

template <typename T>
std::vector<double> kernel_mira(const std::vector<double>& L, int64_t N, int64_t K, double tau, double beta, int iters,
                                const cpu::MiraNumerics& num = {}) {
  std::vector<T> l(L.begin(), L.end()), t(L.size());
  std::vector<double> work(cpu::mira_assign_work_size(N, K));
  cpu::mira_assign_fwd<T>(l.data(), t.data(), N, K, tau, beta, iters, work.data(), nullptr, num);
  return std::vector<double>(t.begin(), t.end());
}

template <typename T>
cpu::AssignStatsOut kernel_stats(const std::vector<double>& L, const std::vector<double>& Tg, int64_t N, int64_t K,
                                 double tau, double beta, std::vector<double>* wbar = nullptr) {
  std::vector<T> l(L.begin(), L.end()), t(Tg.begin(), Tg.end());
  std::vector<double> wb(K), work(cpu::assign_stats_work_size(N, K));
  cpu::AssignStatsOut out;
  cpu::assign_stats<T>(l.data(), t.data(), N, K, tau, beta, wb.data(), work.data(), &out);
  if (wbar) *wbar = wb;
  return out;
}

double sse(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

// Every value finite, rows on the simplex (|row sum - 1| <= tol, entries in [0, 1]).
bool rows_on_simplex(const std::vector<double>& t, int64_t N, int64_t K, double tol) {
  for (int64_t i = 0; i < N; ++i) {
    double s = 0;
    for (int64_t j = 0; j < K; ++j) {
      const double v = t[i * K + j];
      if (!std::isfinite(v) || v < 0 || v > 1 + tol) return false;
      s += v;
    }
    if (std::fabs(s - 1) > tol) return false;
  }
  return true;
}

constexpr double kTau = 0.225, kBeta = 2.0 / 3.0;

// Logits of the extreme-input cases: 0: +-100 at random; 1: N(0, 1); 2: column 3 at -100
// against 90-100 elsewhere (an empty column); 3: one-hot +100 rows; 4: constant.
std::vector<double> extreme_logits(int64_t N, int64_t K, int kind) {
  std::vector<double> L = randn(N * K, 9, 1.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double& x = L[i * K + j];
      if (kind == 0) x = x < 0 ? -100 : 100;
      if (kind == 2) x = j == 3 ? -100 : (x < 0 ? 90 : 100);
      if (kind == 3) x = j == (i * 7) % K ? 100 : -100;
      if (kind == 4) x = 0.5;
    }
  return L;
}

}  // namespace

TEST_CASE("comm: LocalComm is a no-op, thread-ranks reduce in rank order") {
  LocalComm local;
  double x[2] = {1.5, -2};
  local.allreduce_sum(x, 2);
  local.allreduce_max(x, 2);
  CHECK(x[0] == 1.5);
  CHECK(x[1] == -2);
  Tensor t = Tensor::from_vector({1, 2}, {2});
  local.allreduce_sum(t);
  CHECK(t.to_vector() == std::vector<double>{1, 2});
  CHECK_THROWS_AS(local.allreduce_sum(t.raw(), 2, DType::I64, Device::cpu()), Error);
  CHECK(local.world_size() == 1);

  auto comms = make_thread_comms(3);
  std::vector<double> sums(3), maxes(3);
  std::vector<float> fsum(3);
  std::thread ranks[3];
  for (int r = 0; r < 3; ++r) {
    ranks[r] = std::thread([&, r] {
      CHECK(comms[r]->rank() == r);
      CHECK(comms[r]->world_size() == 3);
      double v[2] = {0.1 * (r + 1), static_cast<double>(r == 1 ? 7 : -r)};
      comms[r]->allreduce_sum(v, 1);
      comms[r]->allreduce_max(v + 1, 1);
      float f = 1.f + r;
      comms[r]->allreduce_sum(&f, 1, DType::F32, Device::cpu());
      comms[r]->barrier();
      sums[r] = v[0], maxes[r] = v[1], fsum[r] = f;
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 3; ++r) {
    CHECK(sums[r] == (0.1 + 0.2) + 0.30000000000000004);  // rank order, same bits everywhere
    CHECK(maxes[r] == 7);
    CHECK(fsum[r] == 6.f);
  }
  CHECK_THROWS_AS(make_thread_comms(0), Error);
}

TEST_CASE("mira: the iteration is the official one (f64, to rounding)") {
  const int64_t N = 48, K = 20;
  const auto L = randn(N * K, 1, 0.5);
  for (int iters : {0, 1, 5, 30}) {
    CAPTURE(iters);
    CHECK(allclose(kernel_mira<double>(L, N, K, kTau, kBeta, iters), official_mira(L, N, K, kTau, kBeta, iters),
                   Tol{1e-13, 1e-11}, "official"));
  }
  CHECK(allclose(kernel_mira<double>(L, N, K, 0.1, 0.75, 30), official_mira(L, N, K, 0.1, 0.75, 30), Tol{1e-13, 1e-11},
                 "official tau 0.1 beta 0.75"));
}

TEST_CASE("mira: KKT residual after 30 iterations (f64 < 1e-9, f32 < 1e-5)") {
  // Well conditioned: the spec's B = 256, K = 300 with logits ~ N(0, 0.2^2), and B = 512,
  // K = 100 with N(0, 0.3^2). (At B = 256, K = 300, N(0, 0.3^2) more columns than rows get
  // little mass and the residual after 30 iterations is 0.5e-9 to 2e-9, seed to seed.)
  struct Case {
    int64_t N, K;
    double stddev;
    uint64_t seed;
  };
  for (const Case& c : {Case{256, 300, 0.2, 11}, Case{512, 100, 0.3, 12}}) {
    const int64_t N = c.N, K = c.K;
    CAPTURE(N);
    const auto L = randn(N * K, c.seed, c.stddev);
    const auto t64 = kernel_mira<double>(L, N, K, kTau, kBeta, 30);
    const auto t32 = kernel_mira<float>(L, N, K, kTau, kBeta, 30);
    const double kkt64 = kernel_stats<double>(L, t64, N, K, kTau, kBeta).kkt_residual;
    const double kkt32 = kernel_stats<float>(L, t32, N, K, kTau, kBeta).kkt_residual;
    CAPTURE(kkt64);
    CAPTURE(kkt32);
    CHECK(kkt64 < 1e-9);
    CHECK(kkt32 < 1e-5);
    // More iterations drive the f64 residual to rounding level.
    CHECK(kernel_stats<double>(L, kernel_mira<double>(L, N, K, kTau, kBeta, 200), N, K, kTau, kBeta).kkt_residual <
          1e-14);
    // f32 against the f64 reference: E is rounded to f32 once, everything else is double.
    CHECK(allclose(t32, t64, Tol{1e-7, 1e-5}, "f32 vs f64"));
  }
}

TEST_CASE("mira: convergence to the 1000-iteration solution matches the paper's Fig. 2 numbers") {
  // Spec: B = 256, K = 300, tau_t = 0.225, beta = 2/3, logits ~ N(0, 0.3^2): SSE to the
  // 1000-iteration solution about 4e-2 after 1 iteration, 2e-3 after 3, 1e-7 after 10, 1e-18 after 30.
  const int64_t N = 256, K = 300;
  const auto L = randn(N * K, 7, 0.3);
  const auto ref = kernel_mira<double>(L, N, K, kTau, kBeta, 1000);
  const double s1 = sse(kernel_mira<double>(L, N, K, kTau, kBeta, 1), ref);
  const double s3 = sse(kernel_mira<double>(L, N, K, kTau, kBeta, 3), ref);
  const double s10 = sse(kernel_mira<double>(L, N, K, kTau, kBeta, 10), ref);
  const double s30 = sse(kernel_mira<double>(L, N, K, kTau, kBeta, 30), ref);
  MESSAGE("SSE after 1, 3, 10, 30 iterations: ", s1, " ", s3, " ", s10, " ", s30);
  CHECK(s1 > 1e-2);
  CHECK(s1 < 2e-1);
  CHECK(s3 > 4e-4);
  CHECK(s3 < 1e-2);
  CHECK(s10 > 1e-8);
  CHECK(s10 < 1e-6);
  CHECK(s30 < 1e-16);
}

TEST_CASE("mira: 16-bit working copies round as bf16 / f16 do") {
  using WC = cpu::WorkingCopy;
  CHECK(cpu::working_copy_round(0.1f, WC::Exact) == 0.1f);
  CHECK(cpu::working_copy_round(1.f, WC::F16) == 1.f);
  CHECK(cpu::working_copy_round(1.f + 0x1p-10f, WC::F16) == 1.f + 0x1p-10f);     // 11 significant bits
  CHECK(cpu::working_copy_round(1.f + 0x1p-11f, WC::F16) == 1.f);                // a tie: to even
  CHECK(cpu::working_copy_round(1.f + 3 * 0x1p-11f, WC::F16) == 1.f + 0x1p-9f);  // a tie: to even
  CHECK(cpu::working_copy_round(1.f + 0x1p-8f, WC::BF16) == 1.f);                // 8 bits, a tie
  CHECK(cpu::working_copy_round(1.f + 0x1p-7f, WC::BF16) == 1.f + 0x1p-7f);
  CHECK(cpu::working_copy_round(0.3f, WC::BF16) == 0.30078125f);
  // Below 2^-29, x * 2^15 is an f16 subnormal: a fixed step of 2^-39, to nearest even.
  CHECK(cpu::working_copy_round(0x1p-29f, WC::F16) == 0x1p-29f);
  CHECK(cpu::working_copy_round(0x1p-35f, WC::F16) == 0x1p-35f);
  CHECK(cpu::working_copy_round(3 * 0x1p-41f, WC::F16) == 0x1p-39f);
  CHECK(cpu::working_copy_round(0x1p-40f, WC::F16) == 0.f);
  CHECK(cpu::working_copy_round(0x1p-41f, WC::BF16) == 0x1p-41f);  // bf16 keeps f32's range
}

TEST_CASE("mira: a 16-bit working copy, and exact updates at the end that undo its rounding") {
  // N 512, K 300, logits ~ N(0, 0.3^2) as in Fig. 2. Each exact update at the end shrinks the
  // error of the 16-bit copy (the iteration contracts), down to the f32 kernel's own.
  using WC = cpu::WorkingCopy;
  const int64_t N = 512, K = 300;
  const auto L = randn(N * K, 12, 0.3);
  const auto ref = kernel_mira<double>(L, N, K, kTau, kBeta, 30);
  auto err = [&](WC copy, int exact) {
    const auto t = kernel_mira<float>(L, N, K, kTau, kBeta, 30, cpu::MiraNumerics{copy, exact});
    double e = 0;
    for (size_t i = 0; i < t.size(); ++i) e = std::max(e, std::fabs(t[i] - ref[i]));
    return e;
  };
  const double f32 = err(WC::Exact, 0), bf16 = err(WC::BF16, 0), bf16_5 = err(WC::BF16, 5);
  const double f16 = err(WC::F16, 0), f16_1 = err(WC::F16, 1), f16_2 = err(WC::F16, 2), f16_3 = err(WC::F16, 3);
  MESSAGE("max abs error vs f64: f32 ", f32, "; bf16 ", bf16, ", + 5 exact ", bf16_5, "; f16 ", f16,
          ", + 1, 2, 3 exact ", f16_1, " ", f16_2, " ", f16_3);
  CHECK(kernel_mira<float>(L, N, K, kTau, kBeta, 30, cpu::MiraNumerics{WC::Exact, 5}) ==
        kernel_mira<float>(L, N, K, kTau, kBeta, 30));
  CHECK(bf16 < 1e-3);
  CHECK(f16 < bf16 / 4);  // 3 more significant bits
  CHECK(f16_1 < f16 / 2);
  CHECK(f16_2 < f16_1);
  CHECK(f16_3 < f16_2);
  CHECK(bf16_5 < bf16 / 20);
  CHECK(f16_3 < 4 * f32);
  // Exact passes beyond iters: every update exact, only the initial one rounded.
  CHECK(err(WC::F16, 1000) < 4 * f32);
}

TEST_CASE("mira: the result minimises the objective (Eq. 4) against feasible perturbations") {
  const int64_t N = 40, K = 12;
  const auto L = randn(N * K, 3, 0.4);
  const auto T = kernel_mira<double>(L, N, K, kTau, kBeta, 30);  // the op's default
  const double f0 = objective(L, T, N, K, kTau, kBeta);
  for (uint64_t s = 0; s < 30; ++s) {
    // Zero-sum perturbation per row, small enough to keep every entry positive.
    auto z = randn(N * K, 100 + s, 1.0);
    std::vector<double> W = T;
    const double eps = s % 2 ? 1e-3 : 1e-5;
    for (int64_t i = 0; i < N; ++i) {
      const double mean = std::accumulate(z.begin() + i * K, z.begin() + (i + 1) * K, 0.0) / K;
      double lim = INFINITY;
      for (int64_t j = 0; j < K; ++j) {
        const double d = z[i * K + j] - mean;
        if (d < 0) lim = std::min(lim, T[i * K + j] / -d);
      }
      for (int64_t j = 0; j < K; ++j) W[i * K + j] += std::min(eps, 0.5 * lim) * (z[i * K + j] - mean);
    }
    CAPTURE(s);
    CHECK(objective(L, W, N, K, kTau, kBeta) > f0);
  }
}

TEST_CASE("mira: beta = 0 gives softmax(L / tau_t)") {
  const int64_t N = 30, K = 17;
  const auto L = randn(N * K, 4, 1.0);
  std::vector<double> sm(L.size());
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, z = 0;
    for (int64_t j = 0; j < K; ++j) m = std::max(m, L[i * K + j] / kTau);
    for (int64_t j = 0; j < K; ++j) z += std::exp(L[i * K + j] / kTau - m);
    for (int64_t j = 0; j < K; ++j) sm[i * K + j] = std::exp(L[i * K + j] / kTau - m) / z;
  }
  CHECK(allclose(kernel_mira<double>(L, N, K, kTau, 0.0, 30), sm, Tol{1e-15, 1e-13}, "beta 0, f64"));
  CHECK(allclose(kernel_mira<float>(L, N, K, kTau, 0.0, 30), sm, Tol{1e-7, 1e-5}, "beta 0, f32"));
}

TEST_CASE("mira: permuting rows permutes the targets") {
  const int64_t N = 64, K = 25;
  const auto L = randn(N * K, 5, 0.5);
  std::vector<int64_t> perm(N);
  for (int64_t i = 0; i < N; ++i) perm[i] = (i * 37 + 11) % N;  // 37 is coprime to 64
  std::vector<double> Lp(L.size());
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) Lp[i * K + j] = L[perm[i] * K + j];
  const auto T = kernel_mira<double>(L, N, K, kTau, kBeta, 30);
  const auto Tp = kernel_mira<double>(Lp, N, K, kTau, kBeta, 30);
  std::vector<double> Tperm(T.size());
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) Tperm[i * K + j] = T[perm[i] * K + j];
  // Only the order of the column sums' terms changes.
  CHECK(allclose(Tp, Tperm, Tol{1e-14, 1e-12}, "permuted"));
}

TEST_CASE("mira and sinkhorn: two thread-ranks splitting the batch equal one rank holding it") {
  const int64_t N = 90, K = 31, N0 = 37;  // uneven split on purpose
  const auto Lv = randn(N * K, 6, 0.5);
  const Tensor L = Tensor::from_vector(Lv, {N, K}, DType::F64);
  AssignStats s_one, s_sk_one;
  const Tensor one = mira_assign(L, kTau, kBeta, 30, local_comm(), &s_one);
  const Tensor sk_one = sinkhorn_assign(L, 0.05, 3, local_comm(), &s_sk_one);

  auto comms = make_thread_comms(2);
  Tensor part[2], sk_part[2];
  AssignStats st[2], sk_st[2];
  std::thread ranks[2];
  std::string errors[2];
  for (int r = 0; r < 2; ++r) {
    ranks[r] = std::thread([&, r] {
      try {
        const Tensor mine = r == 0 ? L.slice_batch(0, N0) : L.slice_batch(N0, N);
        part[r] = mira_assign(mine, kTau, kBeta, 30, *comms[r], &st[r]);
        sk_part[r] = sinkhorn_assign(mine, 0.05, 3, *comms[r], &sk_st[r]);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  REQUIRE(errors[0] == "");
  REQUIRE(errors[1] == "");
  std::vector<double> joined = part[0].to_vector(), sk_joined = sk_part[0].to_vector();
  for (double v : part[1].to_vector()) joined.push_back(v);
  for (double v : sk_part[1].to_vector()) sk_joined.push_back(v);
  // The column sums are added in a different order (two partial sums, then their sum).
  CHECK(allclose(joined, one.to_vector(), Tol{1e-14, 1e-12}, "mira split batch"));
  CHECK(allclose(sk_joined, sk_one.to_vector(), Tol{1e-14, 1e-12}, "sinkhorn split batch"));
  for (int r = 0; r < 2; ++r) {
    CHECK(allclose(st[r].wbar.to_vector(), s_one.wbar.to_vector(), Tol{1e-15, 1e-12}, "wbar over ranks"));
    CHECK(st[r].kkt_residual == doctest::Approx(s_one.kkt_residual).epsilon(1e-3));
    CHECK(st[r].target_entropy == doctest::Approx(s_one.target_entropy).epsilon(1e-12));
    CHECK(st[r].marginal_entropy == doctest::Approx(s_one.marginal_entropy).epsilon(1e-12));
    CHECK(sk_st[r].marginal_entropy == doctest::Approx(s_sk_one.marginal_entropy).epsilon(1e-12));
  }
}

TEST_CASE("mira: statistics") {
  const int64_t N = 100, K = 40;
  const auto Lv = randn(N * K, 8, 0.3);
  AssignStats s;
  const Tensor T = mira_assign(Tensor::from_vector(Lv, {N, K}, DType::F64), kTau, kBeta, 30, local_comm(), &s);
  const auto t = T.to_vector();
  const auto wbar = s.wbar.to_vector();
  REQUIRE(wbar.size() == static_cast<size_t>(K));
  CHECK(std::accumulate(wbar.begin(), wbar.end(), 0.0) == doctest::Approx(1.0).epsilon(1e-12));
  std::vector<double> col(K, 0.0);
  double ht = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) {
      col[j] += t[i * K + j] / N;
      ht -= t[i * K + j] * std::log(t[i * K + j]) / N;
    }
  CHECK(allclose(wbar, col, Tol{1e-15, 1e-12}, "wbar"));
  CHECK(s.target_entropy == doctest::Approx(ht).epsilon(1e-12));
  CHECK(s.marginal_entropy <= std::log(static_cast<double>(K)) + 1e-12);
  CHECK(s.marginal_entropy > s.target_entropy);  // MIRA spreads the marginal, sharpens the rows
  CHECK(s.kkt_residual < 1e-9);
  // Identical rows: every row is the prior, wbar = that row, and T is the softmax itself.
  std::vector<double> same(N * K);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) same[i * K + j] = Lv[j];
  AssignStats s2;
  mira_assign(Tensor::from_vector(same, {N, K}, DType::F64), kTau, kBeta, 30, local_comm(), &s2);
  CHECK(s2.target_entropy == doctest::Approx(s2.marginal_entropy).epsilon(1e-9));
  CHECK(s2.kkt_residual < 1e-12);
  // Uniform logits: uniform targets, both entropies log K.
  AssignStats s3;
  mira_assign(Tensor::zeros({N, K}, DType::F32), kTau, kBeta, 30, local_comm(), &s3);
  CHECK(s3.marginal_entropy == doctest::Approx(std::log(static_cast<double>(K))).epsilon(1e-6));
  CHECK(s3.target_entropy == doctest::Approx(std::log(static_cast<double>(K))).epsilon(1e-6));
}

TEST_CASE("mira: extreme and degenerate inputs stay finite and on the simplex") {
  struct Case {
    const char* what;
    int64_t N, K;
    double tau, beta;
    int kind;  // 0: +-100 random signs, 1: N(0, 1), 2: an empty column, 3: one-hot +100, 4: constant
  };
  const Case cases[] = {
      {"+-100, tau' = 0.01", 64, 50, 0.03, 2.0 / 3.0, 0},
      {"+-100, beta 0.99, tau' = 0.01", 64, 50, 1.0, 0.99, 0},
      {"N(0,1), beta 0.99, tau' = 0.01", 64, 50, 1.0, 0.99, 1},
      {"empty column", 64, 50, 0.03, 2.0 / 3.0, 2},
      {"empty column, beta 0.99", 64, 50, 1.0, 0.99, 2},
      {"one-hot rows", 64, 50, 0.03, 0.9, 3},
      {"constant logits", 16, 9, 0.225, 2.0 / 3.0, 4},
      {"N = 1", 1, 300, 0.225, 2.0 / 3.0, 1},
      {"N = 1, +-100", 1, 300, 0.03, 2.0 / 3.0, 0},
      {"K = 1", 200, 1, 0.225, 2.0 / 3.0, 1},
      {"N = K = 1", 1, 1, 0.225, 2.0 / 3.0, 0},
      {"N = 65536", 65536, 3, 0.03, 2.0 / 3.0, 0},
      {"K = 65536", 3, 65536, 0.03, 2.0 / 3.0, 0},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::vector<double> L = extreme_logits(c.N, c.K, c.kind);
    for (int prec : {32, 64}) {
      CAPTURE(prec);
      const auto t = prec == 32 ? kernel_mira<float>(L, c.N, c.K, c.tau, c.beta, 30)
                                : kernel_mira<double>(L, c.N, c.K, c.tau, c.beta, 30);
      CHECK(rows_on_simplex(t, c.N, c.K, prec == 32 ? 1e-5 : 1e-12));
      if (c.kind == 2) {
        double col3 = 0;
        for (int64_t i = 0; i < c.N; ++i) col3 += t[i * c.K + 3];
        CHECK(col3 == 0);  // a column with no mass keeps none
      }
      if (c.kind == 4) CHECK(t[0] == doctest::Approx(1.0 / c.K).epsilon(1e-6));
      if (c.K == 1) CHECK(t[0] == 1.0);
    }
  }
}

// The CUDA cluster plan's arithmetic, run on the CPU (kernels/cpu/mira_assign.h,
// mira_cluster_twin): its block partition and summation order, and its weights from the largest
// column sum, must give the f64 reference's targets to f32 rounding, and stay finite on the
// extreme inputs above. test_mira_assign_gpu compares the kernel with it.
std::vector<double> cluster_twin(const std::vector<double>& L, int64_t N, int64_t K, double tau, double beta, int size,
                                 int iters = 30, int64_t rows = 0, const cpu::MiraNumerics& num = {},
                                 bool mma = false) {
  const int r = static_cast<int>(rows > 0 ? rows : N);
  const int groups = static_cast<int>((N + r - 1) / r);
  const plan_model::ClusterShape cs =
      plan_model::cluster_layout(r, static_cast<int>(K), size, mma ? 2 : 4, groups, mma);
  std::vector<float> l(L.begin(), L.end()), t(L.size());
  cpu::ClusterTwinShape sh;
  sh.size = cs.size, sh.cols = cs.cols, sh.subsets = cs.subsets, sh.rows = r, sh.mma_chunks = cs.mma_chunks;
  cpu::mira_cluster_twin(l.data(), t.data(), N, K, static_cast<float>(tau), static_cast<float>(beta), iters, sh, num);
  return std::vector<double>(t.begin(), t.end());
}

TEST_CASE("mira: the cluster plan's CPU twin against f64") {
  struct Shape {
    int64_t N, K;
    int size;
  };
  // The training shapes (N 64 at 8 blocks, 256 at 16), no vector access (K 3001), one block,
  // a block with no columns (K 300 over 16 blocks of 20), more subsets than rows.
  for (const Shape s : {Shape{64, 3000, 8}, Shape{256, 3000, 16}, Shape{97, 3001, 16}, Shape{512, 300, 1},
                        Shape{40, 290, 16}, Shape{3, 1000, 2}}) {
    CAPTURE(s.N);
    CAPTURE(s.K);
    CAPTURE(s.size);
    const auto L = randn(s.N * s.K, 21, 0.3);
    // The twin runs on f32 logits and an f32 tau and beta: the reference gets the same values.
    const std::vector<float> Lf32(L.begin(), L.end());
    const std::vector<double> Lf(Lf32.begin(), Lf32.end());
    const double tau = static_cast<float>(kTau), beta = static_cast<float>(kBeta);
    // 30 iterations (converged), and 0 and 2 (where every pass shows).
    for (int iters : {30, 0, 2}) {
      CAPTURE(iters);
      const auto ref = kernel_mira<double>(Lf, s.N, s.K, tau, beta, iters);
      const auto got = cluster_twin(Lf, s.N, s.K, tau, beta, s.size, iters);
      CHECK(allclose(got, ref, Tol{2e-6, 2e-4}, "cluster twin"));
      CHECK(rows_on_simplex(got, s.N, s.K, 1e-5));
    }
  }
  // The partition does not change the arithmetic of a row's columns beyond its sums' order.
  const auto L = randn(64 * 500, 22, 0.3);
  CHECK(allclose(cluster_twin(L, 64, 500, kTau, kBeta, 4), cluster_twin(L, 64, 500, kTau, kBeta, 16), Tol{1e-6, 1e-4},
                 "4 vs 16 blocks"));
  // Row groups (the rows of a view over several clusters), a last group with fewer rows.
  {
    const auto Lg = randn(1000 * 700, 23, 0.3);
    const std::vector<float> L32(Lg.begin(), Lg.end());
    const std::vector<double> Lf(L32.begin(), L32.end());
    const double tau = static_cast<float>(kTau), beta = static_cast<float>(kBeta);
    for (int iters : {30, 2}) {
      CAPTURE(iters);
      const auto ref = kernel_mira<double>(Lf, 1000, 700, tau, beta, iters);
      CHECK(allclose(cluster_twin(Lf, 1000, 700, tau, beta, 8, iters, 256), ref, Tol{2e-6, 2e-4}, "4 row groups"));
    }
    // The f16 copy (E * 2^15 in the kernel): as far from f64 as the CPU op's f16 copy, and with 3
    // exact updates at the end as close as f32 (the error table of docs/assignment.md).
    using WC = cpu::WorkingCopy;
    const auto ref = kernel_mira<double>(Lf, 1000, 700, tau, beta, 30);
    const auto f16 = cluster_twin(Lf, 1000, 700, tau, beta, 8, 30, 256, cpu::MiraNumerics{WC::F16, 0});
    const auto op16 = kernel_mira<float>(Lf, 1000, 700, tau, beta, 30, cpu::MiraNumerics{WC::F16, 0});
    CHECK(allclose(f16, op16, Tol{1e-5, 1e-3}, "f16 copy vs the op's"));
    const auto f16_3 = cluster_twin(Lf, 1000, 700, tau, beta, 8, 30, 256, cpu::MiraNumerics{WC::F16, 3});
    CHECK(allclose(f16_3, ref, Tol{2e-6, 2e-4}, "f16 copy, 3 exact updates"));
    auto max_err = [&](const std::vector<double>& t) {
      double e = 0;
      for (size_t i = 0; i < t.size(); ++i) e = std::max(e, std::fabs(t[i] - ref[i]));
      return e;
    };
    MESSAGE("cluster twin, max abs error vs f64: f16 copy ", max_err(f16), ", + 3 exact updates ", max_err(f16_3));
    CHECK(max_err(f16_3) < max_err(f16) / 4);  // the exact updates are in effect
    // The same on tensor cores (the weights and row inverses as two f16 halves, ~22 bits):
    // as close as the fused multiply-adds.
    const auto m16 = cluster_twin(Lf, 1000, 700, tau, beta, 8, 30, 256, cpu::MiraNumerics{WC::F16, 0}, true);
    const auto m16_3 = cluster_twin(Lf, 1000, 700, tau, beta, 8, 30, 256, cpu::MiraNumerics{WC::F16, 3}, true);
    CHECK(allclose(m16, op16, Tol{1e-5, 1e-3}, "f16 copy on tensor cores vs the op's"));
    CHECK(allclose(m16_3, ref, Tol{2e-6, 2e-4}, "f16 copy on tensor cores, 3 exact updates"));
    CHECK(allclose(m16, f16, Tol{1e-6, 1e-4}, "tensor cores vs fused multiply-adds, f16 copy"));
    MESSAGE("tensor-core twin, max abs error vs f64: f16 copy ", max_err(m16), ", + 3 exact updates ", max_err(m16_3));
  }
  // Extreme inputs: finite and on the simplex, an empty column keeps no mass.
  struct Case {
    const char* what;
    int64_t N, K;
    double tau, beta;
    int kind;  // extreme_logits
  };
  const Case cases[] = {{"+-100, tau' = 0.01", 64, 50, 0.03, 2.0 / 3.0, 0},
                        {"+-100, beta 0.99, tau' = 0.01", 64, 50, 1.0, 0.99, 0},
                        {"N(0,1), beta 0.99, tau' = 0.01", 64, 50, 1.0, 0.99, 1},
                        {"empty column, beta 0.99", 64, 50, 1.0, 0.99, 2},
                        {"one-hot rows", 64, 50, 0.03, 0.9, 3},
                        {"N = K = 1", 1, 1, 0.225, 2.0 / 3.0, 0},
                        {"K = 1", 200, 1, 0.225, 2.0 / 3.0, 1},
                        {"K = 12288", 3, 12288, 0.03, 2.0 / 3.0, 0},
                        {"N = 65536, K = 3, row groups of 7000", 65536, 3, 0.03, 2.0 / 3.0, 0}};
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::vector<double> X = extreme_logits(c.N, c.K, c.kind);
    for (int size : {1, 4, 16}) {
      CAPTURE(size);
      const auto t = cluster_twin(X, c.N, c.K, c.tau, c.beta, size, 30, c.N > 1000 ? 7000 : 0);
      CHECK(rows_on_simplex(t, c.N, c.K, 1e-5));
      if (c.kind == 2) {
        double col3 = 0;
        for (int64_t i = 0; i < c.N; ++i) col3 += t[i * c.K + 3];
        CHECK(col3 == 0);
      }
      if (c.K == 1) CHECK(t[0] == 1.0);
    }
    // The f16 copy on tensor cores (its fallback to fused multiply-adds where the halves
    // would lose bits).
    if (c.N > 1000) continue;
    for (int exact : {0, 3}) {
      CAPTURE(exact);
      const auto t =
          cluster_twin(X, c.N, c.K, c.tau, c.beta, 4, 30, 0, cpu::MiraNumerics{cpu::WorkingCopy::F16, exact}, true);
      CHECK(rows_on_simplex(t, c.N, c.K, 1e-5));
    }
  }
}

TEST_CASE("mira: bad arguments raise a clear error") {
  const Tensor L = Tensor::from_vector(randn(20, 1, 1.0), {4, 5});
  auto throws_with = [](auto&& f, const std::string& needle) {
    try {
      f();
    } catch (const Error& e) {
      const std::string msg = e.what();
      if (msg.find(needle) != std::string::npos) return true;
      MESSAGE("message lacks '", needle, "': ", msg);
      return false;
    }
    MESSAGE("no error; expected one mentioning '", needle, "'");
    return false;
  };
  for (double beta : {-0.1, 1.0, 1.5, double(NAN)}) {
    CAPTURE(beta);
    CHECK(throws_with([&] { mira_assign(L, kTau, beta, 30); }, "beta"));
  }
  for (double tau : {0.0, -1.0, double(NAN), double(INFINITY)}) {
    CAPTURE(tau);
    CHECK(throws_with([&] { mira_assign(L, tau, kBeta, 30); }, "tau_t"));
  }
  CHECK(throws_with([&] { mira_assign(L, kTau, kBeta, -1); }, "iters"));
  CHECK(throws_with([&] { mira_assign(Tensor::zeros({0, 5}), kTau, kBeta, 30); }, "empty"));
  CHECK(throws_with([&] { mira_assign(Tensor::zeros({4, 0}), kTau, kBeta, 30); }, "empty"));
  CHECK(throws_with([&] { mira_assign(Tensor::zeros({20}), kTau, kBeta, 30); }, "(N, K)"));
  CHECK(throws_with([&] { mira_assign(Tensor(), kTau, kBeta, 30); }, "undefined"));
  CHECK(throws_with([&] { mira_assign(Tensor::zeros({4, 5}, DType::I64), kTau, kBeta, 30); }, "f32"));
  for (double bad : {double(NAN), double(INFINITY), -double(INFINITY)}) {
    CAPTURE(bad);
    auto v = randn(20, 1, 1.0);
    v[13] = bad;
    for (DType dt : {DType::F32, DType::F64}) {
      const Tensor x = Tensor::from_vector(v, {4, 5}, dt);
      CHECK(throws_with([&] { mira_assign(x, kTau, kBeta, 30); }, "NaN or Inf"));
      CHECK(throws_with([&] { sinkhorn_assign(x); }, "NaN or Inf"));
    }
  }
  CHECK(throws_with([&] { sinkhorn_assign(L, 0.0); }, "eps"));
  CHECK(throws_with([&] { sinkhorn_assign(L, -0.05); }, "eps"));
  CHECK(throws_with([&] { sinkhorn_assign(L, 0.05, 0); }, "iters"));
  CHECK(throws_with([&] { mira_assign(std::vector<Tensor>{L, Tensor::zeros({4, 6})}, kTau, kBeta, 30); }, "views"));
}

TEST_CASE("mira: the Tensor op (f32, f64, several views) matches the kernels") {
  const int64_t N = 33, K = 19;
  const auto Lv = randn(N * K, 10, 0.4);
  const Tensor L64 = Tensor::from_vector(Lv, {N, K}, DType::F64);
  const Tensor L32 = Tensor::from_vector(Lv, {N, K}, DType::F32);
  const Tensor T64 = mira_assign(L64, kTau, kBeta, 30);
  CHECK(T64.dtype() == DType::F64);
  CHECK(T64.to_vector() == kernel_mira<double>(Lv, N, K, kTau, kBeta, 30));
  const Tensor T32 = mira_assign(L32, kTau, kBeta, 30);
  CHECK(T32.dtype() == DType::F32);
  CHECK(T32.to_vector() == kernel_mira<float>(L32.to_vector(), N, K, kTau, kBeta, 30));
  // Several views: each on its own.
  const Tensor L2 = Tensor::from_vector(randn(N * K, 11, 0.4), {N, K}, DType::F32);
  const auto both = mira_assign(std::vector<Tensor>{L32, L2}, kTau, kBeta, 30);
  REQUIRE(both.size() == 2);
  CHECK(both[0].to_vector() == T32.to_vector());
  CHECK(both[1].to_vector() == mira_assign(L2, kTau, kBeta, 30).to_vector());
  // Deterministic: bitwise the same on a second run.
  CHECK(mira_assign(L32, kTau, kBeta, 30).to_vector() == T32.to_vector());
}

TEST_CASE("sinkhorn: the log-domain iteration is SwAV's, finite for extreme logits") {
  const int64_t B = 40, K = 23;
  const auto L = randn(B * K, 12, 0.3);  // exp(L / 0.05) stays in range for the literal version
  for (int iters : {1, 3, 10}) {
    CAPTURE(iters);
    std::vector<double> t(L.size()), work(cpu::sinkhorn_assign_work_size(B, K));
    cpu::sinkhorn_assign_fwd<double>(L.data(), t.data(), B, K, 0.05, iters, work.data());
    CHECK(allclose(t, swav_sinkhorn(L, B, K, 0.05, iters), Tol{1e-13, 1e-10}, "swav"));
    CHECK(rows_on_simplex(t, B, K, 1e-12));
  }
  // +-100 at eps 0.05 overflows exp in any precision; the log domain does not care.
  std::vector<double> x = randn(B * K, 13, 1.0);
  for (auto& v : x) v = v < 0 ? -100 : 100;
  for (int prec : {32, 64}) {
    const Tensor T = sinkhorn_assign(Tensor::from_vector(x, {B, K}, prec == 32 ? DType::F32 : DType::F64));
    CHECK(rows_on_simplex(T.to_vector(), B, K, 1e-5));
  }
  // One sample: the prototype normalisation makes it uniform (SwAV with B = 1).
  const Tensor one = sinkhorn_assign(Tensor::from_vector(randn(K, 14, 1.0), {1, K}, DType::F64));
  for (double v : one.to_vector()) CHECK(v == doctest::Approx(1.0 / K).epsilon(1e-12));
}

TEST_CASE("bench/mira_assign as a tool: .npy logits to .npy targets, as the op computes them") {
  namespace fs = std::filesystem;
  const std::string tool = std::string(MIRA_BINARY_DIR) + "/bench/mira_assign";
  REQUIRE(fs::exists(tool));  // bench/ is always part of the build
  const fs::path dir = fs::temp_directory_path() / ("mira_assign_tool_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const int64_t V = 2, N = 24, K = 17;
  const Tensor L = Tensor::from_vector(randn(V * N * K, 13, 0.4), {V, N, K}, DType::F32);
  const std::string in = (dir / "logits.npy").string(), out = (dir / "targets.npy").string();
  npy_write_tensor(in, L);
  auto run = [&](const std::string& args) {
    const int st = std::system((tool + " --logits " + in + " --out " + out + " " + args + " > /dev/null 2>&1").c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  auto view = [&](int v) { return L.slice_batch(v, v + 1).reshape({N, K}); };
  auto result = [&] { return npy_read_tensor(out).to_vector(); };
  auto both = [&](const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> r = a;
    r.insert(r.end(), b.begin(), b.end());
    return r;
  };
  // MIRA, default options and a 16-bit working copy: (V, N, K) in, (V, N, K) out, view by view.
  REQUIRE(run("--tau 0.3 --beta 0.6 --iters 12") == 0);
  CHECK(result() ==
        both(mira_assign(view(0), 0.3, 0.6, 12).to_vector(), mira_assign(view(1), 0.3, 0.6, 12).to_vector()));
  AssignOptions o;
  o.working_copy = AssignWorkingCopy::F16;
  o.exact_passes = 2;
  REQUIRE(run("--working-copy f16 --exact-passes 2") == 0);
  CHECK(result() == both(mira_assign(view(0), 0.225, 2.0 / 3.0, 30, local_comm(), nullptr, o).to_vector(),
                         mira_assign(view(1), 0.225, 2.0 / 3.0, 30, local_comm(), nullptr, o).to_vector()));
  // Sinkhorn.
  REQUIRE(run("--method sinkhorn --eps 0.1 --iters 3") == 0);
  CHECK(result() == both(sinkhorn_assign(view(0), 0.1, 3).to_vector(), sinkhorn_assign(view(1), 0.1, 3).to_vector()));
  // Bad arguments: an error (exit 1), no crash.
  CHECK(run("--working-copy f8") == 1);
  CHECK(run("--method sinkhorn --working-copy f16") == 1);
  CHECK(run("--exact-passes -1") == 1);
  CHECK(run("--bogus 1") == 1);
  // --variants picks CUDA rows: with the CPU timing it is an error, not silently ignored.
  const std::string timing = tool + " --time --device cpu --n 8 --k 4 --pytorch none --reps 2 --warmup 0";
  CHECK(std::system((timing + " > /dev/null 2>&1").c_str()) == 0);
  CHECK(std::system((timing + " --variants fused > /dev/null 2>&1").c_str()) != 0);
  fs::remove_all(dir);
}

TEST_CASE("mira: the cluster twin at test_mira_assign_gpu's large cluster shapes, against f64") {
  // The kernel equals this twin bit for bit in the emulator, and to ~1 % of the GPU test's
  // tolerance with the GPU's math modelled (test_mira_assign_emu_gpumath); these are the
  // shapes that test is too slow to emulate. The launch shapes are an H100's / H200's:
  // N 4096 over 8 clusters of 16 (512 rows each) or 16 of 8, N 1024 over 4 of 16, N 512 in one.
  struct Shape {
    int64_t N, K;
    int size;
    int64_t rows;
    cpu::WorkingCopy copy;
    int exact;
    Tol tol;  // test_mira_assign_gpu's against f64: kGpuTol, or kF16CacheTol with no exact updates
    bool mma = false;
  };
  using WC = cpu::WorkingCopy;
  const Tol gpu{2e-6, 2e-4}, f16{2e-4, 1e-2};
  for (const Shape s :
       {Shape{4096, 3000, 16, 512, WC::F16, 3, gpu}, Shape{4096, 3000, 8, 256, WC::F16, 3, gpu},
        Shape{1024, 3000, 16, 256, WC::Exact, 0, gpu}, Shape{512, 3000, 16, 512, WC::F16, 0, f16},
        Shape{4096, 3000, 16, 512, WC::F16, 3, gpu, true}, Shape{512, 3000, 16, 512, WC::F16, 0, f16, true}}) {
    CAPTURE(s.N);
    CAPTURE(s.size);
    CAPTURE(s.exact);
    CAPTURE(s.mma);
    const auto L = randn(s.N * s.K, 31, 0.3);
    const std::vector<float> L32(L.begin(), L.end());
    const std::vector<double> Lf(L32.begin(), L32.end());
    const double tau = static_cast<float>(kTau), beta = static_cast<float>(kBeta);
    const auto ref = kernel_mira<double>(Lf, s.N, s.K, tau, beta, 30);
    const auto got =
        cluster_twin(Lf, s.N, s.K, tau, beta, s.size, 30, s.rows, cpu::MiraNumerics{s.copy, s.exact}, s.mma);
    CHECK(allclose(got, ref, s.tol, "cluster twin, large shape"));
  }
}

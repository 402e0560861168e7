// The default fused kernel (kernels/cuda/mira_assign.cu) and the warp-row kernel
// (mira_warprows.cu) run on the CPU by the CUDA emulator (cuda_emu.h), with plans from the
// engine's cost model (plan_model::choose) and layout (fused_plan) for a small emulated GPU:
// - against the f64 reference (or, for the 16-bit working copies, their CPU twins) with the
//   tolerances of test_mira_assign_gpu, over the instantiations mira_plan can pick: 4, 8 and
//   16 columns per thread, 1, 2, 4 and 8 rows per batch, rows in shared memory and in the
//   workspace, views side by side and one after another, f32, bf16 and f16 copies with exact
//   updates, f32 and bf16 logits, vector and scalar access, 0 to 30 iterations;
// - bit for bit where the code claims the same bits: the pipelined update and the flag-tagged
//   column sums against the plain kernel of the same plan.
#include "tests/cuda_emu/cuda_emu.h"
//
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/mira_assign.h"
#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/mira_fused_host.h"
#include "tests/cuda_emu/fused_emu.h"
#include "tests/testing.h"

using namespace mira;  // NOLINT(google-build-using-namespace)
using mira::testing::allclose;
using mira::testing::Tol;
namespace fused = mira::cuda::fused;
using C = cuda::MiraCache;
using S = cuda::MiraSchedule;

namespace {

constexpr float kTau = 0.225f, kBeta = 2.0f / 3.0f;
constexpr int kSmemStatic = 8192;  // more than the kernels' static shared memory
const Tol kGpuTol{2e-6, 2e-4};
const Tol kBf16CacheTol{1e-3, 5e-2};
const Tol kF16TwinTol{1e-5, 1e-3};

// A small GPU (few SMs, so few blocks to emulate) with an H100's shared memory per block.
const plan_model::Device kGpu{6, 232448, 233472, 50e6};
// One with little shared memory per block: most rows of E in the workspace.
const plan_model::Device kTight{6, 24 * 1024, 48 * 1024, 50e6};

struct Case {
  int N = 128, K = 1000, V = 2;
  C cache = C::F32;
  int exact = 0;
  int min_cpt = 0;  // 0: mira_plan's rule (8 above K 2048, else 4)
  int batch_rows = 4;
  int bps = 0;  // blocks per SM (0: the model picks)
  bool pipelined = false, flag_sync = false, warp_rows = false, bf16 = false;
  int iters = 30;
  S schedule = S::Auto;
  plan_model::Device dev = kGpu;
};

std::vector<float> randn(size_t n, uint32_t seed, float stddev) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> x(n);
  for (float& v : x) v = d(g);
  return x;
}

int ceil_div(long long a, long long b) {
  return static_cast<int>((a + b - 1) / b);
}

struct Out {
  cuda::MiraPlan plan;
  std::vector<std::vector<float>> targets;
  float nonfinite = 0;
};

// mira_plan's candidate shape for the case (its add_shape), the model's choice on the emulated
// device, fused_plan's layout and fused_args, then the kernel under the emulator.
Out run_fused(const Case& c, const std::vector<std::vector<float>>& views) {
  Out o;
  cuda::MiraProblem p;
  p.V = c.V, p.N = c.N, p.K = c.K, p.logits_bf16 = c.bf16, p.tau_t = kTau, p.beta = kBeta, p.iters = c.iters;
  std::vector<std::vector<__nv_bfloat16>> b16(c.V);
  o.targets.assign(c.V, std::vector<float>(static_cast<size_t>(c.N) * c.K, NAN));
  for (int v = 0; v < c.V; ++v) {
    if (c.bf16) {
      for (float x : views[v]) b16[v].push_back(__float2bfloat16_rn(x));
      p.logits[v] = b16[v].data();
    } else {
      p.logits[v] = views[v].data();
    }
    p.targets[v] = o.targets[v].data();
  }
  plan_model::Shape sh;
  fused::FusedFn fn = nullptr;
  bool pipe = false, ll = false;
  if (c.warp_rows) {
    const int T = fused::warprows_chunks(c.K);
    sh = plan_model::warp_row_shape(fused::kVec * T, fused::kWarpRowsBlock, 128 * T);
    sh.max_bpv = ceil_div(c.N, fused::kWarpRowsBlock / 32);
    ll = c.flag_sync;
    fn = fused::warprows_fn(c.bf16, c.cache, c.K, ll);
    sh.smem_extra = static_cast<long long>(fused::warprows_comb_bytes(c.K));
  } else {
    const int min_cpt = c.min_cpt > 0 ? c.min_cpt : c.K > 2048 ? 8 : 4;
    int nch = min_cpt / fused::kVec;
    while (nch < 4 && ceil_div(c.K, fused::kVec * nch) > fused::kFusedMaxBlock) nch *= 2;
    const int block = ceil_div(ceil_div(c.K, fused::kVec * nch), 32) * 32;
    const int rows = cuda::fused_emu::batch_rows(nch, c.batch_rows, c.cache);
    sh = plan_model::column_shape(fused::kVec * nch, block, fused::kVec * nch * block, rows);
    pipe = cuda::fused_emu::pipelined(nch, rows, c.pipelined);
    ll = cuda::fused_emu::flag_sync(nch, rows, c.cache, c.flag_sync);
    fn = cuda::fused_emu::select(c.bf16, c.cache, nch, rows, pipe, ll);
  }
  REQUIRE(pipe == c.pipelined);
  REQUIRE(ll == c.flag_sync);
  const plan_model::Device dev = c.dev;
  auto occupancy = [&](long long dyn) {
    const long long per_block = dyn + kSmemStatic + 1024;
    if (per_block > dev.smem_optin) return 0;
    return static_cast<int>(std::min<long long>(2048 / sh.block, dev.smem_sm / per_block));
  };
  sh.bps_fixed = c.bps;
  sh.smem_static = kSmemStatic;
  sh.occ0 = occupancy(sh.smem_extra);
  REQUIRE(sh.occ0 >= 1);
  plan_model::Problem mp;
  mp.V = c.V, mp.N = c.N, mp.K = c.K, mp.iters = c.iters;
  mp.cache_bytes = c.cache == C::F32 ? 4 : 2;
  mp.may_side_by_side = c.schedule != S::Sequential;
  mp.may_one_by_one = c.schedule != S::Concurrent;
  const plan_model::Choice best = plan_model::choose(mp, dev, {sh}, [&](int, long long dyn) { return occupancy(dyn); });
  REQUIRE(best.shape == 0);
  o.plan = fused::fused_plan(p, cuda::MiraVariant::Fused, c.cache, c.exact, c.warp_rows, sh, best, pipe, ll);
  // The workspace starts as NaN (0xff bytes) but for the non-finite counter (mira_assign_cuda
  // clears it; the kernels clear their flag-tagged words themselves).
  std::vector<uint64_t> ws((o.plan.workspace_bytes + 7) / 8 + 32);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) / 256 * 256);
  std::memset(base, 0xff, o.plan.workspace_bytes);
  std::memset(base + o.plan.off_colsum + 4 * o.plan.flag_index, 0, sizeof(float));
  const fused::FusedArgs a = fused::fused_args(p, o.plan, base, 0, c.iters + 2);
  emu::LaunchConfig cfg;
  cfg.grid = static_cast<unsigned>(o.plan.grid);
  cfg.block = static_cast<unsigned>(o.plan.block);
  cfg.smem = o.plan.smem_bytes;
  emu::launch(cfg, fn, a);
  std::memcpy(&o.nonfinite, base + o.plan.off_colsum + 4 * o.plan.flag_index, sizeof(float));
  return o;
}

std::vector<std::vector<float>> make_views(const Case& c, uint32_t seed = 31) {
  std::vector<std::vector<float>> v;
  for (int i = 0; i < c.V; ++i) v.push_back(randn(static_cast<size_t>(c.N) * c.K, seed + i, 0.3f));
  return v;
}

// The f64 reference on the f32 (or bf16-rounded) logits, or the CPU twin of a 16-bit copy.
std::vector<double> reference(const Case& c, const std::vector<float>& logits, cpu::WorkingCopy copy, int exact) {
  std::vector<double> l(logits.begin(), logits.end()), t(l.size());
  if (c.bf16)
    for (double& x : l) x = __bfloat162float(__float2bfloat16_rn(static_cast<float>(x)));
  std::vector<double> work(static_cast<size_t>(cpu::mira_assign_work_size(c.N, c.K)));
  if (copy == cpu::WorkingCopy::Exact) {
    cpu::mira_assign_fwd<double>(l.data(), t.data(), c.N, c.K, kTau, kBeta, c.iters, work.data());
    return t;
  }
  std::vector<float> lf(l.begin(), l.end()), tf(lf.size());
  cpu::mira_assign_fwd<float>(lf.data(), tf.data(), c.N, c.K, kTau, kBeta, c.iters, work.data(), nullptr,
                              cpu::MiraNumerics{copy, exact});
  return std::vector<double>(tf.begin(), tf.end());
}

Out check(const Case& c) {
  CAPTURE(c.N);
  CAPTURE(c.K);
  CAPTURE(c.V);
  CAPTURE(static_cast<int>(c.cache));
  CAPTURE(c.exact);
  CAPTURE(c.min_cpt);
  CAPTURE(c.batch_rows);
  CAPTURE(c.warp_rows);
  CAPTURE(c.iters);
  const auto views = make_views(c);
  Out o = run_fused(c, views);
  CAPTURE(o.plan.cpt);
  CAPTURE(o.plan.block);
  CAPTURE(o.plan.grid);
  CAPTURE(o.plan.batch_rows);
  CAPTURE(o.plan.rows_per_block);
  CAPTURE(o.plan.smem_rows);
  CAPTURE(o.plan.views_per_group);
  CHECK(o.nonfinite == 0.f);
  for (int v = 0; v < c.V; ++v) {
    CAPTURE(v);
    const std::vector<double> got(o.targets[v].begin(), o.targets[v].end());
    if (c.cache == C::F32) {
      CHECK(allclose(got, reference(c, views[v], cpu::WorkingCopy::Exact, 0), kGpuTol, "fused (emulated) vs f64"));
    } else if (c.cache == C::F16) {
      CHECK(allclose(got, reference(c, views[v], cpu::WorkingCopy::F16, c.exact), kF16TwinTol,
                     "fused f16 copy (emulated) vs its CPU twin"));
    } else {
      CHECK(allclose(got, reference(c, views[v], cpu::WorkingCopy::Exact, 0), kBf16CacheTol,
                     "fused bf16 copy (emulated) vs f64"));
    }
  }
  return o;
}

bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t v = 0; v < a.size(); ++v)
    if (a[v].size() != b[v].size() || std::memcmp(a[v].data(), b[v].data(), a[v].size() * sizeof(float)) != 0)
      return false;
  return true;
}

}  // namespace

TEST_CASE("cuda_emu: the default fused kernel's instantiations against the f64 reference") {
  Case c;
  SUBCASE("4 columns per thread, 4 rows per batch") {}
  SUBCASE("4 columns, 8 rows per batch") {
    c.batch_rows = 8;
  }
  SUBCASE("8 columns (K 3000, 2 rows), scalar access (K 3001), 2 blocks per SM") {
    c.K = 3001;
    c.N = 64;
    c.bps = 2;
  }
  SUBCASE("8 columns, 4 rows (batch_rows 8), f32") {
    c.K = 3000;
    c.N = 64;
    c.min_cpt = 8;
    c.batch_rows = 8;
  }
  SUBCASE("16 columns (K 10000: one row per batch), one view") {
    c.K = 10000;
    c.N = 24;
    c.V = 1;
  }
  SUBCASE("rows of E in the workspace") {
    c.N = 300;
    c.dev = kTight;
  }
  SUBCASE("views one after another; four views side by side") {
    c.schedule = S::Sequential;
    check(c);
    c.schedule = S::Concurrent;
    c.V = 4;
    c.N = 40;
  }
  SUBCASE("bf16 logits; 0 and 2 iterations") {
    c.bf16 = true;
    check(c);
    c.bf16 = false;
    c.iters = 0;
    check(c);
    c.iters = 2;
  }
  SUBCASE("bf16 copy, with 5 exact updates; f16 copy with 0 and 3") {
    c.cache = C::BF16;
    check(c);
    c.exact = 5;
    check(c);
    c.cache = C::F16;
    c.exact = 0;
    check(c);
    c.exact = 3;
    c.dev = kTight;
    c.N = 300;
  }
  check(c);
}

TEST_CASE("cuda_emu: the pipelined update and the flag-tagged sums give the plain kernel's bits") {
  for (const C cache : {C::F32, C::F16}) {
    for (const int K : {1000, 3000}) {
      CAPTURE(static_cast<int>(cache));
      CAPTURE(K);
      Case c;
      c.K = K;
      c.N = K > 2048 ? 64 : 128;
      c.cache = cache;
      c.exact = cache == C::F16 ? 3 : 0;
      const Out plain = check(c);
      c.pipelined = true;
      const Out pipe = check(c);
      CHECK(pipe.plan.grid == plain.plan.grid);
      CHECK(pipe.plan.rows_per_block == plain.plan.rows_per_block);
      CHECK(same_bits(pipe.targets, plain.targets));
      c.pipelined = false;
      c.flag_sync = true;
      const Out flags = check(c);
      CHECK(flags.plan.grid == plain.plan.grid);
      CHECK(same_bits(flags.targets, plain.targets));
    }
  }
}

TEST_CASE("cuda_emu: the warp-row kernel against the f64 reference and its f16 twin") {
  Case c;
  c.warp_rows = true;
  SUBCASE("f32") {}
  SUBCASE("f32, K 3000, flag-tagged sums") {
    c.K = 3000;
    c.N = 64;
    c.flag_sync = true;
  }
  SUBCASE("f16 copy, 3 exact updates, scalar access") {
    c.K = 999;
    c.cache = C::F16;
    c.exact = 3;
  }
  check(c);
}

TEST_CASE("cuda_emu: the default fused kernel counts non-finite logits") {
  Case c;
  c.N = 16, c.K = 40, c.V = 1;
  auto views = make_views(c);
  views[0][5] = NAN;
  views[0][77] = INFINITY;
  CHECK(run_fused(c, views).nonfinite == 2.f);
}

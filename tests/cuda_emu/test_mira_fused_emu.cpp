// The default fused kernel (kernels/cuda/mira_assign.cu) and the tensor-core updates
// (mira_mmarows.cu) run on the CPU by the CUDA emulator (cuda_emu.h), through the engine's own
// host code (mira_plan, mira_assign_cuda) on a small emulated GPU:
// - against the f64 reference (or, for the 16-bit working copies, their CPU twins) with the
//   tolerances of test_mira_assign_gpu, over the instantiations mira_plan can pick: 4, 8 and
//   16 columns per thread, 1, 2, 4 and 8 rows per batch, rows in shared memory and in the
//   workspace, views side by side and one after another, f32, bf16 and f16 copies with exact
//   updates, f32 and bf16 logits, vector and scalar access, 0 to 30 iterations;
// - bit for bit where the code claims the same bits: one launch (with the largest column sums
//   published by the column reduction) against one launch per pass of the same plan, and the
//   options that claim the plain kernel's bits (barriers, staging, rows kept in shared memory)
//   against it.
#include "tests/cuda_emu/cuda_emu.h"
//
#include <doctest/doctest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/mira_assign.h"
#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cpu/mira_trace.h"
#include "kernels/cuda/mira_assign.cuh"
#include "tests/cuda_emu/emu_testing.h"
#include "tests/testing.h"

using namespace mira;  // NOLINT(google-build-using-namespace)
using emu_testing::extreme;
using emu_testing::on_simplex;
using emu_testing::randn;
using emu_testing::same_bits;
using emu_testing::Workspace;
using mira::testing::allclose;
using mira::testing::Tol;
using C = cuda::MiraCache;
using S = cuda::MiraSchedule;

namespace {

constexpr float kTau = 0.225f, kBeta = 2.0f / 3.0f;
const Tol kGpuTol{2e-6, 2e-4};
const Tol kBf16CacheTol{1e-3, 5e-2};
const Tol kF16TwinTol{1e-5, 1e-3};

// A small GPU (few SMs, so few blocks to emulate) with an H100's shared memory per block.
emu::DeviceProps gpu() {
  return emu::DeviceProps{};
}
// One with little shared memory per block: most rows of E in the workspace.
emu::DeviceProps tight() {
  emu::DeviceProps d;
  d.smem_optin = 24 * 1024;
  d.smem_sm = 48 * 1024;
  return d;
}

// Shared memory for ~7 rows of K 3000 per block in the f16 copy (4 in f32): the staging and
// atomic-sum cases' rows in the workspace at small N.
emu::DeviceProps mid_smem() {
  emu::DeviceProps d;
  d.smem_optin = 48 * 1024;
  d.smem_sm = 96 * 1024;
  return d;
}
// ~8 rows of K 3000 in f32 per block.
emu::DeviceProps roomy_smem() {
  emu::DeviceProps d;
  d.smem_optin = 100 * 1024;
  d.smem_sm = 200 * 1024;
  return d;
}

// A shape of the opt-in levers' cases (staging, atomic sums) and the barrier kinds it runs.
struct LeverShape {
  C cache;
  int N, K, iters;
  S schedule;
  emu::DeviceProps dev;
  std::vector<cuda::GridSync> kinds;
  int batch_rows = 4;  // asked for: 2 rows per batch at 8 columns; 8: the f16 copy's packed 4
};

struct Case {
  int N = 128, K = 1000, V = 2;
  C cache = C::F32;
  int exact = 0;
  int min_cpt = 0;  // 0: mira_plan's rule (8 above K 2048, else 4)
  int batch_rows = 4;
  int bps = 0;  // blocks per SM (0: the model picks)
  bool bf16 = false;
  bool mma_rows = false, mma_fallback = false;  // the tensor-core updates (f16 copy); every pass on their FMA path
  bool stage_rows = false;                      // the workspace's rows staged through shared memory
  int max_smem_rows = -1;                       // rows per block kept in shared memory at most
  bool atomic_sums = false;                     // the column sums added by atomics
  int iters = 30;
  float tau = kTau, beta = kBeta;
  S schedule = S::Auto;
  cuda::GridSync grid_sync = cuda::GridSync::Cooperative;
  emu::DeviceProps dev = gpu();
};

struct Out {
  cuda::MiraPlan plan;
  std::vector<std::vector<float>> targets;
  float nonfinite = 0;
};

cuda::MiraPlanOptions plan_options(const Case& c) {
  cuda::MiraPlanOptions o;
  o.cache = c.cache;
  o.exact_passes = c.exact;
  o.schedule = c.schedule;
  o.batch_rows = c.batch_rows;
  o.min_cols_per_thread = c.min_cpt;
  o.blocks_per_sm = c.bps;
  o.mma_rows = c.mma_rows;
  o.grid_sync = c.grid_sync;
  o.stage_rows = c.stage_rows;
  o.max_smem_rows = c.max_smem_rows;
  o.atomic_sums = c.atomic_sums;
  return o;
}

cuda::MiraProblem problem(const Case& c, const std::vector<std::vector<float>>& views,
                          std::vector<std::vector<__nv_bfloat16>>& b16, std::vector<std::vector<float>>& targets) {
  cuda::MiraProblem p;
  p.V = c.V, p.N = c.N, p.K = c.K, p.logits_bf16 = c.bf16, p.tau_t = c.tau, p.beta = c.beta, p.iters = c.iters;
  b16.assign(c.V, {});
  targets.assign(c.V, std::vector<float>(static_cast<size_t>(c.N) * c.K, NAN));
  for (int v = 0; v < c.V; ++v) {
    if (c.bf16) {
      for (float x : views[v]) b16[v].push_back(__float2bfloat16_rn(x));
      p.logits[v] = b16[v].data();
    } else {
      p.logits[v] = views[v].data();
    }
    p.targets[v] = targets[v].data();
  }
  return p;
}

// The engine's host code on the emulated device: mira_plan (its candidate shapes and the cost
// model's choice), then mira_assign_cuda (its launches, clears and arguments).
Out run_fused(const Case& c, const std::vector<std::vector<float>>& views) {
  Out o;
  emu::set_device(c.dev);
  std::vector<std::vector<__nv_bfloat16>> b16;
  const cuda::MiraProblem p = problem(c, views, b16, o.targets);
  o.plan = cuda::mira_plan(p, cuda::MiraVariant::Fused, plan_options(c));
  REQUIRE(o.plan.cluster == 0);
  CHECK((o.plan.mma_rows > 0) == c.mma_rows);
  o.plan.mma_fallback = c.mma_fallback;
  Workspace ws(o.plan.workspace_bytes);
  cuda::mira_assign_cuda(p, o.plan, ws.base, nullptr);
  CHECK(ws.intact());
  o.nonfinite = *cuda::mira_nonfinite_count(o.plan, ws.base);
  return o;
}

// The unfused kernels (three launches per pass) through the same host code.
std::vector<std::vector<float>> run_unfused(const Case& c, const std::vector<std::vector<float>>& views) {
  std::vector<std::vector<__nv_bfloat16>> b16;
  std::vector<std::vector<float>> t;
  const cuda::MiraProblem p = problem(c, views, b16, t);
  const cuda::MiraPlan plan = cuda::mira_plan(p, cuda::MiraVariant::Unfused);
  Workspace ws(plan.workspace_bytes);
  cuda::mira_assign_cuda(p, plan, ws.base, nullptr);
  CHECK(ws.intact());
  return t;
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
    cpu::mira_assign_fwd<double>(l.data(), t.data(), c.N, c.K, c.tau, c.beta, c.iters, work.data());
    return t;
  }
  std::vector<float> lf(l.begin(), l.end()), tf(lf.size());
  cpu::mira_assign_fwd<float>(lf.data(), tf.data(), c.N, c.K, c.tau, c.beta, c.iters, work.data(), nullptr,
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
  CAPTURE(c.mma_rows);
  CAPTURE(c.mma_fallback);
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

// check() with the threads shuffled at every barrier (emu::set_schedule 5): a read that a
// barrier leaves unordered shows as other bits. The plain order is restored however it ends.
Out check_shuffled(const Case& c) {
  struct Restore {
    ~Restore() { emu::set_schedule(0); }
  } restore;
  emu::set_schedule(5);
  return check(c);
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
  SUBCASE("8 columns, 4 rows (batch_rows 8), f16 copy (packed), 3 exact updates") {
    c.K = 3000;
    c.N = 62;
    c.min_cpt = 8;
    c.batch_rows = 8;
    c.cache = C::F16;
    c.exact = 3;
  }
  SUBCASE("16 columns (K 10000: one row per batch), one view") {
    c.K = 10000;
    c.N = 24;
    c.V = 1;
  }
  SUBCASE("rows of E in the workspace") {
    c.N = 300;
    c.dev = tight();
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
    c.dev = tight();
    c.N = 300;
  }
  check(c);
}

TEST_CASE("cuda_emu: one launch gives the bits of one launch per pass (published largest sums against block maxima)") {
  // In one launch the column reduction also publishes each pass's log2 sums and, by atomicMax
  // on their bits, the pass's largest sum (MiraPlan::max_sums), from which the next pass's
  // weights come; one launch per pass (PerPass, one rank) has neither and takes the largest
  // sum by a block reduction in every block. The same weights, so the same bits: a warp's
  // maximum dropped, or a pass's word not cleared, shows here (the f64 reference would not see
  // the first: a common factor in the weights cancels).
  for (const C cache : {C::F32, C::F16}) {
    for (const int K : {1000, 3000}) {
      CAPTURE(static_cast<int>(cache));
      CAPTURE(K);
      Case c;
      c.K = K;
      c.N = K > 2048 ? 64 : 128;
      c.cache = cache;
      c.exact = cache == C::F16 ? 3 : 0;
      // The same launch geometry for both: per-pass plans run the views side by side with as
      // many blocks per SM as fit (up to 8), so the one launch is asked for that too.
      c.min_cpt = K > 2048 ? 8 : 4;
      c.bps = 8;
      c.schedule = S::Concurrent;
      const auto views = make_views(c);
      const Out one = check(c);
      CHECK(one.plan.max_sums);
      std::vector<std::vector<__nv_bfloat16>> b16;
      std::vector<std::vector<float>> t;
      const cuda::MiraProblem p = problem(c, views, b16, t);
      const cuda::MiraPlan pp = cuda::mira_plan(p, cuda::MiraVariant::PerPass, plan_options(c));
      REQUIRE(!pp.max_sums);
      REQUIRE(pp.grid == one.plan.grid);
      REQUIRE(pp.block == one.plan.block);
      REQUIRE(pp.rows_per_block == one.plan.rows_per_block);
      REQUIRE(pp.views_per_group == one.plan.views_per_group);
      Workspace ws(pp.workspace_bytes);
      for (int pass = 0; pass <= c.iters + 1; ++pass) cuda::mira_assign_pass_cuda(p, pp, pass, ws.base, nullptr);
      CHECK(ws.intact());
      CHECK(same_bits(t, one.targets));
    }
  }
}

TEST_CASE("cuda_emu: a counter per view group, staggered or not, gives the cooperative barriers' bits") {
  // GridSync::ViewCounter / ViewCounterStagger: each view group's blocks meet only each other,
  // and with Stagger the second group's first update waits for the first group's. 8 columns
  // per thread at two blocks per SM (their only kernels), the views side by side (two and
  // three groups: the stagger cascades), f32 and f16 + 3 exact, 1 iteration (the stagger waits
  // for pass 1's rows, the last update) and 0 (no update: no stagger), views one after another
  // (one group: a plain counter); threads shuffled at every barrier. A plan with no such
  // kernel (4 columns per thread) keeps cooperative barriers.
  using GS = cuda::GridSync;
  struct Shape {
    int N, K, V;
    C cache;
    S schedule;
    int iters;
  };
  for (const Shape& sh : {Shape{96, 3000, 2, C::F32, S::Concurrent, 30}, Shape{64, 2500, 2, C::F16, S::Concurrent, 30},
                          Shape{50, 2100, 3, C::F32, S::Concurrent, 12}, Shape{96, 3000, 2, C::F16, S::Concurrent, 1},
                          Shape{64, 3000, 2, C::F32, S::Concurrent, 0}, Shape{96, 3000, 2, C::F32, S::Sequential, 8}}) {
    CAPTURE(sh.N);
    CAPTURE(sh.K);
    CAPTURE(sh.V);
    CAPTURE(static_cast<int>(sh.schedule));
    CAPTURE(sh.iters);
    Case c;
    c.N = sh.N, c.K = sh.K, c.V = sh.V, c.cache = sh.cache, c.schedule = sh.schedule, c.iters = sh.iters;
    c.exact = sh.cache == C::F16 ? 3 : 0;
    c.min_cpt = 8, c.bps = 2;
    const Out plain = check(c);
    REQUIRE(plain.plan.cpt == 8);
    REQUIRE(plain.plan.grid_sync == static_cast<int>(GS::Cooperative));
    CHECK(plain.plan.views_per_group == (sh.schedule == S::Concurrent ? sh.V : 1));
    for (const GS kind : {GS::ViewCounter, GS::ViewCounterStagger}) {
      CAPTURE(cuda::grid_sync_name(kind));
      c.grid_sync = kind;
      const Out o = check_shuffled(c);
      CHECK(o.plan.grid == plain.plan.grid);
      CHECK(o.plan.grid_sync == static_cast<int>(kind));
      CHECK(o.plan.workspace_bytes == plain.plan.workspace_bytes + std::max(256, 128 * plain.plan.views_per_group));
      CHECK(same_bits(o.targets, plain.targets));
    }
  }
  Case four;
  four.K = 1000, four.min_cpt = 4, four.grid_sync = GS::ViewCounterStagger;
  const Out o = check(four);
  CHECK(o.plan.cpt == 4);
  CHECK(o.plan.grid_sync == static_cast<int>(GS::Cooperative));
  // One counter for the whole grid, per block or per cluster, is the probe's only: refused.
  emu::set_device(gpu());
  const auto views = make_views(four);
  std::vector<std::vector<__nv_bfloat16>> b16;
  std::vector<std::vector<float>> t;
  const cuda::MiraProblem p = problem(four, views, b16, t);
  for (const GS kind : {GS::Counter, GS::ClusterCounter}) {
    cuda::MiraPlanOptions po = plan_options(four);
    po.grid_sync = kind;
    CHECK_THROWS_WITH_AS(cuda::mira_plan(p, cuda::MiraVariant::Fused, po), doctest::Contains("probe-sync only"), Error);
  }
}

TEST_CASE("cuda_emu: the automatic barriers pick the per-view counters where they measured faster") {
  // GridSync::Auto (MiraPlanOptions' default; plan_model::auto_barrier): 8 columns x 2 blocks
  // per SM with the views side by side take the plain per-view counters with the f16 copy and
  // the staggered ones with f32; one view group, exact passes, the bf16 copy and 4 columns per
  // thread keep cooperative barriers. Each against the same plan with cooperative barriers
  // pinned: the same bits.
  using GS = cuda::GridSync;
  struct Row {
    C cache;
    int exact;
    S schedule;
    int min_cpt;
    GS expect;
  };
  for (const Row& r :
       {Row{C::F16, 0, S::Concurrent, 8, GS::ViewCounter}, Row{C::F32, 0, S::Concurrent, 8, GS::ViewCounterStagger},
        Row{C::F16, 3, S::Concurrent, 8, GS::Cooperative}, Row{C::BF16, 0, S::Concurrent, 8, GS::Cooperative},
        Row{C::F32, 0, S::Sequential, 8, GS::Cooperative}, Row{C::F32, 0, S::Concurrent, 4, GS::Cooperative}}) {
    CAPTURE(static_cast<int>(r.cache));
    CAPTURE(r.exact);
    CAPTURE(static_cast<int>(r.schedule));
    CAPTURE(r.min_cpt);
    Case c;
    c.N = 96, c.K = 3000, c.V = 2, c.cache = r.cache, c.exact = r.exact, c.schedule = r.schedule, c.iters = 6;
    c.min_cpt = r.min_cpt, c.bps = r.min_cpt == 8 ? 2 : 0;
    const Out plain = check(c);
    REQUIRE(plain.plan.grid_sync == static_cast<int>(GS::Cooperative));
    c.grid_sync = GS::Auto;
    const Out o = check_shuffled(c);
    CHECK(o.plan.grid_sync == static_cast<int>(r.expect));
    CHECK(o.plan.grid == plain.plan.grid);
    CHECK(same_bits(o.targets, plain.targets));
  }
  // The options' default is Auto.
  CHECK(cuda::MiraPlanOptions{}.grid_sync == GS::Auto);
}

TEST_CASE("cuda_emu: the f16 copy's packed 4-row update gives the 2-row kernel's bits") {
  // batch_rows 8 at 8 columns: the f16 copy's update passes in batches of 4 rows, kept packed
  // in registers (update_rows), and its exact passes 2 rows at a time. Over 12 warps (384
  // threads) RowReduce sums each row in the same order for 2 and 4 rows, so the targets must be
  // bitwise those of the 2-row kernel: block row counts that 4 does not divide, rows in shared memory and in the
  // workspace (a smaller device), 0 and 3 exact passes, views side by side and one after another, and the per-view
  // counters; threads shuffled. Also the 4-column kernel's 8-row batches of the f16 copy, packed too, against the twin.
  using GS = cuda::GridSync;
  struct Row {
    int N, exact;
    S schedule;
    GS sync;
    bool tight;
    int cpt = 8;  // 4: the 4-column kernel's 8-row batches (packed too) against its 4-row ones
  };
  for (const Row& r :
       {Row{96, 0, S::Concurrent, GS::Cooperative, false}, Row{61, 3, S::Concurrent, GS::Cooperative, false},
        Row{300, 0, S::Sequential, GS::Cooperative, true}, Row{96, 0, S::Concurrent, GS::ViewCounter, false},
        Row{250, 3, S::Concurrent, GS::ViewCounter, true}, Row{77, 3, S::Concurrent, GS::Cooperative, false, 4}}) {
    CAPTURE(r.N);
    CAPTURE(r.exact);
    CAPTURE(static_cast<int>(r.schedule));
    CAPTURE(cuda::grid_sync_name(r.sync));
    CAPTURE(r.tight);
    Case c;
    c.N = r.N, c.K = 3000, c.V = 2, c.cache = C::F16, c.exact = r.exact, c.schedule = r.schedule, c.iters = 7;
    c.min_cpt = r.cpt, c.bps = r.cpt == 8 ? 2 : 1, c.grid_sync = r.sync;
    CAPTURE(r.cpt);
    if (r.tight) c.dev = tight();
    const Out two = check(c);
    REQUIRE(two.plan.batch_rows == (r.cpt == 8 ? 2 : 4));
    c.batch_rows = 8;
    const Out four = check_shuffled(c);
    CHECK(four.plan.batch_rows == (r.cpt == 8 ? 4 : 8));
    CHECK(four.plan.cpt == r.cpt);
    // 24 warps (4 columns, 768 threads): the 8-row reduction sums a row's warps in another
    // order than the 4-row one (rounding apart; check_shuffled held it to the twin).
    if (r.cpt == 4) continue;
    CHECK(four.plan.grid_sync == static_cast<int>(r.sync));
    if (r.tight) CHECK(four.plan.smem_rows < (four.plan.rows_per_block));
    CHECK(same_bits(four.targets, two.targets));
  }
}

TEST_CASE("cuda_emu: the trace's timeline holds each block's phases in order, summing to its totals") {
  // MiraPlan::trace: per block, the phase totals, the SM, then the timeline (clock64 << 4 |
  // phase): the start (tagged kTraceTotal), then each phase's end as far as kMiraTraceMarks
  // words go. With 2 iterations every mark fits, and each phase's intervals sum exactly to its
  // total; with 30 the timeline stops at its last word and sums to no more. Tracing changes
  // no target.
  for (const int iters : {2, 30}) {
    CAPTURE(iters);
    Case c;
    c.N = 96, c.K = 3000, c.V = 2, c.cache = C::F16, c.schedule = S::Concurrent, c.iters = iters;
    c.min_cpt = 8, c.bps = 2, c.grid_sync = cuda::GridSync::Auto;
    const auto views = make_views(c);
    const Out plain = run_fused(c, views);
    emu::set_device(c.dev);
    std::vector<std::vector<__nv_bfloat16>> b16;
    std::vector<std::vector<float>> targets;
    const cuda::MiraProblem p = problem(c, views, b16, targets);
    cuda::MiraPlan plan = cuda::mira_plan(p, cuda::MiraVariant::Fused, plan_options(c));
    std::vector<unsigned long long> trace(static_cast<size_t>(plan.grid) * cuda::kMiraTraceWords, 0);
    plan.trace = trace.data();
    Workspace ws(plan.workspace_bytes);
    cuda::mira_assign_cuda(p, plan, ws.base, nullptr);
    CHECK(same_bits(targets, plain.targets));
    for (int b = 0; b < plan.grid; ++b) {
      CAPTURE(b);
      const unsigned long long* row = trace.data() + static_cast<size_t>(b) * cuda::kMiraTraceWords;
      const unsigned long long* tl = row + cuda::kMiraTracePhases + 1;
      REQUIRE((tl[0] & 15) == cuda::kMiraTracePhases - 1);
      std::vector<unsigned long long> sums(cuda::kMiraTracePhases, 0);
      int n = 1;
      bool ordered = true, tagged = true;
      for (; n < cuda::kMiraTraceMarks && tl[n] != 0; ++n) {
        ordered = ordered && (tl[n] >> 4) >= (tl[n - 1] >> 4);
        const unsigned k = tl[n] & 15;
        tagged = tagged && k < cuda::kMiraTracePhases - 1;
        if (k < cuda::kMiraTracePhases) sums[k] += (tl[n] >> 4) - (tl[n - 1] >> 4);
      }
      CHECK(ordered);
      CHECK(tagged);
      CHECK((tl[1] & 15) == 0);                                                   // the first pass ends first
      CHECK((tl[n - 1] >> 4) - (tl[0] >> 4) <= row[cuda::kMiraTracePhases - 1]);  // within the launch
      for (int k = 0; k + 1 < cuda::kMiraTracePhases; ++k) {
        CAPTURE(k);
        if (iters == 2)
          CHECK(sums[static_cast<size_t>(k)] == row[k]);
        else
          CHECK(sums[static_cast<size_t>(k)] <= row[k]);
      }
      if (iters == 2) CHECK(n < cuda::kMiraTraceMarks);
      if (iters == 30) CHECK(n == cuda::kMiraTraceMarks);
    }
    // The host's reading of it (kernels/cpu/mira_trace.h, bench/mira_assign --trace): per view
    // group (the plan's per-view counters), every update pass the timelines hold: both with 2
    // iterations, the first 9 with 30 (5 marks for the first pass, 5 per update, 48 in all).
    REQUIRE(cuda::grid_sync_per_view(static_cast<cuda::GridSync>(plan.grid_sync)));
    const mira::trace::Layout lay{cuda::kMiraTracePhases, cuda::kMiraTraceMarks};
    std::vector<int> group(static_cast<size_t>(plan.grid));
    for (int b = 0; b < plan.grid; ++b) group[static_cast<size_t>(b)] = b / plan.blocks_per_view;
    const auto* words = reinterpret_cast<const int64_t*>(trace.data());
    const mira::trace::PassSpread ps = mira::trace::pass_spread(words, lay, group, 1.0);
    CHECK(ps.passes == c.V * (iters == 2 ? 2 : 9));
    CHECK(ps.barrier1.min >= 0);
    CHECK(ps.barrier1.min <= ps.barrier1.median);
    CHECK(ps.barrier1.median <= ps.barrier1.max);
    CHECK(ps.rows.min > 0);
    CHECK(ps.late_repeat >= 0);
    CHECK(ps.late_repeat <= 1);
    CHECK(mira::trace::rows_overlap(words, lay, plan.grid, 1.0).marks == (iters == 2 ? 5 + 2 * 5 + 2 : 48));
  }
}

TEST_CASE("cuda_emu: the workspace's rows staged through shared memory give the plain kernel's bits") {
  // MiraPlanOptions::stage_rows: update_rows_staged copies each thread's columns of the next
  // batch with cp.async into a ring of 2 batches after the rows kept in shared memory (the
  // emulator writes a copy only at the wait that completes it, so a read that does not wait
  // sees the ring's old rows). The f16 copy on a device with 7 rows of shared memory per block
  // (6 kept, 4 of them become the ring): 8 rows per block staged (N 58, the last block fewer),
  // N 96 at K 2500, N 150 with views one after another; its cooperative barriers and per-view
  // counters. The f32 copy on one with 8 rows (4 kept): cooperative and staggered counters.
  // The f16 copy's packed 4-row batches (batch_rows 8, a ring of 8 rows) on a device with 16
  // rows per block (N 250: 26 staged). And the automatic barriers, which stay those of the
  // plain plan. Threads shuffled.
  using GS = cuda::GridSync;
  const emu::DeviceProps mid = mid_smem(), roomy = roomy_smem();
  using Shape = LeverShape;
  for (const Shape& sh :
       {Shape{C::F16, 58, 3000, 30, S::Concurrent, mid, {GS::Cooperative, GS::ViewCounter}},
        Shape{C::F16, 96, 2500, 8, S::Concurrent, mid, {GS::Cooperative, GS::ViewCounter, GS::Auto}},
        Shape{C::F16, 150, 2100, 3, S::Sequential, mid, {GS::Cooperative, GS::Auto}},
        Shape{C::F32, 96, 3000, 6, S::Concurrent, roomy, {GS::Cooperative, GS::ViewCounterStagger, GS::Auto}},
        Shape{C::F16, 250, 3000, 6, S::Concurrent, roomy, {GS::Cooperative, GS::ViewCounter, GS::Auto}, 8}}) {
    CAPTURE(static_cast<int>(sh.cache));
    CAPTURE(sh.N);
    CAPTURE(sh.K);
    Case c;
    c.N = sh.N, c.K = sh.K, c.iters = sh.iters, c.schedule = sh.schedule, c.cache = sh.cache;
    c.min_cpt = 8, c.bps = 2, c.batch_rows = sh.batch_rows;
    c.dev = sh.dev;
    const Out plain = check(c);
    REQUIRE(plain.plan.cpt == 8);
    const int ring = sh.batch_rows == 8 ? 8 : 4;  // 2 batches
    REQUIRE(plain.plan.batch_rows == ring / 2);
    CHECK(plain.plan.stage_rows == 0);
    CHECK(plain.plan.smem_rows >= ring);
    CHECK(plain.plan.smem_rows < plain.plan.rows_per_block);  // rows in the workspace
    c.stage_rows = true;
    for (const GS kind : sh.kinds) {
      CAPTURE(cuda::grid_sync_name(kind));
      c.grid_sync = kind;
      const Out o = check_shuffled(c);
      CHECK(o.plan.stage_rows == ring);
      CHECK(o.plan.smem_rows == plain.plan.smem_rows - ring);
      CHECK(o.plan.smem_bytes == plain.plan.smem_bytes);
      const GS want = kind != GS::Auto                                             ? kind
                      : sh.schedule == S::Sequential || plain.plan.batch_rows != 2 ? GS::Cooperative
                      : sh.cache == C::F16                                         ? GS::ViewCounter
                                                                                   : GS::ViewCounterStagger;
      CHECK(o.plan.grid_sync == static_cast<int>(want));
      CHECK(same_bits(o.targets, plain.targets));
    }
  }
  // Where it does not apply the plan says so: 4 columns per thread, bf16 logits, every row in
  // shared memory, or too few rows there for the ring.
  Case four;
  four.K = 1000, four.cache = C::F16, four.stage_rows = true;
  const Out o4 = check(four);
  CHECK(o4.plan.cpt == 4);
  CHECK(o4.plan.stage_rows == 0);
  Case b16;
  b16.K = 3000, b16.N = 58, b16.cache = C::F16, b16.bf16 = true, b16.min_cpt = 8, b16.bps = 2, b16.dev = mid;
  b16.stage_rows = true;
  CHECK(check(b16).plan.stage_rows == 0);
  Case all;
  all.K = 3000, all.N = 58, all.cache = C::F16, all.min_cpt = 8, all.bps = 2, all.stage_rows = true;
  const Out oa = check(all);
  CHECK(oa.plan.smem_rows >= oa.plan.rows_per_block);
  CHECK(oa.plan.stage_rows == 0);
  Case tight_f32;
  tight_f32.K = 3000, tight_f32.N = 58, tight_f32.min_cpt = 8, tight_f32.bps = 2, tight_f32.dev = mid;
  tight_f32.stage_rows = true;
  const Out ot = check(tight_f32);
  CHECK(ot.plan.smem_rows < 4);
  CHECK(ot.plan.stage_rows == 0);
}

TEST_CASE("cuda_emu: the column sums added by atomics give the plain kernel's targets to f32 rounding") {
  // MiraPlanOptions::atomic_sums: each block adds its partial column sums into its view's
  // buffer of the pass (three in turn: zeroed by the launch, each cleared again two passes
  // after its sums were read), one grid barrier per pass. The emulator runs blocks on OS
  // threads, so the additions come in varying order: the targets are held to the plain
  // kernel's within a bound far below what a missed clear does (tried: 0.1 apart; a buffer
  // never zeroed starts from the workspace's NaN fill). The f16 copy on a device with rows in
  // the workspace, views side by side (cooperative barriers and per-view counters) and one
  // after another (whose views restart the buffers' turn); the f32 copy with cooperative and
  // staggered counters; 0 to 3 iterations (the first clear is in pass 2); the f16 copy's
  // packed 4-row batches. Threads shuffled.
  using GS = cuda::GridSync;
  const emu::DeviceProps mid = mid_smem(), roomy = roomy_smem();
  using Shape = LeverShape;
  const Tol near{1e-7, 1e-5};  // f32 rounding of the column sums, carried through the passes
  for (const Shape& sh : {Shape{C::F16, 58, 3000, 30, S::Concurrent, mid, {GS::Cooperative, GS::ViewCounter}},
                          Shape{C::F16, 96, 2500, 8, S::Concurrent, mid, {GS::ViewCounter, GS::Auto}},
                          Shape{C::F16, 150, 2100, 5, S::Sequential, mid, {GS::Cooperative, GS::Auto}},
                          Shape{C::F32, 96, 3000, 6, S::Concurrent, roomy, {GS::Cooperative, GS::ViewCounterStagger}},
                          Shape{C::F32, 40, 3000, 0, S::Concurrent, roomy, {GS::Auto}},
                          Shape{C::F32, 40, 3000, 1, S::Concurrent, roomy, {GS::Auto}},
                          Shape{C::F32, 40, 3000, 2, S::Sequential, roomy, {GS::Auto}},
                          Shape{C::F32, 40, 3000, 3, S::Concurrent, roomy, {GS::Auto}}}) {
    CAPTURE(static_cast<int>(sh.cache));
    CAPTURE(sh.N);
    CAPTURE(sh.K);
    CAPTURE(sh.iters);
    Case c;
    c.N = sh.N, c.K = sh.K, c.iters = sh.iters, c.schedule = sh.schedule, c.cache = sh.cache;
    c.min_cpt = 8, c.bps = 2;
    c.dev = sh.dev;
    const Out plain = check(c);
    REQUIRE(plain.plan.cpt == 8);
    REQUIRE(plain.plan.batch_rows == 2);
    CHECK(!plain.plan.atomic_sums);
    c.atomic_sums = true;
    for (const GS kind : sh.kinds) {
      CAPTURE(cuda::grid_sync_name(kind));
      c.grid_sync = kind;
      const Out o = check_shuffled(c);
      CHECK(o.plan.atomic_sums);
      CHECK(!o.plan.log2_sums);
      CHECK(!o.plan.max_sums);
      CHECK(o.plan.grid == plain.plan.grid);
      CHECK(o.plan.smem_rows == plain.plan.smem_rows);
      const GS want = kind != GS::Auto               ? kind
                      : sh.schedule == S::Sequential ? GS::Cooperative
                      : sh.cache == C::F16           ? GS::ViewCounter
                                                     : GS::ViewCounterStagger;
      CHECK(o.plan.grid_sync == static_cast<int>(want));
      for (int v = 0; v < c.V; ++v) {
        CAPTURE(v);
        CHECK(allclose(std::vector<double>(o.targets[v].begin(), o.targets[v].end()),
                       std::vector<double>(plain.targets[v].begin(), plain.targets[v].end()), near,
                       "atomic sums vs the plain kernel (emulated)"));
      }
    }
  }
  // The f16 copy's packed 4-row batches (batch_rows 8): their plain kernel against the same
  // with atomic sums, cooperative barriers (the automatic choice) and per-view counters, rows
  // in the workspace, views side by side; 30 and 2 iterations.
  for (const int iters : {30, 2}) {
    CAPTURE(iters);
    Case c;
    c.N = 96, c.K = 3000, c.iters = iters, c.cache = C::F16, c.schedule = S::Concurrent, c.batch_rows = 8;
    c.min_cpt = 8, c.bps = 2, c.dev = mid;
    const Out plain = check(c);
    REQUIRE(plain.plan.batch_rows == 4);
    CHECK(plain.plan.ecache_rows_per_block > 0);
    c.atomic_sums = true;
    for (const GS kind : {GS::Auto, GS::ViewCounter}) {
      CAPTURE(cuda::grid_sync_name(kind));
      c.grid_sync = kind;
      const Out o = check_shuffled(c);
      CHECK(o.plan.atomic_sums);
      CHECK(o.plan.batch_rows == 4);
      CHECK(o.plan.grid == plain.plan.grid);
      CHECK(o.plan.grid_sync == static_cast<int>(kind == GS::Auto ? GS::Cooperative : kind));
      for (int v = 0; v < c.V; ++v) {
        CAPTURE(v);
        CHECK(allclose(std::vector<double>(o.targets[v].begin(), o.targets[v].end()),
                       std::vector<double>(plain.targets[v].begin(), plain.targets[v].end()), near,
                       "packed 4-row batches, atomic sums vs the plain kernel (emulated)"));
      }
    }
  }
  // Where it does not apply the plan says so: 4 columns per thread, bf16 logits, with the
  // staging ring (no kernel combines them), and the per-pass variant.
  Case four;
  four.K = 1000, four.atomic_sums = true;
  const Out o4 = check(four);
  CHECK(o4.plan.cpt == 4);
  CHECK(!o4.plan.atomic_sums);
  Case b16;
  b16.K = 3000, b16.N = 58, b16.bf16 = true, b16.min_cpt = 8, b16.bps = 2, b16.atomic_sums = true;
  CHECK(!check(b16).plan.atomic_sums);
  Case staged;
  staged.K = 3000, staged.N = 58, staged.cache = C::F16, staged.min_cpt = 8, staged.bps = 2, staged.dev = mid;
  staged.stage_rows = true, staged.atomic_sums = true;
  const Out os = check(staged);
  CHECK(os.plan.stage_rows == 4);
  CHECK(!os.plan.atomic_sums);
  emu::set_device(gpu());
  cuda::MiraProblem p;
  p.V = 2, p.N = 64, p.K = 3000, p.tau_t = kTau, p.beta = kBeta, p.iters = 4;
  cuda::MiraPlanOptions po;
  po.atomic_sums = true, po.min_cols_per_thread = 8, po.blocks_per_sm = 2;
  CHECK(!cuda::mira_plan(p, cuda::MiraVariant::PerPass, po).atomic_sums);
  CHECK(cuda::mira_plan(p, cuda::MiraVariant::Fused, po).atomic_sums);
}

TEST_CASE("cuda_emu: fewer rows kept in shared memory give the same bits (MiraPlanOptions::max_smem_rows)") {
  // The bench's "smemN" rows: the same plan with at most N rows per block in shared memory
  // (whole batches), the rest from the workspace; with the staging ring too. Every row of these
  // shapes fits shared memory without the cap.
  struct Shape {
    C cache;
    int K, min_cpt, bps, cap;
    bool stage;
    int smem_rows;  // expected
  };
  for (const Shape& sh : {Shape{C::F16, 3000, 8, 2, 5, false, 4}, Shape{C::F16, 3000, 8, 2, 8, true, 4},
                          Shape{C::F32, 1000, 0, 0, 0, false, 0}, Shape{C::F32, 1000, 0, 0, 3, false, 0}}) {
    CAPTURE(static_cast<int>(sh.cache));
    CAPTURE(sh.K);
    CAPTURE(sh.cap);
    Case c;
    c.N = 58, c.K = sh.K, c.cache = sh.cache, c.min_cpt = sh.min_cpt, c.bps = sh.bps, c.iters = 6;
    const Out plain = check(c);
    REQUIRE(plain.plan.smem_rows >= plain.plan.rows_per_block);
    c.max_smem_rows = sh.cap;
    c.stage_rows = sh.stage;
    const Out o = check_shuffled(c);
    CHECK(o.plan.smem_rows == sh.smem_rows);
    CHECK(o.plan.stage_rows == (sh.stage ? 4 : 0));
    CHECK(o.plan.smem_bytes == plain.plan.smem_bytes);
    CHECK(o.plan.grid == plain.plan.grid);
    CHECK(same_bits(o.targets, plain.targets));
  }
}

TEST_CASE("cuda_emu: the tensor-core updates against the f16 copy's CPU twin") {
  Case c;
  c.cache = C::F16;
  c.mma_rows = true;
  SUBCASE("K 1000: 4 tiles per warp, views side by side or one after the other") {
    c.N = 96;
    for (const S sched : {S::Sequential, S::Concurrent}) {
      c.schedule = sched;
      const Out o = check(c);
      CHECK(o.plan.mma_rows == 4);
      CHECK(o.plan.views_per_group == (sched == S::Concurrent ? 2 : 1));
    }
  }
  SUBCASE("K 3000: 12 tiles per warp, 16 warps") {
    c.N = 40, c.K = 3000;
    const Out o = check(c);
    CHECK(o.plan.mma_rows == 12);
    CHECK(o.plan.block == 512);
  }
  SUBCASE("K 1999 (scalar access), bf16 logits, rows in the workspace") {
    c.N = 150, c.K = 1999, c.bf16 = true, c.dev = tight();
    const Out o = check(c);
    CHECK(o.plan.mma_rows == 8);
    CHECK(o.plan.smem_rows % 16 == 0);
    CHECK(o.plan.smem_rows < o.plan.rows_per_block);
  }
  SUBCASE("0 and 1 iterations, three views, one view of one row") {
    c.N = 40, c.K = 300;
    for (const int iters : {0, 1}) {
      c.iters = iters;
      check(c);
    }
    c.iters = 30, c.V = 3;
    check(c);
    c.V = 1, c.N = 1;
    CHECK(check(c).plan.grid == 1);
  }
  SUBCASE("every pass on the fused multiply-adds of wide passes") {
    c.N = 80, c.K = 700, c.mma_fallback = true;
    check(c);
    c.dev = tight();
    check(c);
  }
  SUBCASE("not taken with exact updates or the f32 copy") {
    c.N = 32, c.K = 300;
    c.exact = 3;
    c.mma_rows = false;  // the plan falls back to the default kernel
    cuda::MiraPlanOptions o = plan_options(c);
    o.mma_rows = true;
    std::vector<std::vector<__nv_bfloat16>> b16;
    std::vector<std::vector<float>> t;
    const auto views = make_views(c);
    emu::set_device(gpu());
    const cuda::MiraProblem p = problem(c, views, b16, t);
    CHECK(cuda::mira_plan(p, cuda::MiraVariant::Fused, o).mma_rows == 0);
    o.exact_passes = 0;
    o.cache = C::F32;
    CHECK(cuda::mira_plan(p, cuda::MiraVariant::Fused, o).mma_rows == 0);
    o.cache = C::F16;
    CHECK(cuda::mira_plan(p, cuda::MiraVariant::Fused, o).mma_rows == 4);
    CHECK(cuda::mira_plan(p, cuda::MiraVariant::PerPass, o).mma_rows == 0);
  }
  SUBCASE("the engine's op asks for them only where every SM gets a row tile of 16") {
    const int sms = gpu().sms;
    cuda::MiraProblem p;
    p.K = 300;
    emu::set_device(gpu());
    for (const int V : {1, 2}) {
      CAPTURE(V);
      p.V = V;
      p.N = 16 * (sms / V);  // V ceil(N / 16) = SMs (sms even)
      CHECK(cuda::mira_mma_rows_fill(p, 0));
      p.N -= 16;
      CHECK(!cuda::mira_mma_rows_fill(p, 0));
      p.N += 1;  // a partial row tile counts
      CHECK(cuda::mira_mma_rows_fill(p, 0));
    }
  }
}

TEST_CASE("cuda_emu: the default fused kernel counts non-finite logits") {
  Case c;
  c.N = 16, c.K = 40, c.V = 1;
  auto views = make_views(c);
  views[0][5] = NAN;
  views[0][77] = INFINITY;
  CHECK(run_fused(c, views).nonfinite == 2.f);
}

// test_mira_assign_gpu's extreme and degenerate inputs (the list: logits of +-100,
// tau' down to 0.01, beta 0.99, N = 1, K = 1, N and K up to 65536, an empty column) through
// every path the engine can take without clusters: the default fused kernel, with the f32 and
// the f16 copy, one rank's per-pass launches, the unfused kernels and the tensor-core updates (at N 65536 the f32 fused
// kernel only: the GPU test runs the rest there).
TEST_CASE("cuda_emu: extreme and degenerate inputs stay finite on the fused, per-pass, unfused and tensor-core paths") {
  struct X {
    const char* what;
    int N, K;
    float tau, beta;
    int kind;  // emu_testing::extreme's
  };
  const float b = 2.0f / 3.0f;
  const X cases[] = {{"+-100, tau' = 0.01", 64, 50, 0.03f, b, 0},
                     {"+-100, beta 0.99", 64, 3000, 1.f, 0.99f, 0},
                     {"N(0,1), beta 0.99", 64, 300, 1.f, 0.99f, 1},
                     {"empty column", 64, 50, 0.03f, b, 2},
                     {"one-hot rows", 64, 50, 0.03f, 0.9f, 3},
                     {"N = 1", 1, 300, kTau, b, 1},
                     {"K = 1", 200, 1, kTau, b, 1},
                     {"N = K = 1", 1, 1, kTau, b, 0},
                     {"N = 65536", 65536, 3, 0.03f, b, 0},
                     {"K = 12288", 3, 12288, 0.03f, b, 0},
                     {"K = 65536", 3, 65536, 0.03f, b, 0}};
  for (const X& x : cases) {
    const std::string what = x.what;
    CAPTURE(what);
    Case c;
    c.N = x.N, c.K = x.K, c.V = 1, c.tau = x.tau, c.beta = x.beta;
    const std::vector<std::vector<float>> views = {extreme(x.N, x.K, x.kind)};
    auto check_targets = [&](const std::vector<float>& t, const std::string& path) {
      CAPTURE(path);
      CHECK(on_simplex(t, x.N, x.K, 1e-4));
      if (x.kind == 2) {
        double col3 = 0;
        for (int i = 0; i < x.N; ++i) col3 += t[static_cast<size_t>(i) * x.K + 3];
        CHECK(col3 == 0);
      }
    };
    emu::set_device(gpu());
    // At N 65536 (16 s more here) the f32 fused kernel only: the other paths' row loops are
    // those of N 64, with more trips.
    const bool huge = x.N > 4096;
    if (cuda::mira_fused_supports(x.K)) {
      for (const C cache : {C::F32, C::F16}) {
        if (huge && cache == C::F16) continue;
        c.cache = cache;
        c.exact = cache == C::F16 ? 3 : 0;
        const Out o = run_fused(c, views);
        CHECK(o.nonfinite == 0.f);
        check_targets(o.targets[0], cache == C::F16 ? "fused, f16 copy + 3 exact" : "fused");
      }
      if (x.K <= 3072 && !huge) {  // the tensor-core updates (f16 copy, no exact updates)
        c.cache = C::F16, c.exact = 0, c.mma_rows = true;
        const Out o = run_fused(c, views);
        CHECK(o.nonfinite == 0.f);
        check_targets(o.targets[0], "tensor-core updates");
        c.mma_rows = false;
      }
      c.cache = C::F32, c.exact = 0;
      if (huge) continue;
      // One rank's per-pass launches (no all-reduce between them).
      std::vector<std::vector<__nv_bfloat16>> b16;
      std::vector<std::vector<float>> t;
      const cuda::MiraProblem p = problem(c, views, b16, t);
      const cuda::MiraPlan plan = cuda::mira_plan(p, cuda::MiraVariant::PerPass, plan_options(c));
      Workspace ws(plan.workspace_bytes);
      for (int pass = 0; pass <= c.iters + 1; ++pass) cuda::mira_assign_pass_cuda(p, plan, pass, ws.base, nullptr);
      CHECK(*cuda::mira_nonfinite_count(plan, ws.base) == 0.f);
      CHECK(ws.intact());
      check_targets(t[0], "per-pass");
    }
    if (huge) continue;  // the unfused kernels: a block per row, 6 M emulated blocks (80 s)
    check_targets(run_unfused(c, views)[0], "unfused");
  }
}

// ---- the rest of the assignment's CUDA code: the unfused variant, the per-pass variant of
// several processes, the statistics and KKT kernels, Sinkhorn-Knopp

namespace {

// The all-reduce between passes of several ranks (the engine's comm), in rank order.
void allreduce_sum(const std::vector<float*>& bufs, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float s = 0.f;
    for (float* b : bufs) s += b[i];
    for (float* b : bufs) b[i] = s;
  }
}
void allreduce_max(const std::vector<float*>& bufs, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float m = -INFINITY;
    for (float* b : bufs) m = std::max(m, b[i]);
    for (float* b : bufs) b[i] = m;
  }
}

}  // namespace

TEST_CASE("cuda_emu: the unfused variant, and the per-pass variant over two ranks, against f64") {
  emu::set_device(gpu());
  Case c;
  c.N = 96, c.K = 700;
  const auto views = make_views(c);
  {
    const auto t = run_unfused(c, views);
    for (int v = 0; v < c.V; ++v)
      CHECK(allclose(std::vector<double>(t[v].begin(), t[v].end()), reference(c, views[v], cpu::WorkingCopy::Exact, 0),
                     kGpuTol, "unfused (emulated) vs f64"));
  }
  // Two ranks, each with half of every view's rows; the reduce buffers summed after each pass.
  for (const C cache : {C::F32, C::F16}) {
    CAPTURE(static_cast<int>(cache));
    c.cache = cache;
    c.exact = cache == C::F16 ? 3 : 0;
    const int R = 2, n = c.N / R;
    std::vector<std::vector<float>> t(c.V, std::vector<float>(static_cast<size_t>(c.N) * c.K, NAN));
    std::vector<cuda::MiraProblem> p(R);
    std::vector<cuda::MiraPlan> plan(R);
    std::vector<std::unique_ptr<Workspace>> ws;
    for (int r = 0; r < R; ++r) {
      p[r].V = c.V, p[r].N = n, p[r].K = c.K, p[r].tau_t = kTau, p[r].beta = kBeta, p[r].iters = c.iters;
      for (int v = 0; v < c.V; ++v) {
        p[r].logits[v] = views[v].data() + static_cast<size_t>(r) * n * c.K;
        p[r].targets[v] = t[v].data() + static_cast<size_t>(r) * n * c.K;
      }
      plan[r] = cuda::mira_plan(p[r], cuda::MiraVariant::PerPass, plan_options(c));
      ws.push_back(std::make_unique<Workspace>(plan[r].workspace_bytes));
    }
    for (int pass = 0; pass <= c.iters + 1; ++pass) {
      std::vector<float*> bufs;
      for (int r = 0; r < R; ++r) {
        cuda::mira_assign_pass_cuda(p[r], plan[r], pass, ws[r]->base, nullptr);
        bufs.push_back(cuda::mira_reduce_buffer(plan[r], ws[r]->base));
      }
      if (pass <= c.iters) allreduce_sum(bufs, cuda::mira_reduce_len(p[0], plan[0], pass));
    }
    CHECK(*cuda::mira_nonfinite_count(plan[0], ws[0]->base) == 0.f);
    for (const auto& w : ws) CHECK(w->intact());
    for (int v = 0; v < c.V; ++v) {
      const std::vector<double> got(t[v].begin(), t[v].end());
      if (cache == C::F32) {
        CHECK(allclose(got, reference(c, views[v], cpu::WorkingCopy::Exact, 0), kGpuTol, "per-pass, 2 ranks vs f64"));
      } else {
        CHECK(allclose(got, reference(c, views[v], cpu::WorkingCopy::F16, 3), kF16TwinTol,
                       "per-pass f16 copy, 2 ranks vs its CPU twin"));
      }
    }
  }
}

TEST_CASE("cuda_emu: the statistics and KKT kernels against the CPU's") {
  emu::set_device(gpu());
  const int N = 64, K = 300;
  const std::vector<float> L = randn(static_cast<size_t>(N) * K, 5, 0.3f);
  std::vector<double> work(static_cast<size_t>(cpu::mira_assign_work_size(N, K)) +
                           static_cast<size_t>(cpu::assign_stats_work_size(N, K)));
  for (const int iters : {30, 2}) {  // near the fixed point, and away from it (a larger residual)
    CAPTURE(iters);
    std::vector<float> T(L.size());
    cpu::mira_assign_fwd<float>(L.data(), T.data(), N, K, kTau, kBeta, iters, work.data());
    std::vector<double> sums(2 * K);
    std::vector<unsigned char> scratch(cuda::assign_stats_scratch_bytes(N, K));
    cuda::assign_stats_sums_cuda(T.data(), N, K, sums.data(), scratch.data(), nullptr);
    std::vector<double> ref(2 * K, 0.0);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < K; ++j) {
        const double t = T[static_cast<size_t>(i) * K + j];
        ref[j] += t;
        if (t > 0) ref[K + j] -= t * std::log(t);
      }
    CHECK(allclose(sums, ref, Tol{1e-6, 1e-5}, "stats sums (emulated) vs the CPU"));
    std::vector<double> wbar(K), w(K);
    for (int j = 0; j < K; ++j) wbar[j] = ref[j] / N;
    cpu::mira_weights_from_mass(wbar.data(), w.data(), K, -kBeta / (1.0 - kBeta), cpu::mira_weight_log2_cap(K, 124.0));
    const std::vector<float> wf(w.begin(), w.end());
    float kkt = NAN;
    cuda::mira_kkt_cuda(L.data(), false, T.data(), wf.data(), N, K, kTau, kBeta, &kkt, nullptr);
    cpu::AssignStatsOut st;
    std::vector<double> wbar_cpu(K);
    cpu::assign_stats<float>(L.data(), T.data(), N, K, kTau, kBeta, wbar_cpu.data(), work.data(), &st);
    CHECK(std::fabs(kkt - st.kkt_residual) <= 2e-6 + 0.05 * st.kkt_residual);
    if (iters == 2) CHECK(kkt > 1e-4);  // the residual sees an unconverged assignment
  }
}

TEST_CASE("cuda_emu: Sinkhorn-Knopp's kernels, one rank and two, against the CPU's f64") {
  emu::set_device(gpu());
  const int N = 64, K = 300, iters = 3;
  const double eps = 0.05;
  const float inv_eps = static_cast<float>(1.0 / eps);
  const std::vector<float> L = randn(static_cast<size_t>(N) * K, 8, 1.f);
  std::vector<double> Ld(L.begin(), L.end()), ref(Ld.size());
  std::vector<double> work(static_cast<size_t>(cpu::sinkhorn_assign_work_size(N, K)));
  cpu::sinkhorn_assign_fwd<double>(Ld.data(), ref.data(), N, K, eps, iters, work.data());
  for (const int R : {1, 2}) {
    CAPTURE(R);
    const int n = N / R;
    std::vector<float> T(L.size(), NAN), bad(R, 0.f);
    std::vector<std::vector<float>> f(R, std::vector<float>(n)), g(R, std::vector<float>(K)), lse = g, M = g, e = g;
    std::vector<std::vector<unsigned char>> scratch(R, std::vector<unsigned char>(cuda::sinkhorn_scratch_bytes(n, K)));
    auto logits = [&](int r) { return L.data() + static_cast<size_t>(r) * n * K; };
    // The engine's column step (engine/mira_assign.cpp): g = -(column LSE over all ranks of x + f).
    auto column_step = [&](bool with_f, bool count) {
      if (R == 1) {
        cuda::sinkhorn_col_lse_cuda(logits(0), false, with_f ? f[0].data() : nullptr, g[0].data(), nullptr, true, n, K,
                                    inv_eps, count ? &bad[0] : nullptr, scratch[0].data(), nullptr);
        return;
      }
      std::vector<float*> Ms, es;
      for (int r = 0; r < R; ++r) {
        cuda::sinkhorn_col_lse_cuda(logits(r), false, with_f ? f[r].data() : nullptr, lse[r].data(), M[r].data(), false,
                                    n, K, inv_eps, count ? &bad[r] : nullptr, scratch[r].data(), nullptr);
        Ms.push_back(M[r].data());
        es.push_back(e[r].data());
      }
      allreduce_max(Ms, K);
      for (int r = 0; r < R; ++r) cuda::sinkhorn_lse_shift_cuda(lse[r].data(), M[r].data(), e[r].data(), K, nullptr);
      allreduce_sum(es, K);
      for (int r = 0; r < R; ++r) cuda::sinkhorn_lse_finish_cuda(M[r].data(), e[r].data(), g[r].data(), K, nullptr);
    };
    column_step(false, true);
    for (int it = 1; it < iters; ++it) {
      for (int r = 0; r < R; ++r)
        cuda::sinkhorn_row_cuda(logits(r), false, g[r].data(), f[r].data(), n, K, inv_eps, nullptr);
      column_step(true, false);
    }
    for (int r = 0; r < R; ++r)
      cuda::sinkhorn_targets_cuda(logits(r), false, g[r].data(), T.data() + static_cast<size_t>(r) * n * K, n, K,
                                  inv_eps, nullptr);
    for (int r = 0; r < R; ++r) CHECK(bad[r] == 0.f);
    CHECK(allclose(std::vector<double>(T.begin(), T.end()), ref, Tol{2e-6, 2e-4}, "sinkhorn (emulated) vs f64"));
  }
}

TEST_CASE("cuda_emu: the fused kernels give the same bits whatever order their threads run in") {
  // A missing barrier shows as a result that depends on which thread runs first.
  struct Variant {
    const char* what;
    Case c;
  };
  std::vector<Variant> variants;
  Case c;
  c.N = 96, c.K = 1000;
  variants.push_back({"4 columns, 4 rows", c});
  Case w = c;
  w.dev = tight();
  w.N = 200;
  w.cache = C::F16;
  w.exact = 3;
  variants.push_back({"f16 copy + 3 exact updates, rows in the workspace", w});
  Case f = c;
  f.K = 3000;
  f.N = 64;
  variants.push_back({"8 columns", f});
  Case m = c;
  m.cache = C::F16;
  m.mma_rows = true;
  m.schedule = S::Sequential;
  variants.push_back({"tensor-core updates, views one after the other", m});
  m.dev = tight();
  m.schedule = S::Auto;
  m.mma_fallback = true;
  variants.push_back({"tensor-core updates' FMA path, rows in the workspace", m});
  for (const Variant& v : variants) {
    const std::string what = v.what;
    CAPTURE(what);
    const auto views = make_views(v.c);
    emu::set_schedule(0);
    const Out ref = run_fused(v.c, views);
    for (const int order : {1, 2, 3}) {
      CAPTURE(order);
      emu::set_schedule(order);
      CHECK(same_bits(run_fused(v.c, views).targets, ref.targets));
    }
    emu::set_schedule(0);
  }
  // The unfused variant's plain kernels (block reductions behind barriers).
  emu::set_device(gpu());
  const auto views = make_views(c);
  std::vector<std::vector<float>> out[2];
  for (const int order : {0, 2}) {
    emu::set_schedule(order);
    std::vector<std::vector<__nv_bfloat16>> b16;
    const cuda::MiraProblem p = problem(c, views, b16, out[order / 2]);
    const cuda::MiraPlan plan = cuda::mira_plan(p, cuda::MiraVariant::Unfused);
    Workspace ws(plan.workspace_bytes);
    cuda::mira_assign_cuda(p, plan, ws.base, nullptr);
    CHECK(ws.intact());
  }
  emu::set_schedule(0);
  CHECK(same_bits(out[1], out[0]));
}

TEST_CASE("cuda_emu: the plans of device_focus.sh's staging and atomic rows at N 4096 on an H200-sized device") {
  // Plans only (no launch): N 4096 per view, K 3000, 2 views on 132 SMs with an H200's shared
  // memory, so that a device call's "stage" and "smem8" rows are known to get the plans they are
  // named for (a row whose option does not apply runs the plain plan under another name).
  using GS = cuda::GridSync;
  emu::DeviceProps h200;
  h200.sms = 132;
  emu::set_device(h200);
  cuda::MiraProblem p;
  p.V = 2, p.N = 4096, p.K = 3000, p.tau_t = kTau, p.beta = kBeta, p.iters = 30;
  auto plan = [&](C cache, int batch_rows, bool stage, int max_smem_rows, S schedule, int cpt, int bps) {
    cuda::MiraPlanOptions o;
    o.cache = cache, o.batch_rows = batch_rows, o.stage_rows = stage, o.max_smem_rows = max_smem_rows;
    o.schedule = schedule, o.min_cols_per_thread = cpt, o.blocks_per_sm = bps;
    return cuda::mira_plan(p, cuda::MiraVariant::Fused, o);
  };
  const cuda::MiraPlan f16 = plan(C::F16, 4, false, -1, S::Auto, 0, 0);
  MESSAGE("f16 copy: grid ", f16.grid, ", ", f16.rows_per_block, " rows per block, ", f16.smem_rows,
          " in shared memory");
  CHECK(f16.cpt == 8);
  CHECK(f16.views_per_group == 2);
  CHECK(f16.grid_sync == static_cast<int>(GS::ViewCounter));
  CHECK(f16.smem_rows >= 12);
  CHECK(f16.smem_rows < f16.rows_per_block);
  const cuda::MiraPlan staged = plan(C::F16, 4, true, -1, S::Auto, 0, 0);
  CHECK(staged.stage_rows == 4);
  CHECK(staged.smem_rows == f16.smem_rows - 4);
  CHECK(staged.grid_sync == static_cast<int>(GS::ViewCounter));
  CHECK(staged.grid == f16.grid);
  const cuda::MiraPlan smem8 = plan(C::F16, 4, false, 8, S::Auto, 0, 0);
  CHECK(smem8.smem_rows == 8);
  CHECK(smem8.stage_rows == 0);
  CHECK(smem8.smem_bytes == f16.smem_bytes);
  const cuda::MiraPlan stage8 = plan(C::F16, 4, true, 8, S::Auto, 0, 0);
  CHECK(stage8.smem_rows == 4);
  CHECK(stage8.stage_rows == 4);
  const cuda::MiraPlan rows8 = plan(C::F16, 8, true, -1, S::Auto, 0, 0);
  CHECK(rows8.batch_rows == 4);
  CHECK(rows8.stage_rows == 8);
  const cuda::MiraPlan f32 = plan(C::F32, 4, true, -1, S::Auto, 0, 0);
  MESSAGE("f32 copy: grid ", f32.grid, ", views side by side ", f32.views_per_group, ", ", f32.rows_per_block,
          " rows per block, ", f32.smem_rows, " in shared memory + a ring of ", f32.stage_rows);
  CHECK(f32.cpt == 8);
  CHECK(f32.stage_rows == 4);
  const cuda::MiraPlan f32c = plan(C::F32, 4, true, -1, S::Concurrent, 8, 2);
  CHECK(f32c.stage_rows == 4);
  CHECK(f32c.grid_sync == static_cast<int>(GS::ViewCounterStagger));
  // The "atomic" rows: the plain plans' blocks and rows with the sums' buffers.
  auto atomic = [&](C cache, S schedule, int cpt, int bps) {
    cuda::MiraPlanOptions o;
    o.cache = cache, o.atomic_sums = true, o.schedule = schedule, o.min_cols_per_thread = cpt, o.blocks_per_sm = bps;
    return cuda::mira_plan(p, cuda::MiraVariant::Fused, o);
  };
  const cuda::MiraPlan af16 = atomic(C::F16, S::Auto, 0, 0);
  CHECK(af16.atomic_sums);
  CHECK(af16.grid == f16.grid);
  CHECK(af16.smem_rows == f16.smem_rows);
  CHECK(af16.grid_sync == static_cast<int>(GS::ViewCounter));
  const cuda::MiraPlan af32 = atomic(C::F32, S::Auto, 0, 0);
  CHECK(af32.atomic_sums);
  CHECK(af32.grid_sync == static_cast<int>(GS::Cooperative));
  const cuda::MiraPlan af32c = atomic(C::F32, S::Concurrent, 8, 2);
  CHECK(af32c.atomic_sums);
  CHECK(af32c.grid_sync == static_cast<int>(GS::ViewCounterStagger));
  // "rows8 atomic": the f16 copy's packed 4-row batches with atomic sums, the plain rows8 plan's
  // blocks and rows, cooperative barriers unless asked.
  cuda::MiraPlanOptions r8;
  r8.cache = C::F16, r8.batch_rows = 8;
  const cuda::MiraPlan rows8_plain = cuda::mira_plan(p, cuda::MiraVariant::Fused, r8);
  r8.atomic_sums = true;
  const cuda::MiraPlan ar8 = cuda::mira_plan(p, cuda::MiraVariant::Fused, r8);
  CHECK(ar8.atomic_sums);
  CHECK(ar8.batch_rows == 4);
  CHECK(ar8.grid == rows8_plain.grid);
  CHECK(ar8.smem_rows == rows8_plain.smem_rows);
  CHECK(ar8.grid_sync == static_cast<int>(GS::Cooperative));
  r8.grid_sync = GS::ViewCounter;
  CHECK(cuda::mira_plan(p, cuda::MiraVariant::Fused, r8).grid_sync == static_cast<int>(GS::ViewCounter));
}

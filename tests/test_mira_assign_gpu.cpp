// labels: gpu
// The CUDA assignment kernels against the CPU f64 reference, and against each other: fused
// (f32 and bf16 cache, both view schedules, both row batches), per-pass (one launch per pass,
// with two thread-ranks), unfused; f32 and bf16 logits; every column-per-thread width;
// extreme inputs; the non-finite error; statistics; Sinkhorn; CUDA graph capture.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <thread>

#include "engine/comm.h"
#include "engine/cuda_backend.h"
#include "engine/mira_assign.h"
#include "engine/rng.h"
#include "testing.h"

#ifdef MIRA_HAS_CUDA
#include "engine/cuda/context.h"
#include "kernels/cpu/mira_assign.h"
#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/sync_probe.cuh"
#endif

using namespace mira;
using mira::testing::allclose;
using mira::testing::Tol;

#ifdef MIRA_HAS_CUDA

namespace {

constexpr double kTau = 0.225, kBeta = 2.0 / 3.0;

Tensor cpu_logits(int64_t N, int64_t K, uint64_t seed, double stddev) {
  return Tensor::randn({N, K}, seed, 0.0, stddev, DType::F32);
}

// The reference: the CPU op in f64 on the same (f32-valued) logits.
std::vector<double> reference(const Tensor& logits_cpu, double tau = kTau, double beta = kBeta, int iters = 30) {
  return mira_assign(logits_cpu.to(DType::F64), tau, beta, iters).to_vector();
}

cuda::MiraPlanOptions plan_opts(cuda::MiraCache cache, cuda::MiraSchedule schedule = cuda::MiraSchedule::Auto,
                                int batch_rows = 4, int cols_per_thread = 0, int blocks_per_sm = 0,
                                int exact_passes = 0, bool cluster = false, int cluster_size = 0) {
  cuda::MiraPlanOptions o;
  o.cache = cache;
  o.schedule = schedule;
  o.batch_rows = batch_rows;
  o.min_cols_per_thread = cols_per_thread;
  o.blocks_per_sm = blocks_per_sm;
  o.exact_passes = exact_passes;
  o.cluster = cluster;
  o.cluster_size = cluster_size;
  return o;
}

// Runs the kernel-level launchers on device copies of `views` (f32 on the host). mma_fallback:
// MiraPlan::mma_fallback (the tensor-core updates' FMA path in every pass).
std::vector<std::vector<double>> run_kernel(const std::vector<Tensor>& views, cuda::MiraVariant variant,
                                            const cuda::MiraPlanOptions& o = {}, bool bf16_logits = false,
                                            double tau = kTau, double beta = kBeta, int iters = 30,
                                            cuda::MiraPlan* plan_out = nullptr, bool mma_fallback = false) {
  const Device dev = Device::cuda(0);
  cuda::MiraProblem p;
  p.V = static_cast<int>(views.size());
  p.N = static_cast<int>(views[0].dim(0));
  p.K = static_cast<int>(views[0].dim(1));
  p.logits_bf16 = bf16_logits;
  p.tau_t = static_cast<float>(tau);
  p.beta = static_cast<float>(beta);
  p.iters = iters;
  std::vector<Tensor> in, out;
  for (int v = 0; v < p.V; ++v) {
    in.push_back(bf16_logits ? views[v].to(dev).to(DType::BF16) : views[v].to(dev));
    out.push_back(Tensor::full({p.N, p.K}, -1.0, DType::F32, dev));  // poison: every entry must be written
    p.logits[v] = in[v].raw();
    p.targets[v] = out[v].data<float>();
  }
  cuda::MiraPlan plan = cuda::mira_plan(p, variant, o);
  plan.mma_fallback = mma_fallback;
  if (plan_out) *plan_out = plan;
  // The cluster plan: fused with the f32 or f16 cache only.
  CHECK((plan.cluster == 0 || (o.cluster && variant == cuda::MiraVariant::Fused && o.cache != cuda::MiraCache::BF16)));
  Tensor ws = Tensor::empty({static_cast<int64_t>(plan.workspace_bytes)}, DType::U8, dev);
  const cudaStream_t stream = cuda::CudaContext::get().stream();
  if (variant == cuda::MiraVariant::PerPass) {
    for (int pass = 0; pass <= iters + 1; ++pass) cuda::mira_assign_pass_cuda(p, plan, pass, ws.raw(), stream);
  } else {
    cuda::mira_assign_cuda(p, plan, ws.raw(), stream);
  }
  std::vector<std::vector<double>> res;
  for (auto& t : out) res.push_back(t.to_vector());
  return res;
}

// The current device's compute capability (9: thread-block clusters, the cluster plan).
int compute_major() {
  int dev = 0, major = 0;
  REQUIRE(cudaGetDevice(&dev) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess);
  return major;
}

bool finite_simplex(const std::vector<double>& t, int64_t N, int64_t K, double tol) {
  for (int64_t i = 0; i < N; ++i) {
    double s = 0;
    for (int64_t j = 0; j < K; ++j) {
      const double v = t[i * K + j];
      if (!std::isfinite(v) || v < 0) return false;
      s += v;
    }
    if (std::fabs(s - 1) > tol) return false;
  }
  return true;
}

// f32 on the GPU (E from exp2 of an f32 argument, f32 sums) against the f64 reference.
const Tol kGpuTol{2e-6, 2e-4};
// bf16 cache: E rounded to 8 bits during the iteration (docs/assignment.md).
const Tol kBf16CacheTol{1e-3, 5e-2};
// f16 cache (E * 2^15, 11 bits): the CPU twin's error against f64 is <= 4e-5 absolute and
// 3.3e-4 relative at these shapes; with 3 exact updates at the end <= 1.2e-6 and 1e-5, within
// kGpuTol. Against the twin itself (the same rounding on the CPU; an E that f32 exp2 puts on
// the other side of an f16 rounding boundary is the difference) a tighter bound holds.
const Tol kF16CacheTol{2e-4, 1e-2};
const Tol kF16TwinTol{1e-5, 1e-3};

// The CPU twin of a 16-bit working copy (kernels/cpu/mira_assign.h) on f32 logits.
std::vector<double> twin(const Tensor& logits_cpu, AssignWorkingCopy copy, int exact_passes) {
  AssignOptions o;
  o.working_copy = copy;
  o.exact_passes = exact_passes;
  return mira_assign(logits_cpu, kTau, kBeta, 30, local_comm(), nullptr, o).to_vector();
}

}  // namespace

TEST_CASE("gpu mira: every variant against the CPU f64 reference") {
  struct Shape2 {
    int64_t N, K;
  };
  // K = 300 and 3000: 4 columns per thread; 3001: no vector access; 5000: 8; 10000: 16.
  for (const Shape2 s : {Shape2{512, 300}, Shape2{256, 3000}, Shape2{97, 3001}, Shape2{64, 5000}, Shape2{40, 10000}}) {
    CAPTURE(s.N);
    CAPTURE(s.K);
    const std::vector<Tensor> views = {cpu_logits(s.N, s.K, 1, 0.3), cpu_logits(s.N, s.K, 2, 0.3)};
    const std::vector<std::vector<double>> ref = {reference(views[0]), reference(views[1])};
    using V = cuda::MiraVariant;
    using C = cuda::MiraCache;
    using S = cuda::MiraSchedule;
    struct Run {
      const char* name;
      V variant;
      C cache;
      S schedule;
      int rows;
      int cpt = 0;    // min columns per thread (0: the plan's choice)
      int bps = 0;    // blocks per SM (0: the plan's choice)
      int exact = 0;  // exact updates at the end (16-bit caches)
    };
    const Run runs[] = {{"fused", V::Fused, C::F32, S::Auto, 4},
                        {"fused concurrent", V::Fused, C::F32, S::Concurrent, 4},
                        {"fused sequential", V::Fused, C::F32, S::Sequential, 4},
                        {"fused 8-row batches", V::Fused, C::F32, S::Auto, 8},
                        {"per-pass", V::PerPass, C::F32, S::Auto, 4},
                        {"unfused", V::Unfused, C::F32, S::Auto, 4},
                        {"fused bf16 cache", V::Fused, C::BF16, S::Auto, 4},
                        {"fused 4 columns per thread, 1 block per SM", V::Fused, C::F32, S::Auto, 4, 4, 1},
                        {"fused 8 columns per thread, 2 blocks per SM", V::Fused, C::F32, S::Auto, 4, 8, 2},
                        {"fused 8 columns per thread, 4-row batches", V::Fused, C::F32, S::Auto, 8, 8, 2},
                        {"fused 16 columns per thread, 4 blocks per SM", V::Fused, C::F32, S::Auto, 4, 16, 4},
                        {"fused f16 cache", V::Fused, C::F16, S::Auto, 4},
                        {"fused f16 cache, 3 exact updates", V::Fused, C::F16, S::Auto, 4, 0, 0, 3},
                        {"fused f16 cache, 3 exact, concurrent", V::Fused, C::F16, S::Concurrent, 4, 0, 0, 3},
                        {"per-pass f16 cache, 3 exact updates", V::PerPass, C::F16, S::Auto, 4, 0, 0, 3},
                        {"fused bf16 cache, 5 exact updates", V::Fused, C::BF16, S::Auto, 4, 0, 0, 5}};
    std::vector<std::vector<double>> fused;
    // The CPU twins of the f16 runs, each computed once per (view, exact updates).
    std::map<std::pair<int, int>, std::vector<double>> twins;
    auto f16_twin = [&](int v, int exact) -> const std::vector<double>& {
      auto it = twins.find({v, exact});
      if (it == twins.end())
        it = twins.emplace(std::make_pair(v, exact), twin(views[v], AssignWorkingCopy::F16, exact)).first;
      return it->second;
    };
    for (const Run& r : runs) {
      CAPTURE(r.name);
      const auto got = run_kernel(views, r.variant, plan_opts(r.cache, r.schedule, r.rows, r.cpt, r.bps, r.exact));
      // With exact updates at the end a 16-bit cache is as close to f64 as f32 (kF16CacheTol).
      const Tol tol = r.exact > 0          ? kGpuTol
                      : r.cache == C::BF16 ? kBf16CacheTol
                      : r.cache == C::F16  ? kF16CacheTol
                                           : kGpuTol;
      for (int v = 0; v < 2; ++v) {
        CHECK(allclose(got[v], ref[v], tol, r.name));
        CHECK(finite_simplex(got[v], s.N, s.K, 1e-4));
        if (r.cache == C::F16) CHECK(allclose(got[v], f16_twin(v, r.exact), kF16TwinTol, "vs the CPU twin"));
      }
      if (r.variant == V::Fused && r.cache == C::F32 && r.rows == 4 && r.schedule == S::Auto && r.cpt == 0) fused = got;
      // Fused and unfused are the same computation up to f32 summation order.
      if (r.variant == V::Unfused)
        for (int v = 0; v < 2; ++v) CHECK(allclose(got[v], fused[v], Tol{1e-6, 1e-4}, "fused vs unfused"));
    }
    // Deterministic: the same bits on a second run.
    CHECK(run_kernel(views, V::Fused) == fused);
  }
}

TEST_CASE(
    "gpu mira: ldmatrix, movmatrix and mma.sync as the tensor-core sweeps address them give exact small-integer "
    "products") {
  // test_mira_assign_emu runs the same check on the CUDA emulator, whose fragment layouts the
  // emulated kernels rely on: where both pass, the emulator reads them as this GPU does.
  const int major = compute_major();
  if (major < 8) {
    MESSAGE("SKIPPED: mma.sync with f16 operands needs sm_80 (compute capability ", major, ")");
    return;
  }
  const testing::MmaCase c = testing::mma_case();
  void* buf = nullptr;
  REQUIRE(cudaMalloc(&buf, 4096) == cudaSuccess);
  char* b = static_cast<char*>(buf);
  REQUIRE(cudaMemcpy(b, c.A.data(), 512, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(b + 512, c.At.data(), 512, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(b + 1024, c.B.data(), 256, cudaMemcpyHostToDevice) == cudaSuccess);
  cuda::mira_mma_selftest(b, b + 512, b + 1024, reinterpret_cast<float*>(b + 2048), nullptr);
  std::vector<float> out(384);
  REQUIRE(cudaMemcpy(out.data(), b + 2048, 1536, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(buf);
  int wrong_plain = 0, wrong_trans = 0, wrong_mov = 0;
  for (int x = 0; x < 128; ++x) {
    wrong_plain += out[x] != c.D[x];
    wrong_trans += out[128 + x] != c.D[x];
    wrong_mov += out[256 + x] != c.D[x];
  }
  CHECK(wrong_plain == 0);  // ldmatrix + mma (the cluster plan's row sums)
  CHECK(wrong_trans == 0);  // ldmatrix.trans + mma (its column sums)
  CHECK(wrong_mov == 0);    // movmatrix-transposed fragments + mma (the tensor-core updates' column sums)
}

TEST_CASE("gpu mira: the grid barriers order every block's writes before the other blocks' reads") {
  // kernels/cuda/grid_sync.cuh on the GPU's memory model (test_kernels_emu checks them on the
  // host's): 300 checked barriers of each kind, at 1 and 2 blocks of 384 per SM.
  using GS = cuda::GridSync;
  const int major = compute_major();
  int sms = 0;
  REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  const size_t scratch_bytes = cuda::sync_probe_scratch_bytes(2 * sms, cuda::kSyncProbeThreads);
  Tensor scratch = Tensor::empty({static_cast<int64_t>(scratch_bytes)}, DType::U8, Device::cuda(0));
  for (int bps = 1; bps <= 2; ++bps) {
    CAPTURE(bps);
    for (const auto& [kind, cluster] :
         {std::pair{GS::Cooperative, 1}, std::pair{GS::Counter, 1}, std::pair{GS::ClusterCounter, 2},
          std::pair{GS::ClusterCounter, 4}, std::pair{GS::ClusterCounter, 8}}) {
      CAPTURE(cuda::grid_sync_name(kind));
      CAPTURE(cluster);
      const cuda::SyncProbe r = cuda::mira_sync_probe(kind, bps, cluster, 300, 20, scratch.raw(), scratch_bytes);
      if (kind == GS::ClusterCounter && major < 9) {
        CHECK(r.blocks == 0);  // no clusters before sm_90
        continue;
      }
      CHECK(r.blocks > 0);
      CHECK(r.errors == 0u);
      CHECK(r.cycles > 0);
    }
  }
}

TEST_CASE("gpu mira: the default kernel with counter barriers gives the cooperative barriers' bits") {
  // MiraPlanOptions::grid_sync on the GPU's memory model: every barrier after the launch's
  // first as a counter per view group, staggered or not (8 columns per thread only), or the
  // plan's choice (Auto, plan_model::auto_barrier); the probe's kinds are refused. The issue's
  // shape in f32 (views one after another) and f16, plain and + 3 exact (side by side), a
  // training shape, and 2 iterations; the tensor-core updates (sm_80; cooperative barriers
  // only) at the shape.
  using GS = cuda::GridSync;
  using C = cuda::MiraCache;
  const int major = compute_major();
  struct Shape3 {
    int64_t N, K;
    C cache;
    int iters;
    bool mma = false;
    int exact = 3;  // the f16 copy's exact passes (not with mma)
  };
  for (const Shape3 s :
       {Shape3{4096, 3000, C::F32, 30}, Shape3{4096, 3000, C::F16, 30}, Shape3{4096, 3000, C::F16, 30, false, 0},
        Shape3{256, 3000, C::F32, 30}, Shape3{300, 1000, C::F32, 2}, Shape3{4096, 3000, C::F16, 30, true}}) {
    if (s.mma && major < 8) continue;
    CAPTURE(s.N);
    CAPTURE(static_cast<int>(s.cache));
    CAPTURE(s.iters);
    CAPTURE(s.mma);
    const std::vector<Tensor> views = {cpu_logits(s.N, s.K, 51, 0.3), cpu_logits(s.N, s.K, 52, 0.3)};
    cuda::MiraPlanOptions o;
    o.cache = s.cache;
    o.exact_passes = s.cache == C::F16 && !s.mma ? s.exact : 0;
    o.mma_rows = s.mma;
    o.grid_sync = GS::Cooperative;
    const auto plain = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, s.iters);
    for (const GS kind : {GS::Auto, GS::ViewCounter, GS::ViewCounterStagger}) {
      CAPTURE(std::string(cuda::grid_sync_name(kind)));
      o.grid_sync = kind;
      cuda::MiraPlan plan;
      const auto got = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, s.iters, &plan);
      if (kind == GS::Auto) {
        // The per-view counters with the views side by side at 8 columns x 2-row batches: plain
        // for the f16 copy without exact passes, staggered for f32; else cooperative.
        const bool side = !s.mma && plan.cpt == 8 && plan.batch_rows == 2 && plan.views_per_group >= 2;
        const GS want = !side                                      ? GS::Cooperative
                        : s.cache == C::F32                        ? GS::ViewCounterStagger
                        : s.cache == C::F16 && o.exact_passes == 0 ? GS::ViewCounter
                                                                   : GS::Cooperative;
        CHECK(plan.grid_sync == static_cast<int>(want));
        MESSAGE("auto barriers at N ", s.N, ": ", cuda::grid_sync_name(static_cast<GS>(plan.grid_sync)));
      } else {
        // Kernels only for 8 columns per thread (2-row batches), not the tensor-core updates.
        const bool has = !s.mma && plan.cpt == 8 && plan.batch_rows == 2;
        CHECK(plan.grid_sync == (has ? static_cast<int>(kind) : 0));
        if (has && plan.views_per_group == 2)
          MESSAGE(cuda::grid_sync_name(kind), " at N ", s.N, ": views side by side, ", plan.grid, " blocks");
      }
      CHECK(plan.mma_rows == (s.mma ? 12 : 0));
      CHECK(got == plain);
      CHECK(allclose(got[0], reference(views[0], kTau, kBeta, s.iters), s.mma ? kF16CacheTol : kGpuTol,
                     "counter barriers vs f64"));
    }
  }
}

TEST_CASE("gpu mira: the workspace's rows staged through shared memory give the plain kernel's bits") {
  // MiraPlanOptions::stage_rows on the GPU (cp.async into a ring of shared memory): the
  // issue's shape and N 1000 (odd rows per block), the f16 copy with cooperative barriers and
  // its per-view counters, the f32 copy with cooperative barriers (views one after another)
  // and staggered counters (side by side), the f16 copy's packed 4-row batches (a ring of 8).
  using GS = cuda::GridSync;
  using C = cuda::MiraCache;
  struct Case {
    C cache;
    cuda::MiraSchedule schedule;
    std::vector<GS> kinds;
    int batch_rows = 4;  // asked for (8: the f16 copy's packed 4-row batches)
  };
  for (const Case& c : {Case{C::F16, cuda::MiraSchedule::Auto, {GS::Cooperative, GS::ViewCounter}},
                        Case{C::F32, cuda::MiraSchedule::Sequential, {GS::Cooperative}},
                        Case{C::F32, cuda::MiraSchedule::Concurrent, {GS::ViewCounterStagger}},
                        Case{C::F16, cuda::MiraSchedule::Auto, {GS::Cooperative, GS::ViewCounter}, 8}}) {
    for (const int64_t N : {4096, 1000}) {
      CAPTURE(static_cast<int>(c.cache));
      CAPTURE(static_cast<int>(c.schedule));
      CAPTURE(N);
      const std::vector<Tensor> views = {cpu_logits(N, 3000, 63, 0.3), cpu_logits(N, 3000, 64, 0.3)};
      cuda::MiraPlanOptions o;
      o.cache = c.cache;
      o.schedule = c.schedule;
      o.min_cols_per_thread = 8;
      o.blocks_per_sm = 2;
      o.batch_rows = c.batch_rows;
      o.grid_sync = GS::Cooperative;
      cuda::MiraPlan plain_plan;
      const auto plain = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &plain_plan);
      CHECK(plain_plan.stage_rows == 0);
      if (plain_plan.smem_rows >= plain_plan.rows_per_block) {
        MESSAGE("N ", N, ": every row in shared memory here, nothing to stage");
        continue;
      }
      o.stage_rows = true;
      for (const GS kind : c.kinds) {
        CAPTURE(std::string(cuda::grid_sync_name(kind)));
        o.grid_sync = kind;
        cuda::MiraPlan plan;
        const auto got = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &plan);
        CHECK(plan.stage_rows == 2 * plain_plan.batch_rows);
        CHECK(plan.smem_rows == plain_plan.smem_rows - plan.stage_rows);
        CHECK(plan.grid_sync == static_cast<int>(kind));
        CHECK(got == plain);
      }
    }
  }
}

TEST_CASE("gpu mira: the column sums added by atomics give the plain kernel's targets to f32 rounding") {
  // MiraPlanOptions::atomic_sums on the GPU (red.global.add.v4.f32 on sm_90): one grid barrier
  // per pass, the sums in three buffers in turn. Their order varies from run to run, so the
  // targets are held to the deterministic kernel's within f32 rounding carried through the
  // passes (the emulator's bound), and to the f64 reference as the plain kernel is. The issue's
  // shape and N 1000, the f16 copy with cooperative barriers and its per-view counters (2-row
  // and packed 4-row batches), the f32 copy with cooperative barriers (views one after
  // another) and staggered counters.
  using GS = cuda::GridSync;
  using C = cuda::MiraCache;
  const Tol near{1e-7, 1e-5};
  struct Case {
    C cache;
    cuda::MiraSchedule schedule;
    std::vector<GS> kinds;
    int batch_rows = 4;
  };
  for (const Case& c : {Case{C::F16, cuda::MiraSchedule::Auto, {GS::Cooperative, GS::ViewCounter}},
                        Case{C::F16, cuda::MiraSchedule::Auto, {GS::Cooperative, GS::ViewCounter}, 8},
                        Case{C::F32, cuda::MiraSchedule::Sequential, {GS::Cooperative}},
                        Case{C::F32, cuda::MiraSchedule::Concurrent, {GS::ViewCounterStagger}}}) {
    for (const int64_t N : {4096, 1000}) {
      CAPTURE(static_cast<int>(c.cache));
      CAPTURE(static_cast<int>(c.schedule));
      CAPTURE(c.batch_rows);
      CAPTURE(N);
      const std::vector<Tensor> views = {cpu_logits(N, 3000, 67, 0.3), cpu_logits(N, 3000, 68, 0.3)};
      cuda::MiraPlanOptions o;
      o.cache = c.cache;
      o.exact_passes = c.cache == C::F16 ? 3 : 0;
      o.schedule = c.schedule;
      o.batch_rows = c.batch_rows;
      o.min_cols_per_thread = 8;
      o.blocks_per_sm = 2;
      o.grid_sync = GS::Cooperative;
      const auto plain = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30);
      o.atomic_sums = true;
      for (const GS kind : c.kinds) {
        CAPTURE(std::string(cuda::grid_sync_name(kind)));
        o.grid_sync = kind;
        cuda::MiraPlan plan;
        const auto got = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &plan);
        CHECK(plan.atomic_sums);
        CHECK(plan.batch_rows == c.batch_rows / 2);  // 8 columns: 2 rows, or the packed 4
        CHECK(plan.grid_sync == static_cast<int>(kind));
        for (size_t v = 0; v < got.size(); ++v) {
          CAPTURE(v);
          CHECK(allclose(got[v], plain[v], near, "atomic sums vs the plain kernel"));
          CHECK(allclose(got[v], reference(views[v], kTau, kBeta, 30), kGpuTol, "atomic sums vs f64"));
        }
      }
    }
  }
}

TEST_CASE("gpu mira: fewer rows kept in shared memory give the same bits (max_smem_rows)") {
  // The bench's "smem8" rows: at most 8 rows per block in shared memory, the rest from the
  // workspace, without and with staging; the shape, the f16 copy, its automatic barriers.
  const std::vector<Tensor> views = {cpu_logits(4096, 3000, 65, 0.3), cpu_logits(4096, 3000, 66, 0.3)};
  cuda::MiraPlanOptions o;
  o.cache = cuda::MiraCache::F16;
  cuda::MiraPlan plain_plan;
  const auto plain = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &plain_plan);
  o.max_smem_rows = 8;
  for (const bool stage : {false, true}) {
    CAPTURE(stage);
    o.stage_rows = stage;
    cuda::MiraPlan plan;
    const auto got = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &plan);
    CHECK(plan.stage_rows == (stage ? 4 : 0));
    CHECK(plan.smem_rows == std::min(plain_plan.smem_rows, 8) - plan.stage_rows);
    CHECK(plan.smem_bytes == plain_plan.smem_bytes);
    CHECK(got == plain);
  }
}

TEST_CASE("gpu mira: the f16 copy's packed 4-row update gives the 2-row kernel's bits") {
  // batch_rows 8 at 8 columns (MiraPlanOptions): the f16 copy's update passes in batches of 4
  // rows packed in registers. Over the 12 warps of 384 threads (K 3000) RowReduce sums each
  // row in the same order for 2 and 4 rows, so the same bits: the shape and N 1000 (rows per block that 4 does
  // not divide), 0 and 3 exact passes, cooperative barriers and the plain per-view counters.
  using GS = cuda::GridSync;
  using C = cuda::MiraCache;
  for (const int64_t N : {4096, 1000}) {
    for (const int exact : {0, 3}) {
      CAPTURE(N);
      CAPTURE(exact);
      const std::vector<Tensor> views = {cpu_logits(N, 3000, 63, 0.3), cpu_logits(N, 3000, 64, 0.3)};
      cuda::MiraPlanOptions o;
      o.cache = C::F16;
      o.exact_passes = exact;
      o.min_cols_per_thread = 8;
      o.blocks_per_sm = 2;
      o.grid_sync = GS::Cooperative;
      cuda::MiraPlan two_plan;
      const auto two = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &two_plan);
      REQUIRE(two_plan.batch_rows == 2);
      o.batch_rows = 8;
      for (const GS kind : {GS::Cooperative, GS::ViewCounter}) {
        CAPTURE(std::string(cuda::grid_sync_name(kind)));
        o.grid_sync = kind;
        cuda::MiraPlan plan;
        const auto got = run_kernel(views, cuda::MiraVariant::Fused, o, false, kTau, kBeta, 30, &plan);
        CHECK(plan.batch_rows == 4);
        CHECK(plan.grid_sync == static_cast<int>(kind));
        CHECK(got == two);
      }
    }
  }
}

TEST_CASE("gpu mira: the cluster plan against its CPU twin and the f64 reference") {
  const int major = compute_major();
  if (major < 9) {
    MESSAGE("SKIPPED: thread-block clusters need sm_90 (compute capability ", major, ")");
    return;
  }
  using V = cuda::MiraVariant;
  using C = cuda::MiraCache;
  using S = cuda::MiraSchedule;
  struct Case {
    int64_t N, K;
    int size;  // 0: the plan's choice
    int views;
    C cache = C::F32;
    int exact = 0;
    int groups = 1;  // clusters per view expected on an H100 / H200 (8 clusters of 16 at once)
    bool mma = false;  // the f16 copy's sweeps on tensor cores
  };
  // The training shapes, no vector access (K 3001), wide rows (K 10000: 628 columns per block),
  // blocks with no columns (K 290 over 16), one block (N 8, K 100), four views; row groups:
  // N 1024 (f32) over 4 clusters per view, N 4096 (the shape, f16 + 3 exact updates)
  // over 8 clusters of 16 or 16 of 8.
  const Case cases[] = {{64, 3000, 0, 2},
                        {256, 3000, 0, 2},
                        {64, 3000, 16, 2},
                        {97, 3001, 0, 2},
                        {40, 10000, 0, 1},
                        {40, 290, 16, 2},
                        {8, 100, 0, 1},
                        {200, 700, 0, 4},
                        {1024, 3000, 0, 2, C::F32, 0, 4},
                        {512, 3000, 0, 1, C::F16, 0, 1},
                        {4096, 3000, 0, 1, C::F16, 3, 8},
                        {4096, 3000, 8, 1, C::F16, 3, 16},
                        // The f16 copy on tensor cores: the training shapes, rows and columns
                        // that do not fill a tile of 16, four views, one cluster of 512 rows,
                        // and the shape in row groups.
                        {64, 3000, 0, 2, C::F16, 3, 1, true},
                        {97, 3001, 0, 2, C::F16, 0, 1, true},
                        {200, 700, 0, 4, C::F16, 3, 1, true},
                        {512, 3000, 0, 1, C::F16, 0, 1, true},
                        {4096, 3000, 0, 1, C::F16, 3, 8, true}};
  for (const Case& c : cases) {
    CAPTURE(c.N);
    CAPTURE(c.K);
    CAPTURE(c.size);
    CAPTURE(static_cast<int>(c.cache));
    CAPTURE(c.mma);
    std::vector<Tensor> views;
    for (int v = 0; v < c.views; ++v) views.push_back(cpu_logits(c.N, c.K, 31 + v, 0.3));
    cuda::MiraPlan plan;
    auto opts = plan_opts(c.cache, S::Auto, 4, 0, 0, c.exact, true, c.size);
    opts.cluster_mma = c.mma;
    const auto got = run_kernel(views, V::Fused, opts, false, kTau, kBeta, 30, &plan);
    if (plan.cluster == 0) {
      // Row groups need all of a view's clusters resident at once; a device with fewer free
      // GPCs than an H100's may not run that many (cudaOccupancyMaxActiveClusters).
      MESSAGE("no cluster plan for N ", c.N, " on this device (expected ", c.groups, " clusters per view)");
      CHECK(c.groups > 1);
      continue;
    }
    if (c.size > 0) CHECK(plan.cluster == c.size);
    // The expected groups are an H100's / H200's (8 clusters of 16 at once); fewer clusters at
    // once give more, smaller groups of smaller clusters.
    if (c.groups == 1) {
      CHECK(plan.cluster_groups == 1);
    } else {
      CHECK(plan.cluster_groups >= c.groups);
    }
    CHECK(plan.grid == plan.views_per_group * plan.cluster_groups * plan.cluster);
    CHECK((plan.cluster_mma > 0) == c.mma);
    const plan_model::ClusterShape cs =
        plan_model::cluster_layout(plan.rows_per_block, static_cast<int>(c.K), plan.cluster, c.cache == C::F16 ? 2 : 4,
                                   plan.cluster_groups, c.mma);
    CHECK(plan.cluster_cols == cs.cols);
    CHECK(plan.cluster_mma == cs.mma_chunks);
    cpu::ClusterTwinShape sh;
    sh.size = plan.cluster, sh.cols = plan.cluster_cols, sh.subsets = cs.subsets, sh.rows = plan.rows_per_block;
    sh.mma_chunks = plan.cluster_mma;
    const cpu::MiraNumerics num{c.cache == C::F16 ? cpu::WorkingCopy::F16 : cpu::WorkingCopy::Exact, c.exact};
    for (int v = 0; v < c.views; ++v) {
      CAPTURE(v);
      const std::vector<double> ld = views[v].to_vector();
      std::vector<float> l(ld.begin(), ld.end()), t(l.size());
      cpu::mira_cluster_twin(l.data(), t.data(), c.N, c.K, static_cast<float>(kTau), static_cast<float>(kBeta), 30, sh,
                             num);
      // The f16 copy: an E that exp2f puts on the other side of an f16 rounding boundary than
      // the CPU's differs by a step (kF16TwinTol, as for the other f16 plans).
      CHECK(allclose(got[v], std::vector<double>(t.begin(), t.end()), c.cache == C::F16 ? kF16TwinTol : Tol{1e-6, 1e-4},
                     "cluster vs its CPU twin"));
      CHECK(allclose(got[v], reference(views[v]), c.cache == C::F16 && c.exact == 0 ? kF16CacheTol : kGpuTol,
                     "cluster vs f64"));
      CHECK(finite_simplex(got[v], c.N, c.K, 1e-4));
    }
    // Deterministic: the same bits on a second run (with row groups, whatever order the
    // clusters' flag-tagged sums arrive in).
    CHECK(run_kernel(views, V::Fused, opts) == got);
  }
  // bf16 logits, and 2 iterations (where every pass shows in the targets).
  const std::vector<Tensor> two = {cpu_logits(128, 3000, 41, 0.3), cpu_logits(128, 3000, 42, 0.3)};
  const auto cl = plan_opts(C::F32, S::Auto, 4, 0, 0, 0, true);
  const auto b16 = run_kernel(two, V::Fused, cl, true);
  // bf16 tensors live on the GPU: round there, compare on the host.
  const Tensor rounded = two[0].to(Device::cuda(0)).to(DType::BF16).to(DType::F32).to(Device::cpu());
  CHECK(allclose(b16[0], reference(rounded), kGpuTol, "cluster, bf16 logits"));
  const auto it2 = run_kernel(two, V::Fused, cl, false, kTau, kBeta, 2);
  CHECK(allclose(it2[1], reference(two[1], kTau, kBeta, 2), kGpuTol, "cluster, 2 iterations"));
  // What does not fit one cluster runs the default plan: N 4096, K 3000.
  cuda::MiraProblem big;
  big.V = 2, big.N = 4096, big.K = 3000;
  CHECK(cuda::mira_plan(big, V::Fused, cl).cluster == 0);
  // A NaN in the logits is counted (the op turns the count into its error).
  std::vector<double> x = cpu_logits(16, 40, 6, 0.3).to_vector();
  x[77] = NAN;
  const Device gpu = Device::cuda(0);
  const Tensor Lg = Tensor::from_vector(x, {16, 40}, DType::F32, gpu);
  Tensor out = Tensor::empty({16, 40}, DType::F32, gpu);
  cuda::MiraProblem p;
  p.N = 16, p.K = 40;
  p.logits[0] = Lg.raw();
  p.targets[0] = out.data<float>();
  const cuda::MiraPlan plan = cuda::mira_plan(p, V::Fused, cl);
  REQUIRE(plan.cluster > 0);
  Tensor ws = Tensor::empty({static_cast<int64_t>(plan.workspace_bytes)}, DType::U8, gpu);
  cuda::mira_assign_cuda(p, plan, ws.raw(), cuda::CudaContext::get().stream());
  float bad = 0;
  cuda::copy(&bad, Device::cpu(), cuda::mira_nonfinite_count(plan, ws.raw()), gpu, sizeof(float), false);
  CHECK(bad == 1.f);
}

TEST_CASE("gpu mira: bf16 logits, the Tensor op, several views in one launch") {
  const Device dev = Device::cuda(0);
  const int64_t N = 300, K = 1000;
  const Tensor a = cpu_logits(N, K, 3, 0.3), b = cpu_logits(N, K, 4, 0.3);
  // bf16 logits: against the reference on the bf16-rounded values.
  const Tensor ab = a.to(dev).to(DType::BF16);
  const auto ref_b = reference(ab.to(DType::F32).to(Device::cpu()));
  CHECK(allclose(mira_assign(ab, kTau, kBeta, 30).to_vector(), ref_b, kGpuTol, "bf16 logits, op"));
  const auto kb = run_kernel({ab.to(DType::F32).to(Device::cpu())}, cuda::MiraVariant::Fused, {}, true);
  CHECK(allclose(kb[0], ref_b, kGpuTol, "bf16 logits, kernel"));
  // The op with two views: each view against its own reference.
  const auto both = mira_assign(std::vector<Tensor>{a.to(dev), b.to(dev)}, kTau, kBeta, 30);
  CHECK(allclose(both[0].to_vector(), reference(a), kGpuTol, "view 0"));
  CHECK(allclose(both[1].to_vector(), reference(b), kGpuTol, "view 1"));
  for (AssignKernel k : {AssignKernel::Fused, AssignKernel::PerPass, AssignKernel::Unfused}) {
    AssignOptions o;
    o.kernel = k;
    CHECK(allclose(mira_assign(a.to(dev), kTau, kBeta, 30, local_comm(), nullptr, o).to_vector(), reference(a), kGpuTol,
                   "op kernel choice"));
  }
  // The op with the cluster plan (where the device has clusters; the default kernel elsewhere),
  // f32 and f16 + 3 exact updates, against the reference; then without it again (the plan
  // cache keeps the two apart).
  for (AssignWorkingCopy copy : {AssignWorkingCopy::F32, AssignWorkingCopy::F16}) {
    AssignOptions o;
    o.cluster_plan = true;
    o.working_copy = copy;
    o.exact_passes = 3;
    CHECK(allclose(mira_assign(a.to(dev), kTau, kBeta, 30, local_comm(), nullptr, o).to_vector(), reference(a), kGpuTol,
                   "op, cluster plan"));
  }
  CHECK(allclose(mira_assign(a.to(dev), kTau, kBeta, 30).to_vector(), reference(a), kGpuTol, "op, default plan"));
  {
    // The tensor-core sweeps through the op: another plan than the cluster plan's f16 sweeps on
    // the fused multiply-adds (other bits where the device has clusters), as close to the
    // reference. Both go through the op's plan cache, which must keep them apart.
    AssignOptions o;
    o.cluster_plan = true;
    o.working_copy = AssignWorkingCopy::F16;
    o.exact_passes = 3;
    const auto ffma = mira_assign(a.to(dev), kTau, kBeta, 30, local_comm(), nullptr, o).to_vector();
    o.cluster_mma = true;
    const auto mma = mira_assign(a.to(dev), kTau, kBeta, 30, local_comm(), nullptr, o).to_vector();
    CHECK(allclose(mma, reference(a), kGpuTol, "op, cluster plan on tensor cores"));
    cuda::MiraProblem p;
    p.N = static_cast<int>(N), p.K = static_cast<int>(K), p.iters = 30;
    cuda::MiraPlanOptions po;
    po.cache = cuda::MiraCache::F16, po.exact_passes = 3, po.cluster = true, po.cluster_mma = true;
    if (cuda::mira_plan(p, cuda::MiraVariant::Fused, po).cluster_mma > 0)
      CHECK_MESSAGE(mma != ffma, "the op's plan cache gave the FFMA plan for cluster_mma");
  }
  // The op's working-copy options: the CUDA kernel against the CPU op with the same options.
  for (AssignWorkingCopy copy : {AssignWorkingCopy::F16, AssignWorkingCopy::BF16}) {
    AssignOptions o;
    o.working_copy = copy;
    o.exact_passes = 3;
    const auto got = mira_assign(a.to(dev), kTau, kBeta, 30, local_comm(), nullptr, o).to_vector();
    const auto cpu = mira_assign(a, kTau, kBeta, 30, local_comm(), nullptr, o).to_vector();
    CHECK(allclose(got, cpu, copy == AssignWorkingCopy::F16 ? kF16TwinTol : Tol{1e-4, 1e-2}, "op working copy"));
  }
  // K beyond the fused kernel: the op falls back to the unfused one.
  const Tensor wide = cpu_logits(8, 20000, 5, 0.3);
  CHECK(allclose(mira_assign(wide.to(dev), kTau, kBeta, 30).to_vector(), reference(wide), kGpuTol, "K = 20000"));
}

TEST_CASE("gpu mira: the tensor-core updates against the f64 reference and the f16 copy's CPU twin") {
  // kernels/cuda/mira_mmarows.cu (MiraPlanOptions::mma_rows): the benchmark's shape with the
  // views side by side and one after the other (every row tile in shared memory, or half of
  // them in the workspace), a training shape, and an odd K with bf16 logits.
  const int major = compute_major();
  if (major < 8) {
    MESSAGE("SKIPPED: the tensor-core updates need sm_80 (compute capability ", major, ")");
    return;
  }
  using C = cuda::MiraCache;
  using S = cuda::MiraSchedule;
  struct Shape {
    int64_t N, K;
    bool bf16;
  };
  for (const Shape sh : {Shape{4096, 3000, false}, Shape{256, 3000, false}, Shape{200, 999, true}}) {
    CAPTURE(sh.N);
    CAPTURE(sh.K);
    const std::vector<Tensor> views = {cpu_logits(sh.N, sh.K, 21, 0.3), cpu_logits(sh.N, sh.K, 22, 0.3)};
    std::vector<Tensor> in = views;
    if (sh.bf16)  // the references see the logits the kernel reads
      for (Tensor& t : in) t = t.to(Device::cuda(0)).to(DType::BF16).to(DType::F32).to(Device::cpu());
    std::vector<std::vector<double>> ref, tw;  // f64 and the f16 copy's twin, once per view
    for (int v = 0; v < 2; ++v) {
      ref.push_back(reference(in[v]));
      tw.push_back(twin(in[v], AssignWorkingCopy::F16, 0));
    }
    for (const S sched : {S::Concurrent, S::Sequential}) {
      CAPTURE(static_cast<int>(sched));
      cuda::MiraPlanOptions o = plan_opts(C::F16, sched);
      o.mma_rows = true;
      cuda::MiraPlan plan;
      const auto got = run_kernel(views, cuda::MiraVariant::Fused, o, sh.bf16, kTau, kBeta, 30, &plan);
      REQUIRE(plan.mma_rows > 0);
      CAPTURE(plan.rows_per_block);
      CAPTURE(plan.smem_rows);
      for (int v = 0; v < 2; ++v) {
        CHECK(allclose(got[v], ref[v], kF16CacheTol, "tensor-core updates vs f64"));
        CHECK(allclose(got[v], tw[v], kF16TwinTol, "vs the CPU twin"));
        CHECK(finite_simplex(got[v], sh.N, sh.K, 1e-4));
      }
      // Deterministic, and the FMA path of wide passes as close to the twin.
      CHECK(run_kernel(views, cuda::MiraVariant::Fused, o, sh.bf16) == got);
      const auto fma = run_kernel(views, cuda::MiraVariant::Fused, o, sh.bf16, kTau, kBeta, 30, nullptr, true);
      for (int v = 0; v < 2; ++v) CHECK(allclose(fma[v], tw[v], kF16TwinTol, "FMA path vs the CPU twin"));
    }
    // The engine's op with the option (config mira.assign_plan "mma-rows"), one view.
    AssignOptions ao;
    ao.working_copy = AssignWorkingCopy::F16;
    ao.mma_rows = true;
    const Tensor dev_in = sh.bf16 ? views[0].to(Device::cuda(0)).to(DType::BF16) : views[0].to(Device::cuda(0));
    CHECK(allclose(mira_assign(dev_in, kTau, kBeta, 30, local_comm(), nullptr, ao).to_vector(), tw[0], kF16TwinTol,
                   "the op with mma_rows vs the CPU twin"));
  }
}

TEST_CASE("gpu mira: extreme and degenerate inputs stay finite") {
  const Device dev = Device::cuda(0);
  struct Case {
    const char* what;
    int64_t N, K;
    double tau, beta;
    int kind;  // 0: +-100, 1: N(0, 1), 2: an empty column
  };
  const Case cases[] = {{"+-100, tau' = 0.01", 64, 50, 0.03, 2.0 / 3.0, 0},
                        {"+-100, beta 0.99", 64, 3000, 1.0, 0.99, 0},
                        {"N(0,1), beta 0.99", 64, 300, 1.0, 0.99, 1},
                        {"empty column", 64, 50, 0.03, 2.0 / 3.0, 2},
                        {"N = 1", 1, 300, 0.225, 2.0 / 3.0, 1},
                        {"K = 1", 200, 1, 0.225, 2.0 / 3.0, 1},
                        {"N = K = 1", 1, 1, 0.225, 2.0 / 3.0, 0},
                        {"N = 65536", 65536, 3, 0.03, 2.0 / 3.0, 0},
                        {"K = 12288", 3, 12288, 0.03, 2.0 / 3.0, 0},
                        {"K = 65536", 3, 65536, 0.03, 2.0 / 3.0, 0}};
  const int major = compute_major();
  for (const Case& c : cases) {
    CAPTURE(c.what);
    std::vector<double> v = Tensor::randn({c.N, c.K}, 9, 0.0, 1.0, DType::F64).to_vector();
    for (int64_t i = 0; i < c.N; ++i)
      for (int64_t j = 0; j < c.K; ++j) {
        double& x = v[i * c.K + j];
        if (c.kind == 0) x = x < 0 ? -100 : 100;
        if (c.kind == 2) x = j == 3 ? -100 : (x < 0 ? 90 : 100);
      }
    const Tensor L = Tensor::from_vector(v, {c.N, c.K}, DType::F32, dev);
    for (int run = 0; run < 4; ++run) {
      // Auto, per-pass, unfused; then Auto with the f16 working copy and 3 exact updates.
      const AssignKernel k = run == 1 ? AssignKernel::PerPass : run == 2 ? AssignKernel::Unfused : AssignKernel::Auto;
      if (k != AssignKernel::Unfused && !cuda::mira_fused_supports(static_cast<int>(c.K))) continue;
      AssignOptions o;
      o.kernel = k;
      if (run == 3) {
        o.working_copy = AssignWorkingCopy::F16;
        o.exact_passes = 3;
      }
      const auto t = mira_assign(L, c.tau, c.beta, 30, local_comm(), nullptr, o).to_vector();
      CHECK(finite_simplex(t, c.N, c.K, 1e-4));
      if (c.kind == 2)
        for (int64_t i = 0; i < c.N; ++i) CHECK(t[i * c.K + 3] == 0);
    }
    const Tensor host = L.to(Device::cpu());
    // The tensor-core updates (up to K = 3072, sm_80).
    if (c.K <= 3072 && major >= 8) {
      cuda::MiraPlanOptions o = plan_opts(cuda::MiraCache::F16);
      o.mma_rows = true;
      cuda::MiraPlan plan;
      const auto t = run_kernel({host}, cuda::MiraVariant::Fused, o, false, c.tau, c.beta, 30, &plan)[0];
      CHECK(plan.mma_rows > 0);
      CHECK(finite_simplex(t, c.N, c.K, 1e-4));
      if (c.kind == 2)
        for (int64_t i = 0; i < c.N; ++i) CHECK(t[i * c.K + 3] == 0);
    }
    // The cluster plan (sm_90: N 65536 x K 3 in row groups of one-block clusters), f32 and
    // f16 + 3 exact updates.
    if (cuda::mira_fused_supports(static_cast<int>(c.K))) {
      for (cuda::MiraCache cache : {cuda::MiraCache::F32, cuda::MiraCache::F16}) {
        cuda::MiraPlan plan;
        const auto t =
            run_kernel({host}, cuda::MiraVariant::Fused, plan_opts(cache, cuda::MiraSchedule::Auto, 4, 0, 0, 3, true),
                       false, c.tau, c.beta, 30, &plan)[0];
        if (major >= 9) CHECK(plan.cluster > 0);
        CHECK(finite_simplex(t, c.N, c.K, 1e-4));
        if (c.kind == 2)
          for (int64_t i = 0; i < c.N; ++i) CHECK(t[i * c.K + 3] == 0);
      }
    }
    const auto sk = sinkhorn_assign(L).to_vector();
    CHECK(finite_simplex(sk, c.N, c.K, 1e-4));
  }
}

TEST_CASE("gpu mira: NaN or Inf logits raise the error") {
  const Device dev = Device::cuda(0);
  std::vector<double> v = cpu_logits(16, 40, 6, 0.3).to_vector();
  v[77] = NAN;
  const Tensor L = Tensor::from_vector(v, {16, 40}, DType::F32, dev);
  for (AssignKernel k : {AssignKernel::Fused, AssignKernel::PerPass, AssignKernel::Unfused}) {
    AssignOptions o;
    o.kernel = k;
    CHECK_THROWS_WITH_AS(mira_assign(L, kTau, kBeta, 30, local_comm(), nullptr, o), doctest::Contains("NaN or Inf"),
                         Error);
  }
  v[77] = INFINITY;
  CHECK_THROWS_WITH_AS(sinkhorn_assign(Tensor::from_vector(v, {16, 40}, DType::F32, dev)),
                       doctest::Contains("NaN or Inf"), Error);
}

TEST_CASE("gpu mira: two thread-ranks (per-pass kernel, all-reduce between launches) equal one rank") {
  const Device dev = Device::cuda(0);
  const int64_t N = 200, K = 700, N0 = 90;
  const Tensor L = cpu_logits(N, K, 7, 0.3);
  AssignStats s_one;
  const auto one = mira_assign(L.to(dev), kTau, kBeta, 30, local_comm(), &s_one).to_vector();
  const auto sk_one = sinkhorn_assign(L.to(dev)).to_vector();
  auto comms = make_thread_comms(2);
  Tensor part[2], sk_part[2];
  AssignStats st[2];
  std::string err[2];
  std::thread ranks[2];
  for (int r = 0; r < 2; ++r) {
    ranks[r] = std::thread([&, r] {
      try {
        cuda::set_device(0);
        const Tensor mine = (r == 0 ? L.slice_batch(0, N0) : L.slice_batch(N0, N)).to(dev);
        part[r] = mira_assign(mine, kTau, kBeta, 30, *comms[r], &st[r]);
        sk_part[r] = sinkhorn_assign(mine, 0.05, 3, *comms[r]);
      } catch (const std::exception& e) {
        err[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  REQUIRE(err[0] == "");
  REQUIRE(err[1] == "");
  auto joined = part[0].to_vector(), sk_joined = sk_part[0].to_vector();
  for (double x : part[1].to_vector()) joined.push_back(x);
  for (double x : sk_part[1].to_vector()) sk_joined.push_back(x);
  CHECK(allclose(joined, one, Tol{1e-6, 1e-4}, "mira, 2 ranks vs 1"));
  CHECK(allclose(sk_joined, sk_one, Tol{1e-6, 1e-4}, "sinkhorn, 2 ranks vs 1"));
  CHECK(allclose(st[0].wbar.to_vector(), s_one.wbar.to_vector(), Tol{1e-7, 1e-4}, "wbar over ranks"));
  CHECK(st[0].marginal_entropy == doctest::Approx(s_one.marginal_entropy).epsilon(1e-5));
}

TEST_CASE("gpu mira and sinkhorn: statistics and Sinkhorn against the CPU") {
  const Device dev = Device::cuda(0);
  const int64_t N = 256, K = 300;
  const Tensor L = cpu_logits(N, K, 8, 0.3);
  AssignStats g, c;
  mira_assign(L.to(dev), kTau, kBeta, 30, local_comm(), &g);
  mira_assign(L.to(DType::F64), kTau, kBeta, 30, local_comm(), &c);
  CHECK(allclose(g.wbar.to_vector(), c.wbar.to_vector(), Tol{1e-7, 1e-4}, "wbar"));
  CHECK(g.target_entropy == doctest::Approx(c.target_entropy).epsilon(1e-4));
  CHECK(g.marginal_entropy == doctest::Approx(c.marginal_entropy).epsilon(1e-4));
  CHECK(g.kkt_residual < 1e-5);  // f32: the reference's 1e-9 is below f32 rounding
  for (int iters : {1, 3}) {
    AssignStats sg, sc;
    const auto got = sinkhorn_assign(L.to(dev), 0.05, iters, local_comm(), &sg).to_vector();
    const auto ref = sinkhorn_assign(L.to(DType::F64), 0.05, iters, local_comm(), &sc).to_vector();
    CHECK(allclose(got, ref, Tol{1e-6, 1e-4}, "sinkhorn"));
    CHECK(sg.marginal_entropy == doctest::Approx(sc.marginal_entropy).epsilon(1e-4));
    CHECK(std::isnan(sg.kkt_residual));
  }
}

TEST_CASE("gpu mira: the per-pass, fused and cluster launches can be captured in a CUDA graph") {
  const Device dev = Device::cuda(0);
  const int64_t N = 128, K = 500;
  const Tensor Lc = cpu_logits(N, K, 9, 0.3);
  const Tensor L = Lc.to(dev);
  const auto ref = reference(Lc);
  // Per-pass, fused, and fused with the cluster plan (a cluster launch on sm_90).
  for (int run = 0; run < 3; ++run) {
    const cuda::MiraVariant variant = run == 0 ? cuda::MiraVariant::PerPass : cuda::MiraVariant::Fused;
    CAPTURE(run);
    Tensor T = Tensor::zeros({N, K}, DType::F32, dev);
    cuda::MiraProblem p;
    p.N = static_cast<int>(N), p.K = static_cast<int>(K);
    p.logits[0] = L.raw();
    p.targets[0] = T.data<float>();
    cuda::MiraPlanOptions o;
    o.cluster = run == 2;
    const cuda::MiraPlan plan = cuda::mira_plan(p, variant, o);
    Tensor ws = Tensor::empty({static_cast<int64_t>(plan.workspace_bytes)}, DType::U8, dev);
    // Capture on a stream of our own: the engine's stream stays free for the copies below.
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    cuda::synchronize();
    cudaGraph_t graph;
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    if (variant == cuda::MiraVariant::PerPass) {
      for (int pass = 0; pass <= p.iters + 1; ++pass) cuda::mira_assign_pass_cuda(p, plan, pass, ws.raw(), s);
    } else {
      cuda::mira_assign_cuda(p, plan, ws.raw(), s);
    }
    REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
    cudaGraphExec_t exec;
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(allclose(T.to_vector(), ref, kGpuTol, "graph replay"));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(s);
  }
}

#else

TEST_CASE("gpu mira: built without CUDA") {}

#endif

// labels: cpu
// The cluster plan's CUDA source (kernels/cuda/mira_cluster.cu) run on the CPU by the CUDA
// emulator (tests/cuda_emu/cuda_emu.h), so that CI without a GPU runs the kernel itself:
// - against its CPU twin (cpu::mira_cluster_twin) on the plans plan_model::cluster_shape makes
//   for an H100-like device (one cluster per view) and for a device with little shared memory
//   (row groups exchanging flag-tagged column sums), f32 and f16 copies, f32 and bf16 logits,
//   0 to 30 iterations, 1 to 4 views, extreme inputs, the non-finite count. Both run the same
//   f32 operations in the same order with the host's exp2f and log2f, so they must agree bit
//   for bit (on a GPU only to the tolerances of test_mira_assign_gpu: its exp2f differs);
// - through the engine's own host code (mira_plan, mira_assign_cuda) on an emulated device,
//   with shared memory and workspace that start as NaN wherever the kernel is meant to write
//   before it reads.
// Also checks that the emulator itself catches what it claims to: a barrier some threads
// skip, lanes at different shuffles, DSMEM before the first cluster barrier.
#include "tests/cuda_emu/cuda_emu.h"
//
#include <cooperative_groups.h>
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/mira_assign.h"
#include "kernels/cpu/mira_plan_model.h"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused_host.h"
#include "tests/cuda_emu/emu_testing.h"
#include "tests/testing.h"

using namespace mira;  // NOLINT(google-build-using-namespace)
using emu_testing::extreme;
using emu_testing::matches_twin;
using emu_testing::on_simplex;
using emu_testing::randn;
using emu_testing::same_bits;
using emu_testing::Workspace;
using C = cuda::MiraCache;

namespace {

constexpr float kTau = 0.225f, kBeta = 2.0f / 3.0f;

// An H100 / H200 (8 clusters of 16 at once, one per GPC), and one with little shared memory
// per block (row groups at small N).
emu::DeviceProps hopper() {
  emu::DeviceProps d;
  d.sms = 132;
  return d;
}
emu::DeviceProps small() {
  emu::DeviceProps d = hopper();
  d.smem_optin = 24 * 1024;
  d.smem_sm = 48 * 1024;
  return d;
}
const emu::DeviceProps kHopper = hopper();
const emu::DeviceProps kSmall = small();

struct Problem {
  int N = 0, K = 0;
  std::vector<std::vector<float>> views;  // f32 logits (bf16: rounded to bf16 first)
  bool bf16 = false;
  C cache = C::F32;
  int exact = 0;
  int iters = 30;
  float tau = kTau, beta = kBeta;
  int size = 0;  // 0: the plan's choice
  bool mma = false;  // the f16 copy's sweeps on tensor cores
  emu::DeviceProps dev = kHopper;
};

struct Result {
  cuda::MiraPlan plan;
  std::vector<std::vector<float>> targets;
  float nonfinite = 0;
};

// The engine's host code on the emulated device: mira_plan with the cluster plan asked for,
// then mira_assign_cuda, on a workspace that starts as NaN (0xff bytes).
Result run_kernel(const Problem& q) {
  const int V = static_cast<int>(q.views.size());
  Result r;
  emu::set_device(q.dev);
  std::vector<std::vector<__nv_bfloat16>> b16(V);
  cuda::MiraProblem p;
  p.V = V, p.N = q.N, p.K = q.K, p.logits_bf16 = q.bf16, p.tau_t = q.tau, p.beta = q.beta, p.iters = q.iters;
  r.targets.assign(V, std::vector<float>(static_cast<size_t>(q.N) * q.K, NAN));
  for (int v = 0; v < V; ++v) {
    if (q.bf16) {
      for (float x : q.views[v]) b16[v].push_back(__float2bfloat16_rn(x));
      p.logits[v] = b16[v].data();
    } else {
      p.logits[v] = q.views[v].data();
    }
    p.targets[v] = r.targets[v].data();
  }
  cuda::MiraPlanOptions o;
  o.cache = q.cache;
  o.exact_passes = q.exact;
  o.cluster = true;
  o.cluster_size = q.size;
  o.cluster_mma = q.mma;
  r.plan = cuda::mira_plan(p, cuda::MiraVariant::Fused, o);
  REQUIRE(r.plan.cluster > 0);
  CHECK((r.plan.cluster_mma > 0) == (q.mma && q.cache == C::F16));
  Workspace ws(r.plan.workspace_bytes);
  cuda::mira_assign_cuda(p, r.plan, ws.base, nullptr);
  CHECK(ws.intact());
  r.nonfinite = *cuda::mira_nonfinite_count(r.plan, ws.base);
  return r;
}

std::vector<float> twin(const Problem& q, const Result& r, int v) {
  std::vector<float> l = q.views[v], t(l.size());
  if (q.bf16)
    for (float& x : l) x = __bfloat162float(__float2bfloat16_rn(x));
  const plan_model::ClusterShape cs = plan_model::cluster_layout(r.plan.rows_per_block, q.K, r.plan.cluster);
  cpu::ClusterTwinShape sh;
  sh.size = r.plan.cluster, sh.cols = r.plan.cluster_cols, sh.subsets = cs.subsets, sh.rows = r.plan.rows_per_block;
  sh.mma_chunks = r.plan.cluster_mma;
  const cpu::MiraNumerics num{q.cache == C::F16 ? cpu::WorkingCopy::F16 : cpu::WorkingCopy::Exact, q.exact};
  cpu::mira_cluster_twin(l.data(), t.data(), q.N, q.K, q.tau, q.beta, q.iters, sh, num);
  return t;
}

// groups: the row groups the plan must make (1: none; > 1: at least that many; 0: any).
void check_against_twin(const Problem& q, int groups = 1) {
  const Result r = run_kernel(q);
  CAPTURE(r.plan.cluster);
  CAPTURE(r.plan.cluster_groups);
  CAPTURE(r.plan.views_per_group);
  if (groups == 1) CHECK(r.plan.cluster_groups == 1);
  if (groups > 1) CHECK(r.plan.cluster_groups >= groups);
  CHECK(r.nonfinite == 0.f);
  for (size_t v = 0; v < q.views.size(); ++v) {
    CAPTURE(v);
    // test_mira_assign_gpu's tolerances against the twin: f32 {1e-6, 1e-4}, the f16 copy
    // kF16TwinTol (an E that the GPU's exp2f puts across an f16 rounding boundary).
    const bool f16 = q.cache == C::F16;
    CHECK(matches_twin(r.targets[v], twin(q, r, static_cast<int>(v)), f16 ? 1e-5 : 1e-6, f16 ? 1e-3 : 1e-4,
                       f16 ? "cluster kernel vs its twin, f16 copy" : "cluster kernel vs its twin"));
    CHECK(on_simplex(r.targets[v], q.N, q.K, 1e-5));
  }
}

// The extreme inputs (emu_testing::extreme kinds) at the shapes these tests emulate.
struct ExtremeCase {
  const char* what;
  int N, K;
  float tau, beta;
  int kind;
};
const ExtremeCase kExtremeCases[] = {{"+-100, tau' = 0.01", 64, 50, 0.03f, 2.0f / 3.0f, 0},
                                     {"+-100, beta 0.99, tau' = 0.01", 64, 50, 1.f, 0.99f, 0},
                                     {"empty column, beta 0.99", 64, 50, 1.f, 0.99f, 2},
                                     {"one-hot rows", 64, 50, 0.03f, 0.9f, 3},
                                     {"K = 12288", 3, 12288, 0.03f, 2.0f / 3.0f, 0}};

Problem views(int N, int K, int V, uint32_t seed = 31, float stddev = 0.3f) {
  Problem q;
  q.N = N, q.K = K;
  for (int v = 0; v < V; ++v) q.views.push_back(randn(static_cast<size_t>(N) * K, seed + v, stddev));
  return q;
}

}  // namespace

TEST_CASE("cuda_emu: the cluster kernel, one cluster per view, bit for bit its CPU twin") {
  struct Case {
    int N, K, V, size;
  };
  // The training shapes (N 64, K 3000: 8 blocks), no vector access (K 3001), blocks with no
  // columns (K 290 over 16), one block (N 8, K 100), four views, a K of one quad or less.
  const Case cases[] = {{64, 3000, 2, 0}, {97, 3001, 2, 0}, {40, 290, 2, 16}, {8, 100, 1, 0},
                        {50, 700, 4, 0},  {1, 1, 1, 0},     {200, 1, 1, 0},   {5, 7, 2, 0}};
  for (const Case& c : cases) {
    CAPTURE(c.N);
    CAPTURE(c.K);
    CAPTURE(c.size);
    Problem q = views(c.N, c.K, c.V);
    q.size = c.size;
    check_against_twin(q);
  }
}

TEST_CASE("cuda_emu: the cluster kernel with row groups (flag-tagged column sums), f32 and f16 copies") {
  Problem q = views(300, 500, 2);  // 3 groups of 100 rows in clusters of 16 (f32)
  q.dev = kSmall;
  SUBCASE("f32") {
    check_against_twin(q, 2);
  }
  SUBCASE("f16 copy, split copy for the last 3 updates and the targets") {
    q.cache = C::F16;
    q.exact = 3;
    check_against_twin(q, 2);
  }
  SUBCASE("f16 copy, no exact updates") {
    q.cache = C::F16;
    check_against_twin(q, 2);
  }
  SUBCASE("f16 copy, every update on the split copy") {
    q.cache = C::F16;
    q.exact = 30;
    check_against_twin(q, 2);
  }
  SUBCASE("bf16 logits, clusters of 8") {
    q.bf16 = true;
    q.size = 8;
    check_against_twin(q, 2);
  }
}

TEST_CASE("cuda_emu: the cluster kernel at 0 and 2 iterations, and on extreme inputs") {
  for (int iters : {0, 2}) {
    CAPTURE(iters);
    Problem q = views(64, 500, 2);
    q.iters = iters;
    check_against_twin(q);
    q.dev = kSmall;
    q.N = 300;
    q.views = views(300, 500, 2).views;
    q.cache = C::F16;
    q.exact = 1;
    check_against_twin(q, 2);
  }
  for (const ExtremeCase& c : kExtremeCases) {
    CAPTURE(c.what);
    Problem q;
    q.N = c.N, q.K = c.K, q.tau = c.tau, q.beta = c.beta;
    q.views = {extreme(c.N, c.K, c.kind)};
    check_against_twin(q);
    if (c.kind == 2) {
      const Result r = run_kernel(q);
      double col3 = 0;
      for (int i = 0; i < c.N; ++i) col3 += r.targets[0][static_cast<size_t>(i) * c.K + 3];
      CHECK(col3 == 0);
    }
  }
  // Many rows of a few columns in row groups of one-block clusters.
  Problem q;
  q.N = 3000, q.K = 3, q.tau = 0.03f;
  q.views = {extreme(q.N, q.K, 0)};
  q.dev = kSmall;
  check_against_twin(q, 2);
}

TEST_CASE("cuda_emu: the cluster kernel's tensor-core sweeps of the f16 copy, bit for bit their twin") {
  // The emulator's mma adds the products in k order, as the twin does; a GPU's differ within
  // test_mira_assign_gpu's tolerances. The first cases also differ from the same plan without
  // the tensor cores (other additions): the sweeps did run.
  auto check = [](Problem q, int groups, bool differs) {
    q.cache = C::F16;
    q.mma = true;
    check_against_twin(q, groups);
    if (!differs) return;
    const Result with = run_kernel(q);
    q.mma = false;
    CHECK(with.targets[0] != run_kernel(q).targets[0]);
  };
  struct Case {
    int N, K, V, size, exact;
  };
  // One cluster per view: the training shapes, K 3001 (no vector access), blocks without
  // columns, one block, rows and columns that do not fill a tile of 16, four views.
  const Case cases[] = {{64, 3000, 2, 0, 0}, {64, 3000, 2, 0, 3}, {97, 3001, 2, 0, 3},
                        {40, 290, 2, 16, 0}, {8, 100, 1, 0, 0},   {50, 700, 4, 0, 3}};
  for (const Case& c : cases) {
    CAPTURE(c.N);
    CAPTURE(c.K);
    CAPTURE(c.exact);
    Problem q = views(c.N, c.K, c.V);
    q.size = c.size;
    q.exact = c.exact;
    check(q, 1, c.N == 64);
  }
  // Row groups (flag-tagged column sums), 0, 3 and 1 exact updates, bf16 logits.
  Problem q = views(300, 500, 2);
  q.dev = kSmall;
  for (int exact : {0, 3}) {
    CAPTURE(exact);
    q.exact = exact;
    check(q, 2, exact == 0);
  }
  q.bf16 = true;
  q.exact = 1;
  check(q, 2, false);
}

TEST_CASE("cuda_emu: ldmatrix, movmatrix and mma.sync as the sweeps address them give exact small-integer products") {
  // The same check runs on a GPU (test_mira_assign_gpu): where both pass, the emulator reads
  // the fragment layouts as the hardware does.
  const testing::MmaCase c = testing::mma_case();
  std::vector<float> out(384, NAN);
  cuda::mira_mma_selftest(c.A.data(), c.At.data(), c.B.data(), out.data(), nullptr);
  for (int x = 0; x < 384; ++x) {
    CAPTURE(x);
    CHECK(out[x] == c.D[x % 128]);
  }
  // The operands are not symmetric, so a load that transposed A would show in D.
  const testing::MmaCase t = [&] {
    testing::MmaCase s = c;
    std::swap(s.A, s.At);
    return s;
  }();
  cuda::mira_mma_selftest(t.A.data(), t.At.data(), t.B.data(), out.data(), nullptr);
  CHECK(out[0] != c.D[0]);
  CHECK(out[256] != c.D[0]);
}

TEST_CASE("cuda_emu: the tensor-core sweeps fall back to fused multiply-adds where the halves lose bits") {
  // Weights or row inverses that span more than 2^28 in a block or cluster: the twin takes the
  // same passes off the tensor cores, and the targets stay on the simplex.
  for (const ExtremeCase& c : kExtremeCases) {
    CAPTURE(c.what);
    Problem q;
    q.N = c.N, q.K = c.K, q.tau = c.tau, q.beta = c.beta;
    q.views = {extreme(c.N, c.K, c.kind)};
    q.cache = C::F16;
    q.mma = true;
    for (int exact : {0, 3}) {
      CAPTURE(exact);
      q.exact = exact;
      check_against_twin(q);
    }
  }
}

TEST_CASE("cuda_emu: the cluster kernel counts non-finite logits") {
  Problem q = views(16, 40, 1, 6);
  q.views[0][5] = NAN;
  q.views[0][77] = INFINITY;
  q.views[0][600] = -INFINITY;
  CHECK(run_kernel(q).nonfinite == 3.f);
}

TEST_CASE("cuda_emu: row groups launch without the cooperative attribute where the driver refuses it") {
  using cuda::fused::launch_row_groups;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 16, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeCooperative;
  attr[1].val.cooperative = 1;
  cudaLaunchConfig_t cfg{};
  cfg.attrs = attr;
  cfg.numAttrs = 2;
  std::vector<unsigned> tries;  // the attributes of each launch attempt
  // A driver that answers `with` to a launch carrying the cooperative attribute.
  auto driver = [&tries](cudaError_t with) {
    return [&tries, with](const cudaLaunchConfig_t& c) {
      tries.push_back(c.numAttrs);
      return c.numAttrs == 2 ? with : cudaSuccess;
    };
  };
  std::atomic<bool> refused{false};
  CHECK(launch_row_groups(cfg, false, refused, driver(cudaSuccess)) == cudaSuccess);
  CHECK(tries == std::vector<unsigned>{2});
  CHECK(!refused);
  // Errors that are not a refusal of the combination come back, and are not retried: too
  // many clusters to be resident at once would strand the groups without the attribute.
  for (const cudaError_t e : {cudaErrorCooperativeLaunchTooLarge, cudaErrorLaunchOutOfResources}) {
    tries.clear();
    CHECK(launch_row_groups(cfg, false, refused, driver(e)) == e);
    CHECK(tries == std::vector<unsigned>{2});
    CHECK(!refused);
  }
  // While a stream is captured a failed launch has invalidated the capture: no retry.
  tries.clear();
  CHECK(launch_row_groups(cfg, true, refused, driver(cudaErrorNotSupported)) == cudaErrorNotSupported);
  CHECK(tries == std::vector<unsigned>{2});
  CHECK(!refused);
  // A refusal: once more without the attribute, and without it from then on.
  for (const cudaError_t e : {cudaErrorNotSupported, cudaErrorInvalidValue}) {
    refused = false;
    tries.clear();
    CHECK(launch_row_groups(cfg, false, refused, driver(e)) == cudaSuccess);
    CHECK(tries == std::vector<unsigned>{2, 1});
    CHECK(refused);
    tries.clear();
    CHECK(launch_row_groups(cfg, false, refused, driver(e)) == cudaSuccess);
    CHECK(tries == std::vector<unsigned>{1});
  }
}

// ---- the emulator's own checks

namespace {

void divergent_barrier(int* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1;
}
void divergent_shuffle(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x & 1)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_xor_sync(0xffffffffu, v, 2);
  out[threadIdx.x] = v;
}
void butterfly(int* out) {
  int v = static_cast<int>(threadIdx.x);
  for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
__shared__ int dsmem_word;
void dsmem_ring(int* out, bool barrier_first) {
  cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
  if (threadIdx.x == 0) dsmem_word = static_cast<int>(blockIdx.x) * 10;
  if (barrier_first) cl.sync();
  const unsigned peer = (cl.block_rank() + 1) % cl.num_blocks();
  if (threadIdx.x == 0) out[blockIdx.x] = *cl.map_shared_rank(&dsmem_word, peer);
  cl.sync();
}

void smem_write(int* out, int byte) {
  unsigned char* smem = emu::dynamic_smem();
  if (threadIdx.x == 0) smem[byte] = 1;
  __syncthreads();
  out[threadIdx.x] = smem[0];
}
void ldmatrix_at(int* out, int offset) {
  alignas(16) static thread_local __half tile[32 * 8 + 8];
  unsigned r[4];
  emu::ldmatrix_x4(r, tile + offset + 8 * (threadIdx.x % 32), false);
  out[threadIdx.x] = static_cast<int>(r[0] & 1);
}

}  // namespace

TEST_CASE("cuda_emu: the emulator runs shuffles and DSMEM as a GPU does, and refuses what a GPU would not run") {
  std::vector<int> out(256, -1);
  emu::LaunchConfig cfg;
  cfg.grid = 4, cfg.block = 64;
  emu::launch(cfg, butterfly, out.data());
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < 64; ++t) {
      const int w = t / 32 * 32;
      CHECK(out[b * 64 + t] == 32 * w + 496);  // the sum of the warp's thread indices
    }
  cfg.grid = 8, cfg.block = 32, cfg.cluster = 4;
  emu::launch(cfg, dsmem_ring, out.data(), true);
  for (int b = 0; b < 8; ++b) CHECK(out[b] == (b / 4 * 4 + (b % 4 + 1) % 4) * 10);
  cfg.grid = 1, cfg.block = 64, cfg.cluster = 1;
  CHECK_THROWS_AS(emu::launch(cfg, divergent_barrier, out.data()), emu::Error);
  CHECK_THROWS_AS(emu::launch(cfg, divergent_shuffle, out.data()), emu::Error);
  cfg.grid = 4, cfg.block = 32, cfg.cluster = 4;
  CHECK_THROWS_AS(emu::launch(cfg, dsmem_ring, out.data(), false), emu::Error);
  // Shared memory past what the launch asked for, and ldmatrix rows off 16 bytes: both fault
  // on a GPU.
  cfg.grid = 2, cfg.block = 32, cfg.cluster = 1, cfg.smem = 64;
  CHECK_NOTHROW(emu::launch(cfg, smem_write, out.data(), 63));
  CHECK_THROWS_WITH_AS(emu::launch(cfg, smem_write, out.data(), 64), doctest::Contains("past the block's dynamic"),
                       emu::Error);
  cfg.grid = 1, cfg.smem = 0;
  CHECK_NOTHROW(emu::launch(cfg, ldmatrix_at, out.data(), 0));
  CHECK_NOTHROW(emu::launch(cfg, ldmatrix_at, out.data(), 8));
  CHECK_THROWS_WITH_AS(emu::launch(cfg, ldmatrix_at, out.data(), 4), doctest::Contains("16-byte aligned"), emu::Error);
}

TEST_CASE("cuda_emu: the cluster kernel gives the same bits whatever order its threads run in") {
  // A missing barrier shows as a result that depends on which thread runs first.
  Problem one = views(64, 3000, 2);
  Problem groups = views(300, 500, 2);
  groups.dev = kSmall;
  groups.cache = C::F16;
  groups.exact = 3;
  Problem mma = views(97, 3001, 2);
  mma.cache = C::F16;
  mma.mma = true;
  for (const Problem* q : {&one, &groups, &mma}) {
    CAPTURE(q->N);
    emu::set_schedule(0);
    const Result ref = run_kernel(*q);
    for (const int order : {1, 2}) {
      CAPTURE(order);
      emu::set_schedule(order);
      const Result r = run_kernel(*q);
      for (size_t v = 0; v < q->views.size(); ++v) CHECK(same_bits(r.targets[v], ref.targets[v]));
    }
    emu::set_schedule(0);
  }
}

// labels: cpu
// The fused MIRA assignment's plan model (kernels/cpu/mira_plan_model.h), without a GPU: on an
// H200's description it must pick the plans that measured fastest there, and predict each
// measured plan's time to within 25 % (bench/RESULTS.md, 2026-11-27, N x K 3000, 2 views,
// 30 iterations; the times below are those runs' medians). The model leaves out the first and
// last passes' extra work, so it comes out 3-17 % under the measured times.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/mira_plan_model.h"

using namespace mira::plan_model;

namespace {

// An H200 as the CUDA runtime describes it, and the two block shapes of the column kernel at
// K = 3000 (static shared memory and register-limited occupancy as ncu and ptxas report them).
const Device kH200{132, 232448, 233472, 60.0 * 1024 * 1024};

Shape shape8() {  // 8 columns per thread, 384 threads, 2 rows per batch
  Shape s = column_shape(8, 384, 3072, 2);
  s.smem_static = 3748;
  s.occ0 = 2;
  return s;
}
Shape shape4() {  // 4 columns per thread, 768 threads, 4 rows per batch
  Shape s = column_shape(4, 768, 3072, 4);
  s.smem_static = 4260;
  s.occ0 = 1;
  return s;
}

// Blocks per SM: the register limit (occ0), then shared memory with 1 KB reserved per block.
Occupancy occupancy(const std::vector<Shape>& shapes) {
  return [shapes](int si, long long dyn) {
    const Shape& s = shapes[static_cast<size_t>(si)];
    const long long per_block = dyn + s.smem_static + 1024;
    return static_cast<int>(std::min<long long>(s.occ0, kH200.smem_sm / per_block));
  };
}

enum class Sched { Auto, SideBySide, OneByOne };

Choice plan(int N, int cache_bytes, const std::vector<Shape>& shapes, Sched sched = Sched::Auto) {
  Problem p;
  p.V = 2, p.N = N, p.K = 3000, p.iters = 30, p.cache_bytes = cache_bytes;
  p.may_side_by_side = sched != Sched::OneByOne;
  p.may_one_by_one = sched != Sched::SideBySide;
  return choose(p, kH200, shapes, occupancy(shapes));
}

}  // namespace

TEST_CASE("plan model: the H200's fastest measured plans") {
  const std::vector<Shape> both = {shape8(), shape4()};
  SUBCASE("N 4096, f32: 8 columns at 2 blocks per SM, views one after another, 8 rows in shared memory") {
    const Choice c = plan(4096, 4, both);
    CHECK(c.shape == 0);
    CHECK(c.vpg == 1);
    CHECK(c.bps == 2);
    CHECK(c.bpv * c.vpg == 264);
    CHECK(c.smem_rows == 8);
  }
  SUBCASE("N 4096, f16 working copy: 8 columns, views side by side") {
    const Choice c = plan(4096, 2, both);
    CHECK(c.shape == 0);
    CHECK(c.vpg == 2);
    CHECK(c.smem_rows == 18);
  }
  SUBCASE("N 4096, f32, either schedule pinned: 8 columns (4-column blocks side by side took 1.42 ms, not 1.12)") {
    CHECK(plan(4096, 4, both, Sched::SideBySide).shape == 0);
    CHECK(plan(4096, 4, both, Sched::OneByOne).shape == 0);
  }
  SUBCASE("training shapes N 64 and 256: one block of 768 per SM, views side by side") {
    for (int N : {64, 256}) {
      CAPTURE(N);
      const Choice c = plan(N, 4, both);
      CHECK(c.shape == 1);
      CHECK(c.vpg == 2);
      CHECK(c.bpv == std::min(N, 66));
    }
  }
  SUBCASE("a single view never runs side by side") {
    Problem p;
    p.V = 1, p.N = 4096, p.K = 3000;
    const Choice c = choose(p, kH200, both, occupancy(both));
    CHECK(c.vpg == 1);
    CHECK(c.shape >= 0);
  }
  SUBCASE("nothing fits: no plan") {
    std::vector<Shape> none = {shape8()};
    none[0].occ0 = 0;
    CHECK(choose(Problem{}, kH200, none, occupancy(none)).shape == -1);
  }
}

TEST_CASE("plan model: predicted launch times within 25 % of the H200's") {
  struct Measured {
    int N, cache_bytes, shape;
    Sched sched;
    double ms;
  };
  // shape 0 = 8 columns x 2 blocks per SM, 1 = 4 columns x 1 block of 768.
  const std::vector<Measured> runs = {
      {4096, 4, 0, Sched::OneByOne, 1.069},   {4096, 4, 0, Sched::SideBySide, 1.117},
      {4096, 4, 1, Sched::OneByOne, 1.221},   {4096, 4, 1, Sched::SideBySide, 1.419},
      {4096, 2, 0, Sched::OneByOne, 1.138},   {4096, 2, 0, Sched::SideBySide, 0.927},
      {4096, 2, 1, Sched::SideBySide, 1.042}, {256, 4, 0, Sched::OneByOne, 0.512},
      {256, 4, 0, Sched::SideBySide, 0.265},  {256, 4, 1, Sched::OneByOne, 0.443},
      {256, 4, 1, Sched::SideBySide, 0.220},  {64, 4, 0, Sched::OneByOne, 0.419},
      {64, 4, 0, Sched::SideBySide, 0.219},   {64, 4, 1, Sched::OneByOne, 0.402},
      {64, 4, 1, Sched::SideBySide, 0.207},
  };
  for (const Measured& m : runs) {
    const std::vector<Shape> one = {m.shape == 0 ? shape8() : shape4()};
    const Choice c = plan(m.N, m.cache_bytes, one, m.sched);
    const double ms = c.cost * 1e3;
    CAPTURE(m.N);
    CAPTURE(m.cache_bytes);
    CAPTURE(m.shape);
    CAPTURE(static_cast<int>(m.sched));
    CAPTURE(ms);
    CHECK(std::fabs(ms - m.ms) <= 0.25 * m.ms);
  }
}

TEST_CASE("plan model: the tensor-core updates store whole row tiles of 16") {
  // mira_mmarows.cu at K 3000: 16 warps of 12 column tiles (Kp 3072), one block per SM, the
  // weights and row partials ahead of E (14 KB), 2640 bytes of static shared memory (ptxas).
  Shape s = mma_row_shape(512, 3072);
  s.smem_static = 2640;
  s.occ0 = 1;
  s.smem_extra = 3072 * 4 + 2 * 16 * 16 * 4;
  s.max_bpv = 4096 / 16;
  const std::vector<Shape> one = {s};
  // One view at a time: 132 blocks of 32 rows (31.03 rounded up), all in shared memory.
  const Choice seq = plan(4096, 2, one, Sched::OneByOne);
  CHECK(seq.bpv == 132);
  CHECK(seq.rpb == 32);
  CHECK(seq.smem_rows == 32);
  // Side by side: 66 blocks of 63 rows stored as 4 tiles; 35 rows fit, so 2 whole tiles.
  const Choice both = plan(4096, 2, one, Sched::SideBySide);
  CHECK(both.bpv == 66);
  CHECK(both.rpb == 63);
  CHECK(both.smem_rows == 32);
  CHECK(stored_rows(s, both.rpb) == 64);
  // The model's choice (a prediction until measured): side by side, where half of E in L2
  // costs less than a second pass boundary per iteration.
  CHECK(plan(4096, 2, one).vpg == 2);
  // A block's rows never straddle a tile between shared memory and the workspace.
  for (int N : {1, 17, 100, 1000, 4096, 9000}) {
    CAPTURE(N);
    const Choice c = plan(N, 2, one);
    CHECK(c.smem_rows % 16 == 0);
    CHECK(c.smem_rows <= stored_rows(s, c.rpb));
  }
}

TEST_CASE("plan model: the cluster plan's size and layout") {
  // The cluster kernel's static shared memory (ptxas, sm_90) on an H200's 227 KB per block;
  // clusters of 16 that run at once: one per GPC with 16 SMs free (8 on an H100 / H200).
  const int optin = kH200.smem_optin, st = 1248;
  const ClusterActive active = [](int size, long long) { return size >= 16 ? 8 : 132 / size; };
  auto shape = [&](int N, int V, int te, int max_size, int asked = 0) {
    return cluster_shape(N, 3000, V, te, max_size, optin, st, active, asked);
  };
  SUBCASE("the shapes of bench/NOTES.md (session 9)") {
    struct Want {
      int N, te, max_size;
      int size, cols, groups, rows, side_by_side;
    };
    const Want wants[] = {
        // Training shapes, one cluster per view: N 64 in 8 blocks (4 would fit, at 94 elements
        // per thread), N 256 in 16.
        {64, 4, 16, 8, 376, 1, 64, 2},
        {256, 4, 16, 16, 188, 1, 256, 2},
        // Row groups: N 1024 (f32) in 4 clusters per view, side by side; N 4096 (f16) in 8,
        // one view at a time.
        {1024, 4, 16, 16, 188, 4, 256, 2},
        {4096, 2, 16, 16, 188, 8, 512, 1},
        // Portable clusters of 8: N 256 (f32) in 2 groups of 128 rows; N 4096 (f16) in 16 of
        // 256 (the groups' sums take shared memory too: 15 of 274 do not fit).
        {256, 4, 8, 8, 376, 2, 128, 2},
        {4096, 2, 8, 8, 376, 16, 256, 1},
    };
    for (const Want& w : wants) {
      CAPTURE(w.N);
      CAPTURE(w.te);
      CAPTURE(w.max_size);
      const ClusterShape c = shape(w.N, 2, w.te, w.max_size);
      CHECK(c.size == w.size);
      CHECK(c.cols == w.cols);
      CHECK(c.groups == w.groups);
      CHECK(c.rows == w.rows);
      CHECK(c.views_side_by_side == w.side_by_side);
      CHECK(c.smem + st <= optin);
    }
    CHECK(shape(64, 2, 4, 16).subsets == 5);
    CHECK(shape(256, 2, 4, 16).smem == 256 * 188 * 4 + 4LL * (4 * 256 + 188 + 10 * 188));
  }
  SUBCASE("the tensor-core layout of the f16 copy") {
    // N 4096: the same 8 clusters of 16 and 512 rows per cluster; rows of 192 + 8 halves (the
    // 8 row addresses of an ldmatrix in distinct banks), 4 row chunks of the column sums (12
    // column tiles x 4 chunks of 8 row tiles: 3 units per warp, 24 mma each).
    const ClusterShape c = cluster_shape(4096, 3000, 2, 2, 16, optin, st, active, 0, true);
    CHECK(c.size == 16);
    CHECK(c.groups == 8);
    CHECK(c.rows == 512);
    CHECK(c.ld == 200);
    CHECK(c.mma_chunks == 4);
    CHECK(c.smem == 512 * 200 * 2 + 4LL * (4 * 512 + 192 + 10 * 192) + 2LL * (2 * 192 + 2 * 512));
    CHECK(c.smem + st <= optin);
    // The training shapes keep their clusters; rows pad to 16 (N 97: 112).
    const ClusterShape t = cluster_shape(64, 3000, 2, 2, 16, optin, st, active, 0, true);
    CHECK(t.size == 8);
    CHECK(t.ld == 384 + 8);
    CHECK(mma_chunks(24, 4) == 2);   // 48 units over 16 warps, 2 row tiles each
    CHECK(mma_chunks(12, 32) == 4);  // the N 4096 shape above
    CHECK(mma_chunks(1, 1) == 1);
    // Without the tensor cores (or with f32) the layout is the plain one.
    CHECK(cluster_layout(97, 3001, 16, 2, 1, false).ld == 188);
    CHECK(cluster_layout(97, 3001, 16, 4, 1, true).mma_chunks == 0);
    CHECK(cluster_layout(97, 3001, 16, 2, 1, true).mma_chunks > 0);
  }
  SUBCASE("what does not fit the clusters that run at once gets no plan") {
    CHECK(shape(4096, 2, 4, 16).size == 0);   // f32: 15 groups of 16 blocks, 8 run at once
    CHECK(shape(64, 2, 4, 8, 16).size == 0);  // beyond what the device launches
    const ClusterActive none = [](int, long long) { return 0; };
    CHECK(cluster_shape(64, 3000, 2, 4, 16, optin, st, none).size == 0);
  }
  SUBCASE("sizes asked for, small and wide problems") {
    CHECK(shape(64, 2, 4, 16, 16).size == 16);
    CHECK(cluster_shape(8, 100, 1, 4, 16, optin, st, active).size == 1);
    const ClusterShape w = cluster_shape(3, 12288, 1, 4, 16, optin, st, active);  // 2048 columns per block at most
    CHECK(w.size == 8);
    CHECK(w.cols == 1536);
    CHECK(w.subsets == 1);
    // Narrow rows: no block without columns. K 3 is one block per cluster, N 65536 of them in
    // row groups; K 40 (10 quads) at most 8 blocks.
    const ClusterShape n = cluster_shape(65536, 3, 1, 4, 16, optin, st, active);
    CHECK(n.size == 1);
    CHECK(n.groups > 1);
    CHECK(n.rows * n.groups >= 65536);
    CHECK(cluster_shape(2048, 40, 1, 4, 16, optin, st, active).size <= 8);
  }
}

TEST_CASE("plan model: the automatic grid barriers follow the H200's measurements") {
  // bench/RESULTS.md, session 19 (N x K 3000, 2 views, 30 iterations, ms): the f16 copy's auto
  // plan at N 4096 0.650 cooperative, 0.643 plain per-view counters, 0.663 staggered; at N 1024
  // 0.295 / 0.289 / 0.295. The f32 copy's auto plan at N 1024 (8 columns, side by side) 0.286
  // cooperative, 0.279 staggered; at N 4096 it runs the views one after another.
  const std::vector<Shape> both = {shape8(), shape4()};
  auto barrier_for = [&](int N, int cache_bytes, bool f16, int exact) {
    const Choice c = plan(N, cache_bytes, both);
    const Shape& sh = both[static_cast<size_t>(c.shape)];
    BarrierCase b;
    b.vpg = c.vpg, b.cpt = sh.cpt, b.batch_rows = sh.batch_rows;
    b.cache_bytes = cache_bytes, b.f16 = f16, b.exact_passes = exact;
    return auto_barrier(b);
  };
  CHECK(barrier_for(4096, 2, true, 0) == Barrier::ViewCounter);
  CHECK(barrier_for(1024, 2, true, 0) == Barrier::ViewCounter);
  CHECK(barrier_for(1024, 4, false, 0) == Barrier::ViewCounterStagger);
  CHECK(barrier_for(4096, 4, false, 0) == Barrier::Cooperative);  // views one after another
  CHECK(barrier_for(256, 4, false, 0) == Barrier::Cooperative);   // 4 columns, one block per SM
  CHECK(barrier_for(4096, 2, true, 3) == Barrier::Cooperative);   // exact passes: staggered lost
  CHECK(barrier_for(4096, 2, false, 0) == Barrier::Cooperative);  // bf16 copy: no such kernel
  BarrierCase other;
  other.vpg = 2, other.cpt = 8, other.batch_rows = 2, other.cache_bytes = 2, other.f16 = true;
  CHECK(auto_barrier(other) == Barrier::ViewCounter);
  other.default_kernel = false;  // tensor-core rows
  CHECK(auto_barrier(other) == Barrier::Cooperative);
}

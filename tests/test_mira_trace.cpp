// labels: cpu
// Reading the fused MIRA assignment's trace on the host (kernels/cpu/mira_trace.h), on
// hand-made timelines whose answers are known: what bench/mira_assign --trace prints about
// how the two blocks of an SM overlap their rows, and how far apart a barrier's blocks arrive.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/mira_trace.h"

using namespace mira::trace;

namespace {

constexpr int kMarks = 32;
const Layout kLay{8, kMarks};

// A block's trace words: launch cycles, SM and marks (cycle, phase), the rest 0.
struct Block {
  double total = 0;
  int sm = 0;
  std::vector<Mark> marks;
};

std::vector<int64_t> words(const std::vector<Block>& blocks) {
  std::vector<int64_t> w(blocks.size() * static_cast<std::size_t>(kLay.words()), 0);
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    int64_t* p = w.data() + b * static_cast<std::size_t>(kLay.words());
    p[kLay.phases - 1] = static_cast<int64_t>(blocks[b].total);
    p[kLay.phases] = blocks[b].sm;
    REQUIRE(blocks[b].marks.size() <= static_cast<std::size_t>(kMarks));
    for (std::size_t i = 0; i < blocks[b].marks.size(); ++i)
      p[kLay.phases + 1 + i] = (static_cast<int64_t>(blocks[b].marks[i].t) << 4) | blocks[b].marks[i].phase;
  }
  return w;
}

// A block that starts at t = 100, runs a first pass and its boundary (10 cycles each), then
// one update pass per {weights, rows, wait} (a reduction and barrier 2 of 5 cycles each after).
Block updating(const std::vector<std::vector<double>>& passes, int sm = 0) {
  Block b;
  b.sm = sm;
  double t = 100;
  const auto mark = [&](double dt, int phase) {
    t += dt;
    b.marks.push_back({t, phase});
  };
  mark(0, kStart);
  mark(10, kFirst);
  mark(10, kBarrier1);
  mark(10, kReduce);
  mark(10, kBarrier2);
  for (const auto& p : passes) {
    mark(p[0], kWeights);
    mark(p[1], kRows);
    mark(p[2], kBarrier1);
    mark(5, kReduce);
    mark(5, kBarrier2);
  }
  b.total = t - 100;
  return b;
}

}  // namespace

TEST_CASE("trace: the marks and the launch's cycles per us") {
  const std::vector<int64_t> w = words({updating({{1, 2, 3}}), updating({{1, 2, 3}, {4, 5, 6}})});
  const std::vector<Mark> tl = timeline(w.data(), kLay, 1);
  REQUIRE(tl.size() == 15);
  CHECK(tl[0].t == 100);
  CHECK(tl[0].phase == kStart);
  CHECK(tl[5].phase == kWeights);
  CHECK(tl[5].t == 141);
  CHECK(tl[14].phase == kBarrier2);
  // Launch cycles 56 and 81 (40 + 16 and 40 + 16 + 25): mean 68.5 cycles over 0.5 us.
  CHECK(cycles_per_us(w.data(), kLay, 2, 0.5e-3) == doctest::Approx(137.0));
}

TEST_CASE("trace: the blocks of a barrier, their arrival spread and whether the same come last") {
  SUBCASE("the same block last every pass") {
    // Block b: weights 1, rows 10 + b, wait 20 - b: block 3 arrives last each time.
    std::vector<Block> bl;
    for (int b = 0; b < 4; ++b)
      bl.push_back(updating({{1, 10.0 + b, 20.0 - b}, {1, 10.0 + b, 20.0 - b}, {1, 10.0 + b, 20.0 - b}}));
    const std::vector<int64_t> w = words(bl);
    const PassSpread s = pass_spread(w.data(), kLay, {0, 0, 0, 0}, 2.0);  // 2 cycles per us
    CHECK(s.passes == 3);
    CHECK(s.barrier1.min == doctest::Approx(17.0 / 2));
    CHECK(s.barrier1.median == doctest::Approx(18.5 / 2));
    CHECK(s.barrier1.max == doctest::Approx(20.0 / 2));
    CHECK(s.rows.min == doctest::Approx(5.0));
    CHECK(s.rows.median == doctest::Approx(5.75));
    CHECK(s.rows.max == doctest::Approx(6.5));
    CHECK(s.weights.min == doctest::Approx(0.5));
    CHECK(s.weights.max == doctest::Approx(0.5));
    CHECK(s.late_repeat == doctest::Approx(1.0));
  }
  SUBCASE("a different block last every pass") {
    // Pass k: block k waits 1, the others 9.
    std::vector<Block> bl;
    for (int b = 0; b < 3; ++b) {
      std::vector<std::vector<double>> p;
      for (int k = 0; k < 3; ++k) p.push_back({2, 8, k == b ? 1.0 : 9.0});
      bl.push_back(updating(p));
    }
    const std::vector<int64_t> w = words(bl);
    const PassSpread s = pass_spread(w.data(), kLay, {0, 0, 0}, 1.0);
    CHECK(s.passes == 3);
    CHECK(s.barrier1.min == doctest::Approx(1.0));
    CHECK(s.barrier1.median == doctest::Approx(9.0));
    CHECK(s.late_repeat == doctest::Approx(0.0));
  }
  SUBCASE("barrier groups are read apart") {
    // Group 0 waits 5 and 7, group 1 waits 100 and 110: per group, then averaged.
    const std::vector<int64_t> w =
        words({updating({{1, 1, 5}}), updating({{1, 1, 7}}), updating({{1, 1, 100}}), updating({{1, 1, 110}})});
    const PassSpread s = pass_spread(w.data(), kLay, {0, 0, 1, 1}, 1.0);
    CHECK(s.passes == 2);
    CHECK(s.barrier1.min == doctest::Approx(52.5));
    CHECK(s.barrier1.median == doctest::Approx((6.0 + 105.0) / 2));
    CHECK(s.barrier1.max == doctest::Approx(58.5));
    // One group: the same blocks spread from 5 to 110.
    const PassSpread one = pass_spread(w.data(), kLay, {0, 0, 0, 0}, 1.0);
    CHECK(one.passes == 1);
    CHECK(one.barrier1.min == doctest::Approx(5.0));
    CHECK(one.barrier1.max == doctest::Approx(110.0));
  }
  SUBCASE("passes cut off by the marks' end, and blocks of no view, are left out") {
    Block cut = updating({{1, 2, 3}, {1, 2, 30}});
    cut.marks.resize(cut.marks.size() - 3);  // the second pass's barrier never recorded
    // A block of no view: only the launch's start.
    Block idle;
    idle.marks.push_back({100, kStart});
    const std::vector<int64_t> w = words({updating({{1, 2, 4}, {1, 2, 40}}), cut, idle});
    const PassSpread s = pass_spread(w.data(), kLay, {0, 0, 0}, 1.0);
    CHECK(s.passes == 1);
    CHECK(s.barrier1.min == doctest::Approx(3.0));
    CHECK(s.barrier1.max == doctest::Approx(4.0));
    CHECK(s.late_repeat == 0.0);  // no pair of passes
  }
}

TEST_CASE("trace: the rows of an SM's two blocks, together or apart") {
  // SM 0: rows [141, 151) and [143, 153): 8 of 10 cycles shared each way. SM 1: the first
  // block's rows end before the second's start (weights 1 against 40).
  const std::vector<int64_t> w =
      words({updating({{1, 10, 1}}, 0), updating({{3, 10, 1}}, 0), updating({{1, 10, 1}}, 1),
             updating({{40, 10, 1}}, 1), updating({{1, 10, 1}}, 2)});  // alone on SM 2: not a pair
  const RowsOverlap r = rows_overlap(w.data(), kLay, 5, 2.0);
  CHECK(r.sms_with_two_blocks == 2);
  CHECK(r.marks == 10);
  CHECK(r.n_shared == 2);
  CHECK(r.n_alone == 2);
  CHECK(r.shared_us == doctest::Approx(5.0));
  CHECK(r.alone_us == doctest::Approx(5.0));
  CHECK(r.overlap == doctest::Approx(16.0 / 40));
}

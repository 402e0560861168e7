#pragma once
// Reading the fused MIRA assignment's trace (MiraPlan::trace, kernels/cuda/mira_assign.cuh) on
// the host: bench/mira_assign --trace prints what these find. Plain C++ so that tests check
// them on hand-made timelines without a GPU.
//
// Each block's words: kPhases per-phase cycle sums (the last one the whole launch), its SM, then
// its timeline: marks of clock64 << 4 | phase, the launch's start (phase 7), then the end of
// each phase in the order the block ran them, 0 after the last. Blocks on one SM share its
// clock; blocks on different SMs do not, so only durations (and overlaps on one SM) compare.
#include <cstdint>
#include <vector>

namespace mira::trace {

// The phases' numbers in the marks (mira_fused.cuh's kTrace*).
enum Phase { kFirst = 0, kWeights = 1, kRows = 2, kLast = 3, kBarrier1 = 4, kReduce = 5, kBarrier2 = 6, kStart = 7 };

struct Layout {
  int phases = 8;  // per-phase sums, the last the whole launch's cycles
  int marks = 0;   // timeline words
  int words() const { return phases + 1 + marks; }
};

struct Mark {
  double t = 0;  // SM cycles
  int phase = 0;
};

// Block b's timeline (its marks up to the first 0 word).
std::vector<Mark> timeline(const int64_t* words, const Layout& lay, int b);

// The blocks' mean cycles per us: their launch cycles over the launch's time.
double cycles_per_us(const int64_t* words, const Layout& lay, int grid, double launch_ms);

// Do two blocks of one SM update rows at the same time? For each SM with exactly two blocks,
// each update-rows interval of one is split by how much of it the other spent in its own
// update rows: "shared" (over 3/4), "alone" (under 1/4).
struct RowsOverlap {
  int sms_with_two_blocks = 0;
  int marks = 0;       // the most marks a block recorded
  double overlap = 0;  // share of all rows time that the SM's other block spent in rows too
  int n_alone = 0, n_shared = 0;
  double alone_us = 0, shared_us = 0;  // mean durations
};
RowsOverlap rows_overlap(const int64_t* words, const Layout& lay, int grid, double per_us);

// Across the blocks of one barrier (a view group with per-view barriers, else the grid), per
// update pass in every block's timeline: how long each block waited at the barrier after its
// rows (the last to arrive waits least: the spread of the waits is the spread of the
// arrivals), and how long its weights and rows took. Each pass gives a min, median and max
// across the group's blocks; these are averaged over the passes and groups.
struct Spread {
  double min = 0, median = 0, max = 0;  // us
};
struct PassSpread {
  int passes = 0;   // update passes seen in every block of a group (summed over groups)
  Spread barrier1;  // wait after the rows
  Spread weights;
  Spread rows;
  // Over consecutive passes: the share in which the pass's last block to arrive was among the
  // last tenth (rounded up) to arrive in the pass before (~0.1 if lateness moves at random,
  // near 1 if the same blocks are late every pass).
  double late_repeat = 0;
};
// group[b]: the barrier group of block b (blocks of different groups never wait for each
// other).
PassSpread pass_spread(const int64_t* words, const Layout& lay, const std::vector<int>& group, double per_us);

}  // namespace mira::trace

#include "kernels/cpu/mira_trace.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>

namespace mira::trace {

namespace {

uint64_t word(const int64_t* words, const Layout& lay, int b, int k) {
  return static_cast<uint64_t>(words[static_cast<size_t>(b) * lay.words() + k]);
}

struct Span {
  double t0, t1;
};

// One update pass of a block: its weights, rows and the wait at the barrier after them (SM cycles).
struct Update {
  double weights, rows, wait;
};

std::vector<Update> updates(const std::vector<Mark>& tl) {
  std::vector<Update> u;
  for (size_t i = 1; i + 2 < tl.size(); ++i)
    if (tl[i].phase == kWeights && tl[i + 1].phase == kRows && tl[i + 2].phase == kBarrier1)
      u.push_back({tl[i].t - tl[i - 1].t, tl[i + 1].t - tl[i].t, tl[i + 2].t - tl[i + 1].t});
  return u;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  const size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

}  // namespace

std::vector<Mark> timeline(const int64_t* words, const Layout& lay, int b) {
  std::vector<Mark> tl;
  for (int i = 0; i < lay.marks; ++i) {
    const uint64_t w = word(words, lay, b, lay.phases + 1 + i);
    if (w == 0) break;
    tl.push_back({static_cast<double>(w >> 4), static_cast<int>(w & 15)});  // exact: clock64 < 2^53
  }
  return tl;
}

double cycles_per_us(const int64_t* words, const Layout& lay, int grid, double launch_ms) {
  double cycles = 0;
  for (int b = 0; b < grid; ++b) cycles += static_cast<double>(word(words, lay, b, lay.phases - 1));
  return grid > 0 && launch_ms > 0 ? cycles / grid / (launch_ms * 1e3) : 0.0;
}

RowsOverlap rows_overlap(const int64_t* words, const Layout& lay, int grid, double per_us) {
  std::vector<std::vector<Span>> rows(static_cast<size_t>(grid));
  std::map<int, std::vector<int>> on_sm;
  RowsOverlap r;
  for (int b = 0; b < grid; ++b) {
    on_sm[static_cast<int>(word(words, lay, b, lay.phases))].push_back(b);
    const std::vector<Mark> tl = timeline(words, lay, b);
    for (size_t i = 1; i < tl.size(); ++i)
      if (tl[i].phase == kRows) rows[static_cast<size_t>(b)].push_back({tl[i - 1].t, tl[i].t});
    r.marks = std::max(r.marks, static_cast<int>(tl.size()));
  }
  double total = 0, both = 0, alone = 0, shared = 0;
  for (const auto& [sm, blocks] : on_sm) {
    if (blocks.size() != 2) continue;
    ++r.sms_with_two_blocks;
    for (int s = 0; s < 2; ++s) {
      const auto& mine = rows[static_cast<size_t>(blocks[static_cast<size_t>(s)])];
      const auto& other = rows[static_cast<size_t>(blocks[static_cast<size_t>(1 - s)])];
      for (const Span& x : mine) {
        double ov = 0;
        for (const Span& y : other) ov += std::max(0.0, std::min(x.t1, y.t1) - std::max(x.t0, y.t0));
        const double len = x.t1 - x.t0;
        total += len;
        both += ov;
        if (len <= 0) continue;
        if (ov < 0.25 * len) alone += len, ++r.n_alone;
        if (ov > 0.75 * len) shared += len, ++r.n_shared;
      }
    }
  }
  r.overlap = total > 0 ? both / total : 0.0;
  if (per_us > 0) {
    r.alone_us = r.n_alone ? alone / r.n_alone / per_us : 0.0;
    r.shared_us = r.n_shared ? shared / r.n_shared / per_us : 0.0;
  }
  return r;
}

PassSpread pass_spread(const int64_t* words, const Layout& lay, const std::vector<int>& group, double per_us) {
  const int grid = static_cast<int>(group.size());
  std::map<int, std::vector<std::vector<Update>>> by_group;  // group -> its blocks' updates
  for (int b = 0; b < grid; ++b) {
    std::vector<Update> u = updates(timeline(words, lay, b));
    if (!u.empty()) by_group[group[static_cast<size_t>(b)]].push_back(std::move(u));  // blocks of no view: none
  }
  PassSpread r;
  Spread sum_wait, sum_weights, sum_rows;
  int late_pairs = 0, late_hits = 0;
  const auto add = [](Spread& s, const std::vector<double>& x) {
    s.min += *std::min_element(x.begin(), x.end());
    s.median += median(x);
    s.max += *std::max_element(x.begin(), x.end());
  };
  for (const auto& [g, blocks] : by_group) {
    size_t passes = blocks[0].size();
    for (const auto& u : blocks) passes = std::min(passes, u.size());
    std::vector<int> prev_late;  // the last tenth to arrive in the pass before
    for (size_t k = 0; k < passes; ++k) {
      std::vector<double> wait, weights, rows;
      for (const auto& u : blocks) {
        wait.push_back(u[k].wait);
        weights.push_back(u[k].weights);
        rows.push_back(u[k].rows);
      }
      add(sum_wait, wait);
      add(sum_weights, weights);
      add(sum_rows, rows);
      ++r.passes;
      // Blocks by their wait, shortest first (the last to arrive first), ties by index.
      std::vector<int> order(blocks.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
      std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return wait[a] < wait[c]; });
      if (k > 0) {
        ++late_pairs;
        late_hits += std::find(prev_late.begin(), prev_late.end(), order[0]) != prev_late.end() ? 1 : 0;
      }
      const size_t tenth = (order.size() + 9) / 10;
      prev_late.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(tenth));
    }
  }
  if (r.passes > 0 && per_us > 0) {
    const double f = 1.0 / (r.passes * per_us);
    r.barrier1 = {sum_wait.min * f, sum_wait.median * f, sum_wait.max * f};
    r.weights = {sum_weights.min * f, sum_weights.median * f, sum_weights.max * f};
    r.rows = {sum_rows.min * f, sum_rows.median * f, sum_rows.max * f};
  }
  r.late_repeat = late_pairs > 0 ? static_cast<double>(late_hits) / late_pairs : 0.0;
  return r;
}

}  // namespace mira::trace

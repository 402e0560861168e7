#include "engine/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <vector>

#include "engine/cuda_backend.h"
#include "engine/env_switch.h"

namespace mira::prof {

namespace {

struct Record {
  std::string name;
  bool gpu = false;
  void* e0 = nullptr;
  void* e1 = nullptr;
  std::chrono::steady_clock::time_point t0;
  double ms = 0;       // device time (CUDA events), or host time on the CPU
  double host_ms = 0;  // host time between the scope's start and end (issuing the work)
  bool done = false;
};

struct Total {
  double ms = 0;
  double host_ms = 0;
  long calls = 0;
};

struct State {
  std::mutex mu;
  std::map<long, Record> open;  // recorded, not yet folded into totals, by id
  long next_id = 0;
  std::map<std::string, Total> totals;
  bool registered = false;
};

State& state() {
  static State* s = new State();  // never destroyed: the atexit report may run late
  return *s;
}

// Folds finished records into the totals. wait: wait for their GPU events; else only those
// the GPU has reached are folded (no stall in the middle of a step). Caller holds mu.
void fold(State& s, bool wait) {
  for (auto it = s.open.begin(); it != s.open.end();) {
    Record& r = it->second;
    if (!r.done || (!wait && r.gpu && !cuda::timing_event_done(r.e1))) {
      ++it;
      continue;
    }
    if (r.gpu) {
      r.ms = cuda::timing_event_elapsed_ms(r.e0, r.e1);
      cuda::timing_event_release(r.e0);
      cuda::timing_event_release(r.e1);
    }
    Total& t = s.totals[r.name];
    t.ms += r.ms;
    t.host_ms += r.host_ms;
    t.calls += 1;
    it = s.open.erase(it);
  }
}

void report_at_exit() {
  try {
    report(stderr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[profile] no report: %s\n", e.what());
  }
}

}  // namespace

namespace {
EnvSwitch g_enabled("MIRA_PROFILE");
}  // namespace

bool enabled() { return g_enabled.on(); }

void set_enabled(bool on) { g_enabled.set(on); }

void Scope::begin(std::string name, Device dev) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.registered) {
    std::atexit(report_at_exit);
    s.registered = true;
  }
  if (s.open.size() > 50000) fold(s, false);
  Record r;
  r.name = std::move(name);
  r.gpu = dev.is_cuda();
  if (r.gpu) r.e0 = cuda::timing_event_record();
  r.t0 = std::chrono::steady_clock::now();
  slot_ = s.next_id++;
  s.open.emplace(slot_, std::move(r));
}

void Scope::end() noexcept {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.open.find(slot_);
  if (it == s.open.end()) return;
  Record& r = it->second;
  r.host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - r.t0).count();
  if (r.gpu) {
    try {
      r.e1 = cuda::timing_event_record();
    } catch (...) {  // a CUDA error being reported already (a destructor must not throw)
      cuda::timing_event_release(r.e0);
      s.open.erase(it);
      return;
    }
  } else {
    r.ms = r.host_ms;
  }
  r.done = true;
}

void reset() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  fold(s, true);
  s.totals.clear();
}

void report(std::FILE* out, int steps) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  fold(s, true);
  steps = std::max(steps, 1);
  if (s.totals.empty()) return;
  std::vector<std::pair<std::string, Total>> rows(s.totals.begin(), s.totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  std::fprintf(out,
               "[profile] per step (%d steps): name, ms (GPU events on CUDA, else host), host ms (issuing), calls; "
               "inclusive times (a phase holds its ops, 'bwd conv2d' its bwd-data and bwd-filter rows)\n",
               steps);
  for (const auto& r : rows)
    std::fprintf(out, "[profile] %-58s %9.3f %9.3f %8.1f\n", r.first.c_str(), r.second.ms / steps,
                 r.second.host_ms / steps, static_cast<double>(r.second.calls) / steps);
  // Families: the name up to its first word starting with a digit ("conv2d fwd 3x3/1 ..." ->
  // "conv2d fwd").
  std::map<std::string, Total> fam;
  for (const auto& r : rows) {
    std::string f;
    size_t i = 0;
    while (i < r.first.size()) {
      size_t j = r.first.find(' ', i);
      if (j == std::string::npos) j = r.first.size();
      const std::string word = r.first.substr(i, j - i);
      if (!word.empty() && word[0] >= '0' && word[0] <= '9') break;
      f += (f.empty() ? "" : " ") + word;
      i = j + 1;
    }
    fam[f].ms += r.second.ms;
    fam[f].host_ms += r.second.host_ms;
    fam[f].calls += r.second.calls;
  }
  if (fam.size() < rows.size()) {
    std::vector<std::pair<std::string, Total>> frows(fam.begin(), fam.end());
    std::sort(frows.begin(), frows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    std::fprintf(out, "[profile] by family (the rows above summed by the words before the first number):\n");
    for (const auto& r : frows)
      std::fprintf(out, "[profile]   %-56s %9.3f %9.3f %8.1f\n", r.first.c_str(), r.second.ms / steps,
                   r.second.host_ms / steps, static_cast<double>(r.second.calls) / steps);
  }
  s.totals.clear();
}

}  // namespace mira::prof

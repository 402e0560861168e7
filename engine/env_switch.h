// A process-wide on/off switch for an optional code path: read from an environment variable
// on first use ("1" = on, any other value = off, unset = the default), unless set() came first
// (tests and benchmarks flip it at run time).
#pragma once

#include <atomic>
#include <cstdlib>

namespace mira {

class EnvSwitch {
 public:
  explicit constexpr EnvSwitch(const char* variable, bool default_on = false)
      : variable_(variable), default_on_(default_on) {}
  bool on() {
    int v = state_.load(std::memory_order_relaxed);
    if (v < 0) {
      const char* e = std::getenv(variable_);
      int expected = -1;
      state_.compare_exchange_strong(expected, (e ? e[0] == '1' : default_on_) ? 1 : 0);
      v = state_.load(std::memory_order_relaxed);
    }
    return v == 1;
  }
  void set(bool on) { state_.store(on ? 1 : 0, std::memory_order_relaxed); }

 private:
  const char* variable_;
  bool default_on_;
  std::atomic<int> state_{-1};  // -1: not read yet
};

}  // namespace mira

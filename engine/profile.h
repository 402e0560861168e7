// Op profiler for performance work: MIRA_PROFILE=1 makes every instrumented region (each
// forward op, each autograd node's backward, the training step's phases) record its time:
// CUDA events on the engine's stream for CUDA tensors (no synchronisation while running), the
// host clock for CPU tensors; and for both, the host time between the region's start and end
// (issuing the work, plus any wait for the device inside it): a GPU phase whose host time is
// close to its GPU time is bound by the host. Times are inclusive (a phase contains its ops).
// The totals per name print to stderr at exit, or when report() is called. Off (the default),
// a Scope costs one branch.
#pragma once

#include <cstdio>
#include <string>

#include "engine/tensor.h"

namespace mira::prof {

bool enabled();
// Overrides MIRA_PROFILE (tests).
void set_enabled(bool on);

class Scope {
 public:
  Scope(const char* name, Device dev) {
    if (enabled()) begin(name, dev);
  }
  // A name built only when profiling (the lambda returns a std::string).
  template <typename F, typename = decltype(std::string(std::declval<F>()()))>
  Scope(F&& make_name, Device dev) {
    if (enabled()) begin(make_name(), dev);
  }
  ~Scope() {
    if (slot_ >= 0) end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin(std::string name, Device dev);
  void end() noexcept;
  long slot_ = -1;
};

// Forgets everything recorded so far (call after warm-up steps).
void reset();
// Totals per name, largest first; `steps` (at least 1) divides the times and counts (per-step
// figures). Waits for the recorded GPU events; throws on a CUDA error.
void report(std::FILE* out, int steps = 1);

}  // namespace mira::prof

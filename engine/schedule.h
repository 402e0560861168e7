// Per-step schedules of the official MIRA code (train.py, src/scheduler.py). `step` counts
// optimiser steps from 0; `total` = epochs * steps_per_epoch.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/error.h"

namespace mira {

struct LrSchedule {
  double base_lr = 0.3;          // already scaled by batch / 256
  double warmup_start_lr = 0.0;  // official default 0.3 (unscaled); the paper: 0
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t steps_per_epoch = 1;
  int64_t total_steps = 1;

  // Linear warm-up from warmup_start_lr reaching base_lr after warmup_steps, then half-cosine
  // to min_lr at total_steps. Official quirk kept: the warm-up ratio is (step+1)/(W+1) and the
  // cosine runs on fractional epochs.
  double at(int64_t step) const {
    MIRA_CHECK(step >= 0, "negative step");
    if (step < warmup_steps) {
      const double r = double(step + 1) / double(warmup_steps + 1);
      return warmup_start_lr + r * (base_lr - warmup_start_lr);
    }
    const double epoch = double(step) / double(steps_per_epoch);
    const double warm_epochs = double(warmup_steps) / double(steps_per_epoch);
    const double max_epochs = double(total_steps) / double(steps_per_epoch);
    const double span = max_epochs - warm_epochs;
    const double r = span > 0 ? (epoch - warm_epochs) / span : 1.0;
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * std::min(r, 1.0)));
  }
};

// value(step) = final - (final - initial) * (1 + cos(pi * step / total)) / 2: starts at
// initial, ends at final. Used for beta (0.7 -> 2/3) and the EMA momentum (0.99 -> 1).
struct CosineRamp {
  double initial = 0.0, final_value = 0.0;
  int64_t total_steps = 1;
  double at(int64_t step) const {
    const double r = total_steps > 0 ? std::min(double(step) / double(total_steps), 1.0) : 1.0;
    return final_value - (final_value - initial) * 0.5 * (1.0 + std::cos(M_PI * r));
  }
};

}  // namespace mira

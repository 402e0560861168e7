// Passes over flat parameter buffers (twins of kernels/cuda/optim.cu).
#pragma once

#include <cstdint>

namespace mira::cpu {

// ema = m * ema + (1 - m) * online, over n elements (the EMA teacher update).
template <typename T>
void ema_update(T* ema, const T* online, int64_t n, double m);

// One parameter tensor inside the flat buffers.
struct ParamSegment {
  int64_t offset;  // elements
  int64_t numel;
  int32_t flags;   // kDecay: weight decay and LARS scaling apply (ndim > 1); kFrozen: skip entirely
  static constexpr int32_t kDecay = 1;
  static constexpr int32_t kFrozen = 2;
};

// SGD with momentum, or LARS (MoCo-v3 / official MIRA), over every segment:
//   d = g + wd * p                        (kDecay segments only)
//   d *= eta * ||p|| / ||d||              (LARS, kDecay segments only; 1 if either norm is 0)
//   mu = momentum * mu + d;  p -= lr * mu
// Frozen segments are untouched (no decay, no momentum), as parameters whose grad is None.
// p, g, mu: flat buffers
template <typename T>
void sgd_step(T* p, const T* g, T* mu, const ParamSegment* segs, int nseg, double lr, double momentum,
              double weight_decay, bool lars, double eta);

}  // namespace mira::cpu

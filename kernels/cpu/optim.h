// Passes over flat parameter buffers (twins of kernels/cuda/optim.cu).
#pragma once

#include <cstdint>

namespace mira::cpu {

// ema = m * ema + (1 - m) * online, over n elements (the EMA teacher update).
template <typename T>
void ema_update(T* ema, const T* online, int64_t n, double m);

}  // namespace mira::cpu

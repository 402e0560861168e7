#include "kernels/cpu/optim.h"

namespace mira::cpu {

template <typename T>
void ema_update(T* ema, const T* online, int64_t n, double m) {
  const T a = static_cast<T>(m), b = static_cast<T>(1.0 - m);
  for (int64_t i = 0; i < n; ++i) ema[i] = a * ema[i] + b * online[i];
}

template void ema_update<float>(float*, const float*, int64_t, double);
template void ema_update<double>(double*, const double*, int64_t, double);

}  // namespace mira::cpu

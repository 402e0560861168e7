#include "kernels/cpu/optim.h"

#include <cmath>

namespace mira::cpu {

template <typename T>
void ema_update(T* ema, const T* online, int64_t n, double m) {
  const T a = static_cast<T>(m), b = static_cast<T>(1.0 - m);
  for (int64_t i = 0; i < n; ++i) ema[i] = a * ema[i] + b * online[i];
}

template <typename T>
void sgd_step(T* p, const T* g, T* mu, const ParamSegment* segs, int nseg, double lr, double momentum,
              double weight_decay, bool lars, double eta) {
  for (int s = 0; s < nseg; ++s) {
    const ParamSegment& sg = segs[s];
    if (sg.flags & ParamSegment::kFrozen) continue;
    T* ps = p + sg.offset;
    const T* gs = g + sg.offset;
    T* ms = mu + sg.offset;
    const bool decay = sg.flags & ParamSegment::kDecay;
    const T wd = decay ? static_cast<T>(weight_decay) : T(0);
    T q = T(1);
    if (lars && decay) {
      double pn = 0, dn = 0;
      for (int64_t i = 0; i < sg.numel; ++i) {
        const double d = static_cast<double>(gs[i] + wd * ps[i]);
        pn += static_cast<double>(ps[i]) * ps[i];
        dn += d * d;
      }
      pn = std::sqrt(pn);
      dn = std::sqrt(dn);
      if (pn > 0 && dn > 0) q = static_cast<T>(eta * pn / dn);
    }
    const T m = static_cast<T>(momentum), a = static_cast<T>(lr);
    for (int64_t i = 0; i < sg.numel; ++i) {
      const T d = (gs[i] + wd * ps[i]) * q;
      ms[i] = m * ms[i] + d;
      ps[i] -= a * ms[i];
    }
  }
}

template void sgd_step<float>(float*, const float*, float*, const ParamSegment*, int, double, double, double, bool,
                              double);
template void sgd_step<double>(double*, const double*, double*, const ParamSegment*, int, double, double, double, bool,
                               double);
template void ema_update<float>(float*, const float*, int64_t, double);
template void ema_update<double>(double*, const double*, int64_t, double);

}  // namespace mira::cpu

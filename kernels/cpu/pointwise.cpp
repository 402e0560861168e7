#include "kernels/cpu/pointwise.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/parallel.h"

namespace mira::cpu {

namespace {
inline float bf16_to_f(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
double load(const void* p, int t, int64_t i) {
  switch (t) {
    case 0: return static_cast<const float*>(p)[i];
    case 1: return static_cast<const double*>(p)[i];
    case 2: return bf16_to_f(static_cast<const uint16_t*>(p)[i]);
    case 3: return static_cast<const uint8_t*>(p)[i];
    default: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
  }
}
void store(void* p, int t, int64_t i, double v) {
  switch (t) {
    case 0: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case 1: static_cast<double*>(p)[i] = v; break;
    case 2: static_cast<uint16_t*>(p)[i] = f_to_bf16(static_cast<float>(v)); break;
    case 3: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    default: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
  }
}
}  // namespace

void cast(const void* src, int st, void* dst, int dt, int64_t n) {
  if (st == 0 && dt == 1) {
    auto s = static_cast<const float*>(src);
    auto d = static_cast<double*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    return;
  }
  if (st == 1 && dt == 0) {
    auto s = static_cast<const double*>(src);
    auto d = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
    return;
  }
  if (st == 0 && dt == 2) {  // f32 -> bf16 must round once, from the f32 value
    auto s = static_cast<const float*>(src);
    auto d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = f_to_bf16(s[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) store(dst, dt, i, load(src, st, i));
}

void fill(void* dst, int t, int64_t n, double v) {
  for (int64_t i = 0; i < n; ++i) store(dst, t, i, v);
}

template <typename T>
void relu_fwd(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  // NaN semantics as PyTorch: relu(NaN) = NaN (a NaN input must not vanish here).
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] <= T(0) ? T(0) : x[i];
}

namespace {

// Elements per task of the element-wise loops on the thread pool (kernels/cpu/parallel.h); each
// element is computed by itself, so the chunks do not change the bits.
constexpr int64_t kPointwiseChunk = int64_t(64) << 10;

template <typename T>
MIRA_CPU_CLONES void relu_bwd_range(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int64_t n,
                                    bool acc) {
  if (acc) {
    for (int64_t i = 0; i < n; ++i) dx[i] += relu_mask(y[i], dy[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dx[i] = relu_mask(y[i], dy[i]);
  }
}

template <typename T>
MIRA_CPU_CLONES void add_relu_range(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = a[i] + b[i];
    y[i] = v <= T(0) ? T(0) : v;
  }
}

}  // namespace

template <typename T>
void relu_bwd(const T* dy, const T* y, T* dx, int64_t n, bool acc) {
  parallel_chunks(n, kPointwiseChunk,
                  [&](int64_t, int64_t i0, int64_t i1) { relu_bwd_range(dy + i0, y + i0, dx + i0, i1 - i0, acc); });
}

template <typename T>
void add_fwd(const T* a, const T* b, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

template <typename T>
void add_relu_fwd(const T* a, const T* b, T* y, int64_t n) {
  parallel_chunks(n, kPointwiseChunk,
                  [&](int64_t, int64_t i0, int64_t i1) { add_relu_range(a + i0, b + i0, y + i0, i1 - i0); });
}

template <typename T>
void axpy(T alpha, const T* dy, T* dx, int64_t n, bool acc) {
  if (acc) {
    for (int64_t i = 0; i < n; ++i) dx[i] += alpha * dy[i];
  } else {
    for (int64_t i = 0; i < n; ++i) dx[i] = alpha * dy[i];
  }
}

template <typename T>
void broadcast_scalar_bwd(const T* dy, T alpha, T* dx, int64_t n, bool acc) {
  const T v = dy[0] * alpha;
  if (acc) {
    for (int64_t i = 0; i < n; ++i) dx[i] += v;
  } else {
    for (int64_t i = 0; i < n; ++i) dx[i] = v;
  }
}

template <typename T>
double sum(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

#define MIRA_INST(T)                                                   \
  template void relu_fwd<T>(const T*, T*, int64_t);                    \
  template void relu_bwd<T>(const T*, const T*, T*, int64_t, bool);    \
  template void add_fwd<T>(const T*, const T*, T*, int64_t);           \
  template void add_relu_fwd<T>(const T*, const T*, T*, int64_t);      \
  template void axpy<T>(T, const T*, T*, int64_t, bool);               \
  template double sum<T>(const T*, int64_t);                           \
  template void broadcast_scalar_bwd<T>(const T*, T, T*, int64_t, bool);
MIRA_INST(float)
MIRA_INST(double)
#undef MIRA_INST

}  // namespace mira::cpu

// Elementwise CPU kernels (twins of kernels/cuda/pointwise.cu). T is float or double.
// Backward kernels take `accumulate`: true adds into the gradient, false overwrites it.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mira::cpu {

// y <= 0 ? 0 : d (the ReLU mask of a gradient; NaN y keeps d), as a bitwise AND with an
// all-ones or all-zeros mask: the same values, and loops over it vectorise with plain SSE2
// (the select form stayed scalar: a masked batch-norm backward reduction 3x slower).
template <typename T>
inline T relu_mask(T y, T d) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(U) == sizeof(T), "relu_mask: float or double");
  U bits;
  std::memcpy(&bits, &d, sizeof(T));
  bits &= y <= T(0) ? U(0) : ~U(0);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Dtype conversion; codes follow mira::DType (0 f32, 1 f64, 2 bf16, 3 u8, 4 i64).
void cast(const void* src, int src_dtype, void* dst, int dst_dtype, int64_t n);
void fill(void* dst, int dtype, int64_t n, double value);

template <typename T>
void relu_fwd(const T* x, T* y, int64_t n);
// dy, y: (n); dx: (n)
template <typename T>
void relu_bwd(const T* dy, const T* y, T* dx, int64_t n, bool accumulate);

// y = a + b
template <typename T>
void add_fwd(const T* a, const T* b, T* y, int64_t n);
// y = relu(a + b) (NaN kept)
template <typename T>
void add_relu_fwd(const T* a, const T* b, T* y, int64_t n);
// dx (+)= alpha * dy
template <typename T>
void axpy(T alpha, const T* dy, T* dx, int64_t n, bool accumulate);

// dx (+)= dy[0] * alpha for every element: the backward of sum (alpha 1) and mean (1/n).
// dy is one element (on the device in the CUDA twin).
template <typename T>
void broadcast_scalar_bwd(const T* dy, T alpha, T* dx, int64_t n, bool accumulate);

// Sum of all elements (accumulated in double).
template <typename T>
double sum(const T* x, int64_t n);

}  // namespace mira::cpu

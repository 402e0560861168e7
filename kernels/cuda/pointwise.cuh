// Elementwise CUDA kernels, twins of kernels/cpu/pointwise.h (same meaning, same argument
// order, plus the stream). T is float or __nv_bfloat16; arithmetic is in f32. Backward kernels
// take `accumulate`: true adds into the gradient, false overwrites it. Host-callable
// declarations only, so engine .cpp files include this with the host compiler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mira::gpu {

// Dtype conversion; codes follow mira::DType (0 f32, 2 bf16, 3 u8, 4 i64; f64 is not allowed on
// the device). Conversions go through the same intermediate types as the CPU twin (e.g. i64 ->
// double -> f32 -> bf16), so both give the same bits.
void cast(const void* src, int src_dtype, void* dst, int dst_dtype, int64_t n, cudaStream_t stream);
void fill(void* dst, int dtype, int64_t n, double value, cudaStream_t stream);

// x, y: (n)
template <typename T>
void relu_fwd(const T* x, T* y, int64_t n, cudaStream_t stream);
// dy, y, dx: (n); the mask is y > 0
template <typename T>
void relu_bwd(const T* dy, const T* y, T* dx, int64_t n, bool accumulate, cudaStream_t stream);

// y = a + b, all (n)
template <typename T>
void add_fwd(const T* a, const T* b, T* y, int64_t n, cudaStream_t stream);
// y = relu(a + b) (NaN kept), all (n)
template <typename T>
void add_relu_fwd(const T* a, const T* b, T* y, int64_t n, cudaStream_t stream);
// dx (+)= alpha * dy, (n)
template <typename T>
void axpy(float alpha, const T* dy, T* dx, int64_t n, bool accumulate, cudaStream_t stream);

// dx (+)= dy[0] * alpha for every element; dy is one element on the device.
template <typename T>
void broadcast_scalar_bwd(const T* dy, float alpha, T* dx, int64_t n, bool accumulate, cudaStream_t stream);

// y[0] = alpha * sum(x), y one element of T on the device. Two fixed passes (per-block
// partials in double, then one block combines them in order): bitwise reproducible, no atomics.
// `partials` is scratch of sum_partials(n) doubles.
int sum_partials(int64_t n);
template <typename T>
void sum(const T* x, int64_t n, double alpha, T* y, double* partials, cudaStream_t stream);

}  // namespace mira::gpu

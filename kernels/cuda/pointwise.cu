// Elementwise CUDA kernels (twins of kernels/cpu/pointwise.cpp).
//
// One generic map kernel serves relu, add, axpy and the scalar broadcast: each thread handles
// one 16-byte pack (4 f32 or 8 bf16) per grid-stride step when every pointer is 16-byte aligned
// (tensors from the caching allocator are; batch-sliced views may not be, and take the scalar
// path). Products and sums use __fmul_rn / __fadd_rn where the CPU twin computes `a + alpha*b`
// so nvcc does not contract them into an FMA: the f32 results then equal the CPU's bit for bit.
#include "kernels/cuda/pointwise.cuh"

#include <cstring>

#include "kernels/cuda/common.cuh"

namespace mira::gpu {

namespace {

constexpr int kThreads = 256;

template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

// a, b, c: (n) inputs (only the first NIN are read, NIN may be 0); y: (n) output, may alias an input.
// Grid-stride over 16-byte packs (VEC) then the scalar tail; one element per thread otherwise.
template <typename T, int NIN, bool VEC, typename F>
__global__ void __launch_bounds__(kThreads)
    map_kernel(const T* a, const T* b, const T* c, T* y, int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (VEC) {
    constexpr int kN = Pack<T>::kN;
    const int64_t np = n / kN;
    for (int64_t i = tid; i < np; i += stride) {
      Pack<T> pa, pb, pc, py;
      if constexpr (NIN > 0) pa = reinterpret_cast<const Pack<T>*>(a)[i];
      if constexpr (NIN > 1) pb = reinterpret_cast<const Pack<T>*>(b)[i];
      if constexpr (NIN > 2) pc = reinterpret_cast<const Pack<T>*>(c)[i];
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        float va = 0.f, vb = 0.f, vc = 0.f;
        if constexpr (NIN > 0) va = to_f(pa.v[k]);
        if constexpr (NIN > 1) vb = to_f(pb.v[k]);
        if constexpr (NIN > 2) vc = to_f(pc.v[k]);
        py.v[k] = from_f<T>(f(va, vb, vc));
      }
      reinterpret_cast<Pack<T>*>(y)[i] = py;
    }
    done = np * kN;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    float va = 0.f, vb = 0.f, vc = 0.f;
    if constexpr (NIN > 0) va = to_f(a[i]);
    if constexpr (NIN > 1) vb = to_f(b[i]);
    if constexpr (NIN > 2) vc = to_f(c[i]);
    y[i] = from_f<T>(f(va, vb, vc));
  }
}

template <typename T, int NIN, typename F>
void launch_map(const T* a, const T* b, const T* c, T* y, int64_t n, F f, cudaStream_t stream) {
  if (n <= 0) return;
  const bool vec = (NIN < 1 || aligned16(a)) && (NIN < 2 || aligned16(b)) && (NIN < 3 || aligned16(c)) && aligned16(y);
  if (vec) {
    const int64_t packs = (n + Pack<T>::kN - 1) / Pack<T>::kN;
    MIRA_LAUNCH(grid_for(packs, kThreads), kThreads, 0, stream, map_kernel<T, NIN, true>)(a, b, c, y, n, f);
  } else {
    MIRA_LAUNCH(grid_for(n, kThreads), kThreads, 0, stream, map_kernel<T, NIN, false>)(a, b, c, y, n, f);
  }
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// NaN semantics as PyTorch: relu(NaN) = NaN, and the backward passes the gradient wherever
// the output is not <= 0 (so a NaN input shows up downstream instead of vanishing).
struct ReluF {
  __device__ float operator()(float x, float, float) const { return x <= 0.f ? 0.f : x; }
};
struct ReluBwdF {
  __device__ float operator()(float dy, float y, float) const { return y <= 0.f ? 0.f : dy; }
};
struct ReluBwdAccF {
  __device__ float operator()(float dy, float y, float dx) const { return __fadd_rn(dx, y <= 0.f ? 0.f : dy); }
};
struct AddF {
  __device__ float operator()(float a, float b, float) const { return __fadd_rn(a, b); }
};
struct AddReluF {
  __device__ float operator()(float a, float b, float) const {
    const float v = __fadd_rn(a, b);
    return v <= 0.f ? 0.f : v;
  }
};
struct ScaleF {
  float alpha;
  __device__ float operator()(float dy, float, float) const { return __fmul_rn(alpha, dy); }
};
struct AxpyAccF {
  float alpha;
  __device__ float operator()(float dy, float dx, float) const { return __fadd_rn(dx, __fmul_rn(alpha, dy)); }
};
// The scalar lives on the device: every thread reads the same element (one cached line).
template <typename T>
struct BroadcastF {
  const T* dy;
  float alpha;
  __device__ float operator()(float, float, float) const { return __fmul_rn(to_f(*dy), alpha); }
};
template <typename T>
struct BroadcastAccF {
  const T* dy;
  float alpha;
  __device__ float operator()(float dx, float, float) const { return __fadd_rn(dx, __fmul_rn(to_f(*dy), alpha)); }
};

// ---- casts: storage types are float, uint16_t (bf16 bits), uint8_t, int64_t.

__host__ __device__ inline uint16_t bf16_bits(float f) {
#ifdef __CUDA_ARCH__
  return f32_to_bf16_bits_dev(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
#endif
}

struct Bf16Bits {
  uint16_t b;
};

// Loads as double and stores from double, like the CPU twin's load()/store(); conversions that
// the double round trip leaves exact (f32 <-> bf16) take the direct route.
__device__ __forceinline__ double load_d(float v) { return v; }
__device__ __forceinline__ double load_d(Bf16Bits v) { return __uint_as_float(static_cast<uint32_t>(v.b) << 16); }
__device__ __forceinline__ double load_d(uint8_t v) { return v; }
__device__ __forceinline__ double load_d(int64_t v) { return static_cast<double>(v); }

template <typename D>
__device__ __forceinline__ D store_d(double v);
template <>
__device__ __forceinline__ float store_d<float>(double v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ Bf16Bits store_d<Bf16Bits>(double v) {
  return Bf16Bits{bf16_bits(static_cast<float>(v))};
}
template <>
__device__ __forceinline__ uint8_t store_d<uint8_t>(double v) {
  return static_cast<uint8_t>(v);
}
template <>
__device__ __forceinline__ int64_t store_d<int64_t>(double v) {
  return static_cast<int64_t>(v);
}

template <typename S, typename D>
__device__ __forceinline__ D convert(S v) {
  return store_d<D>(load_d(v));
}
template <>
__device__ __forceinline__ Bf16Bits convert<float, Bf16Bits>(float v) {
  return Bf16Bits{bf16_bits(v)};
}
template <>
__device__ __forceinline__ float convert<Bf16Bits, float>(Bf16Bits v) {
  return __uint_as_float(static_cast<uint32_t>(v.b) << 16);
}

// src, dst: (n); one element per thread, grid-stride.
template <typename S, typename D>
__global__ void __launch_bounds__(kThreads) cast_kernel(const S* src, D* dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = convert<S, D>(src[i]);
}

template <typename S, typename D>
void launch_cast(const void* src, void* dst, int64_t n, cudaStream_t stream) {
  MIRA_LAUNCH(grid_for(n, kThreads), kThreads, 0, stream, cast_kernel<S, D>)
  (static_cast<const S*>(src), static_cast<D*>(dst), n);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

template <typename S>
void cast_from(const void* src, void* dst, int dt, int64_t n, cudaStream_t stream) {
  switch (dt) {
    case 0: launch_cast<S, float>(src, dst, n, stream); return;
    case 2: launch_cast<S, Bf16Bits>(src, dst, n, stream); return;
    case 3: launch_cast<S, uint8_t>(src, dst, n, stream); return;
    case 4: launch_cast<S, int64_t>(src, dst, n, stream); return;
    default: MIRA_FAIL("cast: dtype code ", dt, " has no CUDA storage (f64 lives on the CPU only)");
  }
}

// dst: (n) words of one element's bit pattern; grid-stride.
template <typename U>
__global__ void __launch_bounds__(kThreads) fill_kernel(U* dst, int64_t n, U v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = v;
}

template <typename U>
void launch_fill(void* dst, int64_t n, U v, cudaStream_t stream) {
  MIRA_LAUNCH(grid_for(n, kThreads), kThreads, 0, stream, fill_kernel<U>)(static_cast<U*>(dst), n, v);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

// ---- sum: pass 1 writes one double per block, pass 2 adds them in block order.
constexpr int kSumItemsPerThread = 16;
constexpr int kSumMaxBlocks = 1024;

// x: (n); partials: (gridDim.x). Thread t of block b reads b*256 + t + k*gridDim.x*256.
template <typename T>
__global__ void __launch_bounds__(kThreads) sum_partial_kernel(const T* x, int64_t n, double* partials) {
  __shared__ double scratch[33];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    acc += static_cast<double>(to_f(x[i]));
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// partials: (G); y: (1). One block.
template <typename T>
__global__ void __launch_bounds__(kThreads) sum_final_kernel(const double* partials, int G, double alpha, T* y) {
  __shared__ double scratch[33];
  double acc = 0.0;
  for (int i = threadIdx.x; i < G; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) y[0] = from_f<T>(static_cast<float>(alpha * acc));
}

}  // namespace

void cast(const void* src, int st, void* dst, int dt, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  switch (st) {
    case 0: cast_from<float>(src, dst, dt, n, stream); return;
    case 2: cast_from<Bf16Bits>(src, dst, dt, n, stream); return;
    case 3: cast_from<uint8_t>(src, dst, dt, n, stream); return;
    case 4: cast_from<int64_t>(src, dst, dt, n, stream); return;
    default: MIRA_FAIL("cast: dtype code ", st, " has no CUDA storage (f64 lives on the CPU only)");
  }
}

void fill(void* dst, int dtype, int64_t n, double value, cudaStream_t stream) {
  if (n <= 0) return;
  switch (dtype) {
    case 0: {
      const float f = static_cast<float>(value);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      if (u == 0) break;
      launch_fill<uint32_t>(dst, n, u, stream);
      return;
    }
    case 2: {
      const uint16_t b = bf16_bits(static_cast<float>(value));
      if (b == 0) break;
      launch_fill<uint16_t>(dst, n, b, stream);
      return;
    }
    case 3: {
      const uint8_t b = static_cast<uint8_t>(value);
      if (b == 0) break;
      launch_fill<uint8_t>(dst, n, b, stream);
      return;
    }
    case 4: {
      const int64_t v = static_cast<int64_t>(value);
      if (v == 0) break;
      launch_fill<uint64_t>(dst, n, static_cast<uint64_t>(v), stream);
      return;
    }
    default: MIRA_FAIL("fill: dtype code ", dtype, " has no CUDA storage (f64 lives on the CPU only)");
  }
  // All-zero bit pattern: a memset is the fastest fill.
  const size_t elem = dtype == 0 ? 4 : dtype == 2 ? 2 : dtype == 3 ? 1 : 8;
  MIRA_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<size_t>(n) * elem, stream));
}

template <typename T>
void relu_fwd(const T* x, T* y, int64_t n, cudaStream_t stream) {
  launch_map<T, 1>(x, nullptr, nullptr, y, n, ReluF{}, stream);
}

template <typename T>
void relu_bwd(const T* dy, const T* y, T* dx, int64_t n, bool accumulate, cudaStream_t stream) {
  if (accumulate) {
    launch_map<T, 3>(dy, y, dx, dx, n, ReluBwdAccF{}, stream);
  } else {
    launch_map<T, 2>(dy, y, nullptr, dx, n, ReluBwdF{}, stream);
  }
}

template <typename T>
void add_fwd(const T* a, const T* b, T* y, int64_t n, cudaStream_t stream) {
  launch_map<T, 2>(a, b, nullptr, y, n, AddF{}, stream);
}

template <typename T>
void add_relu_fwd(const T* a, const T* b, T* y, int64_t n, cudaStream_t stream) {
  launch_map<T, 2>(a, b, nullptr, y, n, AddReluF{}, stream);
}

template <typename T>
void axpy(float alpha, const T* dy, T* dx, int64_t n, bool accumulate, cudaStream_t stream) {
  if (accumulate) {
    launch_map<T, 2>(dy, dx, nullptr, dx, n, AxpyAccF{alpha}, stream);
  } else {
    launch_map<T, 1>(dy, nullptr, nullptr, dx, n, ScaleF{alpha}, stream);
  }
}

template <typename T>
void broadcast_scalar_bwd(const T* dy, float alpha, T* dx, int64_t n, bool accumulate, cudaStream_t stream) {
  if (accumulate) {
    launch_map<T, 1>(dx, nullptr, nullptr, dx, n, BroadcastAccF<T>{dy, alpha}, stream);
  } else {
    launch_map<T, 0>(nullptr, nullptr, nullptr, dx, n, BroadcastF<T>{dy, alpha}, stream);
  }
}

int sum_partials(int64_t n) {
  int64_t g = (n + static_cast<int64_t>(kThreads) * kSumItemsPerThread - 1) / (static_cast<int64_t>(kThreads) * kSumItemsPerThread);
  if (g < 1) g = 1;
  if (g > kSumMaxBlocks) g = kSumMaxBlocks;
  return static_cast<int>(g);
}

template <typename T>
void sum(const T* x, int64_t n, double alpha, T* y, double* partials, cudaStream_t stream) {
  const int G = sum_partials(n);
  MIRA_LAUNCH(G, kThreads, 0, stream, sum_partial_kernel<T>)(x, n, partials);
  MIRA_CUDA_LAUNCH_CHECK(stream);
  MIRA_LAUNCH(1, kThreads, 0, stream, sum_final_kernel<T>)(partials, G, alpha, y);
  MIRA_CUDA_LAUNCH_CHECK(stream);
}

#define MIRA_INST(T)                                                                     \
  template void relu_fwd<T>(const T*, T*, int64_t, cudaStream_t);                        \
  template void relu_bwd<T>(const T*, const T*, T*, int64_t, bool, cudaStream_t);        \
  template void add_fwd<T>(const T*, const T*, T*, int64_t, cudaStream_t);               \
  template void add_relu_fwd<T>(const T*, const T*, T*, int64_t, cudaStream_t);          \
  template void axpy<T>(float, const T*, T*, int64_t, bool, cudaStream_t);               \
  template void broadcast_scalar_bwd<T>(const T*, float, T*, int64_t, bool, cudaStream_t); \
  template void sum<T>(const T*, int64_t, double, T*, double*, cudaStream_t);
MIRA_INST(float)
MIRA_INST(__nv_bfloat16)
#undef MIRA_INST

}  // namespace mira::gpu

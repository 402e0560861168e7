// A CPU emulator for CUDA device code, so that CI without a GPU runs the kernels' own source
// (kernels/cuda/*.cu compiled as C++) against their CPU twins: their indexing, their order of
// operations, their barriers and shuffles, their cluster protocol.
//
// How it runs a launch (cuda_emu.cpp):
// - Every block of the grid is an OS thread, all at once (so blocks that wait on each other,
//   as the cluster plan's row groups do, all make progress). Its threads are fibers on that OS
//   thread, each with its own stack, switched cooperatively: a fiber runs until it reaches a
//   __syncthreads, a warp shuffle, a cluster barrier or its end. A warp's 32 fibers take turns
//   through its shuffles until none can go on (all at block-wide barriers, polling a flag, or
//   ended), then the next warp's run (set_schedule gives both orders).
// - __shared__ variables are thread_local: one copy per block (OS thread). Dynamic shared
//   memory (MIRA_DYNAMIC_SMEM) is a thread_local array of the runtime, filled
//   with 0xff bytes (NaN floats) at each block's start, so reading what no thread wrote shows.
// - A cluster's blocks map each other's shared memory (cluster_group::map_shared_rank) by
//   their threads' TLS offsets; cluster.sync() is a barrier of their OS threads, and a grid
//   group's sync() one of all the launch's.
// - A warp shuffle is a barrier of the warp's 32 fibers; lanes that reach different shuffles
//   (other kinds or offsets), a barrier some threads skip, or threads that wait forever raise
//   an error naming the block, instead of hanging.
// - __trap() and every error end the launch with mira::emu::Error.
// What it cannot check: the GPU's weaker memory model (the host's is x86-TSO), timing,
// occupancy, and intrinsics' exact bits (exp2f is the host's; FMA contraction as the host
// compiler does it). Tolerances against the twins stay those of the GPU tests.
//
// Include this file before any CUDA header, in a build with MIRA_CUDA_EMU defined and
// tests/cuda_emu/include (cooperative_groups.h) ahead of the toolkit's include directory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#ifndef MIRA_CUDA_EMU
#error "tests/cuda_emu/cuda_emu.h needs MIRA_CUDA_EMU"
#endif

namespace mira::emu {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The dynamic shared memory of the block on this OS thread (MIRA_DYNAMIC_SMEM) and its size.
unsigned char* dynamic_smem();
size_t dynamic_smem_size();

void syncthreads();
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src_lane, int site);
// A warp-wide instruction's one exchange (ldmatrix, mma.sync, movmatrix, redux.sync): each
// lane gives n <= kWarpShareWords words and, once the warp's 32 lanes have, gets all of them
// (lane l's word w at [l][w]), readable until the lane's next exchange. One barrier of
// the warp's fibers where a shuffle per value would take a barrier each.
constexpr int kWarpShareWords = 4;
using WarpWords = const uint64_t (*)[kWarpShareWords];
WarpWords warp_share(unsigned mask, const uint64_t* words, int n, int site);
void cluster_sync();
void grid_sync();  // cooperative_groups::this_grid().sync(): every thread of every block
unsigned cluster_rank();
unsigned cluster_size();
void* map_shared(const void* p, unsigned rank);
[[noreturn]] void trap(const char* what);
void spin_wait(int& n);  // a flag poll that has not seen its word yet: yields, gives up after ~60 s
long long clock();
// cp.async (PTX: a thread's asynchronous copy of 4, 8 or 16 bytes from global to shared
// memory), in groups: the source is read when the copy is issued (a GPU may read it any time
// until the copy completes), the destination written only when cp_async_wait lets its group
// complete, so a thread that reads its copy's bytes without waiting for them sees the old ones;
// a thread that ends with copies never waited for is an error. cp_async_wait(n): every group
// committed before the n newest is complete (cp.async.wait_group n).
void cp_async(void* dst, const void* src, int bytes);
void cp_async_commit();
void cp_async_wait(int pending);

struct LaunchConfig {
  unsigned grid = 1;     // blocks (gdim.x * gdim.y * gdim.z where gdim is given)
  unsigned block = 1;    // threads per block (bdim.x * bdim.y * bdim.z where bdim is given)
  unsigned cluster = 1;  // blocks per cluster (along x); grid % cluster == 0
  size_t smem = 0;       // dynamic shared memory per block (at most dynamic_smem_size())
  dim3 gdim = dim3(0);   // a 2-D or 3-D grid (x = 0: 1-D, grid blocks)
  dim3 bdim = dim3(0);   // 2-D or 3-D blocks (x = 0: 1-D, block threads); warps are runs of 32
                         // threads in x-fastest order, as on a GPU
  // All blocks at once (a cooperative or cluster launch: blocks may wait on each other), or a
  // few at a time, one after another (a plain launch, as a GPU may run it).
  bool all_resident = true;
};
// The order a block's threads run in: its warps by index (0), reversed (1) or shuffled anew at
// each sweep over them (n >= 2, seed n), and within a warp its lanes likewise at each of their
// turns. Between two block barriers a warp's whole stretch runs before or after another's, so
// index and reversed order put every unordered pair of a write and a read both ways: results
// that change with the order reveal a race, a read of shared or global memory that another
// thread writes without a barrier (or, within a warp, a shuffle) between them.
void set_schedule(int order);

// Runs body in every thread of the grid; returns when all are done, or throws Error.
void launch(const LaunchConfig& cfg, const std::function<void()>& body);

template <typename... P, typename... A>
void launch(const LaunchConfig& cfg, void (*kernel)(P...), A&&... args) {
  const std::tuple<std::decay_t<A>...> t(std::forward<A>(args)...);
  launch(cfg, [&] { std::apply(kernel, t); });
}

// MIRA_LAUNCH (kernels/cuda/check.h): Launcher(grid, block, smem) % [](auto... a) { kernel(a...); }
// is then called with the kernel's arguments.
template <typename F>
struct BoundLauncher {
  LaunchConfig cfg;
  F f;
  template <typename... A>
  void operator()(A... args) const {
    const F g = f;
    launch(cfg, [&] { g(args...); });
  }
};
struct Launcher {
  LaunchConfig cfg;
  Launcher(dim3 grid, dim3 block, size_t smem) {
    cfg.gdim = grid;
    cfg.grid = grid.x * grid.y * grid.z;
    cfg.bdim = block;
    cfg.block = block.x * block.y * block.z;
    cfg.smem = smem;
    cfg.all_resident = false;
  }
  template <typename F>
  BoundLauncher<F> operator%(F f) const {
    return {cfg, f};
  }
};

// The CUDA runtime calls the kernels' host code makes, for an emulated device (set_device):
// device attributes, function attributes and occupancy (from the device's shared memory and
// threads per SM; kStaticSmem of static shared memory per kernel), memsets, and success for
// the rest. The CUDA names are macros for these in emulated code (below), so the real runtime,
// linked into the same test, is untouched.
struct DeviceProps {
  int sms = 6;
  int smem_optin = 232448;  // at most dynamic_smem_size()
  int smem_sm = 233472;
  int l2 = 50 << 20;
  int major = 9, minor = 0;
  int threads_sm = 2048;
  int clusters16 = 8;  // clusters of 16 blocks (one per SM) at once; of 8: twice as many
};
constexpr int kStaticSmem = 4096;
void set_device(const DeviceProps& d);
namespace rt {
cudaError_t GetDevice(int* dev);
cudaError_t DeviceGetAttribute(int* v, cudaDeviceAttr attr, int dev);
cudaError_t FuncGetAttributes(cudaFuncAttributes* fa, const void* fn);
cudaError_t FuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value);
cudaError_t occupancy(int* n, int block, size_t dyn);
template <typename F>  // as the runtime's overloads: any kernel pointer
cudaError_t OccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int block, size_t dyn) {
  return occupancy(n, block, dyn);
}
cudaError_t OccupancyMaxActiveClusters(int* n, const void* fn, const cudaLaunchConfig_t* cfg);
cudaError_t MemsetAsync(void* p, int v, size_t n, cudaStream_t s = nullptr);
cudaError_t Memset(void* p, int v, size_t n);
cudaError_t GetLastError();
cudaError_t StreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st);
cudaError_t StreamSynchronize(cudaStream_t s);
cudaError_t DeviceSynchronize();
}  // namespace rt

template <typename T>
T shfl_bits(unsigned mask, T v, int src_lane, int site) {
  static_assert(sizeof(T) <= 8, "shuffles of up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  b = warp_exchange(mask, b, src_lane, site);
  T r;
  std::memcpy(&r, &b, sizeof(T));
  return r;
}
int lane_id();  // of the running thread: its index in the block (x fastest) mod 32

// The warp-wide tensor-core instructions kernels/cuda/mma.cuh wraps, by the PTX ISA's fragment
// layouts (g = lane / 4, t = lane % 4), through warp exchanges:
// - ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the address of row l % 8 of
//   matrix l / 8; r[i] gets matrix i's elements (g, 2t) and (g, 2t + 1) (.trans: of its
//   transpose), the first in the low 16 bits;
// - mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, d += A B: a = A(g, 2t..), A(g + 8, 2t..),
//   A(g, 2t + 8..), A(g + 8, 2t + 8..); b = B(2t.., g), B(2t + 8.., g); d = D(g, 2t), D(g, 2t + 1),
//   D(g + 8, 2t), D(g + 8, 2t + 1). Each element of D is its c plus the products in k order,
//   one fused multiply-add at a time (the twins' order; a GPU adds inside the instruction in
//   its own order and rounding, which the GPU tests' tolerances cover). With MIRA_EMU_GPU_MATH:
//   the sum of c and the exact products, truncated toward zero once, as a model of that.
// - movmatrix.sync.aligned.m8n8.trans.b16: lane 4g + t gets M(2t, g) and M(2t + 1, g) of the
//   8 x 8 matrix whose (g, 2t) and (g, 2t + 1) lane 4g + t gives.
void ldmatrix_x4(unsigned (&r)[4], const void* p, bool trans);
unsigned movmatrix_trans(unsigned r);
void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]);

}  // namespace mira::emu

// ---- the CUDA names device code uses

#define cudaGetDevice ::mira::emu::rt::GetDevice
#define cudaDeviceGetAttribute ::mira::emu::rt::DeviceGetAttribute
#define cudaFuncGetAttributes ::mira::emu::rt::FuncGetAttributes
#define cudaFuncSetAttribute ::mira::emu::rt::FuncSetAttribute
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor ::mira::emu::rt::OccupancyMaxActiveBlocksPerMultiprocessor
#define cudaOccupancyMaxActiveClusters ::mira::emu::rt::OccupancyMaxActiveClusters
#define cudaMemsetAsync ::mira::emu::rt::MemsetAsync
#define cudaMemset ::mira::emu::rt::Memset
#define cudaGetLastError ::mira::emu::rt::GetLastError
#define cudaStreamIsCapturing ::mira::emu::rt::StreamIsCapturing
#define cudaStreamSynchronize ::mira::emu::rt::StreamSynchronize
#define cudaDeviceSynchronize ::mira::emu::rt::DeviceSynchronize

#undef __shared__
#define __shared__ thread_local
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif
// The running thread's coordinates: variables of the OS thread (the block), which its
// scheduler sets to the fiber's before resuming it (not macros: launch configurations have
// members of these names). Defined here, inline, so every translation unit sees constant
// initialisation and reads them directly: through the TLS wrapper functions an extern
// declaration calls, UBSan at -O2 (tools/sanitize.sh's build) reported them as null.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline void __syncthreads() {
  ::mira::emu::syncthreads();
}
// Shuffle sites: the kind in the high bits, the offset or source below, so lanes at different
// shuffles are told apart.
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int off) {
  return ::mira::emu::shfl_bits(mask, v, ::mira::emu::lane_id() ^ off, (1 << 16) | off);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src) {
  return ::mira::emu::shfl_bits(mask, v, src & 31, 2 << 16);
}
// Lanes past the warp's end get their own value back, as on a GPU (width 32).
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned off) {
  const int l = ::mira::emu::lane_id(), src = l + static_cast<int>(off);
  return ::mira::emu::shfl_bits(mask, v, src < 32 ? src : l, (5 << 16) | static_cast<int>(off));
}
// redux.sync (sm_80): the warp's largest / smallest unsigned, from one exchange.
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  const uint64_t mine = v;
  const auto all = ::mira::emu::warp_share(mask, &mine, 1, 6 << 16);
  for (int l = 0; l < 32; ++l) v = std::max(v, static_cast<unsigned>(all[l][0]));
  return v;
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  const uint64_t mine = v;
  const auto all = ::mira::emu::warp_share(mask, &mine, 1, 7 << 16);
  for (int l = 0; l < 32; ++l) v = std::min(v, static_cast<unsigned>(all[l][0]));
  return v;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
template <typename T>
T __ldcg(const T* p) {  // through L2 only: the same value on one coherent memory
  return *p;
}
inline void __trap() {
  ::mira::emu::trap("__trap()");
}
inline long long clock64() {
  return ::mira::emu::clock();
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
  }
  return old;
}
// Integer atomics: shared memory (one OS thread per block) and global memory (blocks on
// several OS threads) alike.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
inline int atomicAdd(int* p, int v) {
  return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
inline float atomicAdd(float* p, float v) {
  unsigned* q = reinterpret_cast<unsigned*>(p);
  unsigned old = __atomic_load_n(q, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(q, &old, __float_as_uint(__uint_as_float(old) + v), true, __ATOMIC_ACQ_REL,
                                      __ATOMIC_RELAXED)) {
  }
  return __uint_as_float(old);
}
// The round-to-nearest arithmetic intrinsics kernels use where a fused multiply-add must not
// form: one operation, one rounding (the empty asm keeps the host compiler from contracting
// a product into a following sum even where it contracts the rest, MIRA_EMU_GPU_MATH).
#define MIRA_EMU_RN(name, T, op) \
  inline T name(T a, T b) {      \
    T r = a op b;                \
    asm("" : "+x"(r));           \
    return r;                    \
  }
MIRA_EMU_RN(__fadd_rn, float, +)
MIRA_EMU_RN(__fsub_rn, float, -)
MIRA_EMU_RN(__fmul_rn, float, *)
MIRA_EMU_RN(__fdiv_rn, float, /)
MIRA_EMU_RN(__dadd_rn, double, +)
MIRA_EMU_RN(__dsub_rn, double, -)
MIRA_EMU_RN(__dmul_rn, double, *)
MIRA_EMU_RN(__ddiv_rn, double, /)
#undef MIRA_EMU_RN
using std::isfinite;
using std::max;
using std::min;

// ---- the GPU's math, modelled (MIRA_EMU_GPU_MATH)
//
// By default the kernels' exp2f, log2f, expf and logf are the host's (within an ulp of exact),
// so the kernels and their CPU twins give the same bits. On a GPU they are CUDA's: within 2
// ulp (exp2f, expf) and 1 ulp (log2f, logf) of exact, by the CUDA C++ Programming Guide's
// table of single-precision functions. With MIRA_EMU_GPU_MATH they return the host's result
// moved by up to that many ulp, the amount (and its sign) a hash of the argument: each
// argument always gets the same result, as on a GPU. Where the hardware is exact they are
// left exact: exp2f of an integer (a power of two, 1 at 0), expf(0) and log2f/logf(1), and a
// result that is zero, subnormal, infinite or NaN. So this is a model at (or beyond) the
// documented error, not the GPU's bits. The test built with it (test_mira_assign_emu_gpumath)
// also compiles the kernels with fused multiply-adds where the host compiler contracts
// a * b + c, as nvcc does by default (-fmad=true), while the twins (built without) do not.
// Then the twins agree with the kernels only to tolerances: those test_mira_assign_gpu holds
// a GPU to.
#ifdef MIRA_EMU_GPU_MATH
namespace mira::emu {
inline float gpu_ulps(float y, float x, int max_ulp, uint32_t salt) {
  if (!std::isnormal(y)) return y;
  uint32_t h;
  std::memcpy(&h, &x, 4);
  h ^= salt;
  h *= 0x9e3779b1u;
  h ^= h >> 15;
  h *= 0x85ebca77u;
  h ^= h >> 13;
  const int k = static_cast<int>(h % static_cast<uint32_t>(2 * max_ulp + 1)) - max_ulp;
  for (int i = 0; i < k; ++i) y = std::nextafter(y, HUGE_VALF);
  for (int i = 0; i > k; --i) y = std::nextafter(y, 0.f);
  return y;
}
inline float gpu_exp2f(float x) {
  const float y = std::exp2(x);
  return x == std::nearbyint(x) ? y : gpu_ulps(y, x, 2, 0x1234567u);
}
inline float gpu_expf(float x) {
  const float y = std::exp(x);
  return x == 0.f ? y : gpu_ulps(y, x, 2, 0x2345678u);
}
inline float gpu_log2f(float x) {
  const float y = std::log2(x);
  return y == std::nearbyint(y) ? y : gpu_ulps(y, x, 1, 0x3456789u);
}
inline float gpu_logf(float x) {
  const float y = std::log(x);
  return x == 1.f ? y : gpu_ulps(y, x, 1, 0x456789au);
}
}  // namespace mira::emu
#define exp2f(x) ::mira::emu::gpu_exp2f(x)
#define expf(x) ::mira::emu::gpu_expf(x)
#define log2f(x) ::mira::emu::gpu_log2f(x)
#define logf(x) ::mira::emu::gpu_logf(x)
#endif

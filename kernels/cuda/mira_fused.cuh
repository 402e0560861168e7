// Internal to the fused MIRA assignment kernels (mira_assign.cu: columns per thread;
// mira_mmarows.cu: the f16 copy's updates on tensor cores): element access, the 16-bit
// working copies, block reductions, the kernel arguments, the flag-tagged words, the weights
// and the column reduction. Read the file comment of mira_assign.cu first.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/mira_trace.h"  // the host reads the trace with the same phase numbers
#include "kernels/cuda/check.h"  // MIRA_DYNAMIC_SMEM
#include "kernels/cuda/grid_sync.cuh"
#include "kernels/cuda/mira_assign.cuh"
#include "kernels/cuda/mira_fused_host.h"

namespace mira::cuda::fused {

constexpr unsigned kFull = 0xffffffffu;

constexpr int kFusedMaxBlock = 768;
constexpr int kFusedMaxK = kFusedMaxBlock * 16;
// Phases of MiraPlan::trace (kernels/cuda/mira_assign.cuh lists them), numbered as the host
// reads them (kernels/cpu/mira_trace.h); the whole launch's sum shares its index with the
// timeline's start tag.
enum TracePhase : int {
  kTraceFirst = ::mira::trace::kFirst,
  kTraceWeights = ::mira::trace::kWeights,
  kTraceRows = ::mira::trace::kRows,
  kTraceLast = ::mira::trace::kLast,
  kTraceBarrier1 = ::mira::trace::kBarrier1,
  kTraceReduce = ::mira::trace::kReduce,
  kTraceBarrier2 = ::mira::trace::kBarrier2,
  kTraceTotal = ::mira::trace::kStart
};
static_assert(kTraceTotal + 1 == kMiraTracePhases, "trace phases");

// ---- element access

__device__ __forceinline__ float ldg_f32(const float* p) {
  return __ldg(p);
}
__device__ __forceinline__ float ldg_f32(const __nv_bfloat16* p) {
  return __bfloat162float(__ldg(p));
}

// Asks L2 for the 128-byte line holding p (prefetch.global.L2: no register, no wait); the
// emulator has no cache and skips it.
__device__ __forceinline__ void prefetch_l2(const void* p) {
#ifdef MIRA_CUDA_EMU
  (void)p;
#else
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#endif
}
// Thread i of n asks L2 for every 128-byte line of `rows` consecutive rows of row_bytes each
// from `first` (a row that starts inside a line spans one line more than its length).
__device__ __forceinline__ void prefetch_rows_l2(const void* first, int row_bytes, int rows, int i, int n) {
  const int lines = (row_bytes + 127) / 128 + 1;
  const char* base = static_cast<const char*>(first);
  for (int q = i; q < rows * lines; q += n) {
    const int r = q / lines, l = q % lines;
    prefetch_l2(base + static_cast<size_t>(r) * row_bytes + min(128 * l, row_bytes - 1));
  }
}

// cp.async: a thread's own asynchronous copy of BYTES (8 or 16) from global to shared memory,
// no register held while it is in flight; copies complete in the groups commit closes, and
// cp_async_wait<N>() returns once every group but the N newest has (the emulator applies a
// copy only then). Shared memory a thread stages this way is read by that thread alone.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* src) {
  static_assert(BYTES == 8 || BYTES == 16, "cp.async of 8 or 16 bytes");
#ifdef MIRA_CUDA_EMU
  ::mira::emu::cp_async(smem_dst, src, BYTES);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  if constexpr (BYTES == 16)  // .cg: through L2 only (16-byte copies)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(src) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef MIRA_CUDA_EMU
  ::mira::emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MIRA_CUDA_EMU
  ::mira::emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Adds four floats to p[0..3] (16-byte aligned global memory) with no return value: one
// vector reduction (red.global.add.v4.f32) on sm_90, four scalar ones before (atomicAdd
// with its result unused compiles to RED); the emulator adds them one by one, atomically.
__device__ __forceinline__ void red_add4(float* p, const float (&x)[4]) {
#if !defined(MIRA_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "f"(x[0]), "f"(x[1]), "f"(x[2]), "f"(x[3])
               : "memory");
#else
#pragma unroll
  for (int u = 0; u < 4; ++u) atomicAdd(p + u, x[u]);
#endif
}

// Four consecutive columns of one logits row starting at col (col % 4 == 0), -inf where col >= K;
// vec: K % 4 == 0 and the rows are 16-byte (f32) / 8-byte (bf16) aligned.
__device__ __forceinline__ void load_logits4(const float* row, int col, int K, bool vec, float (&x)[kVec]) {
  if (vec && col < K) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(row + col));
    x[0] = q.x, x[1] = q.y, x[2] = q.z, x[3] = q.w;
    return;
  }
#pragma unroll
  for (int u = 0; u < kVec; ++u) x[u] = col + u < K ? __ldg(row + col + u) : -INFINITY;
}
__device__ __forceinline__ void load_logits4(const __nv_bfloat16* row, int col, int K, bool vec, float (&x)[kVec]) {
  if (vec && col < K) {
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(row + col));
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&q.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&q.y));
    x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
    return;
  }
#pragma unroll
  for (int u = 0; u < kVec; ++u) x[u] = col + u < K ? ldg_f32(row + col + u) : -INFINITY;
}

// E in shared memory or the workspace, four columns at a time.
template <typename TE>
struct ECache;
template <>
struct ECache<float> {
  static __device__ __forceinline__ void load(const float* p, float (&v)[kVec]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  }
  static __device__ __forceinline__ void store(float* p, const float (&v)[kVec]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
  static __device__ __forceinline__ float round(float x) { return x; }
};
// The 16-bit caches also load their four values packed (load_raw, 8 bytes in two registers)
// and widen them later (unpack), so that a batch can stay packed in registers until each
// sweep uses it (update_batch); load = unpack(load_raw), the same values.
template <>
struct ECache<__nv_bfloat16> {
  static __device__ __forceinline__ uint2 load_raw(const __nv_bfloat16* p) {
    return *reinterpret_cast<const uint2*>(p);
  }
  static __device__ __forceinline__ void unpack(uint2 q, float (&v)[kVec]) {
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&q.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&q.y));
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
  static __device__ __forceinline__ void load(const __nv_bfloat16* p, float (&v)[kVec]) { unpack(load_raw(p), v); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, const float (&v)[kVec]) {
    __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]);
    __nv_bfloat162 b = __floats2bfloat162_rn(v[2], v[3]);
    uint2 q;
    q.x = *reinterpret_cast<const unsigned*>(&a);
    q.y = *reinterpret_cast<const unsigned*>(&b);
    *reinterpret_cast<uint2*>(p) = q;
  }
  static __device__ __forceinline__ float round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
};
// f16 holds S = E * 2^15 (E in [0, 1], so S <= 2^15 < 65504): 11 significant bits down to
// E = 2^-29, subnormal steps of 2^-39 below. round() maps an f32 E to S, load() returns S:
// a pass only forms ratios E_ij / sum_l w_l E_il, so S needs no unscaling (the weight cap
// leaves room for the 2^15 in the row sums: fused_args).
template <>
struct ECache<__half> {
  static __device__ __forceinline__ uint2 load_raw(const __half* p) { return *reinterpret_cast<const uint2*>(p); }
  static __device__ __forceinline__ void unpack(uint2 q, float (&v)[kVec]) {
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&q.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&q.y));
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
  static __device__ __forceinline__ void load(const __half* p, float (&v)[kVec]) { unpack(load_raw(p), v); }
  static __device__ __forceinline__ void store(__half* p, const float (&v)[kVec]) {
    __half2 a = __floats2half2_rn(v[0], v[1]);
    __half2 b = __floats2half2_rn(v[2], v[3]);
    uint2 q;
    q.x = *reinterpret_cast<const unsigned*>(&a);
    q.y = *reinterpret_cast<const unsigned*>(&b);
    *reinterpret_cast<uint2*>(p) = q;
  }
  static __device__ __forceinline__ float round(float x) { return __half2float(__float2half_rn(x * kF16Scale)); }
};

__device__ __forceinline__ float warp_sum(float v) {
  // An xor butterfly: every lane adds the same two values at every step (in either order),
  // so every lane ends with the same bits.
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <bool MAX>
__device__ __forceinline__ float rop(float a, float b) {
  return MAX ? fmaxf(a, b) : a + b;
}

// Block-wide reduction of R values per thread (one per row of the batch). Every thread gets
// the R totals. red: two buffers of `stride` >= 32 R floats of shared memory, used alternately
// (parity) so one __syncthreads per call suffices: a buffer is rewritten two calls later,
// after every warp has passed the barrier of the call in between, hence finished reading it.
// Calls with different R must pass the same stride so the two buffers never overlap.
template <int R>
struct RowReduce {
  static constexpr int kLanesPerRow = 32 / R;
  // Groups of kLanesPerRow warps in the largest block (kFusedMaxBlock threads): the partials'
  // loop runs over a constant bound, unrolled and predicated, in the same order as a loop over
  // the block's own warps (a runtime-bound loop compiled to ~40 instructions of set-up and
  // remainder handling per call).
  static constexpr int kMaxWarpGroups = (kFusedMaxBlock / 32 + kLanesPerRow - 1) / kLanesPerRow;

  // After the steps OFF = 16, 8, ..., 32/R, lane l holds, for row l / (32/R), the sum over the
  // lanes that differ from l in the bits >= 32/R: each step keeps half of the rows and adds
  // the partner's copy of the same half.
  template <int N, int OFF, bool MAX>
  static __device__ __forceinline__ void butterfly(float (&d)[R], int lane) {
    if constexpr (N > 1) {
      constexpr int H = N / 2;
      const bool upper = (lane & OFF) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const float send = upper ? d[i] : d[i + H];
        const float keep = upper ? d[i + H] : d[i];
        d[i] = rop<MAX>(keep, __shfl_xor_sync(kFull, send, OFF));
      }
      butterfly<H, OFF / 2, MAX>(d, lane);
    }
  }

  // RECIP (sums only): every thread gets, for each row, s = 1 / total where the total is > 0,
  // else 0, formed once per lane before the broadcast instead of R times per thread after it
  // (the same values: the same division of the same total).
  template <bool MAX, bool RECIP = false>
  static __device__ __forceinline__ void allreduce(float (&d)[R], float* red, int stride, int& parity) {
    static_assert(!(MAX && RECIP), "RECIP is for sums");
    constexpr int LPR = kLanesPerRow;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    butterfly<R, 16, MAX>(d, lane);
    float v = d[0];
#pragma unroll
    for (int off = LPR / 2; off >= 1; off >>= 1) v = rop<MAX>(v, __shfl_xor_sync(kFull, v, off));
    float* buf = red + parity * stride;
    parity ^= 1;
    const int rho = lane / LPR, sub = lane % LPR;
    // Slot of (warp, row): (warp / LPR) * 32 + row * LPR + warp % LPR, so the reads below
    // (lane = row * LPR + sub, warp = k * LPR + sub) are one conflict-free 32-float row.
    if (sub == 0) buf[(warp / LPR) * 32 + rho * LPR + warp % LPR] = v;
    __syncthreads();
    float acc = MAX ? -INFINITY : 0.f;
#pragma unroll
    for (int k = 0; k < kMaxWarpGroups; ++k)
      if (k * LPR + sub < nwarps) acc = rop<MAX>(acc, buf[k * 32 + lane]);
#pragma unroll
    for (int off = LPR / 2; off >= 1; off >>= 1) acc = rop<MAX>(acc, __shfl_xor_sync(kFull, acc, off));
    if constexpr (RECIP) acc = acc > 0.f ? 1.f / acc : 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) d[r] = __shfl_sync(kFull, acc, r * LPR);
  }
};

// ---- flag-tagged words (the LL protocol of NCCL): a float travels with the number of the
// pass that wrote it (pass + 1; 0 = never written) in one aligned 8-byte word, stored and
// loaded whole, so a reader polls the data itself: the cluster plan's row groups exchange
// their column sums this way, with no grid barrier. Volatile accesses go to L2, where all
// SMs see one copy.
// Each word is one 64-bit scalar (tag in the high half), the unit the PTX memory model makes
// single-copy atomic; v2.b64 moves two words.
__device__ __forceinline__ unsigned long long ll_word(float v, unsigned seq) {
  return (static_cast<unsigned long long>(seq) << 32) | __float_as_uint(v);
}
#ifdef MIRA_CUDA_EMU  // tests/cuda_emu: the same 8-byte words through the host's atomics
__device__ __forceinline__ void ll_store4(uint2* p, const float (&v)[kVec], unsigned seq) {
  for (int u = 0; u < kVec; ++u)
    __atomic_store_n(reinterpret_cast<unsigned long long*>(p + u), ll_word(v[u], seq), __ATOMIC_RELEASE);
}
__device__ __forceinline__ uint2 ll_load1(const uint2* p) {
  const unsigned long long w = __atomic_load_n(reinterpret_cast<const unsigned long long*>(p), __ATOMIC_ACQUIRE);
  return make_uint2(static_cast<unsigned>(w), static_cast<unsigned>(w >> 32));
}
__device__ __forceinline__ uint4 ll_load2(const uint2* p) {
  const uint2 a = ll_load1(p), b = ll_load1(p + 1);
  return make_uint4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void ll_spin(int& n) {
  ::mira::emu::spin_wait(n);
}
#else
__device__ __forceinline__ void ll_store4(uint2* p, const float (&v)[kVec], unsigned seq) {
  asm volatile("st.volatile.global.v2.b64 [%0], {%1, %2};" ::"l"(p), "l"(ll_word(v[0], seq)), "l"(ll_word(v[1], seq))
               : "memory");
  asm volatile("st.volatile.global.v2.b64 [%0], {%1, %2};" ::"l"(p + 2), "l"(ll_word(v[2], seq)),
               "l"(ll_word(v[3], seq))
               : "memory");
}
// Loads as {value bits, tag} pairs.
__device__ __forceinline__ uint2 ll_load1(const uint2* p) {
  unsigned long long w;
  asm volatile("ld.volatile.global.b64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
  return make_uint2(static_cast<unsigned>(w), static_cast<unsigned>(w >> 32));
}
__device__ __forceinline__ uint4 ll_load2(const uint2* p) {
  unsigned long long w0, w1;
  asm volatile("ld.volatile.global.v2.b64 {%0, %1}, [%2];" : "=l"(w0), "=l"(w1) : "l"(p) : "memory");
  return make_uint4(static_cast<unsigned>(w0), static_cast<unsigned>(w0 >> 32), static_cast<unsigned>(w1),
                    static_cast<unsigned>(w1 >> 32));
}
// A reader still polling after ~2^24 tries (seconds) waits on a word no block will write: a
// bug. Trap, so that the launch fails with an error instead of hanging the process.
__device__ __forceinline__ void ll_spin(int& n) {
  if (++n > (1 << 24)) __trap();
}
#endif
// Four consecutive columns' words (p 16-byte aligned) into v; true when all four carry seq.
__device__ __forceinline__ bool ll_load4(const uint2* p, unsigned seq, float (&v)[kVec]) {
  const uint4 a = ll_load2(p), b = ll_load2(p + 2);
  v[0] = __uint_as_float(a.x), v[1] = __uint_as_float(a.z), v[2] = __uint_as_float(b.x), v[3] = __uint_as_float(b.z);
  return a.y == seq && a.w == seq && b.y == seq && b.w == seq;
}

// What one block works on during one view group: its rows [r0, r1) of view v.
template <typename TIn, typename TE>
struct BlockRows {
  const FusedArgs* a;
  const TIn* logits;  // (N, K) of view v
  float* targets;     // (N, K) of view v
  TE* scache;         // smem_rows rows of Kp
  float* red;         // RowReduce scratch: two buffers of red_stride floats
  int red_stride;
  int v, bv, r0, r1;

  __device__ __forceinline__ TE* cache_row(int row) const {
    const int lr = row - r0;
    if (lr < a->smem_rows) return scache + static_cast<size_t>(lr) * a->Kp;
    return static_cast<TE*>(a->ecache) +
           ((static_cast<size_t>(v) * a->blocks_per_view + bv) * a->ecache_rows_per_block + (lr - a->smem_rows)) *
               static_cast<size_t>(a->Kp);
  }
  __device__ __forceinline__ int col(int ch) const { return (ch * blockDim.x + threadIdx.x) * kVec; }
};

// ---- the pieces of a pass both fused kernels share

// What a block works on in view v: BlockRows for its rows [bv * rows_per_block, ...) of view v.
template <typename TIn, typename TE>
__device__ __forceinline__ BlockRows<TIn, TE> block_rows(const FusedArgs& a, int v, int bv, TE* scache, float* red,
                                                         int red_stride) {
  BlockRows<TIn, TE> b;
  b.a = &a;
  // Constant indices only: indexing the parameter arrays with v would copy them to local memory.
  b.logits = static_cast<const TIn*>(v == 0 ? a.logits[0] : v == 1 ? a.logits[1] : v == 2 ? a.logits[2] : a.logits[3]);
  b.targets = v == 0 ? a.targets[0] : v == 1 ? a.targets[1] : v == 2 ? a.targets[2] : a.targets[3];
  b.scache = scache;
  b.red = red;
  b.red_stride = red_stride;
  b.v = v, b.bv = bv;
  b.r0 = bv * a.rows_per_block;
  b.r1 = min(a.N, b.r0 + a.rows_per_block);
  return b;
}

// Phase timing (MiraPlan::trace): thread 0 adds clock64 deltas per phase, and writes the
// launch's first kMiraTraceMarks - 1 marks to the block's timeline; one branch per phase when
// off. ph: kTraceShared long longs of shared memory (the phases, then the last mark, the start,
// and the timeline's next and end words as addresses): the hot loops have no registers to
// spare for them (an address kept in registers across the kernel spilled 8-100 bytes more).
constexpr int kTraceShared = kMiraTracePhases + 4;
__device__ __forceinline__ void trace_start(const FusedArgs& a, long long* ph) {
  if (a.trace != nullptr && threadIdx.x == 0) {
    for (int k = 0; k < kMiraTracePhases; ++k) ph[k] = 0;
    ph[kMiraTracePhases] = ph[kMiraTracePhases + 1] = clock64();
    unsigned long long* tl = a.trace + static_cast<size_t>(blockIdx.x) * kMiraTraceWords + kMiraTracePhases + 1;
    // Word 0: the start, tagged with the phase number kTraceTotal (no phase ends there).
    tl[0] = static_cast<unsigned long long>(ph[kMiraTracePhases]) << 4 | kTraceTotal;
    ph[kMiraTracePhases + 2] = reinterpret_cast<long long>(tl + 1);
    ph[kMiraTracePhases + 3] = reinterpret_cast<long long>(tl + kMiraTraceMarks);
  }
}
__device__ __forceinline__ void trace_mark(const FusedArgs& a, long long* ph, int k) {
  if (a.trace != nullptr && threadIdx.x == 0) {
    const long long now = clock64();
    ph[k] += now - ph[kMiraTracePhases];
    ph[kMiraTracePhases] = now;
    if (ph[kMiraTracePhases + 2] < ph[kMiraTracePhases + 3]) {
      *reinterpret_cast<unsigned long long*>(ph[kMiraTracePhases + 2]) =
          static_cast<unsigned long long>(now) << 4 | static_cast<unsigned>(k);
      ph[kMiraTracePhases + 2] += sizeof(unsigned long long);
    }
  }
}
// The SM this thread runs on (0 in the emulator).
__device__ __forceinline__ unsigned sm_id() {
#ifdef MIRA_CUDA_EMU
  return 0u;
#else
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
#endif
}
// The whole launch, and the block's row of the trace (its phases, then its SM).
__device__ __forceinline__ void trace_finish(const FusedArgs& a, long long* ph) {
  if (a.trace != nullptr && threadIdx.x == 0) {
    ph[kTraceTotal] = clock64() - ph[kMiraTracePhases + 1];
    unsigned long long* row = a.trace + static_cast<size_t>(blockIdx.x) * kMiraTraceWords;
    for (int k = 0; k < kMiraTracePhases; ++k) row[k] = static_cast<unsigned long long>(ph[k]);
    row[kMiraTracePhases] = sm_id();
  }
}

// The weight of a column of sum x (> 0: the pass's column sum; 0: an empty column, or
// padding) given log2 of the largest column sum: w = (x / max)^(-beta), capped.
// With l2 = log2f(x) given (FusedArgs::colsum_log2, written by the column reduction).
__device__ __forceinline__ float mira_weight_log2(const FusedArgs& a, float x, float l2, float l2max) {
  return x > 0.f ? exp2f(fminf(a.exponent * (l2 - l2max), a.log2_cap)) : 0.f;
}
__device__ __forceinline__ float mira_weight(const FusedArgs& a, float x, float l2max) {
  return mira_weight_log2(a, x, log2f(x), l2max);
}
// The same from l2 = log2f(x) alone: x > 0 exactly where l2 > -inf (log2f(0) is -inf, and a
// positive sum's log2f is finite, subnormals included: nothing here flushes them to zero;
// NaN gives 0 either way).
__device__ __forceinline__ float mira_weight_l2(const FusedArgs& a, float l2, float l2max) {
  return l2 > -INFINITY ? exp2f(fminf(a.exponent * (l2 - l2max), a.log2_cap)) : 0.f;
}

// The column sums of pass seq - 1 of view v from the blocks' partials (all written): block bv
// sums its tile of columns and writes the sums, their log2f where colsum_log2 is set, and
// their largest into the pass's word of colsum_max where that is set. redc: blockDim.x floats
// of shared memory.
__device__ __forceinline__ void reduce_columns(const FusedArgs& a, int v, int bv, unsigned seq, float* redc) {
  const int tid = threadIdx.x, bd = blockDim.x;
  // Block bv sums the columns [c_lo, c_lo + ncol) over the view's blocks: threads are
  // (column, subset) pairs, subset s adding blocks s, s + S, ... with its loads issued
  // together (16 at a time), then column j's S subset sums are added in subset order. A
  // fixed order (the targets are bitwise reproducible), and one round of L2 latency rather
  // than one per block summed.
  const size_t view_off = static_cast<size_t>(v) * a.blocks_per_view * a.Kp;
  const float* base = a.partial + view_off;
  const int bpv = a.blocks_per_view;
  const int cpb = (a.Kp + bpv - 1) / bpv;
  const int c_lo = bv * cpb, ncol = min(a.Kp, c_lo + cpb) - c_lo;
  for (int cc0 = 0; cc0 < ncol; cc0 += bd) {
    const int nc = min(bd, ncol - cc0), S = bd / nc;
    const int j = tid % nc, sub = tid / nc;
    const int col = c_lo + cc0 + j;
    if (sub < S) {
      float s = 0.f;
      // A subset's loads all go out before its first add, 16 at a time, and are added in
      // block order (the same bits). `#pragma unroll 8` on the plain loop compiled to
      // load, add, exit test, load...: one L2 round trip per partial (SASS), ~0.3 us each,
      // 9 per pass at N 4096.
      constexpr int kBatch = 16;
      for (int qb0 = sub; qb0 < bpv; qb0 += kBatch * S) {
        float x[kBatch];
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
          const int qb = qb0 + k * S;
          x[k] = qb < bpv ? base[static_cast<size_t>(qb) * a.Kp + col] : 0.f;
        }
#pragma unroll
        for (int k = 0; k < kBatch; ++k)
          if (qb0 + k * S < bpv) s += x[k];
      }
      redc[sub * nc + j] = s;
    }
    __syncthreads();
    float t = 0.f;  // column j's sum (threads tid < nc)
    if (tid < nc) {
      // The subsets' sums in subset order, their shared-memory loads 8 at a time ahead of the
      // adds (a runtime-bound loop of load-then-add waited out each load: S is 16 at N 4096).
      constexpr int kSubBatch = 8;
      for (int k0 = 0; k0 < S; k0 += kSubBatch) {
        float y[kSubBatch];
#pragma unroll
        for (int k = 0; k < kSubBatch; ++k) y[k] = k0 + k < S ? redc[(k0 + k) * nc + tid] : 0.f;
#pragma unroll
        for (int k = 0; k < kSubBatch; ++k)
          if (k0 + k < S) t += y[k];
      }
      a.colsum[static_cast<size_t>(v) * a.Kp + col] = t;
      if (a.colsum_log2) a.colsum_log2[static_cast<size_t>(v) * a.Kp + col] = log2f(t);
    }
    // The tile's largest sum, one atomic per warp that holds any of its columns (the others'
    // t is 0). The sums are >= 0, so their bits order as their values do: the pass's word
    // ends as the bits of the view's largest sum, whatever the order of the atomics.
    if (a.colsum_max && (tid & ~31) < nc) {
      float m = t;
#pragma unroll
      for (int off = 16; off >= 1; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, off));
      if ((tid & 31) == 0)
        atomicMax(a.colsum_max + static_cast<size_t>(v) * (a.iters + 1) + (seq - 1), __float_as_uint(m));
    }
    __syncthreads();
  }
}

// The view kinds (ViewCounter and its staggered kinds) keep one counter per view group, on
// 128-byte lines of their own (MiraPlan::off_sync has views_per_group of them).
constexpr int kSyncCounterStride = 32;
constexpr bool view_sync(int sync) {
  return grid_sync_per_view(static_cast<GridSync>(sync));
}
constexpr bool view_stagger(int sync) {
  return sync == static_cast<int>(GridSync::ViewCounterStagger);
}
// A block's view group and its block within the group: consecutive runs of blocks_per_view.
__device__ __forceinline__ int fused_view_group(const FusedArgs& a) {
  return blockIdx.x / a.blocks_per_view;
}
__device__ __forceinline__ int fused_view_block(const FusedArgs& a) {
  return blockIdx.x % a.blocks_per_view;
}
// The view kinds' counter of this block's group, in shared memory (set by fused_sync_target).
__device__ __forceinline__ unsigned*& view_counter() {
  __shared__ unsigned* counter;
  return counter;
}
// The block's target for fused_grid_sync (below): null for cooperative barriers (SYNC 0), else
// (a per-view kind) a word of shared memory (a constant address: no register). Counter
// barriers start from 0: thread 0 of each block zeroes its target and keeps its group's
// counter address (view_counter), block 0 zeroes every group's counter, before the launch's
// first barrier (a grid.sync()).
template <int SYNC>
__device__ __forceinline__ unsigned* fused_sync_target(const FusedArgs& a) {
  if constexpr (SYNC == 0) {
    return nullptr;
  } else {
    static_assert(view_sync(SYNC), "counter barriers per view group only");
    __shared__ unsigned target;
    if (threadIdx.x == 0) {
      target = 0;
      if (blockIdx.x == 0)
        for (int g = 0; g < a.views_per_group; ++g) a.sync_count[g * kSyncCounterStride] = 0u;
      view_counter() = a.sync_count + fused_view_group(a) * kSyncCounterStride;
    }
    return &target;
  }
}

// A grid barrier of the fused kernels (mira_assign.cu's and mira_mmarows.cu's), SYNC a GridSync
// (MiraPlan::grid_sync): cooperative groups' throughout for Cooperative, else (the per-view
// kinds) for the launch's first (`first`; block 0 zeroed the counters before it, so every
// block sees 0 after it) and after it a counter barrier of the block's view group. A template
// parameter, not an argument: the kernel is at its register limit (80 for 768 threads), and
// reading the kind at run time spilled more in every instantiation. target: the count the last
// counter barrier waited for, thread 0's, in shared memory.
template <int SYNC>
__device__ __forceinline__ void fused_grid_sync(const FusedArgs& a, cooperative_groups::grid_group& grid, bool first,
                                                unsigned* target) {
  static_assert(SYNC == static_cast<int>(GridSync::Cooperative) || view_sync(SYNC),
                "the fused kernels' barriers: cooperative, or a counter per view group");
  if constexpr (SYNC == static_cast<int>(GridSync::Cooperative)) {
    grid.sync();
  } else {
    if (first) {
      grid.sync();
      return;
    }
    // Only the blocks of this block's view group meet.
    if (threadIdx.x == 0) *target += static_cast<unsigned>(a.blocks_per_view);
    count_sync(view_counter(), *target);
  }
}

// ViewCounterStagger, at the start of the first update pass (pass 1, after one counter
// barrier of every group: the launch's first barrier is a grid.sync()): the blocks of view
// group g > 0 wait until group g - 1 has passed its next barrier, the one after its rows of
// pass 1. From then on the groups' passes alternate on each SM (one block of each group per
// SM): one group's boundary (barriers, reduction, weights: mostly waiting) overlaps the
// other's row updates. Every thread of the block; target: fused_grid_sync's.
template <int SYNC>
__device__ __forceinline__ void fused_view_stagger(const FusedArgs& a, const unsigned* target) {
  if constexpr (view_stagger(SYNC)) {
    if (fused_view_group(a) == 0) return;  // uniform per block
    if (threadIdx.x == 0) {
      const unsigned* prev = view_counter() - kSyncCounterStride;
      const unsigned want = *target + static_cast<unsigned>(a.blocks_per_view);
      int n = 0;
      while (static_cast<int>(load_acquire(prev) - want) < 0) sync_spin(n);
    }
    __syncthreads();
  }
}

using FusedFn = void (*)(const FusedArgs);

// mira_mmarows.cu: the fused kernel with the f16 copy's updates on tensor cores
// (MiraPlan::mma_rows), warps of TPW column tiles of 16 (mmarows_tiles: 4, 8 or 12 for K up to
// 1024, 2048, 3072) and mmarows_warps of them per block, one block per SM.
constexpr int kMmaRowsBlock = 512;
constexpr int kMmaRowsMaxK = 3072;
int mmarows_tiles(int K);
int mmarows_warps(int K);
// Dynamic shared memory ahead of the tiles of E (the weights and the row partials).
size_t mmarows_extra_bytes(int Kp);
FusedFn mmarows_fn(bool bf16_in, int tpw);

// mira_cluster.cu: the cluster plan (MiraPlan::cluster; sm_90), clusters of blocks per view.
FusedFn cluster_fn(bool bf16_in, MiraCache cache);
// Sets the kernel's attributes and returns the largest cluster size to try (0 below sm_90);
// smem_static: the kernel's static shared memory.
int cluster_prepare(bool bf16_in, MiraCache cache, int* smem_static);
// Clusters of `size` blocks with `smem` bytes of dynamic shared memory each that the device runs
// at once (0: it cannot launch them).
int cluster_active(bool bf16_in, MiraCache cache, int size, size_t smem);
// The whole assignment (every pass of every view) in one launch of `clusters` clusters.
void launch_cluster(const FusedArgs& a, bool bf16_in, MiraCache cache, int clusters, size_t smem, cudaStream_t stream);

}  // namespace mira::cuda::fused

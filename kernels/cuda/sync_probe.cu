// The grid barriers' probe (kernels/cuda/sync_probe.cuh): a check of their memory ordering,
// then their cost in clock64 cycles. tests/cuda_emu runs the checks on the CPU emulator;
// bench/mira_assign --probe-sync times them on a GPU.
#include "kernels/cuda/sync_probe.cuh"

#include <cooperative_groups.h>

#include <algorithm>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/grid_sync.cuh"

namespace cg = cooperative_groups;

namespace mira::cuda {

namespace {

constexpr size_t kErrorsAt = 128;  // the counter at 0, alone in its 128-byte line
constexpr size_t kDataAt = 256;

size_t cycles_at(int blocks, int threads) {
  return (kDataAt + 2 * sizeof(unsigned) * static_cast<size_t>(blocks) * threads + 255) / 256 * 256;
}

struct ProbeArgs {
  unsigned* count;
  unsigned* errors;
  unsigned* data;  // 2 x blocks x threads words, by the check's parity
  long long* cycles;
  int checks, iters;
  unsigned arrivals;
};

// Clusters exist from sm_90 on (and in the emulator).
#if defined(MIRA_CUDA_EMU) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define MIRA_SYNC_HAS_CLUSTERS 1
#endif

// target: the count the last counter barrier waited for.
template <int KIND>
__device__ __forceinline__ void probe_sync(const ProbeArgs& a, unsigned& target) {
  if constexpr (KIND == static_cast<int>(GridSync::Cooperative)) {
    cg::this_grid().sync();
  } else if constexpr (KIND == static_cast<int>(GridSync::Counter)) {
    target += a.arrivals;
    fused::count_sync(a.count, target);
  } else {
#ifdef MIRA_SYNC_HAS_CLUSTERS
    target += a.arrivals;
    cg::cluster_group cl = cg::this_cluster();
    fused::cluster_count_sync(a.count, target, cl);
#else
    __trap();
#endif
  }
}

// Check i: every thread writes i + 1 into its own word of slot i % 2, all pass a barrier, and
// every thread reads a word of the next-but-i block (another thread's, by i). The slots
// alternate so that check i + 2's writes come after the barrier of check i + 1, which every
// block passes only after its reads of check i.
template <int KIND>
__global__ void sync_probe_kernel(ProbeArgs a) {
  unsigned target = 0;
  const unsigned G = gridDim.x, me = blockIdx.x;
  const int T = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  unsigned bad = 0;
  for (int i = 0; i < a.checks; ++i) {
    unsigned* slot = a.data + static_cast<size_t>(i & 1) * G * T;
    slot[static_cast<size_t>(me) * T + t] = static_cast<unsigned>(i + 1);
    probe_sync<KIND>(a, target);
    const unsigned other = (me + 1 + static_cast<unsigned>(i)) % G;
    const volatile unsigned* w = slot + static_cast<size_t>(other) * T + (t + i) % T;
    if (*w != static_cast<unsigned>(i + 1)) ++bad;
  }
  if (bad > 0) atomicAdd(a.errors, bad);
  probe_sync<KIND>(a, target);
  const long long t0 = clock64();
  for (int i = 0; i < a.iters; ++i) probe_sync<KIND>(a, target);
  const long long t1 = clock64();
  if (t == 0) a.cycles[me] = t1 - t0;
}

using ProbeFn = void (*)(ProbeArgs);

ProbeFn probe_fn(GridSync kind) {
  switch (kind) {
    case GridSync::Counter:
      return sync_probe_kernel<1>;
    case GridSync::ClusterCounter:
      return sync_probe_kernel<2>;
    case GridSync::ViewCounter:
    case GridSync::ViewCounterStagger:
    case GridSync::Auto:
    case GridSync::Cooperative:
      break;
  }
  return sync_probe_kernel<0>;
}

}  // namespace

const char* grid_sync_name(GridSync kind) {
  switch (kind) {
    case GridSync::Counter:
      return "counter";
    case GridSync::ClusterCounter:
      return "cluster-counter";
    case GridSync::ViewCounter:
      return "view-counter";
    case GridSync::ViewCounterStagger:
      return "view-counter-stagger";
    case GridSync::Auto:
      return "auto";
    case GridSync::Cooperative:
      break;
  }
  return "cooperative";
}

size_t sync_probe_scratch_bytes(int blocks, int threads) {
  return cycles_at(blocks, threads) + sizeof(long long) * static_cast<size_t>(blocks);
}
unsigned* sync_probe_errors(void* scratch) {
  return reinterpret_cast<unsigned*>(static_cast<char*>(scratch) + kErrorsAt);
}
long long* sync_probe_cycles(void* scratch, int blocks, int threads) {
  return reinterpret_cast<long long*>(static_cast<char*>(scratch) + cycles_at(blocks, threads));
}

void sync_probe_launch(GridSync kind, int blocks, int threads, int cluster, size_t smem, int checks, int iters,
                       void* scratch, cudaStream_t stream) {
  MIRA_CHECK(blocks >= 1 && threads >= 32 && threads % 32 == 0 && checks >= 0 && iters >= 0,
             "sync_probe_launch: bad shape (", blocks, " blocks of ", threads, " threads)");
  MIRA_CHECK(kind != GridSync::Auto, "sync_probe_launch: a probe runs one kind of barrier, not auto");
  MIRA_CHECK(!grid_sync_per_view(kind), "sync_probe_launch: ", grid_sync_name(kind),
             " barriers are the assignment kernel's (a counter per view group), not a probe's");
  const bool clustered = kind == GridSync::ClusterCounter;
  MIRA_CHECK(!clustered || (cluster >= 1 && blocks % cluster == 0), "sync_probe_launch: clusters of ", cluster,
             " do not divide ", blocks, " blocks");
  char* s = static_cast<char*>(scratch);
  MIRA_CUDA_CHECK(cudaMemsetAsync(s, 0, cycles_at(blocks, threads), stream));
  ProbeArgs a;
  a.count = reinterpret_cast<unsigned*>(s);
  a.errors = reinterpret_cast<unsigned*>(s + kErrorsAt);
  a.data = reinterpret_cast<unsigned*>(s + kDataAt);
  a.cycles = sync_probe_cycles(scratch, blocks, threads);
  a.checks = checks, a.iters = iters;
  a.arrivals = static_cast<unsigned>(clustered ? blocks / cluster : blocks);
  const ProbeFn fn = probe_fn(kind);
#ifdef MIRA_CUDA_EMU  // tests/cuda_emu: every block at once
  emu::LaunchConfig cfg;
  cfg.grid = static_cast<unsigned>(blocks), cfg.block = static_cast<unsigned>(threads);
  cfg.cluster = clustered ? static_cast<unsigned>(cluster) : 1;
  cfg.smem = smem;
  emu::launch(cfg, fn, a);
#else
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg = launch_config(blocks, threads, smem, stream, true, clustered ? cluster : 0, attr);
  void* args[] = {&a};
  MIRA_CUDA_CHECK(cudaLaunchKernelExC(&cfg, reinterpret_cast<const void*>(fn), args));
#endif
}

// The probe (tests/cuda_emu has no clock to measure, nor device memory to allocate).
#ifndef MIRA_CUDA_EMU

SyncProbe mira_sync_probe(GridSync kind, int blocks_per_sm, int cluster, int checks, int iters, void* scratch,
                          size_t scratch_bytes) {
  constexpr int kThreads = kSyncProbeThreads;
  MIRA_CHECK(blocks_per_sm >= 1 && iters >= 1, "mira_sync_probe: blocks_per_sm and iters must be >= 1");
  MIRA_CHECK(!grid_sync_per_view(kind), "mira_sync_probe: ", grid_sync_name(kind),
             " barriers are the assignment kernel's (a counter per view group), not a probe's");
  const bool clustered = kind == GridSync::ClusterCounter;
  SyncProbe r;
  r.kind = kind;
  r.cluster = clustered ? cluster : 1;
  int dev = 0, sms = 0, smem_sm = 0, optin = 0, major = 0;
  MIRA_CUDA_CHECK(cudaGetDevice(&dev));
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  MIRA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  const void* fn = reinterpret_cast<const void*>(probe_fn(kind));
  cudaFuncAttributes fa{};
  MIRA_CUDA_CHECK(cudaFuncGetAttributes(&fa, fn));
  // Clusters need sm_90, and sm_90 code: a build without it runs compute_80 PTX, which traps.
  if (clustered && (major < 9 || (fa.binaryVersion < 90 && fa.ptxVersion < 90) || cluster < 1 || cluster > 8)) return r;
  // Shared memory that lets blocks_per_sm blocks, and no more, share an SM (1 KB per block is
  // the system's), as the fused kernel's blocks take it.
  const int per_block = smem_sm / blocks_per_sm - 1024 - static_cast<int>(fa.sharedSizeBytes);
  const size_t smem =
      static_cast<size_t>(std::max(0, std::min(per_block, optin - static_cast<int>(fa.sharedSizeBytes))));
  MIRA_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int occ = 0;
  MIRA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, kThreads, smem));
  if (occ < blocks_per_sm) return r;
  int blocks = sms * blocks_per_sm;
  if (clustered) {
    cudaLaunchAttribute attr[2];
    const cudaLaunchConfig_t cfg = launch_config(cluster, kThreads, smem, nullptr, false, cluster, attr);
    int active = 0;
    if (cudaOccupancyMaxActiveClusters(&active, fn, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();
      return r;
    }
    // Whole clusters, as many as run at once.
    blocks = std::min(blocks / cluster, active) * cluster;
    if (blocks == 0) return r;
  }
  MIRA_CHECK(scratch_bytes >= sync_probe_scratch_bytes(blocks, kThreads), "mira_sync_probe: ", scratch_bytes,
             " bytes of scratch, ", sync_probe_scratch_bytes(blocks, kThreads), " needed");
  std::vector<long long> cycles(static_cast<size_t>(blocks));
  unsigned errors = 0;
  for (int rep = 0; rep < 2; ++rep) {  // the first launch warms up
    sync_probe_launch(kind, blocks, kThreads, r.cluster, smem, checks, iters, scratch, nullptr);
    MIRA_CUDA_CHECK(cudaDeviceSynchronize());
    unsigned e = 0;
    MIRA_CUDA_CHECK(cudaMemcpy(&e, sync_probe_errors(scratch), sizeof(e), cudaMemcpyDeviceToHost));
    errors += e;
  }
  MIRA_CUDA_CHECK(cudaMemcpy(cycles.data(), sync_probe_cycles(scratch, blocks, kThreads),
                             cycles.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  r.blocks = blocks;
  r.errors = errors;
  r.cycles = static_cast<double>(*std::max_element(cycles.begin(), cycles.end())) / iters;
  return r;
}

#endif  // MIRA_CUDA_EMU

}  // namespace mira::cuda

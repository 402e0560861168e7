// Caching device allocator: the only place that calls cudaMalloc / cudaFree.
//
// Policy. Requests round up to 512 B (<= 1 MiB) or to 2 MiB (larger), which keeps the number of
// distinct sizes small, so a training step, whose sizes repeat every iteration, is served from
// the cache after its first iteration. Freed blocks go to a per-device free list keyed by size
// (std::multimap); an allocation takes the smallest cached block that is large enough and
// wastes at most a quarter of it, else calls cudaMalloc. Blocks are never split or merged.
// When cudaMalloc runs out of memory, the device's cache is released and the call retried once;
// a second failure throws mira::Error with the size, the statistics and the driver's free/total.
//
// Stream semantics: a freed block may be handed out again before the kernels that used it have
// run. That is safe because all engine work runs in order on the CudaContext stream; work on
// any other stream must synchronise with it before its memory is freed.
//
// The allocator object is created on first use and deliberately never destroyed, so tensors
// held in static objects can still give their memory back during process exit.
#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/cuda/device_guard.h"
#include "engine/cuda_backend.h"
#include "kernels/cuda/check.h"

namespace mira::cuda {

namespace {

constexpr size_t kSmallLimit = size_t(1) << 20;
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t(2) << 20;

size_t round_size(size_t bytes) {
  if (bytes <= kSmallLimit) return (bytes + kSmallRound - 1) / kSmallRound * kSmallRound;
  return (bytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

struct DeviceCache {
  std::multimap<size_t, void*> free_blocks;  // size -> block
  std::unordered_map<void*, size_t> live;    // block -> size
  MemoryStats stats;
};

class Allocator {
 public:
  void* alloc(size_t bytes, int device) {
    if (bytes == 0) return nullptr;
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    DeviceCache& d = cache(device);
    auto it = d.free_blocks.lower_bound(size);
    if (it != d.free_blocks.end() && it->first <= size + size / 4) {
      void* p = it->second;
      const size_t got = it->first;
      d.free_blocks.erase(it);
      d.live.emplace(p, got);
      d.stats.cache_hits++;
      note_alloc(d, got);
      return p;
    }
    void* p = device_malloc(d, device, size);
    if (!p) {
      release_cache(d, device);
      p = device_malloc(d, device, size);
    }
    if (!p) {
      size_t free_b = 0, total_b = 0;
      {
        DeviceGuard g(device);
        cudaMemGetInfo(&free_b, &total_b);
        cudaGetLastError();
      }
      MIRA_FAIL("CUDA out of memory on cuda:", device, " allocating ", bytes, " bytes (", size,
                " rounded): allocated ", d.stats.allocated_bytes, " B in live tensors, reserved ",
                d.stats.reserved_bytes, " B, peak ", d.stats.peak_allocated_bytes, " B, driver reports ", free_b,
                " B free of ", total_b);
    }
    d.live.emplace(p, size);
    note_alloc(d, size);
    return p;
  }

  // Called from destructors: never throws, makes no CUDA call.
  void free(void* p, int device) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (device < 0 || device >= static_cast<int>(devices_.size()) || !devices_[device]) {
      std::fprintf(stderr, "mira: device_free of %p on unknown device %d ignored\n", p, device);
      return;
    }
    DeviceCache& d = *devices_[device];
    auto it = d.live.find(p);
    if (it == d.live.end()) {
      std::fprintf(stderr, "mira: device_free of %p, not allocated on cuda:%d, ignored\n", p, device);
      return;
    }
    const size_t size = it->second;
    d.live.erase(it);
    d.stats.allocated_bytes -= size;
    d.free_blocks.emplace(size, p);
  }

  MemoryStats stats(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    if (device < 0 || device >= static_cast<int>(devices_.size()) || !devices_[device]) return {};
    return devices_[device]->stats;
  }

  void empty(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    if (device < 0 || device >= static_cast<int>(devices_.size()) || !devices_[device]) return;
    release_cache(*devices_[device], device);
  }

 private:
  DeviceCache& cache(int device) {
    MIRA_CHECK(device >= 0 && device < 1024, "bad CUDA device index ", device);
    if (device >= static_cast<int>(devices_.size())) devices_.resize(device + 1);
    if (!devices_[device]) devices_[device] = std::make_unique<DeviceCache>();
    return *devices_[device];
  }

  static void note_alloc(DeviceCache& d, size_t size) {
    d.stats.allocated_bytes += size;
    if (d.stats.allocated_bytes > d.stats.peak_allocated_bytes) d.stats.peak_allocated_bytes = d.stats.allocated_bytes;
  }

  // nullptr on out-of-memory; throws on any other error.
  static void* device_malloc(DeviceCache& d, int device, size_t size) {
    DeviceGuard g(device);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: out of memory is recoverable
      return nullptr;
    }
    MIRA_CUDA_CHECK(err);
    d.stats.device_mallocs++;
    d.stats.reserved_bytes += size;
    return p;
  }

  // Cached blocks may still be read by queued kernels (they were freed in stream order), so
  // the device is drained first.
  static void release_cache(DeviceCache& d, int device) {
    if (d.free_blocks.empty()) return;
    DeviceGuard g(device);
    MIRA_CUDA_CHECK(cudaDeviceSynchronize());
    for (auto& [size, p] : d.free_blocks) {
      MIRA_CUDA_CHECK(cudaFree(p));
      d.stats.reserved_bytes -= size;
    }
    d.free_blocks.clear();
  }

  std::mutex mu_;
  std::vector<std::unique_ptr<DeviceCache>> devices_;
};

Allocator& allocator() {
  static Allocator* a = new Allocator();  // never destroyed: see the file comment
  return *a;
}

}  // namespace

void* device_alloc(size_t bytes, int device) { return allocator().alloc(bytes, device); }
void device_free(void* p, int device) { allocator().free(p, device); }
MemoryStats memory_stats(int device) { return allocator().stats(device); }
void empty_cache(int device) { allocator().empty(device); }

void* pinned_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    MIRA_FAIL("cudaHostAlloc of ", bytes, " pinned bytes failed: ", cudaGetErrorString(err));
  }
  return p;
}

// Called from destructors: reports instead of throwing; quiet while the runtime shuts down.
void pinned_free(void* p) {
  if (!p) return;
  const cudaError_t err = cudaFreeHost(p);
  if (err != cudaSuccess && err != cudaErrorCudartUnloading)
    std::fprintf(stderr, "mira: cudaFreeHost(%p) failed: %s\n", p, cudaGetErrorString(err));
}

}  // namespace mira::cuda

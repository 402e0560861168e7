// Storage allocation. Host memory is 64-byte aligned (whole cache lines, AVX-512 loads);
// device memory comes from the caching allocator in engine/cuda/device_memory.cpp so a training
// step never calls cudaMalloc once warm; pinned host memory is for asynchronous copies.
#include <malloc.h>

#include <cstdlib>
#include <mutex>
#include <new>

#include "engine/cuda_backend.h"
#include "engine/tensor.h"

namespace mira {

Storage::~Storage() {
  if (!data) return;
  if (device.is_cuda()) {
    cuda::device_free(data, device.index);
  } else if (pinned) {
    cuda::pinned_free(data);
  } else {
    std::free(data);
  }
}

namespace {
// Activations are allocated and freed every step. glibc serves large blocks with mmap and
// returns them at free, so every step page-faults its whole working set in again; raising the
// mmap threshold keeps freed blocks in the heap for reuse (the CPU counterpart of the CUDA
// caching allocator).
void tune_host_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
  });
}
}  // namespace

std::shared_ptr<Storage> allocate_storage(size_t bytes, Device device) {
  tune_host_allocator();
  auto s = std::make_shared<Storage>();
  s->bytes = bytes;
  s->device = device;
  if (bytes == 0) return s;
  if (device.is_cuda()) {
    s->data = cuda::device_alloc(bytes, device.index);
  } else {
    const size_t rounded = (bytes + 63) / 64 * 64;
    s->data = std::aligned_alloc(64, rounded);
    if (!s->data) MIRA_FAIL("out of host memory allocating ", bytes, " bytes");
  }
  return s;
}

std::shared_ptr<Storage> allocate_pinned(size_t bytes) {
  auto s = std::make_shared<Storage>();
  s->bytes = bytes;
  s->device = Device::cpu();
  s->pinned = true;
  if (bytes) s->data = cuda::pinned_alloc(bytes);
  return s;
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    const std::string idx = s.substr(5);
    MIRA_CHECK(!idx.empty() && idx.find_first_not_of("0123456789") == std::string::npos,
               "bad device '", s, "': expected cpu, cuda or cuda:N");
    return cuda(std::stoi(idx));
  }
  MIRA_FAIL("bad device '", s, "': expected cpu, cuda or cuda:N");
}

}  // namespace mira

// The CUDA backend of a CPU-only build: every entry point says the build has no CUDA.
#include "engine/cuda_backend.h"

namespace mira::cuda {

namespace {
[[noreturn]] void no_cuda() { MIRA_FAIL("this build has no CUDA backend (configure with MIRA_CUDA=ON on a machine with nvcc)"); }
}  // namespace

bool built_with_cuda() { return false; }
int device_count() { return 0; }
void set_device(int) { no_cuda(); }
void synchronize() {}
void* timing_event_record() { no_cuda(); }
float timing_event_elapsed_ms(void*, void*) { no_cuda(); }
bool timing_event_done(void*) { return true; }
void timing_event_release(void*) {}
void set_bn_vectorized(bool) {}
bool bn_vectorized() { return false; }
void set_conv_gemm(bool) {}
bool conv_gemm() { return false; }
uint64_t conv_gemm_calls() { return 0; }
void* device_alloc(size_t, int) { no_cuda(); }
void device_free(void*, int) {}
void* pinned_alloc(size_t) { no_cuda(); }
void pinned_free(void*) {}
MemoryStats memory_stats(int) { return {}; }
void empty_cache(int) {}
void copy(void*, Device, const void*, Device, size_t, bool) { no_cuda(); }
void memset_zero(void*, size_t) { no_cuda(); }
void cast(const void*, DType, void*, DType, int64_t) { no_cuda(); }
void fill(void*, DType, int64_t, double) { no_cuda(); }
bool nccl_available() { return false; }
void nccl_unique_id(char*) { no_cuda(); }
struct NcclGroup {};
std::shared_ptr<NcclGroup> nccl_group(const char*, int, int, int) { no_cuda(); }
void nccl_allreduce(NcclGroup&, void*, int64_t, DType, bool, double) { no_cuda(); }
struct NcclPending {};
std::shared_ptr<NcclPending> nccl_allreduce_start(NcclGroup&, void*, int64_t, DType) { no_cuda(); }
void nccl_wait(NcclPending&, double) { no_cuda(); }
void nccl_drain(NcclGroup&, double) { no_cuda(); }

}  // namespace mira::cuda

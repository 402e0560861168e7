// kernels/cuda/mira_cluster.cu's device code, compiled for the CPU emulator (cuda_emu.h): its
// kernels through fused::cluster_fn, its launches replaced by mira::emu::launch.
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/mira_fused.cuh"

#include "kernels/cuda/mira_cluster.cu"

namespace mira::emu {
namespace {
// The kernels' dynamic shared memory (MIRA_DYNAMIC_SMEM): one buffer per block (OS thread),
// as large as an H100's or H200's opt-in shared memory per block. Thread-local, as __shared__
// variables are here, so DSMEM maps it as it maps them (cuda_emu.cpp, map_shared).
alignas(16) thread_local unsigned char smem[232448];
}  // namespace
unsigned char* dynamic_smem() {
  return smem;
}
size_t dynamic_smem_size() {
  return sizeof(smem);
}
}  // namespace mira::emu

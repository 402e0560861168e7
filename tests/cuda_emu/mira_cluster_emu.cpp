// kernels/cuda/mira_cluster.cu's device code, compiled for the CPU emulator (cuda_emu.h): its
// kernels through fused::cluster_fn, its launches replaced by mira::emu::launch.
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/mira_cluster.cu"

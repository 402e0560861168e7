// kernels/cuda/mira_cluster.cu (the cluster plan's kernel and launch), compiled for the CPU
// emulator (cuda_emu.h).
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/mira_cluster.cu"

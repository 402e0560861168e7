// kernels/cuda/sync_probe.cu (the grid barriers' check and probe) compiled for the CPU emulator
// (cuda_emu.h); test_kernels_emu.cpp runs it.
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/sync_probe.cu"

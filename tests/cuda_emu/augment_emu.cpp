// data/augment_kernels.cu (the GPU view augmentation's kernels) compiled for the CPU emulator
// (cuda_emu.h); test_kernels_emu.cpp runs it.
#include "tests/cuda_emu/cuda_emu.h"
//
#include "data/augment_kernels.cu"

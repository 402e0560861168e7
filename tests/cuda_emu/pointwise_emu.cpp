// kernels/cuda/pointwise.cu compiled for the CPU emulator (cuda_emu.h); test_kernels_emu.cpp runs it.
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/pointwise.cu"

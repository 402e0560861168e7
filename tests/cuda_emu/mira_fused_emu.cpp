// kernels/cuda/mira_assign.cu (the assignment's kernels, plans and launches) and
// mira_mmarows.cu, compiled for the CPU emulator (cuda_emu.h).
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/mira_assign.cu"
#include "kernels/cuda/mira_mmarows.cu"

// The default fused kernel's instantiations as mira_plan picks them (kernels/cuda/mira_assign.cu),
// for the emulator's tests (mira_fused_emu.cpp compiles them for the CPU).
#pragma once

#include "kernels/cuda/mira_fused.cuh"

namespace mira::cuda::fused_emu {

using fused::FusedFn;
// select_fused, fused_batch_rows, fused_pipelined, fused_flag_sync of mira_assign.cu.
FusedFn select(bool bf16_in, MiraCache cache, int nch, int batch_rows, bool pipelined, bool flag_sync);
int batch_rows(int nch, int requested, MiraCache cache);
bool pipelined(int nch, int batch_rows, bool requested);
bool flag_sync(int nch, int batch_rows, MiraCache cache, bool requested);

}  // namespace mira::cuda::fused_emu

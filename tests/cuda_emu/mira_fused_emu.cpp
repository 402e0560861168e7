// The fused kernels of kernels/cuda/mira_assign.cu (the default) and mira_warprows.cu, compiled
// for the CPU emulator (cuda_emu.h), with what picks their instantiations (fused_emu.h).
#include "tests/cuda_emu/cuda_emu.h"
//
#include "kernels/cuda/mira_assign.cu"
#include "kernels/cuda/mira_warprows.cu"
#include "tests/cuda_emu/fused_emu.h"

namespace mira::cuda::fused_emu {

FusedFn select(bool bf16_in, MiraCache cache, int nch, int batch_rows, bool pipelined, bool flag_sync) {
  return select_fused(bf16_in, cache, nch, batch_rows, pipelined, flag_sync);
}
int batch_rows(int nch, int requested, MiraCache cache) {
  return fused_batch_rows(nch, requested, cache);
}
bool pipelined(int nch, int batch_rows, bool requested) {
  return fused_pipelined(nch, batch_rows, requested);
}
bool flag_sync(int nch, int batch_rows, MiraCache cache, bool requested) {
  return fused_flag_sync(nch, batch_rows, cache, requested);
}

}  // namespace mira::cuda::fused_emu

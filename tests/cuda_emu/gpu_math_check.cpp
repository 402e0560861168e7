// test_mira_assign_emu_gpumath and test_kernels_emu_gpumath are built with -mfma: on a CPU
// without fused multiply-adds they say SKIPPED and exit 77 (ctest's skip code) before any test
// runs. The check runs before the static initialisers of the tests' files; it does no
// floating-point arithmetic itself.
#include <cstdio>
#include <cstdlib>

namespace {

__attribute__((constructor(101))) void require_fma() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("fma")) {
    std::printf("SKIPPED: this CPU has no FMA instructions (the GPU math model contracts a * b + c to them)\n");
    std::fflush(stdout);
    std::_Exit(77);
  }
}

}  // namespace

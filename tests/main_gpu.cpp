// Entry point of every test labelled gpu: without a CUDA device (or in a CPU-only build) the
// test says SKIPPED and exits 77, which ctest reports as skipped, never as passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "engine/cuda_backend.h"

int main(int argc, char** argv) {
  if (!mira::cuda::built_with_cuda()) {
    std::printf("SKIPPED: built without CUDA\n");
    return 77;
  }
  if (mira::cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}

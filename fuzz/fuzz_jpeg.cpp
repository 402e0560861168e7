// libFuzzer harness for the jpeg parser: see fuzz/targets.h for the input framing and the
// contract (mira::Error is a clean rejection; any other exception, crash or sanitizer report is
// a bug). Built with -DMIRA_FUZZ=ON; run with tools/fuzz.sh.
#include "fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mira::fuzz::run_target(mira::fuzz::fuzz_jpeg, data, size);
  return 0;
}

#!/usr/bin/env bash
# The README's test command: installs what is missing, configures (CUDA code compiled whenever
# nvcc is found), builds, and runs the default test set (everything not labelled slow), ending
# with ctest's summary. Extra arguments go to ctest, e.g. `tools/test.sh -L gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh
BUILD=${MIRA_BUILD_DIR:-build}
JOBS=${MIRA_JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MIRA_CMAKE_ARGS:-}
cmake --build "$BUILD" -j "$JOBS"
if [[ $# -eq 0 ]]; then
  set -- -LE slow
fi
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" "$@"

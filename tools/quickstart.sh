#!/usr/bin/env bash
# The README's first command. Sets up, builds, fetches Fashion-MNIST from Debian's archive, and
# runs the main job. Until mira_pretrain lands (issue 7) the main job is the MIRA assignment
# demo: convergence of the assignment against Sinkhorn-Knopp on random logits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
BUILD=${MIRA_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MIRA_CMAKE_ARGS:-}
cmake --build "$BUILD" -j "$(nproc)"
bash tools/fetch_fashion_mnist.sh data_cache/fashion-mnist
if [[ -x "$BUILD/bench/mira_assign" ]]; then
  "$BUILD/bench/mira_assign" --convergence --iters 30
else
  echo "quickstart: bench/mira_assign is not built yet; the engine tests are: bash tools/test.sh"
fi

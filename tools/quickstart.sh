#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, fetches Fashion-MNIST from
# Debian's archive, pre-trains the tiny CPU preset (configs/fashion_mnist_tiny.json: ResNet-tiny,
# 3 epochs over 10,000 images, a few minutes on two cores), then prints the k-NN accuracy of the
# trained network next to the same network at random init and raw pixels, and plots the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
BUILD=${MIRA_BUILD_DIR:-build}
RUN=${MIRA_RUN_DIR:-runs/quickstart}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MIRA_CMAKE_ARGS:-}
cmake --build "$BUILD" -j "$(nproc)" --target mira_pretrain mira_knn
bash tools/fetch_fashion_mnist.sh data_cache/fashion-mnist
"$BUILD/apps/mira_pretrain" --config configs/fashion_mnist_tiny.json --data data_cache/fashion-mnist \
  --eval-data data_cache/fashion-mnist --out "$RUN" --resume auto
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  /usr/bin/python3 tools/plot_run.py "$RUN" "$RUN/run.png"
else
  echo "quickstart: install python3-matplotlib for the plot of $RUN/metrics.jsonl"
fi
echo "quickstart: run directory $RUN (metrics.jsonl, knn.json, checkpoints/)"

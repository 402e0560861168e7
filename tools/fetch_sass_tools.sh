#!/usr/bin/env bash
# cuobjdump and nvdisasm without a GPU or a full CUDA toolkit: NVIDIA's pip wheels, unpacked
# under DIR (default /tmp/sass_tools), so that a kernel's SASS (and tools/sass_loops.py on it)
# can be read on a machine whose toolkit lacks them. Prints the bin directory to put on PATH.
#   PATH=$(tools/fetch_sass_tools.sh):$PATH
#   nvcc ... -cubin -o k.cubin kernels/cuda/mira_assign.cu && cuobjdump -sass k.cubin > k.sass
set -euo pipefail
DIR=${1:-/tmp/sass_tools}
VERSION=${MIRA_SASS_TOOLS_VERSION:-13.2.51}
mkdir -p "$DIR"
for pkg in nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm; do
  if ! ls "$DIR"/bin/* 2>/dev/null | grep -q "${pkg#nvidia-cuda-}"; then
    python3 -m pip download --quiet --no-deps "$pkg==$VERSION" -d "$DIR/wheels" >&2
  fi
done
for whl in "$DIR"/wheels/*.whl; do
  [[ -e $whl ]] || continue
  python3 -m zipfile -e "$whl" "$DIR/unpacked"
done
mkdir -p "$DIR/bin"
find "$DIR/unpacked" -type f \( -name cuobjdump -o -name nvdisasm \) -exec cp {} "$DIR/bin/" \;
chmod +x "$DIR"/bin/*
echo "$DIR/bin"

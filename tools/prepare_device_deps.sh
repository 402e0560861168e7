#!/usr/bin/env bash
# Gathers, from this Debian machine, the headers and libraries a GPU machine lacks (it has
# nvcc, CMake, ninja and PyTorch's CUDA wheels, but no OpenBLAS, nlohmann-json, doctest,
# libjpeg, libpng, zlib headers) into .device_deps/ (git-ignored, ~45 MB), so that
# tools/device_check.sh can build there: carry .device_deps with the device tool. It also takes
# the loader benchmark's photos along (.device_deps/photos).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.device_deps
rm -rf "$D"
mkdir -p "$D/include" "$D/lib" "$D/share/cmake"
ML=/usr/lib/x86_64-linux-gnu
MI=/usr/include/x86_64-linux-gnu
cp -r /usr/include/nlohmann /usr/include/doctest "$D/include/"
cp -r /usr/share/cmake/nlohmann_json "$D/share/cmake/"
cp -L "$MI/openblas-pthread/cblas.h" "$MI/openblas-pthread/openblas_config.h" "$D/include/"
cp -L /usr/include/jpeglib.h /usr/include/jmorecfg.h /usr/include/jerror.h "$MI/jconfig.h" "$D/include/"
cp -L /usr/include/png.h /usr/include/pngconf.h /usr/include/pnglibconf.h /usr/include/zlib.h /usr/include/zconf.h "$D/include/"
cp -L "$ML/openblas-pthread/libopenblas.so.0" "$ML/libgfortran.so.5" "$ML/libquadmath.so.0" "$D/lib/"
ln -s libopenblas.so.0 "$D/lib/libopenblas.so"
cp -L "$ML/libjpeg.a" "$ML/libpng16.a" "$ML/libz.a" "$D/lib/"
# The photos of the loader benchmark (5 MB of JPEGs from data_cache/photos, when fetched).
if [[ -d data_cache/photos/x ]]; then
  mkdir -p "$D/photos"
  n=0
  while IFS= read -r -d '' f; do
    cp "$f" "$D/photos/$n.jpg"
    n=$((n + 1))
  done < <(find data_cache/photos/x -iname '*.jpg' -print0 | sort -z)
fi
du -sh "$D"

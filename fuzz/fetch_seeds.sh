#!/usr/bin/env bash
# Fetches larger real seed files than the ones committed under fuzz/corpus/ (which stay under
# 1 MB): every JPEG of at most 64 KB (the fuzzers' -max_len) from Debian's photo packages
# (docs: data.md) and framed 100-image subsets of both Fashion-MNIST splits. Nothing is
# installed (apt-get download + dpkg -x). Then:
#   MIRA_FUZZ_EXTRA_CORPUS=DIR tools/fuzz.sh
#
#   fuzz/fetch_seeds.sh DIR
set -euo pipefail
OUT=${1:?usage: fuzz/fetch_seeds.sh DIR}
mkdir -p "$OUT/jpeg" "$OUT/idx"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for pkg in libdlib19.1 hugin-data budgie-control-center-data dataset-fashion-mnist; do
  if apt-get download "$pkg" >/dev/null 2>&1; then
    dpkg -x "$pkg"_*.deb x
  else
    echo "fetch_seeds: cannot download $pkg (no archive access?), skipped"
  fi
done
find x -type f \( -iname '*.jpg' -o -iname '*.jpeg' \) -size -65k -exec sh -c 'cp "$1" "$2/jpeg/$(echo "$1" | md5sum | cut -c1-12)_$(basename "$1")"' _ {} "$OUT" \;
FM=x/usr/share/datasets/fashion-mnist
if [[ -d $FM ]]; then
  /usr/bin/python3 - "$FM" "$OUT/idx" <<'PY'
import gzip, struct, sys
src, out = sys.argv[1], sys.argv[2]
for split in ("train", "t10k"):
    img = gzip.open(f"{src}/{split}-images-idx3-ubyte.gz").read()
    lab = gzip.open(f"{src}/{split}-labels-idx1-ubyte.gz").read()
    n = 100
    i = img[:4] + struct.pack(">I", n) + img[8:16] + img[16:16 + n * 784]
    l = lab[:4] + struct.pack(">I", n) + lab[8:8 + n]
    for name, a, b in (("raw", i, l), ("gzip", gzip.compress(i), gzip.compress(l))):
        open(f"{out}/fmnist_{split}_{n}_{name}.idx", "wb").write(struct.pack("<I", len(a)) + a + b)
PY
fi
echo "fetch_seeds: $(ls "$OUT/jpeg" | wc -l) JPEGs, $(ls "$OUT/idx" | wc -l) IDX seeds in $OUT"

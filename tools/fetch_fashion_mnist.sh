#!/usr/bin/env bash
# Fetches Fashion-MNIST from Debian's package archive (dataset-fashion-mnist) into DIR
# (default data_cache/fashion-mnist) as the four gzip'd IDX files, and checks their sha256.
# Needs no root: `apt-get download` installs nothing. Exit code 2 when the archive is
# unreachable, so tests can say SKIPPED.
set -euo pipefail
DIR=${1:-data_cache/fashion-mnist}
mkdir -p "$DIR"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
have=1
for f in "${files[@]}"; do [[ -s "$DIR/$f.gz" ]] || have=0; done
if [[ $have -eq 0 ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then
    echo "fetch_fashion_mnist: cannot download dataset-fashion-mnist from the Debian archive" >&2
    exit 2
  fi
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
  cp "$tmp"/x/usr/share/datasets/fashion-mnist/*-ubyte.gz "$DIR/"
fi
# sha256 of the decompressed files (from the data notes).
declare -A sums=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)
for f in "${files[@]}"; do
  got=$(gzip -dc "$DIR/$f.gz" | sha256sum | cut -d' ' -f1)
  if [[ "$got" != "${sums[$f]}" ]]; then
    echo "fetch_fashion_mnist: $DIR/$f.gz has sha256 $got, expected ${sums[$f]}" >&2
    exit 1
  fi
done
echo "fetch_fashion_mnist: $DIR ready (60000 train + 10000 test)"

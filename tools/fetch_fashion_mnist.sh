#!/usr/bin/env bash
# Fetches Fashion-MNIST from Debian's package archive (dataset-fashion-mnist) into DIR
# (default data_cache/fashion-mnist) as the four gzip'd IDX files, and checks their sha256.
# Files already there are checked first; if one is missing or fails its check (a copy cut
# short, say), all four are fetched again and checked once more. Needs no root: `apt-get
# download` installs nothing. Exit code 2 when the archive is unreachable, so tests can say
# SKIPPED; 1 when the fetched files fail their check.
set -euo pipefail
DIR=${1:-data_cache/fashion-mnist}
mkdir -p "$DIR"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
# sha256 of the decompressed files (from the data notes).
declare -A sums=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)
# Prints the first file that is missing or fails its check (nothing when all pass).
first_bad() {
  local f got
  for f in "${files[@]}"; do
    if [[ ! -s "$DIR/$f.gz" ]]; then
      echo "$DIR/$f.gz is missing"
      return
    fi
    got=$( (gzip -dc "$DIR/$f.gz" 2>/dev/null || true) | sha256sum | cut -d' ' -f1)
    if [[ "$got" != "${sums[$f]}" ]]; then
      echo "$DIR/$f.gz has sha256 $got, expected ${sums[$f]}"
      return
    fi
  done
}
bad=$(first_bad)
if [[ -n "$bad" ]]; then
  [[ "$bad" == *"is missing" ]] || echo "fetch_fashion_mnist: $bad: fetching again" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then
    echo "fetch_fashion_mnist: cannot download dataset-fashion-mnist from the Debian archive" >&2
    exit 2
  fi
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
  # Each file under a temp name, then renamed: an interrupted copy leaves no half file behind.
  for f in "${files[@]}"; do
    cp "$tmp/x/usr/share/datasets/fashion-mnist/$f.gz" "$DIR/$f.gz.part"
    mv -f "$DIR/$f.gz.part" "$DIR/$f.gz"
  done
  bad=$(first_bad)
  if [[ -n "$bad" ]]; then
    echo "fetch_fashion_mnist: $bad (after fetching it again)" >&2
    exit 1
  fi
fi
echo "fetch_fashion_mnist: $DIR ready (60000 train + 10000 test)"

#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need. Idempotent: packages already
# present are skipped. As root it installs; otherwise it prints the apt-get line to run.
# The CUDA toolkit, cuDNN and NCCL are not Debian packages here: when nvcc is found the build
# compiles the CUDA backend too (MIRA_CUDA=AUTO), otherwise it builds the CPU backend only.
set -euo pipefail

PKGS=(cmake ninja-build g++ pkg-config libopenblas-dev libopenblas0-pthread nlohmann-json3-dev doctest-dev
      libjpeg62-turbo-dev libpng-dev zlib1g-dev libopenmpi-dev openmpi-bin python3-numpy)
# Optional tools: Python for golden fixtures and plots (Debian's interpreter, not the one first
# on PATH), djpeg as a reference decoder. Installed with --with-python.
PY_PKGS=(python3-matplotlib python3-torch python3-torchvision libjpeg-turbo-progs)

want=("${PKGS[@]}")
if [[ "${1:-}" == "--with-python" ]]; then
  want+=("${PY_PKGS[@]}")
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#want[@]} packages present"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing packages; run as root:"
  echo "  apt-get update && apt-get install -y ${missing[*]}"
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

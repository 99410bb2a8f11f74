#!/usr/bin/env bash
# Fetches the CUDA 13.0 compiler pieces the kernel compile test needs (no GPU
# needed) into .cache/cuda-tools, as NVIDIA's Python wheels, by package name:
#   nvidia-cuda-nvrtc  libnvrtc.so.13 + libnvrtc-builtins.so.13.0 (the run-time compiler)
#   nvidia-cuda-nvcc   ptxas (register / spill report of the PTX)
# The kernels include no CUDA headers (bf16 and mma are inline PTX), so the runtime
# headers package is not needed. Pinned to 13.0: newer NVRTC output does not load on
# the 580 drivers of the GPU machines. Idempotent: does nothing (fast) when present.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.cache/cuda-tools
pkgs="nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88"
stamp="$dest/.complete"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkgs" ]; then
    exit 0
fi
echo "fetching $pkgs into $dest" >&2
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
# shellcheck disable=SC2086 # word splitting of the package list is intended
if ! python3 -m pip install --quiet --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
    --target "$dest.tmp" $pkgs; then
    echo "error: could not fetch $pkgs with pip; the CUDA kernel compile test needs them" >&2
    rm -rf "$dest.tmp"
    exit 1
fi
chmod +x "$dest.tmp"/nvidia/cu13/bin/* 2>/dev/null || true
for f in lib/libnvrtc.so.13 lib/libnvrtc-builtins.so.13.0 bin/ptxas; do
    if [ ! -e "$dest.tmp/nvidia/cu13/$f" ]; then
        echo "error: the fetched packages lack nvidia/cu13/$f" >&2
        exit 1
    fi
done
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$pkgs" > "$stamp"

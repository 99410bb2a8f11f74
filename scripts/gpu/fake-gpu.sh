#!/usr/bin/env bash
# Runs the GPU tests on a machine without a GPU, against a fake CUDA driver and
# cuBLAS (tests/kernel_emu/fake_cuda.cpp) that execute the embedded kernels on
# CPU threads: the real backend, cudarc and NVRTC (13.0, from the fetched wheel)
# all run; only the device is emulated. Slow (minutes); checks correctness of
# the host side of every launch, never speed.
#
#   scripts/gpu/fake-gpu.sh [cargo test filters/args]      e.g.  scripts/gpu/fake-gpu.sh --test cuda_ops lora
# Default: --test cuda_ops --test cuda_model.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup/fetch-cuda-tools.sh
dir=target/fake-gpu
mkdir -p "$dir"
{
    for f in elementwise rmsnorm rope softmax attention_prefill attention_decode lora; do
        echo "// ---- $f.cu"
        sed 's/extern __shared__ float smem\[\];/float* smem = emu_dyn_smem();/' "kernels/$f.cu"
    done
} > "$dir/kernels_all.inc"
cxx=${CXX:-c++}
flags=(-std=c++20 -O2 -shared -fPIC -pthread -Wno-unknown-pragmas -I tests/kernel_emu -I "$dir")
"$cxx" "${flags[@]}" -DFAKE_DRIVER -Wl,-soname,libcuda.so.1 tests/kernel_emu/fake_cuda.cpp -o "$dir/libcuda.so.1"
"$cxx" "${flags[@]}" -DFAKE_CUBLAS -Wl,-soname,libcublas.so.13 tests/kernel_emu/fake_cuda.cpp -o "$dir/libcublas.so.13"
"$cxx" "${flags[@]}" -DFAKE_CUBLASLT -Wl,-soname,libcublasLt.so.13 tests/kernel_emu/fake_cuda.cpp -o "$dir/libcublasLt.so.13"
export PALR_CUDA_LIB_DIR="$PWD/$dir:$PWD/.cache/cuda-tools/nvidia/cu13/lib"
export PALR_REQUIRE_CUDA=1
if [ $# -eq 0 ]; then
    set -- --test cuda_ops --test cuda_model
fi
# The GPU tests are #[ignore]d (machines without a GPU report them as ignored): run them.
exec cargo test --release "$@" -- --include-ignored

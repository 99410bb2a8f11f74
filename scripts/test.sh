#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
# NVRTC 13.0 and ptxas for tests/cuda_kernels_compile.rs (no GPU needed).
scripts/fetch-cuda-tools.sh
cargo build --release --workspace
cargo test --release --workspace

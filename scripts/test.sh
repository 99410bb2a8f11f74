#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
# NVRTC 13.0 and ptxas for tests/cuda_kernels_compile.rs (no GPU needed).
scripts/fetch-cuda-tools.sh
cargo build --release --workspace
# What the tests need, fetched once and then skipped: the default model
# (SmolLM2-135M-Instruct, downloaded, verified, imported) and MovieLens-100k.
./target/release/palr model fetch
./target/release/palr data fetch ml-100k
cargo test --release --workspace
# Peer benchmark harness checks that need neither torch nor a model (pinned prompt ids).
python3 -m unittest discover -s benchmarks/peers
# The results scripts (scripts/results-table.py, the RecBole-free parts of sasrec_recbole.py):
# standard library only; the plot test is skipped without matplotlib.
python3 -m unittest discover -s scripts/tests

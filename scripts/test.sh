#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
cargo test --release --workspace
# Peer benchmark harness checks that need neither torch nor a model (pinned prompt ids).
python3 -m unittest discover -s benchmarks/peers

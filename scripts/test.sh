#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
# MovieLens-100k for the split check (idempotent; needs python3 with pip).
target/release/palr data fetch ml-100k
cargo test --release --workspace

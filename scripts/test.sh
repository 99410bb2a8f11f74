#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
# The default model (SmolLM2-135M-Instruct): downloaded, verified and imported once, then skipped.
./target/release/palr model fetch
cargo test --release --workspace

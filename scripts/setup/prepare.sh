#!/usr/bin/env bash
# What serving and testing need first, on a fresh machine (Debian with Rust and Python 3 + pip):
# the workspace built in release (the palr binary and the retriever plugins beside it), the
# default model (SmolLM2-135M-Instruct: downloaded, verified, imported) and MovieLens-100k, each
# fetched once and then skipped. scripts/run.sh, scripts/test.sh and deploy/Containerfile's build
# stage all start with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --workspace
./target/release/palr model fetch
./target/release/palr data fetch ml-100k

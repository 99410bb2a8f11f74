#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
# What the tests need, fetched once and then skipped: the default model
# (SmolLM2-135M-Instruct, downloaded, verified, imported) and MovieLens-100k.
./target/release/palr model fetch
./target/release/palr data fetch ml-100k
cargo test --release --workspace
# The results scripts (scripts/results-table.py, the RecBole-free parts of sasrec_recbole.py):
# standard library only; the plot test is skipped without matplotlib.
python3 -m unittest discover -s scripts/tests

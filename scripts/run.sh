#!/usr/bin/env bash
# Runs the service on a fresh machine (Debian with Rust and Python 3 + pip): builds the
# workspace in release (server and retriever plugins), fetches the default model and
# MovieLens-100k if they are missing, and serves with configs/palr.toml (gRPC on
# 127.0.0.1:50051, metrics on 127.0.0.1:9090/metrics). Extra arguments go to `palr serve`
# (e.g. --addr 0.0.0.0:50051). Stop with Ctrl-C: in-flight requests are drained first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup/prepare.sh
exec ./target/release/palr serve --config configs/palr.toml "$@"

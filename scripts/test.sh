#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
# NVRTC 13.0 and ptxas for tests/cuda_kernels_compile.rs (no GPU needed).
scripts/setup/fetch-cuda-tools.sh
# The release build and what the tests need, fetched once and then skipped: the default model
# (SmolLM2-135M-Instruct, downloaded, verified, imported) and MovieLens-100k.
scripts/setup/prepare.sh
# The trainers' Python environment (torch, pinned): tests/sasrec_e2e.rs trains a tiny SASRec
# with scripts/train_sasrec.py and checks the Rust plugin against it.
TRAIN_PYTHON=$(scripts/train-venv.sh | tail -n 1)
# tests/c_abi.rs also compiles C (the header check, the C example plugin) with $CC or `cc`,
# the system compiler rustc already links with: nothing more to install.
PALR_TRAIN_PYTHON=$TRAIN_PYTHON cargo test --release --workspace
# Peer benchmark harness checks that need neither torch nor a model (pinned prompt ids).
python3 -m unittest discover -s benchmarks/peers
# The Python scripts' tests (results table and plot, the RecBole-free parts of
# sasrec_recbole.py, the SASRec trainer), in the trainers' environment so none is skipped.
"$TRAIN_PYTHON" -m unittest discover -s scripts/tests
# The deployment tests: every Kubernetes manifest (deploy/kubernetes, its GPU overlay) rendered
# and validated offline against the Kubernetes API schemas, and checked against
# configs/palr.toml (ports, probes, shutdown timing, device) and the image layout; pinned
# environment from scripts/setup/deploy-venv.sh. Where it cannot be installed the tests still run
# and report themselves skipped, with the reason.
if ! DEPLOY_PYTHON=$(scripts/setup/deploy-venv.sh | tail -n 1); then
    echo "warning: scripts/setup/deploy-venv.sh failed; the deployment tests will be skipped" >&2
    DEPLOY_PYTHON=python3
fi
"$DEPLOY_PYTHON" -m unittest discover -s deploy/tests -v
# The Python client (clients/python) against live servers: its tests start target/release/palr
# serve (plaintext; mutual TLS with a tokens file; the admin API on with an admin token) and go
# through every RPC of both services (palr.v1.Recommender, palr.admin.v1.Admin), the errors,
# deadlines and tokens, and build its sdist and wheel. Pinned environment from
# scripts/setup/client-venv.sh, palr-client built in it from the protos; the binary, model and
# data are prepared above, so none of these tests may skip.
CLIENT_PYTHON=$(scripts/setup/client-venv.sh | tail -n 1)
PALR_CLIENT_TESTS_STRICT=1 "$CLIENT_PYTHON" -m unittest discover -s clients/python/tests -v

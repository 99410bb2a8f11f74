#!/usr/bin/env bash
# The Python environment of palr's trainers (scripts/training/train_lora.py,
# scripts/train_sasrec.py) and of the tests that run them: .cache/train-venv with
# scripts/requirements-train.txt, pinned.
# Idempotent: reinstalls only when the requirements file changed since the last install.
# Prints the interpreter's path on its last line.
#
# torch==2.15.0 from the package registry is the CUDA build on Linux x86-64 (a few GB with its
# nvidia-* wheels; about two minutes to fetch and install on a fast link); it runs on CPU too.
#
# Environment: PYTHON (default python3), TRAIN_VENV (default .cache/train-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRAIN_VENV:-.cache/train-venv}
REQ=scripts/requirements-train.txt
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ" >&2
    echo "$want" > "$stamp"
fi
echo "$(cd "$VENV" && pwd)/bin/python"

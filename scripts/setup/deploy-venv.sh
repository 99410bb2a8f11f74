#!/usr/bin/env bash
# The Python environment of the deployment tests (deploy/tests): .cache/deploy-venv with
# deploy/tests/requirements.txt, pinned (kubernetes-validate carries the Kubernetes API schemas,
# so validation needs no cluster and no network once installed; about 25 MB).
# Idempotent: reinstalls only when the requirements file changed since the last install.
# Prints the interpreter's path on its last line.
#
# Environment: PYTHON (default python3), DEPLOY_VENV (default .cache/deploy-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${DEPLOY_VENV:-.cache/deploy-venv}
REQ=deploy/tests/requirements.txt
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$REQ" >&2
    echo "$want" > "$stamp"
fi
echo "$(cd "$VENV" && pwd)/bin/python"

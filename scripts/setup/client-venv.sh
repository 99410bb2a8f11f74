#!/usr/bin/env bash
# The Python client's environment (clients/python): .cache/client-venv with
# clients/python/requirements.txt, pinned, and palr-client built from clients/python in it (its
# gRPC stubs generated from proto/ by that build). Idempotent: reinstalls the requirements only
# when their file changed, and the package only when its sources or the proto changed.
# Prints the interpreter's path on its last line.
#
# Environment: PYTHON (default python3), CLIENT_VENV (default .cache/client-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${CLIENT_VENV:-.cache/client-venv}
PKG=clients/python
REQ=$PKG/requirements.txt
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$REQ" >&2
    echo "$want" > "$stamp"
    rm -f "$VENV/.package.sha256"
fi
# The package: what its build reads, hashed.
stamp="$VENV/.package.sha256"
want=$(cat "$PKG/pyproject.toml" "$PKG/setup.py" "$PKG/README.md" "$PKG"/palr_client/*.py \
    proto/palr/v1/recommender.proto proto/palr/admin/v1/admin.proto | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # Without build isolation: the build uses the pinned setuptools and grpcio-tools above.
    # setuptools' build/ would keep modules removed since the last build.
    rm -rf "$PKG/build"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
        --no-build-isolation --force-reinstall "./$PKG" >&2
    echo "$want" > "$stamp"
fi
echo "$(cd "$VENV" && pwd)/bin/python"

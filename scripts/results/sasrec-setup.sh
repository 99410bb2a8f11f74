#!/usr/bin/env bash
# Creates the Python environment of the SASRec baseline and the results plot:
# .cache/sasrec-venv with scripts/results/requirements-sasrec.txt and RecBole 1.2.1. Idempotent.
#
# RecBole 1.2.1 is installed with --no-deps: its metadata also requires ray<=2.6.3, thop,
# plotly and tabulate, which only its hyperparameter tuning, quick_start and FLOP counting
# import (scripts/results/sasrec_recbole.py uses none of them), and ray 2.6.3 has no wheels for
# current Pythons. What its training path does import is pinned in the requirements file.
#
# torch==2.15.0 from the package registry is the CUDA build on Linux x86-64 (a few GB with
# its nvidia-* wheels); it runs on CPU too. To reuse an installed torch instead (development),
# point SASREC_REUSE_SITE_PACKAGES at that environment's site-packages: it is added to the
# venv's path with a .pth file and pip then skips what is already there at the pinned versions.
#
# Environment: PYTHON (default python3, >= 3.10), SASREC_VENV (default .cache/sasrec-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SASREC_VENV:-.cache/sasrec-venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if [ -n "${SASREC_REUSE_SITE_PACKAGES:-}" ]; then
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$SASREC_REUSE_SITE_PACKAGES" > "$site/zz-reuse-site-packages.pth"
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check -r scripts/results/requirements-sasrec.txt
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps recbole==1.2.1
"$VENV/bin/python" -c 'import recbole, torch, matplotlib; print(f"recbole {recbole.__version__}, torch {torch.__version__}: ok")'

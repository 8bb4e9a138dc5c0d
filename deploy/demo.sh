#!/usr/bin/env bash
# Set up a local Strife: a virtual environment with the project, the dev
# certificates, then the demo (a local cluster making real payments).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/strife ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
fi
.venv/bin/strife-certs dev --out certs
exec .venv/bin/strife demo "$@"

#!/usr/bin/env bash
# Set up a local Strife: a virtual environment with the project, then the demo
# (a local cluster making real payments). The demo keeps its certificates,
# databases and logs under .strife/demo (git-ignored), never in ./certs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/strife" ]; then
  "$PYTHON" -m venv "$VENV"
  # The versions CI tests (constraints.txt), not whatever was released today.
  "$VENV/bin/python" -m pip install --quiet --upgrade -c constraints.txt pip
  "$VENV/bin/python" -m pip install --quiet -c constraints.txt --build-constraint constraints.txt \
    -e '.[dev]'
fi
exec "$VENV/bin/strife" demo "$@"

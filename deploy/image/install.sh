#!/bin/sh
# Install Strife into a new virtual environment at $1, from the current
# directory (a source tree): pinned by requirements.lock or constraints.txt
# when the tree has one, else by pyproject.toml's lower bounds. EXTRAS (e.g.
# "loadgen") adds optional dependencies.
set -eu
venv=${1:?usage: install.sh VENV}
python=${PYTHON:-python3}
project=.${EXTRAS:+[$EXTRAS]}

"$python" -m venv "$venv"
pip="$venv/bin/pip"
if [ -f requirements.lock ]; then
    "$pip" install -r requirements.lock
    "$pip" install --no-deps "$project"
elif [ -f constraints.txt ]; then
    "$pip" install -c constraints.txt "$project"
else
    "$pip" install "$project"
fi
# Fail the build, not the first start, when an entry point is missing.
for script in strife strife-bank strife-gateway strife-balancer strife-certs strife-loadgen; do
    test -x "$venv/bin/$script" || { echo "missing console script $script" >&2; exit 1; }
done
"$venv/bin/python" -c "import strife.deploy.probe, strife.bank.main, strife.gateway.main"

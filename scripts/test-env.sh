#!/usr/bin/env bash
# Prepares the Python virtual environment the tests use (moto's S3 server with
# Object Lock, the official MCP SDK, pytest, the Python client's dependencies)
# at .venv-test/, from tests/requirements.txt, and installs the Python client
# (clients/python) into it. Idempotent: the venv is rebuilt only when the
# requirements file changed, the client reinstalled only when its files
# changed. Prints the venv's path.
#
#   scripts/test-env.sh          # then: export KERNELS_TEST_VENV=$(scripts/test-env.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.venv-test"
REQ="$PWD/tests/requirements.txt"
PY="${PYTHON:-python3}"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet -r "$REQ" >&2
  echo "$want" >"$stamp"
fi
# The Python client (clients/python), installed as users install it: not
# editable, so the tests import the built package. Reinstalled whenever one
# of its files changes; its dependencies are pinned above.
client_stamp="$VENV/.kernels-client.sha256"
client_want="$(cd clients/python && find . \( -path ./tests -o -path './.*' -o -name __pycache__ -o -name build \
  -o -name dist -o -name '*.egg-info' \) -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum)"
if [[ ! -f "$client_stamp" || "$(cat "$client_stamp")" != "$client_want" ]]; then
  "$VENV/bin/pip" install --quiet --no-deps --force-reinstall ./clients/python >&2
  echo "$client_want" >"$client_stamp"
fi
echo "$VENV"

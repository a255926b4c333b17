#!/usr/bin/env bash
# Prepares the Python virtual environment the tests use (moto's S3 server with
# Object Lock, the official MCP SDK, pytest, the Python client's dependencies)
# at .venv-test/, from tests/requirements.txt. Idempotent: the venv is rebuilt
# only when the requirements file changed. Prints the venv's path.
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
echo "$VENV"

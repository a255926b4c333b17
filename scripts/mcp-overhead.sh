#!/usr/bin/env bash
# What kernels mcp-proxy (stdio) and the /mcp/{name} front (Streamable HTTP)
# add to a tools/call, p50 over interleaved rounds, driven by the official
# MCP Python SDK client against the SDK fixture server (scripts/mcp_overhead.py).
# Uses the release binary (built if missing) or $KERNELS_BIN.
#
#   scripts/mcp-overhead.sh [--calls 200] [--rounds 3] [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(scripts/test-env.sh)"
if [[ -z "${KERNELS_BIN:-}" ]]; then
  cargo build --release --quiet --bin kernels
  KERNELS_BIN="$PWD/target/release/kernels"
fi
export KERNELS_BIN
exec "$VENV/bin/python" scripts/mcp_overhead.py "$@"

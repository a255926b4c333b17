#!/usr/bin/env bash
# The project's one test command (README, .ci/run): prepares the test venv,
# then runs every Rust test (cargo test) and every Python test (pytest) with
# KERNELS_TEST_VENV pointing at the venv. Tests that need moto, the MCP SDK or
# HAProxy fail (never skip) when those are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
KERNELS_TEST_VENV="$(scripts/test-env.sh)"
export KERNELS_TEST_VENV
cargo test "$@"
if compgen -G "tests/python/test_*.py" >/dev/null || [[ -d clients/python/tests ]]; then
  # The binary `cargo test` built (the same features as the Rust tests: a plain
  # `cargo build` would rebuild dependencies without the dev-dependencies' features).
  cargo test --no-run --quiet
  KERNELS_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/kernels" "$KERNELS_TEST_VENV/bin/python" -m pytest -q \
    $(compgen -G "tests/python/test_*.py" >/dev/null && echo tests/python) \
    $([[ -d clients/python/tests ]] && echo clients/python/tests)
fi

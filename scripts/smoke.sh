#!/usr/bin/env bash
# Smoke test of the real binary: start the service on a free port with a temp
# data dir, submit an ALLOW and a DENY, halt, export, verify the export,
# restart and check the kernel is still halted. Exits non-zero on any failure.
#
#   scripts/smoke.sh            # uses target/debug/kernels (builds it if missing)
#   KERNELS_BIN=target/release/kernels scripts/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${KERNELS_BIN:-target/debug/kernels}"
if [[ ! -x "$BIN" ]]; then
  cargo build --quiet --bin kernels
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "smoke: $tool is required" >&2; exit 2; }
done

WORK="$(mktemp -d)"
PID=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

export KERNELS_OPERATOR_TOKEN="smoke-operator-token"
export KERNELS_AUDITOR_TOKEN="smoke-auditor-token"
export KERNELS_AGENT_TOKEN="smoke-agent-token"
export KERNELS_LOG=warn
cat > "$WORK/policy.yaml" <<'YAML'
allowed_actors: [agent-001]
allowed_tools: [echo]
YAML

start() {
  : > "$WORK/stderr"
  (cd "$WORK" && exec "$BIN" serve --listen 127.0.0.1:0 --data-dir data --policy policy.yaml --kernel-id smoke-001 2>>"$WORK/stderr") &
  PID=$!
  for _ in $(seq 1 300); do
    if ADDR="$(grep -m1 -o 'serving on http://[0-9.:]*' "$WORK/stderr" | sed 's/serving on //')" && [[ -n "$ADDR" ]]; then
      URL="$ADDR"
      [[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/ready")" == 200 ]] && return 0
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/stderr" >&2; fail "the service exited at start"; }
    sleep 0.1
  done
  fail "the service did not become ready"
}

stop() {
  kill -TERM "$PID"
  wait "$PID" || fail "the service did not exit cleanly on SIGTERM"
  PID=""
}

api() { # method path token [body]
  local out
  out="$(curl -sS -X "$1" "$URL$2" -H "Authorization: Bearer $3" -H 'content-type: application/json' ${4:+-d "$4"} -w '\n%{http_code}')"
  BODY="$(head -n -1 <<<"$out")"
  CODE="$(tail -n 1 <<<"$out")"
}

start
echo "smoke: service at $URL"

api POST /v1/requests "$KERNELS_AGENT_TOKEN" '{"request_id":"smoke-1","actor":"agent-001","intent":"echo a greeting","tool_call":{"name":"echo","params":{"text":"hello"}}}'
[[ "$CODE" == 200 ]] || fail "submit: HTTP $CODE $BODY"
[[ "$(jq -r .decision <<<"$BODY")" == ALLOW ]] || fail "expected ALLOW: $BODY"
[[ "$(jq -r .tool_result <<<"$BODY")" == hello ]] || fail "expected the tool result: $BODY"
echo "smoke: ALLOW ok ($(jq -r .evidence_hash <<<"$BODY"))"

api POST /v1/requests "$KERNELS_AGENT_TOKEN" '{"request_id":"smoke-2","actor":"agent-001","intent":"delete everything","tool_call":{"name":"rm","params":{}}}'
[[ "$CODE" == 200 ]] || fail "submit: HTTP $CODE $BODY"
[[ "$(jq -r .decision <<<"$BODY")" == DENY ]] || fail "expected DENY: $BODY"
echo "smoke: DENY ok ($(jq -r .error <<<"$BODY"))"

api POST /v1/halt "$KERNELS_OPERATOR_TOKEN" '{"reason":"smoke test halt"}'
[[ "$CODE" == 200 ]] || fail "halt: HTTP $CODE $BODY"
[[ "$(jq -r .receipt.decision <<<"$BODY")" == HALT ]] || fail "expected HALT: $BODY"
echo "smoke: HALT ok (root before halt $(jq -r .root_hash_before_halt <<<"$BODY"))"

api POST /v1/requests "$KERNELS_AGENT_TOKEN" '{"request_id":"smoke-3","actor":"agent-001","intent":"after halt","tool_call":{"name":"echo","params":{"text":"x"}}}'
[[ "$CODE" == 409 ]] || fail "a halted kernel must answer 409, got $CODE $BODY"

curl -sS -f "$URL/v1/evidence" -H "Authorization: Bearer $KERNELS_AUDITOR_TOKEN" -o "$WORK/bundle.json" || fail "export"
"$BIN" verify "$WORK/bundle.json" >/dev/null || fail "the exported bundle does not verify"
ENTRIES="$(jq '.ledger_entries | length' "$WORK/bundle.json")"
[[ "$ENTRIES" == 4 ]] || fail "expected 4 entries (create, ALLOW, DENY, HALT), got $ENTRIES"
echo "smoke: export of $ENTRIES entries verifies"

stop
start
api GET /v1/status "$KERNELS_AUDITOR_TOKEN"
[[ "$CODE" == 200 && "$(jq -r .state <<<"$BODY")" == HALTED ]] || fail "still halted after restart: $CODE $BODY"
api POST /v1/requests "$KERNELS_AGENT_TOKEN" '{"request_id":"smoke-4","actor":"agent-001","intent":"after restart","tool_call":{"name":"echo","params":{"text":"x"}}}'
[[ "$CODE" == 409 ]] || fail "a restarted halted kernel must answer 409, got $CODE"
stop
"$BIN" verify --data-dir "$WORK/data" >/dev/null || fail "the data dir does not verify"
echo "smoke: still HALTED after restart; data dir verifies"
echo "smoke: OK"

#!/usr/bin/env bash
# HTTP load test of the real service against its ceiling.
#
# `kernels serve` (release build) on 127.0.0.1 with a fresh temp data dir,
# driven by wrk with CONNECTIONS concurrent connections of
# `POST /v1/requests`, each request with a unique request_id
# (scripts/load.lua), for DURATION. Then:
#   * requests/s and latency percentiles (wrk's, p50/p90/p99/p99.9);
#   * every completed request answered 200 (non-2xx and socket errors counted);
#   * the server is stopped with SIGTERM and must exit 0;
#   * offline: the ledger grew by exactly the decisions made (>= the 200s
#     wrk counted, and at most CONNECTIONS more: requests still in flight when
#     wrk stopped are decided but not counted by wrk), every decision is an
#     ALLOW, and `kernels verify --data-dir` passes.
# The ceiling (benches/http_ceiling.rs, built for release) gets the same
# wrk load in the same run: the same server setup (runtime, accept loop,
# axum, token check, JSON parser) that parses the request, hashes its
# canonical form and answers a receipt of the same shape, without the
# decision, the ledger or durability. Kernels and ceiling runs alternate,
# PAIRS pairs, and each pair prints `kernels / ceiling` (the throughput
# ratio) and both p99s, then the median ratio and the ranges; the load
# average is printed before and after, and each run's CPU line says how much
# of the machine other processes took (compare ratios, not rates, on a
# shared machine).
# Exit status 0 only when every check passes. Targets (issue 14): kernels
# / ceiling >= 0.5 with kernels' p99 <= 10 ms; reported, not enforced.
#
# Usage: scripts/load.sh                      (defaults below)
#        DURATION=20s CONNECTIONS=64 THREADS=2 PAIRS=3 scripts/load.sh
#        CEILING=0 scripts/load.sh            (kernels only, one run)
# Needs: wrk (apt-get install -y wrk), curl, python3.
# Tokens: KERNELS_AGENT_TOKEN / KERNELS_AUDITOR_TOKEN from the environment,
# or random ones made here.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
CEILING="${CEILING:-1}"
PAIRS="${PAIRS:-2}"
BIN="${KERNELS_BIN:-$root/target/release/kernels}"
EXTRA_KERNELS_ENV="${EXTRA_KERNELS_ENV:-}"
(( CEILING == 1 )) || PAIRS=1

command -v wrk >/dev/null || { echo "load.sh: wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "load.sh: curl is not installed" >&2; exit 2; }
if [[ ! -x "$BIN" ]]; then
  echo "load.sh: building the release binary" >&2
  (cd "$root" && cargo build --release --bin kernels)
fi
CEILING_BIN="${CEILING_BIN:-}"
if (( CEILING == 1 )) && [[ -z "$CEILING_BIN" ]]; then
  echo "load.sh: building the ceiling (cargo bench --bench http_ceiling --no-run)" >&2
  CEILING_BIN="$(cd "$root" && cargo bench --bench http_ceiling --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "http_ceiling" and m.get("executable"):
        print(m["executable"])')"
  [[ -x "$CEILING_BIN" ]] || { echo "load.sh: could not build benches/http_ceiling.rs" >&2; exit 2; }
fi

rand_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export KERNELS_AGENT_TOKEN="${KERNELS_AGENT_TOKEN:-agent-$(rand_token)}"
export KERNELS_AUDITOR_TOKEN="${KERNELS_AUDITOR_TOKEN:-auditor-$(rand_token)}"
unset KERNELS_OPERATOR_TOKEN KERNELS_CONFIG KERNELS_DATA_DIR KERNELS_LISTEN KERNELS_POLICY

work="$(mktemp -d "${TMPDIR:-/tmp}/kernels-load.XXXXXX")"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/policy.yaml" <<'YAML'
allowed_actors: [agent-001]
allowed_tools: [echo]
max_intent_length: 1000
YAML

# Waits for "serving on http://ADDR" in $1 (the log of $server_pid), then
# for /ready ($2 = 1) or any answer; sets `base`.
await_server() {
  local log="$1" ready="$2" url=""
  for _ in $(seq 1 600); do
    url="$(grep -o 'serving on http://[0-9.:]*' "$log" | head -1 | sed 's/serving on //')" || true
    [[ -n "$url" ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "load.sh: server died" >&2; exit 2; }
    sleep 0.05
  done
  [[ -n "$url" ]] || { echo "load.sh: server did not start" >&2; exit 2; }
  if (( ready == 1 )); then
    for _ in $(seq 1 600); do
      [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/ready")" == 200 ]] && break
      sleep 0.05
    done
  fi
  base="$url"
}

start_kernels() {
  # The work dir is the cwd, so no config/kernels.yaml of the repo is read.
  (cd "$work" && exec env KERNELS_LOG=warn $EXTRA_KERNELS_ENV "$BIN" serve \
      --data-dir "$data" --policy "$work/policy.yaml" --kernel-id load-001 \
      --variant strict --listen 127.0.0.1:0) 2> "$work/server.log" &
  server_pid=$!
  await_server "$work/server.log" 1
}

start_ceiling() {
  (cd "$work" && exec "$CEILING_BIN" --serve --listen 127.0.0.1:0) 2> "$work/ceiling.log" &
  server_pid=$!
  await_server "$work/ceiling.log" 0
}

# Stops the server with SIGTERM; sets `rc` to its exit status.
stop_server() {
  kill -TERM "$server_pid"
  set +e
  wait "$server_pid"
  rc=$?
  set -e
  server_pid=""
}

ledger_length() {
  curl -sf -H "Authorization: Bearer $KERNELS_AUDITOR_TOKEN" "$base/v1/status" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ledger_length"])'
}

smoke() {
  local answer
  answer="$(curl -s -H "Authorization: Bearer $KERNELS_AGENT_TOKEN" -H 'Content-Type: application/json' \
    -d '{"request_id":"smoke-1","actor":"agent-001","intent":"echo","tool_call":{"name":"echo","params":{"text":"hi"}},"params":{"text":"hi"}}' \
    "$base/v1/requests")"
  echo "$answer" | grep -q '"decision":"ALLOW"' || { echo "load.sh: smoke request was not allowed: $answer" >&2; exit 1; }
}

# Runs wrk against $base; sets `result` (its LOAD_RESULT line), `stat0` and
# `stat1` (/proc/stat around it), `wrk_cpu`, and the counts of the run.
run_wrk() {
  local out="$work/wrk-$1.out"
  stat0="$(head -1 /proc/stat)"
  export LOAD_RUN_ID="$(date +%s%N)"
  /usr/bin/time -f "%U %S" -o "$work/wrk.cpu" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency \
    -s "$here/load.lua" "$base/v1/requests" | tee "$out"
  stat1="$(head -1 /proc/stat)"
  result="$(grep '^LOAD_RESULT' "$out")"
  completed="$(val completed)"; non2xx="$(val non2xx)"; dur_us="$(val duration_us)"
  errs=$(( $(val connect_err) + $(val read_err) + $(val write_err) + $(val timeouts) ))
  ok=$(( completed - non2xx ))
  wrk_cpu="$(awk '{printf "%.1f", $1+$2}' "$work/wrk.cpu" 2>/dev/null || echo nan)"
}
val() { echo "$result" | tr ' ' '\n' | awk -F= -v k="$1" '$1==k {print $2}'; }

# Prints the RESULT lines of a run; $1 = label, $2 = server CPU seconds.
report_run() {
  python3 - "$1" "$dur_us" "$completed" "$ok" "$non2xx" "$errs" "$result" "$stat0" "$stat1" "$2" "$wrk_cpu" <<'PY'
import os, sys
label = sys.argv[1]
dur_us, completed, ok, non2xx, errs = map(int, sys.argv[2:7])
kv = dict(p.split("=") for p in sys.argv[7].split()[1:])
s0 = list(map(int, sys.argv[8].split()[1:9])); s1 = list(map(int, sys.argv[9].split()[1:9]))
busy = (sum(s1) - s1[3] - s1[4] - (sum(s0) - s0[3] - s0[4])) / 100
secs = dur_us / 1e6
print(f"RESULT {label} requests/s (200s): {ok/secs:,.0f}  completed={completed} ok={ok} non2xx={non2xx} socket_errors={errs} in {secs:.2f}s")
print(f"RESULT {label} latency: " + "p50 {:.2f} ms  p90 {:.2f} ms  p99 {:.2f} ms  p99.9 {:.2f} ms  max {:.2f} ms".format(
    *(int(kv[k]) / 1000 for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us"))))
server, wrk = float(sys.argv[10]), float(sys.argv[11])
print(f"RESULT {label} CPU during the run: machine busy {busy:.1f} cpu-s of {(os.cpu_count() or 1)*secs:.1f}; server {server:.1f} (whole life), wrk {wrk:.1f}, everything else ~{max(busy - server - wrk, 0):.1f}")
print(f"RESULT {label} server CPU per request: {server * 1e6 / max(ok, 1):.0f} us")
PY
}

fail=0
check() { # $1 = condition (arithmetic), $2 = message
  if ! (( $1 )); then echo "CHECK FAIL: $2"; fail=1; fi
}

# One kernels run: fresh data dir, smoke, load, stop, offline checks.
# Appends "rate p99_us" to $work/kernels.runs.
run_kernels() {
  local n="$1"
  data="$work/data-$n"
  start_kernels
  echo "load.sh: kernels run $n: server pid $server_pid at $base, data dir $data"
  smoke
  local before after_live metrics server_hwm server_cpu
  before="$(ledger_length)"
  run_wrk "kernels-$n"
  after_live="$(ledger_length)"
  metrics="$(curl -s "$base/metrics")"
  server_hwm="$(awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$server_pid/status)"
  server_cpu="$(awk '{printf "%.1f", ($14+$15)/100}' /proc/$server_pid/stat)"
  stop_server
  echo "load.sh: server exited with $rc after SIGTERM"

  local verify_json verify_rc replay_json total allow deny events
  verify_json="$("$BIN" verify --data-dir "$data" --json)" && verify_rc=0 || verify_rc=$?
  replay_json="$("$BIN" replay --data-dir "$data" --json)"
  read -r total allow deny events <<<"$(python3 -c '
import json,sys
v=json.loads(sys.argv[1]); r=json.loads(sys.argv[2])
c=r["counters"]
print(v["entries_verified"], c["by_decision"].get("ALLOW",0), c["by_decision"].get("DENY",0), sum(c["by_event"].values()))
' "$verify_json" "$replay_json")"
  local decided_during=$(( after_live - before ))
  # Decisions of the load = all ALLOWs less the smoke request.
  local load_allow=$(( allow - 1 ))

  report_run kernels "$server_cpu"
  echo "$metrics" | grep -E '^kernels_(commits_total|commit_seconds_(sum|count)|commit_batch_entries_(sum|count)) ' | sed 's/^/METRIC /' || true
  echo "RESULT kernels server VmHWM: $server_hwm"
  echo "RESULT kernels ledger: $total entries verified; ALLOW=$allow DENY=$deny operational=$events; during load (live status): +$decided_during; load decisions (ALLOW-1 smoke) = $load_allow; wrk 200s = $ok"

  check "non2xx == 0" "$non2xx non-2xx responses"
  check "errs == 0" "$errs socket errors/timeouts"
  check "rc == 0" "server exit code $rc after SIGTERM"
  check "verify_rc == 0" "kernels verify --data-dir: $verify_json"
  check "deny == 0" "$deny DENY decisions"
  check "total == allow + deny + events" "ledger length $total != decisions + operational entries $((allow + deny + events))"
  check "load_allow >= ok" "only $load_allow load decisions in the ledger for $ok 200 answers"
  check "load_allow - ok <= CONNECTIONS" "$((load_allow - ok)) more decisions than answers (> $CONNECTIONS in flight)"
  echo "CHECK ledger decisions - wrk 200s = $((load_allow - ok)) (requests in flight when wrk stopped; 0..$CONNECTIONS allowed)"
  rm -rf "$data"
  echo "$(python3 -c "print(round($ok / ($dur_us / 1e6)))") $(val p99_us)" >> "$work/kernels.runs"
}

# One ceiling run. Appends "rate p99_us" to $work/ceiling.runs.
run_ceiling() {
  local n="$1" server_cpu
  start_ceiling
  echo "load.sh: ceiling run $n: pid $server_pid at $base"
  smoke
  run_wrk "ceiling-$n"
  server_cpu="$(awk '{printf "%.1f", ($14+$15)/100}' /proc/$server_pid/stat)"
  stop_server
  report_run ceiling "$server_cpu"
  check "non2xx == 0" "ceiling: $non2xx non-2xx responses"
  check "errs == 0" "ceiling: $errs socket errors/timeouts"
  check "rc == 0" "ceiling: exit code $rc after SIGTERM"
  echo "$(python3 -c "print(round($ok / ($dur_us / 1e6)))") $(val p99_us)" >> "$work/ceiling.runs"
}

echo "load.sh: kernels $("$BIN" --version 2>/dev/null | head -1); $(nproc) cores; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; $PAIRS pair(s)"
echo "load.sh: load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$work/kernels.runs"
: > "$work/ceiling.runs"
for n in $(seq 1 "$PAIRS"); do
  run_kernels "$n"
  if (( CEILING == 1 )); then
    run_ceiling "$n"
  fi
done
echo "load.sh: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

if (( CEILING == 1 )); then
  python3 - "$work/kernels.runs" "$work/ceiling.runs" <<'PY'
import statistics, sys
k = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
c = [tuple(map(int, l.split())) for l in open(sys.argv[2])]
ratios = []
for i, ((kr, kp), (cr, cp)) in enumerate(zip(k, c), 1):
    ratios.append(kr / cr)
    print(f"RATIO pair {i}: kernels {kr:,}/s p99 {kp/1000:.2f} ms; ceiling {cr:,}/s p99 {cp/1000:.2f} ms; kernels / ceiling = {kr/cr:.2f}")
span = lambda xs, f: f"{f(min(xs))}-{f(max(xs))}"
median = statistics.median(ratios)
print("RATIO kernels / ceiling: median {:.2f}, {} ({} pairs); kernels {}/s, p99 {} ms; ceiling {}/s, p99 {} ms".format(
    median, span(ratios, lambda x: f"{x:.2f}"), len(ratios),
    span([r for r, _ in k], lambda x: f"{x:,}"), span([p for _, p in k], lambda x: f"{x/1000:.2f}"),
    span([r for r, _ in c], lambda x: f"{x:,}"), span([p for _, p in c], lambda x: f"{x/1000:.2f}")))
PY
fi
if (( fail == 0 )); then echo "CHECK OK: every request answered 200, every kernels decision in the ledger, chains valid"; fi
exit $fail

-- wrk script for scripts/load.sh: POST /v1/requests, every request with a
-- unique request_id (run id + wrk thread number + per-thread counter), so
-- that no request is an idempotent retry of another.
--
-- Environment: KERNELS_AGENT_TOKEN (bearer token), LOAD_RUN_ID (unique per
-- run), LOAD_ACTOR (default agent-001), LOAD_TOOL (default echo).

local threads = {}
local next_tid = 0

function setup(thread)
   next_tid = next_tid + 1
   thread:set("tid", next_tid)
   table.insert(threads, thread)
end

function init(args)
   counter = 0
   run_id = os.getenv("LOAD_RUN_ID") or tostring(os.time())
   actor = os.getenv("LOAD_ACTOR") or "agent-001"
   tool = os.getenv("LOAD_TOOL") or "echo"
   local token = os.getenv("KERNELS_AGENT_TOKEN") or ""
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
   counter = counter + 1
   local body = string.format(
      '{"request_id":"load-%s-%d-%d","actor":"%s","intent":"echo a value back to the calling agent",'
         .. '"tool_call":{"name":"%s","params":{"text":"hello %d"}},"params":{"text":"hello %d"}}',
      run_id, tid, counter, actor, tool, counter, counter)
   return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
   local sent = 0
   for _, t in ipairs(threads) do
      sent = sent + (t:get("counter") or 0)
   end
   local e = summary.errors
   -- One machine-readable line; latencies in microseconds.
   io.write(string.format(
      "LOAD_RESULT sent=%d completed=%d duration_us=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
      sent, summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end

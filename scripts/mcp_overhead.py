"""What `kernels mcp-proxy` and the `/mcp/{name}` front add to a tools/call,
measured with the official MCP Python SDK client against the SDK fixture
server, directly and through the kernel, in interleaved rounds (the machine
may be shared: only the differences within one run mean anything).

Run through scripts/mcp-overhead.sh.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

import anyio  # noqa: E402
import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

import mcp_harness as h  # noqa: E402


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def timed_calls(client, n, out):
    for i in range(n):
        started = time.perf_counter()
        result = await client.call_tool("echo", {"text": f"call {i}"})
        out.append((time.perf_counter() - started) * 1000)
        assert not result.is_error, result


def http_client(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30))
    return http, streamable_http_client(url, http_client=http)


async def run_path(make, mode, n, out, warmup):
    async with make() as (transport, http):
        async with Client(transport, mode=mode) as client:
            await timed_calls(client, warmup, [])
            await timed_calls(client, n, out)
        if http is not None:
            await http.aclose()


class Stdio:
    def __init__(self, params):
        self.params = params

    async def __aenter__(self):
        return self.params, None

    async def __aexit__(self, *exc):
        return False


class Http:
    def __init__(self, url, token=None):
        self.url, self.token = url, token

    async def __aenter__(self):
        http, transport = http_client(self.url, self.token)
        return transport, http

    async def __aexit__(self, *exc):
        return False


def raw_calls(url, token, n, out, warmup):
    """tools/call as bare HTTP POSTs (one keep-alive connection, 2026-07-28
    headers): what the front adds without the SDK client's own cost."""
    headers = {
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx2.Client(headers=headers, timeout=30) as http:
        for i in range(warmup + n):
            body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": f"call {i}"},
                               "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                         "io.modelcontextprotocol/clientCapabilities": {}}}}
            started = time.perf_counter()
            r = http.post(url, json=body)
            elapsed = (time.perf_counter() - started) * 1000
            assert r.status_code == 200 and '"isError":false' in r.text.replace(" ", ""), r.text
            if i >= warmup:
                out.append(elapsed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200, help="calls per round and path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-ms", type=float, default=2.0)
    ap.add_argument("--check", action="store_true", help="exit 1 when an overhead exceeds the budget")
    ap.add_argument("--only", choices=["stdio", "http"], help="measure one transport")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mcp-overhead-"))
    upstream = h.HttpUpstream(tmp / "upstream", tmp / "upstream.log")
    config = f"mcp:\n  servers:\n    - {{name: fixture, url: '{upstream.url}'}}\n"
    kernel = h.Kernel(tmp / "kernel", config_extra=config)
    try:
        paths = {
            ("stdio", "legacy", "direct"): lambda: Stdio(h.fixture_params(tmp / "d.log")),
            ("stdio", "legacy", "proxy"): lambda: Stdio(h.proxy_params(kernel.url, tmp / "p.log")),
            ("stdio", "2026-07-28", "direct"): lambda: Stdio(h.fixture_params(tmp / "d.log")),
            ("stdio", "2026-07-28", "proxy"): lambda: Stdio(h.proxy_params(kernel.url, tmp / "p.log")),
            ("http", "2026-07-28", "direct"): lambda: Http(upstream.url),
            ("http", "2026-07-28", "proxy"): lambda: Http(f"{kernel.url}/mcp/fixture", h.AGENT),
        }
        raw = {
            ("raw http", "2026-07-28", "direct"): (upstream.url, None),
            ("raw http", "2026-07-28", "proxy"): (f"{kernel.url}/mcp/fixture", h.AGENT),
        }
        if args.only:
            raw = {k: v for k, v in raw.items() if k[0].endswith(args.only)}
            paths = {k: v for k, v in paths.items() if k[0] == args.only}
        samples = {k: [] for k in [*paths, *raw]}
        for _ in range(args.rounds):
            for key, make in paths.items():
                anyio.run(run_path, make, key[1], args.calls, samples[key], 20)
            for key, (url, token) in raw.items():
                raw_calls(url, token, args.calls, samples[key], 20)
        print(f"{'transport':9} {'protocol':11} {'path':7} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for key, s in samples.items():
            print(f"{key[0]:9} {key[1]:11} {key[2]:7} {len(s):5} {pct(s, 50):8.3f} {pct(s, 90):8.3f} "
                  f"{pct(s, 99):8.3f} {statistics.mean(s):8.3f}")
        failed = False
        print()
        for transport, mode in sorted({(k[0], k[1]) for k in samples}):
            added = pct(samples[(transport, mode, "proxy")], 50) - pct(samples[(transport, mode, "direct")], 50)
            verdict = "within" if added <= args.budget_ms else "OVER"
            failed |= added > args.budget_ms
            print(f"{transport} {mode}: the kernel adds {added:.3f} ms p50 per tools/call ({verdict} the {args.budget_ms} ms budget)")
        code, status = kernel.request("GET", "/v1/status", h.AUDITOR)
        decided = sum(status["counters"]["by_decision"].values())
        print(f"\n{decided} calls decided and recorded by the kernel")
        return 1 if failed and args.check else 0
    finally:
        kernel.stop()
        upstream.stop()


if __name__ == "__main__":
    sys.exit(main())

"""The Streamable HTTP front of `kernels serve` (`/mcp/{name}`) with the
official MCP Python SDK: its Streamable HTTP client talks to the real
`kernels serve`, which fronts a real SDK server on Streamable HTTP. Both
protocol revisions; the header rules of 2026-07-28 are checked with raw
requests.
"""

import json
import urllib.error
import urllib.request

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
import mcp_types as types

from mcp_harness import (
    AGENT,
    AUDITOR,
    HttpUpstream,
    Kernel,
    closed_port_url,
    ran,
    wait_for,
)

MODES = ["legacy", "2026-07-28"]
ALLOWED = ["add", "confirm", "echo", "exit_now", "fail", "progress", "sleep"]
KERNEL_HALTED = -32010
UPSTREAM_UNAVAILABLE = -32014
HEADER_MISMATCH = -32020


@pytest.fixture
def upstream(tmp_path):
    u = HttpUpstream(tmp_path / "upstream", tmp_path / "upstream.log")
    yield u
    u.stop()


@pytest.fixture
def kernel(tmp_path, upstream):
    config = (
        "mcp:\n  servers:\n"
        f"    - {{name: fixture, url: '{upstream.url}'}}\n"
        f"    - {{name: gone, url: '{closed_port_url()}/mcp'}}\n"
    )
    k = Kernel(tmp_path / "kernel", config_extra=config)
    yield k
    k.stop()


def front(kernel, name="fixture", token=AGENT, seen=None):
    async def remember(response):
        if seen is not None:
            seen.append(dict(response.headers))

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(30, read=120),
        event_hooks={"response": [remember]},
    )
    return http, streamable_http_client(f"{kernel.url}/mcp/{name}", http_client=http)


async def accept(_ctx, _params):
    return types.ElicitResult(action="accept", content={"ok": True})


def dump(result):
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


@pytest.mark.parametrize("mode", MODES)
def test_the_front_lists_only_allowed_tools_and_passes_the_session(kernel, upstream, mode):
    seen = []

    async def main():
        async with Client(upstream.url, mode=mode) as direct:
            everything = sorted(t.name for t in (await direct.list_tools()).tools)
        http, transport = front(kernel, seen=seen)
        async with http, Client(transport, mode=mode) as client:
            shown = sorted(t.name for t in (await client.list_tools()).tools)
        return everything, shown

    everything, shown = anyio.run(main)
    assert "delete_file" in everything
    assert shown == ALLOWED
    sessions = {h.get("mcp-session-id") for h in seen} - {None}
    if mode == "legacy":
        assert len(sessions) == 1, "the upstream's Mcp-Session-Id reaches the client"
    else:
        assert sessions == set(), "2026-07-28 has no sessions"


@pytest.mark.parametrize("mode", MODES)
def test_calls_through_the_front_are_decided_and_give_the_direct_results(kernel, upstream, tmp_path, mode):
    calls = [("echo", {"text": "hi"}), ("add", {"a": 1, "b": 2}), ("fail", {"reason": "no"})]

    async def main():
        async with Client(upstream.url, mode=mode) as direct:
            want = [dump(await direct.call_tool(n, a)) for n, a in calls]
        http, transport = front(kernel)
        async with http, Client(transport, mode=mode) as client:
            got = [dump(await client.call_tool(n, a)) for n, a in calls]
            denied = await client.call_tool("delete_file", {"path": "/"})
        return want, got, denied

    want, got, denied = anyio.run(main)
    assert got == want
    assert denied.is_error and "Tool 'delete_file' is not in allowed tools" in denied.content[0].text
    log = tmp_path / "upstream.log"
    runs = [r["tool"] for r in ran(log)]
    assert "delete_file" not in runs, "the denied tool never ran"
    decisions = kernel.decisions()
    assert [(e["tool_name"], e["decision"]) for e in decisions] == [
        ("echo", "ALLOW"), ("add", "ALLOW"), ("fail", "ALLOW"), ("delete_file", "DENY")]
    outcomes = wait_for(lambda: (lambda o: o if len(o) == 3 else None)(kernel.outcomes()), what="3 outcomes")
    by_id = {o["request_id"]: o for o in outcomes}
    assert [by_id[e["request_id"]]["ok"] for e in decisions[:3]] == [True, True, False]


@pytest.mark.parametrize("mode", MODES)
def test_a_halted_kernel_forwards_nothing(kernel, tmp_path, mode):
    async def main():
        http, transport = front(kernel)
        async with http, Client(transport, mode=mode) as client:
            kernel.halt("incident 9")
            with pytest.raises(MCPError) as halted:
                await client.call_tool("echo", {"text": "x"})
            return halted.value

    error = anyio.run(main)
    assert error.code == KERNEL_HALTED and "incident 9" in error.message
    assert ran(tmp_path / "upstream.log") == []


@pytest.mark.parametrize("mode", MODES)
def test_progress_and_elicitation_pass_through_the_front(kernel, mode):
    seen = []

    async def progress(value, total, message):
        seen.append(message)

    async def main():
        http, transport = front(kernel)
        async with http, Client(transport, mode=mode, elicitation_callback=accept) as client:
            p = await client.call_tool("progress", {"steps": 2}, progress_callback=progress)
            c = await client.call_tool("confirm", {"what": "ship"})
            return p, c

    p, c = anyio.run(main)
    assert p.structured_content == {"result": "done 2 steps"}
    assert seen == ["step 1", "step 2"]
    assert c.structured_content == {"result": "ship: confirmed"}


@pytest.mark.parametrize("mode", MODES)
def test_the_kernel_token_never_reaches_the_upstream(kernel, upstream, mode):
    async def main():
        http, transport = front(kernel)
        async with http, Client(transport, mode=mode) as client:
            await client.list_tools()
            await client.call_tool("echo", {"text": "x"})

    anyio.run(main)
    seen = upstream.requests_seen()
    posts = [r["headers"] for r in seen if r["method"] == "POST"]
    assert posts, "the upstream was called"
    assert all("authorization" not in h for h in posts), posts
    if mode != "legacy":
        call = next(h for h in posts if h.get("mcp-method") == "tools/call")
        assert call["mcp-name"] == "echo" and call["mcp-protocol-version"] == "2026-07-28"
    else:
        assert all(h.get("mcp-session-id") for h in posts[1:]), "the session id goes upstream"


def test_an_unreachable_upstream_is_an_error_and_an_allowed_call_gets_an_outcome(kernel):
    async def main():
        http, transport = front(kernel, name="gone")
        async with http, Client(transport, mode="2026-07-28") as client:
            with pytest.raises(MCPError) as unreachable:
                await client.call_tool("echo", {"text": "x"})
            return unreachable.value

    error = anyio.run(main)
    assert error.code == UPSTREAM_UNAVAILABLE
    decisions = kernel.decisions()
    assert [(e["tool_name"], e["decision"]) for e in decisions] == [("echo", "ALLOW")]
    [outcome] = wait_for(kernel.outcomes, what="the outcome")
    assert outcome["request_id"] == decisions[0]["request_id"]
    assert outcome["ok"] is False and outcome["error"].startswith("not forwarded")
    # A handshake-era initialize has nowhere to go either.
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                             "clientInfo": {"name": "raw", "version": "0"}}}
    code, text = post(kernel, "gone", initialize, {})
    assert code == 502 and json.loads(text)["error"]["code"] == UPSTREAM_UNAVAILABLE


def post(kernel, name, body, headers, token=AGENT):
    req = urllib.request.Request(
        f"{kernel.url}/mcp/{name}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def modern_call(name, arguments):
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": arguments,
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientCapabilities": {}}}}


def test_headers_that_do_not_match_the_body_are_refused(kernel, tmp_path):
    base = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
    # A gateway routing on Mcp-Name would see "echo"; the body runs delete_file.
    code, text = post(kernel, "fixture", modern_call("delete_file", {"path": "/"}), {**base, "Mcp-Name": "echo"})
    assert code == 400
    body = json.loads(text)
    assert body["id"] == 7 and body["error"]["code"] == HEADER_MISMATCH
    assert "Mcp-Name" in body["error"]["message"]
    # Missing headers on a 2026-07-28 request; a wrong method; a wrong version.
    code, text = post(kernel, "fixture", modern_call("echo", {"text": "x"}), {"MCP-Protocol-Version": "2026-07-28"})
    assert code == 400 and json.loads(text)["error"]["code"] == HEADER_MISMATCH
    code, text = post(kernel, "fixture", modern_call("echo", {"text": "x"}),
                      {**base, "Mcp-Method": "tools/list", "Mcp-Name": "echo"})
    assert code == 400 and "Mcp-Method" in json.loads(text)["error"]["message"]
    code, text = post(kernel, "fixture", modern_call("echo", {"text": "x"}),
                      {**base, "MCP-Protocol-Version": "2025-11-25", "Mcp-Name": "echo"})
    assert code == 400 and "MCP-Protocol-Version" in json.loads(text)["error"]["message"]
    # Nothing of it was decided or forwarded.
    assert kernel.decisions() == []
    assert ran(tmp_path / "upstream.log") == []
    # Matching headers (Mcp-Name base64-encoded, as the spec allows) pass.
    code, text = post(kernel, "fixture", modern_call("echo", {"text": "ok"}),
                      {**base, "Mcp-Name": "=?base64?ZWNobw==?="})
    assert code == 200, text
    assert [r["tool"] for r in ran(tmp_path / "upstream.log")] == ["echo"]


def test_the_front_needs_an_agent_token_and_a_known_server(kernel):
    call = modern_call("echo", {"text": "x"})
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    assert post(kernel, "fixture", call, headers, token="wrong-token-123")[0] == 401
    assert post(kernel, "fixture", call, headers, token=AUDITOR)[0] == 403
    assert post(kernel, "nosuch", call, headers)[0] == 404
    assert post(kernel, "fixture", call, {**headers, "Origin": "http://evil.example"})[0] == 403

"""`kernels mcp-proxy` with the official MCP Python SDK on both sides: the
SDK's client (protocol 2025-11-25 with the initialize handshake, and the
stateless 2026-07-28) talks through the real proxy binary to a real SDK
server (MCPServer, formerly FastMCP), and the proxy asks a real `kernels
serve`. The fixture server logs every tool run, so a test can prove a tool
never ran.
"""

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
import mcp_types as types

from mcp_harness import (
    AGENT,
    OTHER_AGENT,
    Kernel,
    closed_port_url,
    fixture_params,
    proxy_params,
    ran,
    wait_for,
)

MODES = ["legacy", "2026-07-28"]
ALLOWED = ["add", "confirm", "echo", "exit_now", "fail", "progress", "sleep"]

# JSON-RPC error codes of the proxy (docs/mcp.md).
KERNEL_HALTED = -32010
KERNEL_UNAVAILABLE = -32011
KERNEL_REFUSED = -32012


@pytest.fixture
def kernel(tmp_path):
    k = Kernel(tmp_path / "kernel")
    yield k
    k.stop()


async def accept(_ctx, _params):
    return types.ElicitResult(action="accept", content={"ok": True})


def run(main):
    return anyio.run(main)


def dump(result):
    """A result as the client sees it (the same whether or not a proxy is in the path)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


@pytest.mark.parametrize("mode", MODES)
def test_the_client_lists_only_allowed_tools(kernel, tmp_path, mode):
    async def main():
        async with Client(fixture_params(tmp_path / "direct.log"), mode=mode) as direct:
            everything = sorted(t.name for t in (await direct.list_tools()).tools)
        async with Client(proxy_params(kernel.url, tmp_path / "proxy.log"), mode=mode) as proxied:
            shown = (await proxied.list_tools()).tools
        return everything, shown

    everything, shown = run(main)
    assert "delete_file" in everything
    assert sorted(t.name for t in shown) == ALLOWED
    # The tools that are shown are shown as the server describes them.
    assert all(t.input_schema for t in shown)


@pytest.mark.parametrize("mode", MODES)
def test_allowed_calls_give_the_same_results_as_the_direct_server(kernel, tmp_path, mode):
    calls = [("echo", {"text": "hello"}), ("add", {"a": 2, "b": 40}), ("fail", {"reason": "boom"})]

    async def collect(params):
        out = []
        async with Client(params, mode=mode) as client:
            for name, args in calls:
                out.append(dump(await client.call_tool(name, args)))
        return out

    direct = run(lambda: collect(fixture_params(tmp_path / "direct.log")))
    proxied = run(lambda: collect(proxy_params(kernel.url, tmp_path / "proxy.log")))
    assert proxied == direct
    assert proxied[1]["structuredContent"] == {"result": 42}
    assert proxied[2]["isError"] is True
    assert [r["tool"] for r in ran(tmp_path / "proxy.log")] == ["echo", "add", "fail"]


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_call_is_an_is_error_result_and_the_tool_never_runs(kernel, tmp_path, mode):
    log = tmp_path / "proxy.log"

    async def main():
        async with Client(proxy_params(kernel.url, log), mode=mode) as client:
            denied = await client.call_tool("delete_file", {"path": "/etc/passwd"})
            # The session goes on.
            after = await client.call_tool("echo", {"text": "still here"})
            return denied, after

    denied, after = run(main)
    assert denied.is_error is True
    text = denied.content[0].text
    assert "Denied by the kernel" in text and "Tool 'delete_file' is not in allowed tools" in text
    receipt = denied.meta["kernels/receipt"]
    assert receipt["decision"] == "DENY" and receipt["evidence_hash"] in text
    assert after.structured_content == {"result": "still here"}
    assert [r["tool"] for r in ran(log)] == ["echo"], "the denied tool must never run"

    entries = kernel.entries()
    deny = [e for e in entries if e["request_id"] == receipt["request_id"]]
    assert len(deny) == 1
    assert (deny[0]["decision"], deny[0]["tool_name"]) == ("DENY", "delete_file")
    assert deny[0]["entry_hash"] == receipt["evidence_hash"]


@pytest.mark.parametrize("mode", MODES)
def test_every_call_is_an_entry_with_its_tool_and_decision_and_an_outcome(kernel, tmp_path, mode):
    async def main():
        async with Client(proxy_params(kernel.url, tmp_path / "proxy.log"), mode=mode) as client:
            await client.call_tool("echo", {"text": "a"})
            await client.call_tool("fail", {"reason": "b"})
            await client.call_tool("delete_file", {"path": "c"})
            await client.call_tool("echo", {"text": "a"})

    run(main)
    decisions = kernel.decisions()
    assert [(e["tool_name"], e["decision"]) for e in decisions] == [
        ("echo", "ALLOW"), ("fail", "ALLOW"), ("delete_file", "DENY"), ("echo", "ALLOW")]
    # Request ids are unique per call, never the JSON-RPC id.
    assert len({e["request_id"] for e in decisions}) == 4
    # One outcome per forwarded call: the result's SHA-256, never the result.
    outcomes = wait_for(
        lambda: (lambda o: o if len(o) == 3 else None)(kernel.outcomes()), what="three outcome entries"
    )
    by_request = {o["request_id"]: o for o in outcomes}
    forwarded = [e for e in decisions if e["decision"] == "ALLOW"]
    assert set(by_request) == {e["request_id"] for e in forwarded}
    echo, fail = by_request[forwarded[0]["request_id"]], by_request[forwarded[1]["request_id"]]
    assert echo["ok"] is True and len(echo["result_sha256"]) == 64 and echo["error"] is None
    assert fail["ok"] is False and "isError" in fail["error"]
    assert all("Error executing tool" not in str(p) for p in by_request.values())


@pytest.mark.parametrize("mode", MODES)
def test_a_halted_kernel_gets_an_error_and_nothing_is_forwarded(kernel, tmp_path, mode):
    log = tmp_path / "proxy.log"

    async def main():
        async with Client(proxy_params(kernel.url, log), mode=mode) as client:
            await client.call_tool("echo", {"text": "before"})
            kernel.halt("incident 42")
            with pytest.raises(MCPError) as halted:
                await client.call_tool("echo", {"text": "during"})
            kernel.recover()
            after = await client.call_tool("echo", {"text": "after"})
            return halted.value, after

    error, after = run(main)
    assert error.code == KERNEL_HALTED
    assert "incident 42" in error.message and "not forwarded" in error.message
    assert [r["args"]["text"] for r in ran(log)] == ["before", "after"]
    assert after.structured_content == {"result": "after"}


@pytest.mark.parametrize("mode", MODES)
def test_a_kernel_that_is_down_gets_an_error_and_nothing_is_forwarded(tmp_path, mode):
    log = tmp_path / "proxy.log"

    async def main():
        async with Client(proxy_params(closed_port_url(), log), mode=mode) as client:
            with pytest.raises(MCPError) as listing:
                await client.list_tools()
            with pytest.raises(MCPError) as calling:
                await client.call_tool("echo", {"text": "x"})
            return listing.value, calling.value

    listing, calling = run(main)
    assert listing.code == KERNEL_UNAVAILABLE and calling.code == KERNEL_UNAVAILABLE
    assert "not forwarded" in calling.message
    assert ran(log) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_token_that_may_not_act_as_the_actor_is_refused(kernel, tmp_path, mode):
    log = tmp_path / "proxy.log"

    async def main():
        params = proxy_params(kernel.url, log, "--actor", "agent-002")  # AGENT is bound to agent-001
        async with Client(params, mode=mode) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("echo", {"text": "x"})
            return refused.value

    refused = run(main)
    assert refused.code == KERNEL_REFUSED and "403" in refused.message
    assert ran(log) == []


@pytest.mark.parametrize("mode", MODES)
def test_progress_notifications_are_relayed(kernel, tmp_path, mode):
    seen = []

    async def progress(value, total, message):
        seen.append((value, total, message))

    async def main():
        async with Client(proxy_params(kernel.url, tmp_path / "proxy.log"), mode=mode) as client:
            return await client.call_tool("progress", {"steps": 3}, progress_callback=progress)

    result = run(main)
    assert result.structured_content == {"result": "done 3 steps"}
    assert seen == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]


@pytest.mark.parametrize("mode", MODES)
def test_elicitation_reaches_the_client_in_both_revisions(kernel, tmp_path, mode):
    """2025-11-25: the server's elicitation/create request passes through the
    proxy to the client and its answer back; 2026-07-28: the server answers
    input_required and the client's retry is a new, separately decided call."""

    async def main():
        params = proxy_params(kernel.url, tmp_path / "proxy.log")
        async with Client(params, mode=mode, elicitation_callback=accept) as client:
            return await client.call_tool("confirm", {"what": "deploy"})

    result = run(main)
    assert result.structured_content == {"result": "deploy: confirmed"}
    confirms = [e for e in kernel.entries() if e["tool_name"] == "confirm"]
    assert [e["decision"] for e in confirms] == (["ALLOW"] if mode == "legacy" else ["ALLOW", "ALLOW"])
    if mode != "legacy":
        outcomes = wait_for(
            lambda: (lambda o: o if len(o) == 2 else None)(kernel.outcomes()), what="two outcomes"
        )
        first = next(o for o in outcomes if o["request_id"] == confirms[0]["request_id"])
        assert first["ok"] is False and first["error"].startswith("input_required")


@pytest.mark.parametrize("mode", MODES)
def test_a_cancelled_call_is_cancelled_at_the_server(kernel, tmp_path, mode):
    log = tmp_path / "proxy.log"

    async def main():
        async with Client(proxy_params(kernel.url, log), mode=mode) as client:
            with anyio.move_on_after(1.0):
                await client.call_tool("sleep", {"seconds": 5})
            wait_for(lambda: any(r["tool"] == "sleep" for r in ran(log)), what="the sleep to start")
            # The server keeps serving after the cancellation.
            return await client.call_tool("echo", {"text": "next"})

    after = run(main)
    assert after.structured_content == {"result": "next"}
    anyio.run(anyio.sleep, 5)
    assert [r["tool"] for r in ran(log)] == ["sleep", "echo"], "the cancelled sleep never finished"


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_prefix_names_mcp_tools_in_the_policy(tmp_path, mode):
    policy = "allowed_actors: [agent-001]\nallowed_tools: [fixture.echo]\n"
    kernel = Kernel(tmp_path / "kernel", policy=policy)
    try:
        async def main():
            params = proxy_params(kernel.url, tmp_path / "proxy.log", "--tool-prefix", "fixture.")
            async with Client(params, mode=mode) as client:
                names = [t.name for t in (await client.list_tools()).tools]
                ok = await client.call_tool("echo", {"text": "prefixed"})
                no = await client.call_tool("add", {"a": 1, "b": 2})
                return names, ok, no

        names, ok, no = run(main)
        assert names == ["echo"]
        assert ok.structured_content == {"result": "prefixed"}
        assert no.is_error and "Tool 'fixture.add' is not in allowed tools" in no.content[0].text
        tools = [e["tool_name"] for e in kernel.decisions()]
        assert tools == ["fixture.echo", "fixture.add"]
    finally:
        kernel.stop()


def test_the_actor_is_the_tokens_single_actor_or_must_be_named(kernel, tmp_path):
    async def main():
        # OTHER_AGENT may act as agent-001 and agent-002: without --actor, refused.
        params = proxy_params(kernel.url, tmp_path / "a.log", token=OTHER_AGENT)
        async with Client(params, mode="legacy") as client:
            with pytest.raises(MCPError) as unnamed:
                await client.call_tool("echo", {"text": "x"})
        params = proxy_params(kernel.url, tmp_path / "b.log", "--actor", "agent-002", token=OTHER_AGENT)
        async with Client(params, mode="legacy") as client:
            named = await client.call_tool("echo", {"text": "y"})
        params = proxy_params(kernel.url, tmp_path / "c.log", token=AGENT)
        async with Client(params, mode="legacy") as client:
            bound = await client.call_tool("echo", {"text": "z"})
        return unnamed.value, named, bound

    unnamed, named, bound = run(main)
    assert unnamed.code == KERNEL_REFUSED and "actor" in unnamed.message
    assert not named.is_error and not bound.is_error
    actors = [e["actor"] for e in kernel.decisions()]
    assert actors == ["agent-002", "agent-001"]

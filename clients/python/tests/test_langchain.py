"""``GovernedTool`` with the real langchain-core and the real server: the
wrapped tool keeps its name and schema, and never runs without an ALLOW."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.tools import tool

from kernels_client import AsyncKernelsClient, KernelDenied, KernelHalted, KernelsClient
from kernels_client.langchain import GovernedTool

from .support import AGENT, FAST_RETRY, FaultyProxy, KernelsServer

RAN: list[str] = []


@tool
def delete_everything(path: str) -> str:
    """Delete everything under a path."""
    RAN.append(path)
    return "deleted"


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    RAN.append(key)
    return f"value of {key}"


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    RAN.clear()


def test_it_looks_like_the_wrapped_tool(agent: KernelsClient) -> None:
    governed = GovernedTool(lookup, agent, actor="agent-001")
    assert governed.name == "lookup"
    assert governed.description == lookup.description
    assert governed.args == lookup.args


def test_a_denied_tool_never_runs_whatever_the_error_handling(agent: KernelsClient, server: KernelsServer) -> None:
    governed = GovernedTool(delete_everything, agent, actor="agent-001", handle_tool_error=True)
    with pytest.raises(KernelDenied) as e:
        governed.invoke({"path": "/"})
    assert RAN == []
    entry = next(x for x in server.entries() if x["request_id"] == e.value.receipt.request_id)
    assert entry["decision"] == "DENY" and entry["intent"] == "LangChain tool delete_everything"


def test_a_plain_string_input_is_judged_under_its_field_name(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "relay")
    try:
        with KernelsClient(proxy.url, AGENT, retry=FAST_RETRY) as client:
            with pytest.raises(KernelDenied):
                GovernedTool(delete_everything, client, actor="agent-001").invoke("/srv")
        sent = json.loads(proxy.requests[0].partition(b"\r\n\r\n")[2])
        assert sent["tool_call"] == {"name": "delete_everything", "params": {"path": "/srv"}}
    finally:
        proxy.close()
    assert RAN == []


def test_a_tool_name_the_policy_does_not_know_is_refused(agent: KernelsClient) -> None:
    # The policy allows "lookup"; this wrapper asks for "lookup_v2".
    governed = GovernedTool(lookup, agent, actor="agent-001", kernel_tool="lookup_v2")
    with pytest.raises(KernelDenied):
        governed.invoke({"key": "k"})
    assert RAN == []


def test_a_halted_kernel_never_runs_the_tool(agent: KernelsClient, operator: KernelsClient) -> None:
    operator.halt("langchain test")
    governed = GovernedTool(lookup, agent, actor="agent-001")
    with pytest.raises(KernelHalted):
        governed.invoke({"key": "k"})
    with pytest.raises(KernelHalted):
        asyncio.run(governed.ainvoke({"key": "k"}))
    assert RAN == []


def test_async_client_refuses_like_the_sync_one(server: KernelsServer) -> None:
    async def main() -> None:
        async with AsyncKernelsClient(server.url, AGENT, retry=FAST_RETRY) as client:
            governed = GovernedTool(delete_everything, client, actor="agent-001")
            with pytest.raises(KernelDenied):
                await governed.ainvoke({"path": "/"})
            with pytest.raises(TypeError, match="ainvoke"):
                governed.invoke({"path": "/"})

    asyncio.run(main())
    assert RAN == []

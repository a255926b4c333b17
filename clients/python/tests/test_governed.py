"""``governed`` against the real server: a tool body runs only after an
ALLOW. Denied, halted, unreachable and unjudgeable calls never run it."""

from __future__ import annotations

import asyncio
import json

import pytest

from kernels_client import (
    AsyncKernelsClient,
    Decision,
    KernelDenied,
    KernelHalted,
    KernelsClient,
    KernelsError,
    KernelUnavailable,
    governed,
)

from .support import AGENT, FAST_RETRY, FaultyProxy, KernelsServer, closed_port_url


def test_a_denied_tool_never_runs(agent: KernelsClient, server: KernelsServer) -> None:
    ran: list[str] = []

    @governed(agent, actor="agent-001", tool="delete_everything")
    def delete_everything(path: str) -> str:
        ran.append(path)
        return "deleted"

    with pytest.raises(KernelDenied) as e:
        delete_everything("/")
    assert ran == [], "the body of a denied tool ran"
    receipt = e.value.receipt
    assert receipt.decision is Decision.DENY
    assert "delete_everything" in (receipt.error or "")
    assert receipt.evidence_hash in str(e.value)
    # The refusal is on the record.
    entry = next(x for x in server.entries() if x["request_id"] == receipt.request_id)
    assert entry["decision"] == "DENY" and entry["entry_hash"] == receipt.evidence_hash


def test_a_denied_actor_never_runs(agent: KernelsClient) -> None:
    ran: list[int] = []

    @governed(agent, actor="mallory")  # tool name = the function's name
    def lookup(key: str) -> int:
        ran.append(1)
        return 1

    with pytest.raises(KernelDenied):
        lookup("k")
    assert ran == []


def test_a_halted_kernel_never_runs_the_tool(agent: KernelsClient, operator: KernelsClient) -> None:
    ran: list[int] = []

    @governed(agent, actor="agent-001")
    def lookup(key: str) -> int:
        ran.append(1)
        return 1

    operator.halt("governed test")
    with pytest.raises(KernelHalted):
        lookup("k")
    assert ran == []


def test_an_unreachable_kernel_never_runs_the_tool() -> None:
    ran: list[int] = []
    with KernelsClient(closed_port_url(), AGENT, retry=FAST_RETRY) as client:

        @governed(client, actor="agent-001")
        def lookup(key: str) -> int:
            ran.append(1)
            return 1

        with pytest.raises(KernelUnavailable):
            lookup("k")
    assert ran == []


def test_arguments_that_are_not_json_are_never_submitted(agent: KernelsClient, server: KernelsServer) -> None:
    ran: list[int] = []

    @governed(agent, actor="agent-001")
    def lookup(key: object) -> int:
        ran.append(1)
        return 1

    before = server.ledger_length()
    with pytest.raises(KernelsError, match="not JSON"):
        lookup(object())
    assert ran == [] and server.ledger_length() == before


def test_the_request_carries_the_bound_arguments(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "relay")
    try:
        with KernelsClient(proxy.url, AGENT, retry=FAST_RETRY) as client:

            @governed(client, actor="agent-001", tool="not_in_policy", intent="write the notes")
            def write(path: str, text: str = "default", *rest: int, **extra: str) -> None:
                raise AssertionError("never runs")

            with pytest.raises(KernelDenied):
                write("notes.txt", mode="a")
        sent = json.loads(proxy.requests[0].partition(b"\r\n\r\n")[2])
        params = {"path": "notes.txt", "text": "default", "rest": [], "mode": "a"}
        assert sent["tool_call"] == {"name": "not_in_policy", "params": params}
        assert sent["params"] == params
        assert sent["intent"] == "write the notes" and sent["actor"] == "agent-001"
        assert sent["request_id"].startswith("req-")
    finally:
        proxy.close()


def test_the_client_kind_must_match_the_function_kind(agent: KernelsClient) -> None:
    with pytest.raises(TypeError):

        @governed(agent, actor="agent-001")
        async def lookup(key: str) -> int:
            return 1


def test_async_governed_refuses_like_the_sync_one(server: KernelsServer) -> None:
    ran: list[int] = []

    async def main() -> None:
        async with AsyncKernelsClient(server.url, AGENT, retry=FAST_RETRY) as client:

            @governed(client, actor="agent-001", tool="delete_everything")
            async def delete_everything(path: str) -> str:
                ran.append(1)
                return "deleted"

            with pytest.raises(KernelDenied):
                await delete_everything("/")

    asyncio.run(main())
    assert ran == []

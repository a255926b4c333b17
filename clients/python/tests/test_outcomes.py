"""Outcomes against the real server: ``record_outcome`` (once per request, the
same outcome again is safe, a different one a conflict, an unknown request a
404), and the ALLOW paths of ``governed`` (sync and async) and
``GovernedTool``, which run the tool once in the client and record what it did
as a ``kernel.outcome`` entry beside the decision."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from langchain_core.tools import tool

from kernels_client import (
    AsyncKernelsClient,
    KernelRequest,
    KernelsClient,
    KernelsError,
    RequestConflict,
    ToolCall,
    governed,
    result_sha256,
)
from kernels_client.langchain import GovernedTool

from .support import AGENT, AUDITOR, FAST_RETRY, KernelsServer


def lookup_request(key: str = "k") -> KernelRequest:
    return KernelRequest(
        actor="agent-001", intent="look up", tool_call=ToolCall(name="lookup", params={"key": key}), params={"key": key}
    )


def outcome_entries(server: KernelsServer) -> list[dict]:
    return [e for e in server.entries() if e.get("tool_name") == "kernel.outcome"]


def test_record_outcome(agent: KernelsClient, server: KernelsServer) -> None:
    receipt = agent.submit(lookup_request())
    assert receipt.allowed
    digest = result_sha256({"value": 42})
    record = agent.record_outcome(receipt.request_id, ok=True, result_sha256=digest)
    assert record.request_id == receipt.request_id and record.recorded is True
    assert record.ledger_seq > receipt.ledger_seq and len(record.entry_hash) == 64
    outcomes = outcome_entries(server)
    assert len(outcomes) == 1
    body = {"request_id": receipt.request_id, "ok": True, "result_sha256": digest, "error": None}
    assert outcomes[0]["payload"] == body
    assert outcomes[0]["request_id"] == receipt.request_id
    assert (outcomes[0]["ledger_seq"], outcomes[0]["entry_hash"]) == (record.ledger_seq, record.entry_hash)
    # The same again (a retry after a lost answer): the same entry, no second record.
    again = agent.record_outcome(receipt.request_id, ok=True, result_sha256=digest)
    assert again.recorded is False
    assert (again.ledger_seq, again.entry_hash) == (record.ledger_seq, record.entry_hash)
    assert len(outcome_entries(server)) == 1
    with pytest.raises(RequestConflict) as conflict:
        agent.record_outcome(receipt.request_id, ok=False, error="boom")
    assert (conflict.value.status, conflict.value.code) == (409, "outcome_conflict")
    with pytest.raises(KernelsError) as e:
        agent.record_outcome("never-submitted", ok=True)
    assert (e.value.status, e.value.code) == (404, "unknown_request")
    assert len(outcome_entries(server)) == 1


def test_a_denied_request_has_no_outcome(agent: KernelsClient, server: KernelsServer) -> None:
    receipt = agent.submit(
        KernelRequest(actor="agent-001", intent="wipe", tool_call=ToolCall(name="rm", params={}), params={})
    )
    assert not receipt.allowed
    with pytest.raises(RequestConflict) as e:
        agent.record_outcome(receipt.request_id, ok=True)
    assert e.value.code == "not_allowed"
    assert outcome_entries(server) == []


def test_decision_and_outcome_are_found_together_by_request_id(agent: KernelsClient, server: KernelsServer) -> None:
    receipt = agent.submit(lookup_request("together"))
    agent.record_outcome(receipt.request_id, ok=True, result_sha256=result_sha256("x"))
    agent.submit(lookup_request("other"))
    page = httpx.get(
        f"{server.url}/v1/entries",
        params={"request_id": receipt.request_id},
        headers={"authorization": f"Bearer {AUDITOR}"},
        timeout=10,
    ).json()
    found = [(e["tool_name"], e["decision"]) for e in page["entries"]]
    assert found == [("lookup", "ALLOW"), ("kernel.outcome", "ALLOW")]


def test_governed_runs_after_allow_and_records_the_outcome(agent: KernelsClient, server: KernelsServer) -> None:
    ran: list[str] = []

    @governed(agent, actor="agent-001")
    def lookup(key: str) -> dict:
        ran.append(key)
        return {"key": key, "value": 7}

    assert lookup("a") == {"key": "a", "value": 7}
    assert ran == ["a"]
    [outcome] = outcome_entries(server)
    assert outcome["payload"]["ok"] is True
    assert outcome["payload"]["result_sha256"] == result_sha256({"key": "a", "value": 7})

    @governed(agent, actor="agent-001", tool="lookup")
    def failing(key: str) -> None:
        raise LookupError(f"no {key}")

    with pytest.raises(LookupError):
        failing("b")
    failed = outcome_entries(server)[-1]["payload"]
    assert failed["ok"] is False and failed["error"] == "LookupError: no b" and failed["result_sha256"] is None


def test_a_governed_tool_is_named_once_in_the_policy(tmp_path: Path) -> None:
    # No external_tools in the configuration: the governed call is marked
    # external_tool, so the policy alone names it (unmarked, the kernel would
    # answer FAILED "not registered"), and a built-in name is not run by the
    # kernel beside the client's function.
    server = KernelsServer(tmp_path, config="{}\n").start()
    try:
        with KernelsClient(server.url, AGENT, retry=FAST_RETRY) as client:

            @governed(client, actor="agent-001")
            def lookup(key: str) -> str:
                return key.upper()

            @governed(client, actor="agent-001")
            def add(a: int, b: int) -> int:
                return a * b  # not the kernel's add: only this one may run

            assert lookup("k") == "K"
            assert add(3, 4) == 12
        decisions = [e for e in server.entries() if e.get("tool_name") in ("lookup", "add")]
        assert [(e["tool_name"], e["decision"], e["error"]) for e in decisions] == [
            ("lookup", "ALLOW", None),
            ("add", "ALLOW", None),
        ]
        assert [o["payload"]["result_sha256"] for o in outcome_entries(server)] == [
            result_sha256("K"),
            result_sha256(12),
        ]
    finally:
        assert server.stop() == 0


def test_async_governed_allow_path(server: KernelsServer) -> None:
    async def main() -> int:
        async with AsyncKernelsClient(server.url, AGENT, retry=FAST_RETRY) as client:

            @governed(client, actor="agent-001")
            async def lookup(key: str) -> int:
                return len(key)

            return await lookup("abcd")

    assert asyncio.run(main()) == 4
    assert outcome_entries(server)[-1]["payload"]["result_sha256"] == result_sha256(4)


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def test_governed_tool_allow_path(agent: KernelsClient, server: KernelsServer) -> None:
    governed_tool = GovernedTool(lookup, agent, actor="agent-001")
    assert governed_tool.invoke({"key": "k"}) == "value of k"
    assert outcome_entries(server)[-1]["payload"]["result_sha256"] == result_sha256("value of k")

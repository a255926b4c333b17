"""``AsyncKernelsClient`` does what the sync client does, against the real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kernels_client import (
    AsyncKernelsClient,
    Decision,
    KernelHalted,
    KernelRequest,
    KernelUnavailable,
    RequestConflict,
    ToolCall,
)

from .support import AGENT, AUDITOR, FAST_RETRY, OPERATOR, FaultyProxy, KernelsServer, closed_port_url


def echo(text: str, request_id: str | None = None) -> KernelRequest:
    return KernelRequest(
        request_id=request_id,
        actor="agent-001",
        intent="echo",
        tool_call=ToolCall(name="echo", params={"text": text}),
        params={"text": text},
    )


def test_submit_reads_and_conflicts(server: KernelsServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            AsyncKernelsClient(server.url, AGENT, retry=FAST_RETRY) as agent,
            AsyncKernelsClient(server.url, AUDITOR, retry=FAST_RETRY) as auditor,
        ):
            allow, deny = await asyncio.gather(
                agent.submit(echo("hi")),
                agent.submit(KernelRequest(actor="agent-001", intent="x", tool_call=ToolCall(name="rm"))),
            )
            assert allow.decision is Decision.ALLOW and allow.tool_result == "hi"
            assert deny.decision is Decision.DENY
            assert allow.request_id != deny.request_id
            assert await agent.submit(echo("hi", allow.request_id)) == allow
            with pytest.raises(RequestConflict):
                await agent.submit(echo("changed", allow.request_id))
            status = await auditor.status()
            assert status.ledger_length == 3
            page = await auditor.entries(1, 10)
            assert {e.request_id for e in page.entries} == {allow.request_id, deny.request_id}
            assert (await auditor.verify()).valid
            out = tmp_path / "bundle.json"
            written = await auditor.evidence(out)
            assert written.bytes == out.stat().st_size
            assert json.loads(out.read_text())["root_hash"] == status.root_hash

    asyncio.run(main())


def test_a_lost_answer_is_decided_once(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "drop_answer" if n == 1 else "relay")

    async def main() -> None:
        async with AsyncKernelsClient(proxy.url, AGENT, retry=FAST_RETRY) as agent:
            return await agent.submit(echo("once"))

    try:
        before = server.ledger_length()
        receipt = asyncio.run(main())
        assert receipt.allowed and proxy.dropped == 1 and proxy.forwarded == 2
        assert server.ledger_length() == before + 1
    finally:
        proxy.close()


def test_halted_and_down_raise(server: KernelsServer) -> None:
    async def main() -> None:
        async with (
            AsyncKernelsClient(server.url, OPERATOR, retry=FAST_RETRY) as operator,
            AsyncKernelsClient(server.url, AGENT, retry=FAST_RETRY) as agent,
        ):
            await operator.halt("async test")
            with pytest.raises(KernelHalted):
                await agent.submit(echo("x"))
            recovered = await operator.recover("async test over")
            assert recovered.session >= 2
            assert (await agent.submit(echo("y"))).allowed
        async with AsyncKernelsClient(closed_port_url(), AGENT, retry=FAST_RETRY) as nowhere:
            with pytest.raises(KernelUnavailable):
                await nowhere.submit(echo("z"))

    asyncio.run(main())

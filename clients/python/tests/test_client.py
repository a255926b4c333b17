"""The sync client against the real server: decisions, idempotency, halt,
reads, verification, roles, and models that match the OpenAPI document."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from kernels_client import (
    DecidedInEarlierSession,
    Decision,
    KernelHalted,
    KernelReceipt,
    KernelRequest,
    KernelsClient,
    KernelsError,
    OutcomeRecord,
    Receipt,
    ReceiptStatus,
    RequestConflict,
    ToolCall,
)

from .support import AGENT, KernelsServer, kernels_bin


def echo(text: str, request_id: str | None = None, actor: str = "agent-001") -> KernelRequest:
    return KernelRequest(
        request_id=request_id,
        actor=actor,
        intent="echo a greeting",
        tool_call=ToolCall(name="echo", params={"text": text}),
        params={"text": text},
    )


def test_submit_allow_and_deny(agent: KernelsClient, server: KernelsServer) -> None:
    allow = agent.submit(echo("hello", "py-1"))
    assert Receipt is KernelReceipt
    assert isinstance(allow, KernelReceipt)
    assert allow.decision is Decision.ALLOW and allow.status is ReceiptStatus.ACCEPTED
    assert allow.allowed
    assert allow.request_id == "py-1"
    assert allow.tool_result == "hello"
    assert len(allow.evidence_hash) == 64

    deny = agent.submit(
        KernelRequest(
            request_id="py-2",
            actor="agent-001",
            intent="wipe the disk",
            tool_call=ToolCall(name="delete_everything", params={}),
        )
    )
    assert deny.decision is Decision.DENY and deny.status is ReceiptStatus.REJECTED
    assert not deny.allowed
    assert "delete_everything" in (deny.error or "")

    # A dict works too, and an unknown actor is a DENY receipt, not an error.
    other = agent.submit({"request_id": "py-3", "actor": "mallory", "intent": "hi"})
    assert other.decision is Decision.DENY

    by_id = {e["request_id"]: e for e in server.entries()}
    assert by_id["py-1"]["decision"] == "ALLOW"
    assert by_id["py-1"]["entry_hash"] == allow.evidence_hash
    assert by_id["py-1"]["ledger_seq"] == allow.ledger_seq
    assert by_id["py-2"]["decision"] == "DENY"


def test_request_id_is_generated_once_and_is_the_idempotency_key(agent: KernelsClient, server: KernelsServer) -> None:
    request = echo("once")
    assert request.request_id is None
    first = agent.submit(request)
    assert first.request_id.startswith("req-") and len(first.request_id) > 20
    second = agent.submit(echo("twice"))
    assert second.request_id != first.request_id

    before = server.ledger_length()
    again = agent.submit(echo("once", first.request_id))
    assert again == first
    assert server.ledger_length() == before, "a repeated request is not decided again"

    with pytest.raises(RequestConflict) as conflict:
        agent.submit(echo("other content", first.request_id))
    assert conflict.value.status == 409 and conflict.value.code == "request_id_conflict"
    assert server.ledger_length() == before


def test_halt_raises_kernel_halted_until_recovery(
    agent: KernelsClient, operator: KernelsClient, auditor: KernelsClient
) -> None:
    assert agent.submit(echo("before")).allowed
    halted = operator.halt("incident PY-1: agent loop")
    assert halted.receipt.decision is Decision.HALT
    assert halted.receipt.state_to == "HALTED"
    assert len(halted.root_hash_before_halt) == 64

    with pytest.raises(KernelHalted) as e:
        agent.submit(echo("during"))
    assert e.value.status == 409 and e.value.code == "halted"
    assert "halted" in str(e.value)
    with pytest.raises(KernelHalted):
        operator.halt("again")
    assert auditor.status().state == "HALTED"

    recovered = operator.recover("root cause fixed (PY-1)")
    assert recovered.session >= 2
    assert auditor.status().state == "IDLE"
    assert agent.submit(echo("after")).allowed


def test_reads_verify_and_evidence(agent: KernelsClient, auditor: KernelsClient, tmp_path) -> None:
    for i in range(5):
        agent.submit(echo(f"n{i}", f"r-{i}"))
    status = auditor.status()
    assert status.kernel_id == "py-001" and status.variant == "strict"
    assert status.ledger_length >= 6  # kernel.create + 5 decisions

    page = auditor.entries(0, 3)
    assert [e.ledger_seq for e in page.entries] == [0, 1, 2]
    assert page.next_seq == 3 and page.ledger_length == status.ledger_length
    last = auditor.entries(page.next_seq, 1000)
    assert last.next_seq is None
    assert last.entries[-1].entry_hash == status.root_hash

    report = auditor.verify()
    assert report.valid and report.entries_verified == status.ledger_length and report.errors == []

    bundle = tmp_path / "out" / "bundle.json"
    bundle.parent.mkdir()
    written = auditor.evidence(bundle)
    assert written.bytes == bundle.stat().st_size > 0
    data = json.loads(bundle.read_text())
    assert data["root_hash"] == status.root_hash
    assert len(data["ledger_entries"]) == status.ledger_length
    assert [p.name for p in bundle.parent.iterdir()] == ["bundle.json"], "no temp file left"
    verified = subprocess.run([kernels_bin(), "verify", str(bundle)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    part = tmp_path / "range.json"
    auditor.evidence(part, from_seq=2, to_seq=3)
    ranged = json.loads(part.read_text())
    assert ranged["from_seq"] == 2 and len(ranged["ledger_entries"]) == 2


def test_evidence_error_leaves_no_file(agent: KernelsClient, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KernelsError) as e:
        agent.evidence(out / "bundle.json")  # an agent token may not read evidence
    assert e.value.status == 403
    assert list(out.iterdir()) == []


def test_roles_and_tokens(server: KernelsServer, agent: KernelsClient) -> None:
    with KernelsClient(server.url, token="wrong-token") as nobody:
        with pytest.raises(KernelsError) as e:
            nobody.submit(echo("x"))
        assert e.value.status == 401
    with pytest.raises(KernelsError) as e:
        agent.status()
    assert e.value.status == 403 and e.value.code == "forbidden"
    with pytest.raises(KernelsError) as e:
        agent.halt("agents may not halt")
    assert e.value.status == 403


def test_token_and_server_from_the_environment(server: KernelsServer, monkeypatch) -> None:
    monkeypatch.setenv("KERNELS_SERVER", server.url)
    monkeypatch.setenv("KERNELS_TOKEN", AGENT)
    with KernelsClient() as c:
        assert c.submit(echo("env")).allowed


def test_models_match_the_openapi_document(server: KernelsServer) -> None:
    doc = httpx.get(f"{server.url}/v1/openapi.json", headers={"authorization": f"Bearer {AGENT}"}).json()
    schemas = doc["components"]["schemas"]
    request = schemas["RequestSchema"]
    assert set(request["properties"]) == set(KernelRequest.model_fields)
    receipt = schemas["ReceiptSchema"]
    assert set(receipt["properties"]) == set(KernelReceipt.model_fields)
    required_here = {n for n, f in KernelReceipt.model_fields.items() if f.is_required()}
    assert required_here == set(receipt["required"])
    tool = schemas["ToolCallSchema"]
    assert set(tool["properties"]) == set(ToolCall.model_fields)
    # The answer of POST /v1/outcomes: one shape on both sides, every field required.
    outcome = schemas["OutcomeRecordedSchema"]
    assert set(outcome["properties"]) == set(OutcomeRecord.model_fields)
    assert set(outcome["required"]) == {n for n, f in OutcomeRecord.model_fields.items() if f.is_required()}


def test_a_retry_after_recovery_is_not_an_old_allow(agent: KernelsClient, operator: KernelsClient) -> None:
    request = KernelRequest(
        actor="agent-001",
        intent="look up",
        tool_call=ToolCall(name="lookup", params={"key": "before-halt"}),
        params={"key": "before-halt"},
    ).with_request_id()
    old = agent.submit(request)
    assert old.allowed
    operator.halt("policy change")
    operator.recover("new session")
    with pytest.raises(DecidedInEarlierSession) as e:
        agent.submit(request)
    assert e.value.receipt == old

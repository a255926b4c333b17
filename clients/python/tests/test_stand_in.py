"""The client's side of some calls against a stand-in HTTP server that
answers as the API documents: what the client sends (the outcome body and
its canonical hash), how it reads answers the real server cannot be made to
give on demand (an outcome that cannot be recorded after the tool ran), and
the calls the real server does not answer yet (``GET /v1/checkpoint``,
``GET /v1/proofs/inclusion``). Beside, not instead of, the real-server tests
(``test_outcomes.py`` for outcomes)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from kernels_client import (
    AsyncKernelsClient,
    DecidedInEarlierSession,
    KernelHalted,
    KernelsClient,
    KernelsError,
    OutcomeNotRecorded,
    RequestConflict,
    governed,
    result_sha256,
    verify_receipt,
)

from .support import FAST_RETRY
from .test_proofs import Log

Route = Callable[[dict, dict], tuple[int, Any]]


class StandIn:
    """Routes ``"METHOD /path"`` to a function of (JSON body, query) that
    answers (status, JSON value or text); keeps every call."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.calls: list[tuple[str, str, dict, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                body = json.loads(raw) if raw else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                stand_in.calls.append((self.command, url.path, query, body))
                route = stand_in.routes.get(f"{self.command} {url.path}")
                status, value = route(body, query) if route else (404, {"error": "no", "code": "not_found"})
                text = value if isinstance(value, str) else json.dumps(value)
                data = text.encode()
                self.send_response(status)
                ctype = "text/plain" if isinstance(value, str) else "application/json"
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bodies(self, method: str, path: str) -> list[Any]:
        return [b for m, p, _, b in self.calls if m == method and p == path]


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    s = StandIn()
    try:
        yield s
    finally:
        s.close()


def receipt_for(body: dict, decision: str = "ALLOW", seq: int = 7) -> dict:
    return {
        "request_id": body["request_id"],
        "status": "ACCEPTED" if decision == "ALLOW" else "REJECTED",
        "decision": decision,
        "state_from": "IDLE",
        "state_to": "IDLE",
        "ts_ms": 1,
        "error": None if decision == "ALLOW" else "denied",
        "evidence_hash": "cd" * 32,
        "ledger_seq": seq,
    }


def recorded(body: dict, query: dict) -> tuple[int, Any]:
    return 200, {"request_id": body["request_id"], "ledger_seq": 8, "entry_hash": "ef" * 32, "recorded": True}


def allow_and_record(stand_in: StandIn, outcome: Route = recorded) -> None:
    stand_in.routes["POST /v1/requests"] = lambda body, q: (200, receipt_for(body))
    stand_in.routes["POST /v1/outcomes"] = outcome


def test_governed_runs_once_after_an_allow_and_records_the_outcome(stand_in: StandIn) -> None:
    allow_and_record(stand_in)
    ran: list[str] = []
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:

        @governed(client, actor="agent-001")
        def lookup(key: str) -> dict:
            ran.append(key)
            return {"key": key, "n": 1.5}

        assert lookup("k") == {"key": "k", "n": 1.5}
    assert ran == ["k"]
    [request] = stand_in.bodies("POST", "/v1/requests")
    assert request["external_tool"] is True, "the client runs the tool, not the kernel"
    [outcome] = stand_in.bodies("POST", "/v1/outcomes")
    assert outcome == {
        "request_id": request["request_id"],
        "ok": True,
        "result_sha256": result_sha256({"key": "k", "n": 1.5}),
        "error": None,
    }
    # The canonical JSON of the result, as the kernel hashes: sorted keys, no spaces.
    import hashlib

    assert outcome["result_sha256"] == hashlib.sha256(b'{"key":"k","n":1.5}').hexdigest()


def test_a_failing_tool_records_its_error_and_raises(stand_in: StandIn) -> None:
    allow_and_record(stand_in)
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:

        @governed(client, actor="agent-001")
        def lookup(key: str) -> None:
            raise KeyError(key)

        with pytest.raises(KeyError):
            lookup("missing")
    [outcome] = stand_in.bodies("POST", "/v1/outcomes")
    assert outcome["ok"] is False and outcome["result_sha256"] is None
    assert outcome["error"] == "KeyError: 'missing'"


def test_an_outcome_that_cannot_be_recorded_raises_with_the_result(stand_in: StandIn) -> None:
    allow_and_record(stand_in, outcome=lambda body, q: (404, {"error": "unknown request", "code": "unknown_request"}))
    ran: list[int] = []
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:

        @governed(client, actor="agent-001")
        def lookup(key: str) -> int:
            ran.append(1)
            return 42

        with pytest.raises(OutcomeNotRecorded) as e:
            lookup("k")
    assert ran == [1], "the tool ran once and is not run again"
    assert e.value.result == 42 and e.value.receipt.allowed


def test_a_second_different_outcome_is_a_conflict(stand_in: StandIn) -> None:
    stand_in.routes["POST /v1/outcomes"] = lambda body, q: (409, {"error": "other outcome", "code": "conflict"})
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:
        with pytest.raises(RequestConflict):
            client.record_outcome("r1", ok=False, error="x")
        with pytest.raises(ValueError):
            client.record_outcome("r1", ok=True, result_sha256="not-hex")


def test_async_governed_allow_path(stand_in: StandIn) -> None:
    allow_and_record(stand_in)

    async def main() -> int:
        async with AsyncKernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:

            @governed(client, actor="agent-001")
            async def lookup(key: str) -> int:
                return len(key)

            return await lookup("abc")

    assert asyncio.run(main()) == 3
    [outcome] = stand_in.bodies("POST", "/v1/outcomes")
    assert outcome["ok"] is True and outcome["result_sha256"] == result_sha256(3)


def test_decided_in_an_earlier_session_carries_the_old_receipt(stand_in: StandIn) -> None:
    def answer(body: dict, q: dict) -> tuple[int, Any]:
        return 409, {
            "error": "decided before the recovery",
            "code": "decided_in_earlier_session",
            "receipt": receipt_for(body),
        }

    stand_in.routes["POST /v1/requests"] = answer
    ran: list[int] = []
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:
        with pytest.raises(DecidedInEarlierSession) as e:
            client.submit({"request_id": "old-1", "actor": "a", "intent": "i"})
        assert e.value.receipt is not None and e.value.receipt.request_id == "old-1"
        assert e.value.receipt.allowed  # for the record only: it was raised, not returned

        @governed(client, actor="agent-001")
        def lookup(key: str) -> int:
            ran.append(1)
            return 1

        with pytest.raises(DecidedInEarlierSession):
            lookup("k")
    assert ran == []
    assert len(stand_in.bodies("POST", "/v1/requests")) == 2, "a 409 is not retried"


def test_already_halted_is_kernel_halted(stand_in: StandIn) -> None:
    stand_in.routes["POST /v1/halt"] = lambda b, q: (409, {"error": "already", "code": "already_halted"})
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:
        with pytest.raises(KernelHalted):
            client.halt("again")


def test_checkpoint_and_inclusion_proof_feed_verify_receipt(stand_in: StandIn) -> None:
    log = Log(6)
    stand_in.routes["GET /v1/checkpoint"] = lambda b, q: (200, log.checkpoint(6))
    stand_in.routes["GET /v1/checkpoint/key"] = lambda b, q: (200, log.vkey + "\n")
    stand_in.routes["GET /v1/proofs/inclusion"] = lambda b, q: (
        (200, log.proof(int(q["seq"]), int(q.get("tree_size", 6))))
        if int(q["seq"]) < 6
        else (400, {"error": "seq out of range", "code": "invalid_query"})
    )
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:
        assert client.checkpoint() == log.checkpoint(6)
        assert client.verifier_key() == log.vkey
        proof = client.inclusion_proof(3, tree_size=5)
        assert (proof.seq, proof.tree_size) == (3, 5)
        got = verify_receipt(log.receipt(3), proof, client.verifier_key())
        assert got.tree_size == 5
        with pytest.raises(KernelsError) as e:
            client.inclusion_proof(99)
        assert e.value.status == 400
    assert [c[2] for c in stand_in.calls if c[1] == "/v1/proofs/inclusion"] == [
        {"seq": "3", "tree_size": "5"},
        {"seq": "99"},
    ]


def test_governed_tool_runs_after_an_allow_and_records_the_outcome(stand_in: StandIn) -> None:
    from langchain_core.tools import tool

    from kernels_client.langchain import GovernedTool

    ran: list[str] = []

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        ran.append(key)
        return f"value of {key}"

    allow_and_record(stand_in)
    with KernelsClient(stand_in.url, "t", retry=FAST_RETRY) as client:
        assert GovernedTool(lookup, client, actor="agent-001").invoke({"key": "k"}) == "value of k"
    assert ran == ["k"]
    [request] = stand_in.bodies("POST", "/v1/requests")
    assert request["tool_call"] == {"name": "lookup", "params": {"key": "k"}}
    assert request["external_tool"] is True
    [outcome] = stand_in.bodies("POST", "/v1/outcomes")
    assert outcome["request_id"] == request["request_id"]
    assert outcome["result_sha256"] == result_sha256("value of k")

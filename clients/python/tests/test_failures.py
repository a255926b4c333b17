"""Failing closed: lost answers, busy and dead services, hung connections
and malformed answers never become an ALLOW, and retries never decide a
request twice."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from kernels_client import (
    InvalidResponse,
    KernelRequest,
    KernelsClient,
    KernelsError,
    KernelUnavailable,
    RetryPolicy,
    ToolCall,
)

from .support import AGENT, FAST_RETRY, OPERATOR, FaultyProxy, KernelsServer, closed_port_url


def request(text: str = "hello") -> KernelRequest:
    return KernelRequest(
        actor="agent-001",
        intent="echo",
        tool_call=ToolCall(name="echo", params={"text": text}),
        params={"text": text},
    )


def body_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def test_a_lost_answer_is_retried_with_the_same_request_id_and_decided_once(
    server: KernelsServer,
) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "drop_answer" if n == 1 else "relay")
    try:
        before = server.ledger_length()
        with KernelsClient(proxy.url, AGENT, retry=FAST_RETRY) as client:
            receipt = client.submit(request())
        assert receipt.allowed
        assert proxy.dropped == 1 and proxy.forwarded == 2, "the server saw the request twice"
        ids = [body_of(r)["request_id"] for r in proxy.requests]
        assert ids == [receipt.request_id, receipt.request_id]
        assert server.ledger_length() == before + 1, "one entry, not two"
        entries = [e for e in server.entries() if e["request_id"] == receipt.request_id]
        assert len(entries) == 1 and entries[0]["entry_hash"] == receipt.evidence_hash
    finally:
        proxy.close()


def test_busy_answers_are_retried_with_the_same_request_id(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "busy" if n <= 2 else "relay")
    try:
        with KernelsClient(proxy.url, AGENT, retry=FAST_RETRY) as client:
            receipt = client.submit(request())
        assert receipt.allowed
        ids = {body_of(r)["request_id"] for r in proxy.requests}
        assert ids == {receipt.request_id} and len(proxy.requests) == 3
    finally:
        proxy.close()


def test_busy_through_every_retry_raises(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "busy")
    try:
        before = server.ledger_length()
        with KernelsClient(proxy.url, AGENT, retry=RetryPolicy(attempts=3, base_delay=0.01)) as client:
            with pytest.raises(KernelUnavailable) as e:
                client.submit(request())
        assert e.value.status == 503
        assert len(proxy.requests) == 3
        assert server.ledger_length() == before
    finally:
        proxy.close()


def test_halt_is_not_resent_once_it_may_have_arrived(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "drop_answer")
    try:
        with KernelsClient(proxy.url, OPERATOR, retry=FAST_RETRY) as client:
            with pytest.raises(KernelUnavailable):
                client.halt("lost answer")
        assert proxy.forwarded == 1, "a halt that may have arrived is not sent again"
    finally:
        proxy.close()


def test_a_service_that_is_down_raises(server: KernelsServer) -> None:
    url = server.url
    assert server.stop() == 0
    with KernelsClient(url, AGENT, retry=FAST_RETRY) as client:
        with pytest.raises(KernelUnavailable) as e:
            client.submit(request())
    assert "nothing was granted" in str(e.value)
    with KernelsClient(closed_port_url(), AGENT, retry=FAST_RETRY) as client:
        with pytest.raises(KernelUnavailable):
            client.submit(request())
    server.start()  # for the fixture's clean stop


def test_a_hung_service_times_out_and_raises(server: KernelsServer) -> None:
    proxy = FaultyProxy(server.url, lambda n, _: "hang")
    try:
        with KernelsClient(proxy.url, AGENT, timeout=0.3, retry=RetryPolicy(attempts=2, base_delay=0.01)) as c:
            with pytest.raises(KernelUnavailable) as e:
                c.submit(request())
        assert "Timeout" in str(e.value)
        assert len(proxy.requests) == 2
    finally:
        proxy.close()


class _Canned(BaseHTTPRequestHandler):
    """Answers every POST with the class's canned status and body."""

    status = 200
    body = b""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[_Canned]]]:
    """A stand-in HTTP server with canned answers (beside the real-server tests:
    the real one never sends these)."""
    handler = type("Handler", (_Canned,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


GOOD = {
    "request_id": "fixed-1",
    "status": "ACCEPTED",
    "decision": "ALLOW",
    "state_from": "IDLE",
    "state_to": "IDLE",
    "ts_ms": 1,
    "error": None,
    "evidence_hash": "ab" * 32,
    "ledger_seq": 3,
}


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"",
        json.dumps({**GOOD, "decision": "MAYBE"}).encode(),
        json.dumps({**GOOD, "decision": "allow"}).encode(),
        json.dumps({**GOOD, "status": "OK"}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "evidence_hash"}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "decision"}).encode(),
        json.dumps({**GOOD, "request_id": "someone-else"}).encode(),
        json.dumps([GOOD]).encode(),
    ],
    ids=[
        "html",
        "empty",
        "unknown-decision",
        "lowercase-decision",
        "unknown-status",
        "no-evidence-hash",
        "no-decision",
        "another-request",
        "a-list",
    ],
)
def test_an_answer_that_is_not_a_receipt_is_never_an_allow(canned, body: bytes) -> None:
    url, handler = canned
    handler.body = body
    with KernelsClient(url, AGENT, retry=FAST_RETRY) as client:
        with pytest.raises(InvalidResponse):
            client.submit(request().model_copy(update={"request_id": "fixed-1"}))


def test_the_canned_receipt_itself_parses(canned) -> None:
    """The stand-in's good answer is accepted, so the refusals above are
    about the defects, not the stand-in."""
    url, handler = canned
    handler.body = json.dumps(GOOD).encode()
    with KernelsClient(url, AGENT, retry=FAST_RETRY) as client:
        assert client.submit(request().model_copy(update={"request_id": "fixed-1"})).allowed


@pytest.mark.parametrize("status", [500, 502, 404, 400, 413])
def test_error_statuses_raise(canned, status: int) -> None:
    url, handler = canned
    handler.status = status
    handler.body = json.dumps({**GOOD}).encode()  # even a receipt-shaped body
    with KernelsClient(url, AGENT, retry=FAST_RETRY) as client:
        with pytest.raises(KernelsError) as e:
            client.submit(request())
    assert e.value.status == status

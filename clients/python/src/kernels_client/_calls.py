"""The API calls, described once for the sync and the async client.

Each public method of the clients builds a :class:`Call` here (method, path,
body, whether a retry is safe, how to read the answer); the clients only
send it. Reading answers is strict: a status outside 2xx becomes the fitting
:mod:`kernels_client.errors` exception, and a 2xx answer that does not parse
into its model is an :class:`InvalidResponse`, never a default.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from .errors import (
    DecidedInEarlierSession,
    InvalidResponse,
    KernelHalted,
    KernelsError,
    KernelUnavailable,
    RequestConflict,
)
from .models import (
    EntriesPage,
    HaltResult,
    InclusionProof,
    KernelReceipt,
    KernelRequest,
    KernelStatus,
    OutcomeRecord,
    RecoverResult,
    VerifyReport,
)

T = TypeVar("T")

#: Statuses that mean "busy, try again": the call was not decided.
RETRY_STATUSES = frozenset({429, 503})

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    A call is retried on a connection failure, a timeout, or a 503/429
    answer, at most ``attempts`` times in all, with exponential backoff and
    jitter (a ``Retry-After`` header is honoured up to ``max_delay``). A
    submission keeps its ``request_id`` across every attempt, so a retry of
    a request that was in fact decided answers the recorded receipt.
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 3.0

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        backoff = min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)
        return backoff * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: what to send, whether resending is safe, how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Optional[dict[str, Any]] = None
    #: Safe to send again after it may have reached the server (the server
    #: deduplicates it or it changes nothing). Calls that are not are only
    #: retried when the connection was never made.
    idempotent: bool = True
    headers: dict[str, str] = field(default_factory=dict)


def retry_after(response: httpx.Response) -> Optional[float]:
    """The ``Retry-After`` header in seconds, when it is a number."""
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def may_retry_transport_error(exc: httpx.TransportError, call: Call[Any]) -> bool:
    """Whether a failed attempt may be sent again.

    A connection that was never made carried nothing, so any call may be
    retried; after that, only idempotent calls may.
    """
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True
    return call.idempotent


def unavailable(call: Call[Any], cause: BaseException, attempts: int) -> KernelUnavailable:
    """The error for a call that got no usable answer."""
    return KernelUnavailable(
        f"{call.method} {call.path}: no answer from the kernel after {attempts} attempt(s): "
        f"{type(cause).__name__}: {cause}; nothing was granted"
    )


def error_for(response: httpx.Response) -> KernelsError:
    """The exception for a non-2xx answer."""
    status = response.status_code
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    code = body.get("code") if isinstance(body, dict) else None
    text = body.get("error") if isinstance(body, dict) else None
    message = f"{response.request.method} {response.request.url.path}: HTTP {status}"
    if code:
        message += f" {code}"
    if text:
        message += f": {text}"
    elif isinstance(body, str) and body:
        message += f": {body[:200]}"
    kwargs: dict[str, Any] = {"status": status, "code": code, "body": body}
    if status == 409:
        if code in ("halted", "already_halted"):
            return KernelHalted(message, **kwargs)
        if code == "decided_in_earlier_session":
            old = None
            if isinstance(body, dict) and isinstance(body.get("receipt"), dict):
                try:
                    old = KernelReceipt.model_validate(body["receipt"])
                except ValidationError:
                    old = None
            return DecidedInEarlierSession(message, receipt=old, **kwargs)
        return RequestConflict(message, **kwargs)
    if status in RETRY_STATUSES:
        return KernelUnavailable(message, **kwargs)
    return KernelsError(message, **kwargs)


def _model(model: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    def parse(response: httpx.Response) -> Any:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as e:
            raise InvalidResponse(
                f"{response.request.method} {response.request.url.path}: the answer is not a valid "
                f"{model.__name__}: {e.errors(include_url=False)[:3]}",
                status=response.status_code,
                body=response.text[:2000],
            ) from e

    return parse


def _text(response: httpx.Response) -> str:
    try:
        return response.content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidResponse(
            f"{response.request.url.path}: the answer is not UTF-8 text", status=response.status_code
        ) from e


def submit(request: KernelRequest) -> Call[KernelReceipt]:
    """``POST /v1/requests`` for a request that already has its request_id."""
    if not request.request_id:
        raise ValueError("the request id is set before the first attempt")
    expected = request.request_id
    read = _model(KernelReceipt)

    def parse(response: httpx.Response) -> KernelReceipt:
        receipt: KernelReceipt = read(response)
        if receipt.request_id != expected:
            raise InvalidResponse(
                f"the service answered the receipt of request {receipt.request_id!r} for request {expected!r}",
                status=response.status_code,
            )
        return receipt

    return Call("POST", "/v1/requests", parse, json=request.to_body())


def status() -> Call[KernelStatus]:
    """``GET /v1/status``."""
    return Call("GET", "/v1/status", _model(KernelStatus))


def entries(
    from_seq: int = 0,
    limit: int = 100,
    from_ms: Optional[int] = None,
    to_ms: Optional[int] = None,
) -> Call[EntriesPage]:
    """``GET /v1/entries``."""
    params: dict[str, Any] = {"from_seq": from_seq, "limit": limit}
    if from_ms is not None:
        params["from_ms"] = from_ms
    if to_ms is not None:
        params["to_ms"] = to_ms
    return Call("GET", "/v1/entries", _model(EntriesPage), params=params)


def halt(reason: str) -> Call[HaltResult]:
    """``POST /v1/halt`` (not idempotent: a second halt is refused)."""
    return Call("POST", "/v1/halt", _model(HaltResult), json={"reason": reason}, idempotent=False)


def recover(reason: str) -> Call[RecoverResult]:
    """``POST /v1/recover`` (not idempotent: it starts a new session)."""
    return Call("POST", "/v1/recover", _model(RecoverResult), json={"reason": reason}, idempotent=False)


def verify() -> Call[VerifyReport]:
    """``POST /v1/verify`` (reads only)."""
    return Call("POST", "/v1/verify", _model(VerifyReport))


def checkpoint() -> Call[str]:
    """``GET /v1/checkpoint``: the signed checkpoint note."""
    return Call("GET", "/v1/checkpoint", _text, headers={"accept": "text/plain"})


def verifier_key() -> Call[str]:
    """``GET /v1/checkpoint/key``: the log's verifier key."""
    return Call(
        "GET",
        "/v1/checkpoint/key",
        lambda r: _text(r).strip(),
        headers={"accept": "text/plain"},
    )


def inclusion_proof(seq: int, tree_size: Optional[int] = None) -> Call[InclusionProof]:
    """``GET /v1/proofs/inclusion``."""
    params: dict[str, Any] = {"seq": seq}
    if tree_size is not None:
        params["tree_size"] = tree_size
    return Call("GET", "/v1/proofs/inclusion", _model(InclusionProof), params=params)


def record_outcome(
    request_id: str,
    ok: bool,
    result_sha256: Optional[str] = None,
    error: Optional[str] = None,
) -> Call[OutcomeRecord]:
    """``POST /v1/outcomes`` (recorded once per request: the same outcome
    again is not a second record, so a retry is safe)."""
    if not request_id:
        raise ValueError("record_outcome needs the request_id of the ALLOWed request")
    if result_sha256 is not None and not _HEX64.match(result_sha256):
        raise ValueError("result_sha256 must be 64 lowercase hex digits")
    body = {"request_id": request_id, "ok": bool(ok), "result_sha256": result_sha256, "error": error}
    return Call("POST", "/v1/outcomes", _model(OutcomeRecord), json=body)

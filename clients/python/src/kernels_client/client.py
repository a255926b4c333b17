"""``KernelsClient``: the synchronous client of the kernels HTTP API (httpx).

Every method sends one :class:`~kernels_client._calls.Call` through
:meth:`KernelsClient._send`, which retries what is safe to retry (see
:class:`~kernels_client._calls.RetryPolicy`) and turns every failure into an
exception. A submission gets its ``request_id`` before the first attempt and
keeps it for every retry, so the kernel decides it once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Union

import httpx

from . import _calls
from ._calls import Call, RetryPolicy, T
from ._evidence import EvidenceSink, evidence_params
from .errors import KernelsError
from .models import (
    EntriesPage,
    EvidenceFile,
    HaltResult,
    InclusionProof,
    KernelReceipt,
    KernelRequest,
    KernelStatus,
    OutcomeRecord,
    RecoverResult,
    VerifyReport,
)
from .proofs import VerifiedReceipt, VerifierKey, as_receipt, verify_receipt

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 15.0


def base_url_and_token(base_url: Optional[str], token: Optional[str]) -> tuple[str, Optional[str]]:
    """The server URL (argument, ``KERNELS_SERVER``, default) and the token
    (argument, ``KERNELS_TOKEN``)."""
    url = base_url or os.environ.get("KERNELS_SERVER") or DEFAULT_SERVER
    return url.rstrip("/"), token if token is not None else (os.environ.get("KERNELS_TOKEN") or None)


def auth_headers(token: Optional[str]) -> dict[str, str]:
    """The Authorization header for ``token`` (none without one)."""
    return {"authorization": f"Bearer {token}"} if token else {}


def as_request(request: Union[KernelRequest, dict[str, Any]]) -> KernelRequest:
    """A :class:`KernelRequest` with its request id set (generated when absent)."""
    if not isinstance(request, KernelRequest):
        request = KernelRequest.model_validate(request)
    return request.with_request_id()


class KernelsClient:
    """A synchronous client of one kernels service.

    ``base_url`` defaults to ``KERNELS_SERVER`` (else ``http://127.0.0.1:8080``),
    ``token`` to ``KERNELS_TOKEN``. ``timeout`` bounds each attempt; a timeout
    is retried like a dropped connection and, when every attempt failed,
    raised as :class:`~kernels_client.errors.KernelUnavailable`.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        url, token = base_url_and_token(base_url, token)
        self.base_url = url
        self.retry = retry
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=auth_headers(token), transport=transport)

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> "KernelsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, params=call.params, headers=call.headers
                )
            except httpx.TransportError as e:
                if attempt == attempts or not _calls.may_retry_transport_error(e, call):
                    raise _calls.unavailable(call, e, attempt) from e
                time.sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code in _calls.RETRY_STATUSES and attempt < attempts:
                time.sleep(self.retry.delay(attempt, _calls.retry_after(response)))
                continue
            if not response.is_success:
                raise _calls.error_for(response)
            return call.parse(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def submit(self, request: Union[KernelRequest, dict[str, Any]]) -> KernelReceipt:
        """Submits a request and answers the kernel's receipt (a DENY is a
        receipt, not an exception). Raises :class:`KernelHalted` when the
        kernel is halted and :class:`KernelsError` for every other failure."""
        return self._send(_calls.submit(as_request(request)))

    def status(self) -> KernelStatus:
        """The kernel's status (auditor or operator token)."""
        return self._send(_calls.status())

    def entries(
        self,
        from_seq: int = 0,
        limit: int = 100,
        *,
        from_ms: Optional[int] = None,
        to_ms: Optional[int] = None,
    ) -> EntriesPage:
        """One page of ledger entries from ``from_seq`` (auditor or operator)."""
        return self._send(_calls.entries(from_seq, limit, from_ms, to_ms))

    def evidence(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        from_seq: Optional[int] = None,
        to_seq: Optional[int] = None,
    ) -> EvidenceFile:
        """Streams the evidence bundle (or a range) to ``path``.

        The bundle is written to a temporary file beside ``path`` and renamed
        only when the whole stream arrived, so ``path`` never holds a partial
        bundle.
        """
        params = evidence_params(from_seq, to_seq)
        attempts = max(1, self.retry.attempts)
        call: Call[None] = Call("GET", "/v1/evidence", lambda r: None, params=params)
        for attempt in range(1, attempts + 1):
            sink = EvidenceSink(Path(path))
            try:
                with self._http.stream("GET", "/v1/evidence", params=params) as response:
                    if response.status_code in _calls.RETRY_STATUSES and attempt < attempts:
                        sink.discard()
                        time.sleep(self.retry.delay(attempt, _calls.retry_after(response)))
                        continue
                    if not response.is_success:
                        response.read()
                        sink.discard()
                        raise _calls.error_for(response)
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                return sink.commit()
            except httpx.TransportError as e:
                sink.discard()
                if attempt == attempts:
                    raise _calls.unavailable(call, e, attempt) from e
                time.sleep(self.retry.delay(attempt, None))
            except BaseException:
                sink.discard()
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def halt(self, reason: str) -> HaltResult:
        """Halts the kernel (operator token); recorded with ``reason``."""
        return self._send(_calls.halt(reason))

    def recover(self, reason: str) -> RecoverResult:
        """Recovers a halted kernel into a new session (operator token)."""
        return self._send(_calls.recover(reason))

    def verify(self) -> VerifyReport:
        """Has the service verify its whole stored chain."""
        return self._send(_calls.verify())

    def checkpoint(self) -> str:
        """The signed checkpoint (C2SP signed note) over every acknowledged entry."""
        return self._send(_calls.checkpoint())

    def verifier_key(self) -> str:
        """The log's verifier key (``<name>+<key id>+<base64>``). For offline
        checks, get it from the operator rather than from the service itself."""
        return self._send(_calls.verifier_key())

    def inclusion_proof(self, seq: int, tree_size: Optional[int] = None) -> InclusionProof:
        """The inclusion proof of entry ``seq`` with its signed checkpoint."""
        return self._send(_calls.inclusion_proof(seq, tree_size))

    def verify_receipt(
        self,
        receipt: Union[KernelReceipt, dict[str, Any]],
        verifier_key: Union[VerifierKey, str],
        *,
        tree_size: Optional[int] = None,
        origin: Optional[str] = None,
    ) -> VerifiedReceipt:
        """Proves that ``receipt`` is in the signed log: fetches its inclusion
        proof (``GET /v1/proofs/inclusion``, in the tree of ``tree_size`` or
        every acknowledged entry) and checks it with
        :func:`~kernels_client.proofs.verify_receipt` against ``verifier_key``
        — the log's key as pinned from the operator, not one this service
        answers. Raises :class:`~kernels_client.errors.VerificationError`."""
        r = as_receipt(receipt)
        proof = self.inclusion_proof(r.ledger_seq, tree_size)
        return verify_receipt(r, proof, verifier_key, origin=origin)

    def record_outcome(
        self,
        request_id: str,
        *,
        ok: bool,
        result_sha256: Optional[str] = None,
        error: Optional[str] = None,
    ) -> OutcomeRecord:
        """Records what an ALLOWed, externally run tool did (ok or error, and
        the SHA-256 of its result — see :func:`kernels_client.result_sha256`)."""
        return self._send(_calls.record_outcome(request_id, ok, result_sha256, error))


__all__ = ["KernelsClient", "KernelsError", "RetryPolicy"]

"""``AsyncKernelsClient``: the asyncio twin of :class:`~kernels_client.KernelsClient`.

Same methods, same calls (:mod:`kernels_client._calls`), same retries and
exceptions; every method is a coroutine.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Optional, Union

import httpx

from . import _calls
from ._calls import Call, RetryPolicy, T
from ._evidence import EvidenceSink, evidence_params
from .client import DEFAULT_TIMEOUT, as_request, auth_headers, base_url_and_token
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


class AsyncKernelsClient:
    """An asyncio client of one kernels service (see :class:`KernelsClient`)."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        url, token = base_url_and_token(base_url, token)
        self.base_url = url
        self.retry = retry
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=auth_headers(token), transport=transport)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncKernelsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, params=call.params, headers=call.headers
                )
            except httpx.TransportError as e:
                if attempt == attempts or not _calls.may_retry_transport_error(e, call):
                    raise _calls.unavailable(call, e, attempt) from e
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code in _calls.RETRY_STATUSES and attempt < attempts:
                await asyncio.sleep(self.retry.delay(attempt, _calls.retry_after(response)))
                continue
            if not response.is_success:
                raise _calls.error_for(response)
            return call.parse(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def submit(self, request: Union[KernelRequest, dict[str, Any]]) -> KernelReceipt:
        """See :meth:`KernelsClient.submit`."""
        return await self._send(_calls.submit(as_request(request)))

    async def status(self) -> KernelStatus:
        """See :meth:`KernelsClient.status`."""
        return await self._send(_calls.status())

    async def entries(
        self,
        from_seq: int = 0,
        limit: int = 100,
        *,
        from_ms: Optional[int] = None,
        to_ms: Optional[int] = None,
    ) -> EntriesPage:
        """See :meth:`KernelsClient.entries`."""
        return await self._send(_calls.entries(from_seq, limit, from_ms, to_ms))

    async def evidence(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        from_seq: Optional[int] = None,
        to_seq: Optional[int] = None,
    ) -> EvidenceFile:
        """See :meth:`KernelsClient.evidence`."""
        params = evidence_params(from_seq, to_seq)
        attempts = max(1, self.retry.attempts)
        call: Call[None] = Call("GET", "/v1/evidence", lambda r: None, params=params)
        for attempt in range(1, attempts + 1):
            sink = EvidenceSink(Path(path))
            try:
                async with self._http.stream("GET", "/v1/evidence", params=params) as response:
                    if response.status_code in _calls.RETRY_STATUSES and attempt < attempts:
                        sink.discard()
                        await asyncio.sleep(self.retry.delay(attempt, _calls.retry_after(response)))
                        continue
                    if not response.is_success:
                        await response.aread()
                        sink.discard()
                        raise _calls.error_for(response)
                    async for chunk in response.aiter_bytes():
                        sink.write(chunk)
                return sink.commit()
            except httpx.TransportError as e:
                sink.discard()
                if attempt == attempts:
                    raise _calls.unavailable(call, e, attempt) from e
                await asyncio.sleep(self.retry.delay(attempt, None))
            except BaseException:
                sink.discard()
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def halt(self, reason: str) -> HaltResult:
        """See :meth:`KernelsClient.halt`."""
        return await self._send(_calls.halt(reason))

    async def recover(self, reason: str) -> RecoverResult:
        """See :meth:`KernelsClient.recover`."""
        return await self._send(_calls.recover(reason))

    async def verify(self) -> VerifyReport:
        """See :meth:`KernelsClient.verify`."""
        return await self._send(_calls.verify())

    async def checkpoint(self) -> str:
        """See :meth:`KernelsClient.checkpoint`."""
        return await self._send(_calls.checkpoint())

    async def verifier_key(self) -> str:
        """See :meth:`KernelsClient.verifier_key`."""
        return await self._send(_calls.verifier_key())

    async def inclusion_proof(self, seq: int, tree_size: Optional[int] = None) -> InclusionProof:
        """See :meth:`KernelsClient.inclusion_proof`."""
        return await self._send(_calls.inclusion_proof(seq, tree_size))

    async def verify_receipt(
        self,
        receipt: Union[KernelReceipt, dict[str, Any]],
        verifier_key: Union[VerifierKey, str],
        *,
        tree_size: Optional[int] = None,
        origin: Optional[str] = None,
    ) -> VerifiedReceipt:
        """See :meth:`KernelsClient.verify_receipt`."""
        r = as_receipt(receipt)
        proof = await self.inclusion_proof(r.ledger_seq, tree_size)
        return verify_receipt(r, proof, verifier_key, origin=origin)

    async def record_outcome(
        self,
        request_id: str,
        *,
        ok: bool,
        result_sha256: Optional[str] = None,
        error: Optional[str] = None,
    ) -> OutcomeRecord:
        """See :meth:`KernelsClient.record_outcome`."""
        return await self._send(_calls.record_outcome(request_id, ok, result_sha256, error))

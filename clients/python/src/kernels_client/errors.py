"""Exceptions of the kernels client.

Every failure is an exception derived from :class:`KernelsError`; none is
ever turned into a permission. A DENY is not an exception of the client
(``submit`` answers the receipt); :class:`KernelDenied` is raised only by the
wrappers (``governed``, ``GovernedTool``) that must not run a tool without an
ALLOW.
"""

from __future__ import annotations

from typing import Any, Optional


class KernelsError(Exception):
    """Any failure talking to the kernel, or any answer that is not a clear ALLOW path.

    ``status`` is the HTTP status (None when no answer came), ``code`` the
    service's error code (``{"error", "code"}`` bodies), ``body`` the parsed
    answer when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body


class KernelUnavailable(KernelsError):
    """The kernel could not be reached, timed out, or stayed busy (503/429)
    through every retry. Nothing was granted."""


class InvalidResponse(KernelsError):
    """The service answered something that is not what the API promises
    (not JSON, a missing field, an unknown decision, another request's
    receipt). Treated as a refusal."""


class KernelHalted(KernelsError):
    """The kernel is halted (409 ``halted``): nothing is decided until an
    operator recovers it."""


class RequestConflict(KernelsError):
    """409: the request_id was already used for different content (or the
    recorded state conflicts with the call, e.g. a second different outcome)."""


class DecidedInEarlierSession(KernelsError):
    """409 ``decided_in_earlier_session``: the request_id was decided before
    a halt and recovery. ``receipt`` is that old receipt, for the record; it
    grants nothing now — submit the request again under a new request_id."""

    def __init__(self, message: str, *, receipt: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.receipt = receipt


class KernelDenied(KernelsError):
    """Raised by ``governed``/``GovernedTool``: the kernel did not ALLOW the
    call, so the tool was not run. ``receipt`` is the kernel's receipt."""

    def __init__(self, message: str, *, receipt: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.receipt = receipt


class VerificationError(KernelsError):
    """An offline check (signed checkpoint, inclusion proof) failed."""

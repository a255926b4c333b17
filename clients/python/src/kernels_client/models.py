"""Typed models of the kernels HTTP API, written from its ``/v1/openapi.json``.

The request and receipt models carry the names of the Python KERNELS library
(``KernelRequest``, ``ToolCall``, ``KernelReceipt``, ``Decision``,
``ReceiptStatus``), so code written against the in-memory library reads the
same against the durable service. Answers from the service are validated
strictly where a wrong value could be taken for a permission: an unknown
``decision`` or ``status`` is a validation error, never a default.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class Decision(str, Enum):
    """What the kernel decided."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    HALT = "HALT"


class ReceiptStatus(str, Enum):
    """How the request was processed."""

    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"


class ToolCall(BaseModel):
    """A tool invocation: the tool's name and its arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


def new_request_id() -> str:
    """A fresh request id (the idempotency key of one decision)."""
    return f"req-{uuid.uuid4().hex}"


class KernelRequest(BaseModel):
    """An agent's request (``POST /v1/requests``).

    ``request_id`` is the idempotency key: the same id with the same content
    answers the recorded receipt without deciding again. When it is left
    out, the client generates one before the first attempt and keeps it for
    every retry.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: Optional[str] = None
    actor: str
    intent: str
    tool_call: Optional[ToolCall] = None
    params: Optional[dict[str, Any]] = None
    evidence: Optional[str] = None
    permit: Optional[dict[str, Any]] = None
    ts_ms: Optional[int] = None
    #: The caller runs the tool after an ALLOW (``governed``, ``GovernedTool``,
    #: an MCP server behind ``kernels mcp-proxy``): the kernel decides and
    #: records but never runs it, so the policy alone names the tool.
    external_tool: Optional[bool] = None

    def with_request_id(self) -> "KernelRequest":
        """This request with a request id (a generated one when it has none)."""
        if self.request_id:
            return self
        return self.model_copy(update={"request_id": new_request_id()})

    def to_body(self) -> dict[str, Any]:
        """The JSON body sent to the service (absent fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class KernelReceipt(BaseModel):
    """The kernel's answer to a request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    status: ReceiptStatus
    decision: Decision
    state_from: str
    state_to: str
    ts_ms: int
    error: Optional[str] = None
    evidence_hash: str
    ledger_seq: int
    tool_result: Any = None

    @property
    def allowed(self) -> bool:
        """True only for an accepted ALLOW."""
        return self.decision is Decision.ALLOW and self.status is ReceiptStatus.ACCEPTED


Receipt = KernelReceipt
"""The receipt model under its short name."""


class KernelStatus(BaseModel):
    """``GET /v1/status``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kernel_id: str
    variant: str
    state: str
    ledger_length: int
    root_hash: str
    policy_version: int
    last_rotation: Optional[dict[str, Any]] = None
    rotation: Optional[dict[str, Any]] = None


class Entry(BaseModel):
    """One ledger entry, as ``GET /v1/entries`` answers it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ledger_seq: int
    prev_hash: str
    entry_hash: str
    ts_ms: int
    # Any JSON value: the Python library records a malformed request's raw values.
    request_id: Any
    actor: Any
    intent: Any
    decision: str
    state_from: str
    state_to: str
    tool_name: Optional[str] = None
    params_hash: Optional[str] = None
    evidence_hash: Optional[str] = None
    error: Optional[str] = None
    permit_digest: Optional[str] = None
    permit_verification: Optional[str] = None
    permit_denial_reasons: Optional[list[str]] = None
    proposal_hash: Optional[str] = None
    permit_nonce: Optional[str] = None
    permit_issuer: Optional[str] = None
    permit_subject: Optional[str] = None
    permit_max_executions: Optional[int] = None
    payload: Any = None


class EntriesPage(BaseModel):
    """``GET /v1/entries``: a page of entries and where the next one starts."""

    model_config = ConfigDict(extra="allow", frozen=True)

    entries: list[Entry]
    next_seq: Optional[int] = None
    ledger_length: int


class VerifyProblem(BaseModel):
    """One problem found by a verification."""

    model_config = ConfigDict(extra="allow", frozen=True)

    index: int
    message: str


class VerifyReport(BaseModel):
    """``POST /v1/verify`` (the same object as ``kernels verify --json``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    valid: bool
    entries_verified: int
    computed_root_hash: str
    errors: list[VerifyProblem]


class HaltResult(BaseModel):
    """``POST /v1/halt``: the HALT receipt and the evidence root just before it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    receipt: KernelReceipt
    root_hash_before_halt: str
    ledger_length_before_halt: int


class RecoverResult(BaseModel):
    """``POST /v1/recover``: the recorded recovery and the new session."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ledger_seq: int
    entry_hash: str
    session: int
    payload: Any = None


class OutcomeRecord(BaseModel):
    """``POST /v1/outcomes``: the entry that recorded a tool's outcome.

    An outcome is recorded once per request. Sending the same outcome again
    (a retry after a lost answer) answers the same entry with ``recorded``
    false; a different outcome for the same request is a 409
    (:class:`RequestConflict`).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    request_id: str
    ledger_seq: int
    entry_hash: str
    #: True when this call recorded it; false when the same outcome was
    #: already recorded (the entry named is that earlier one).
    recorded: bool


class InclusionProof(BaseModel):
    """``GET /v1/proofs/inclusion``: an RFC 9162 inclusion proof and the
    signed checkpoint of the tree it is for."""

    model_config = ConfigDict(extra="allow", frozen=True)

    seq: int
    tree_size: int
    leaf_hash: str
    proof: list[str]
    checkpoint: str


class EvidenceFile(BaseModel):
    """Where ``evidence()`` wrote the bundle, and how many bytes."""

    model_config = ConfigDict(frozen=True)

    path: str
    bytes: int

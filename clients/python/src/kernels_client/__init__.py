"""kernels_client: the Python client of the kernels governance service.

Switching from the in-memory Python KERNELS library to the durable service
is one line: build a :class:`KernelsClient` (or :class:`AsyncKernelsClient`)
and ``submit`` the same ``KernelRequest``. Around it: :func:`governed` runs a
callable only after an ALLOW and records its outcome,
:func:`verify_receipt` proves a receipt offline against the signed log,
:func:`issue_permit` signs permit tokens, and
``kernels_client.langchain.GovernedTool`` governs a langchain-core tool.
Nothing here ever turns a failure into an ALLOW: every doubt is an exception.
"""

from ._calls import RetryPolicy
from .aio import AsyncKernelsClient
from .canonical import canonical_json, result_sha256
from .client import KernelsClient
from .errors import (
    DecidedInEarlierSession,
    InvalidResponse,
    KernelDenied,
    KernelHalted,
    KernelsError,
    KernelUnavailable,
    RequestConflict,
    VerificationError,
)
from .governed import OutcomeNotRecorded, governed
from .models import (
    Decision,
    EntriesPage,
    Entry,
    EvidenceFile,
    HaltResult,
    InclusionProof,
    KernelReceipt,
    KernelRequest,
    KernelStatus,
    OutcomeRecord,
    Receipt,
    ReceiptStatus,
    RecoverResult,
    ToolCall,
    VerifyReport,
    new_request_id,
)
from .permits import issue_permit
from .proofs import Checkpoint, SignedNote, VerifiedReceipt, VerifierKey, verify_receipt

__version__ = "0.1.0"

__all__ = [
    "AsyncKernelsClient",
    "Checkpoint",
    "DecidedInEarlierSession",
    "Decision",
    "EntriesPage",
    "Entry",
    "EvidenceFile",
    "HaltResult",
    "InclusionProof",
    "InvalidResponse",
    "KernelDenied",
    "KernelHalted",
    "KernelReceipt",
    "KernelRequest",
    "KernelStatus",
    "KernelUnavailable",
    "KernelsClient",
    "KernelsError",
    "OutcomeNotRecorded",
    "OutcomeRecord",
    "Receipt",
    "ReceiptStatus",
    "RecoverResult",
    "RequestConflict",
    "RetryPolicy",
    "SignedNote",
    "ToolCall",
    "VerificationError",
    "VerifiedReceipt",
    "VerifierKey",
    "VerifyReport",
    "canonical_json",
    "governed",
    "issue_permit",
    "new_request_id",
    "result_sha256",
    "verify_receipt",
]

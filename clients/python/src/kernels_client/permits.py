"""``issue_permit``: sign a permit token in pure Python.

The token is byte for byte what the Python KERNELS library's
``PermitBuilder.build`` makes from the same inputs, and what
``kernels permit issue`` prints: ``permit_id`` is the SHA-256 of the
canonical permit without ``permit_id`` and ``signature``; ``signature`` is
the hex HMAC-SHA256, under the key, of the canonical permit with
``permit_id``. "Canonical" here is the library's permit form: sorted keys,
no whitespace, UTF-8 (``ensure_ascii=False``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Optional

#: The token's fields, in the library's order.
PERMIT_FIELDS = (
    "permit_id",
    "issuer",
    "subject",
    "jurisdiction",
    "action",
    "params",
    "constraints",
    "max_executions",
    "valid_from_ms",
    "valid_until_ms",
    "evidence_hash",
    "proposal_hash",
    "nonce",
    "signature",
    "key_id",
)


def canonical_permit_bytes(token: dict[str, Any], *, with_permit_id: bool) -> bytes:
    """The library's ``canonical_permit_bytes`` (signature always left out)."""
    data = {k: v for k, v in token.items() if k != "signature" and (with_permit_id or k != "permit_id")}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def default_proposal_hash(action: str, params: dict[str, Any], subject: str) -> str:
    """What ``kernels permit issue`` uses when no proposal hash is given:
    SHA-256 of the canonical JSON of ``{"action", "params", "subject"}``."""
    text = json.dumps(
        {"action": action, "params": params, "subject": subject},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def issue_permit(
    *,
    key: bytes,
    key_id: str,
    issuer: str,
    subject: str,
    action: str,
    params: Optional[dict[str, Any]] = None,
    constraints: Optional[dict[str, Any]] = None,
    jurisdiction: str = "default",
    max_executions: int = 1,
    valid_for_ms: Optional[int] = None,
    valid_from_ms: Optional[int] = None,
    valid_until_ms: Optional[int] = None,
    evidence_hash: str = "",
    proposal_hash: Optional[str] = None,
    nonce: Optional[str] = None,
) -> dict[str, Any]:
    """A signed permit token (a dict in the library's field order) that lets
    ``subject`` call ``action`` with (a subset of) ``params``.

    The validity window starts at ``valid_from_ms`` (default: now) and ends
    at ``valid_until_ms``, or ``valid_for_ms`` after the start; give one of
    the two. ``key`` is the HMAC secret of ``key_id`` in the kernel's
    keyring (``permits.keys_env``/``keys_file``, hex there:
    ``bytes.fromhex(...)`` here). Raises ``ValueError`` for what the
    library's ``PermitToken`` refuses.
    """
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("key must be non-empty bytes (the keyring's hex secret, decoded)")
    if valid_from_ms is None:
        valid_from_ms = int(time.time() * 1000)
    if (valid_for_ms is None) == (valid_until_ms is None):
        raise ValueError("give exactly one of valid_for_ms and valid_until_ms")
    if valid_until_ms is None:
        assert valid_for_ms is not None
        if valid_for_ms <= 0:
            raise ValueError("valid_for_ms must be positive")
        valid_until_ms = valid_from_ms + valid_for_ms
    params = dict(params or {})
    constraints = dict(constraints or {})
    if proposal_hash is None:
        proposal_hash = default_proposal_hash(action, params, subject)
    if nonce is None:
        nonce = secrets.token_hex(16)
    _check(
        issuer,
        subject,
        jurisdiction,
        action,
        max_executions,
        valid_from_ms,
        valid_until_ms,
        proposal_hash,
        nonce,
        key_id,
    )
    token: dict[str, Any] = {
        "permit_id": "",
        "issuer": issuer,
        "subject": subject,
        "jurisdiction": jurisdiction,
        "action": action,
        "params": params,
        "constraints": constraints,
        "max_executions": max_executions,
        "valid_from_ms": valid_from_ms,
        "valid_until_ms": valid_until_ms,
        "evidence_hash": evidence_hash,
        "proposal_hash": proposal_hash,
        "nonce": nonce,
        "signature": "",
        "key_id": key_id,
    }
    token["permit_id"] = hashlib.sha256(canonical_permit_bytes(token, with_permit_id=False)).hexdigest()
    token["signature"] = hmac.new(
        bytes(key), canonical_permit_bytes(token, with_permit_id=True), hashlib.sha256
    ).hexdigest()
    return token


def _check(
    issuer: str,
    subject: str,
    jurisdiction: str,
    action: str,
    max_executions: int,
    valid_from_ms: int,
    valid_until_ms: int,
    proposal_hash: str,
    nonce: str,
    key_id: str,
) -> None:
    for name, value in (
        ("issuer", issuer),
        ("subject", subject),
        ("jurisdiction", jurisdiction),
        ("action", action),
        ("proposal_hash", proposal_hash),
        ("key_id", key_id),
    ):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    if not isinstance(max_executions, int) or isinstance(max_executions, bool) or max_executions < 1:
        raise ValueError("max_executions must be an int >= 1")
    if not isinstance(valid_from_ms, int) or valid_from_ms < 0:
        raise ValueError("valid_from_ms must be an int >= 0")
    if not isinstance(valid_until_ms, int) or valid_until_ms <= valid_from_ms:
        raise ValueError("valid_until_ms must be an int > valid_from_ms")
    if not isinstance(nonce, str) or len(nonce) < 32:
        raise ValueError("nonce must be a string of at least 32 characters")

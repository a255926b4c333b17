"""Canonical JSON and the SHA-256 of a tool's result.

``canonical_json`` is the kernel's canonical form (README "Entries and
hashes"): exactly ``json.dumps(x, sort_keys=True, separators=(",", ":"))``
with ``ensure_ascii=True``; NaN and infinities are refused. An outcome
records ``result_sha256 = SHA-256(canonical_json(result))``, never the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a JSON value (TypeError/ValueError otherwise)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: pydantic models and dataclasses are
    dumped; anything else is returned as it is."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json")
        except TypeError:
            return dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def result_sha256(result: Any) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of a tool's result.

    A result that is not JSON data (after :func:`jsonable`) is hashed as the
    JSON string of its ``repr``, so that every outcome still commits to
    something the caller can recompute.
    """
    data = jsonable(result)
    try:
        text = canonical_json(data)
    except (TypeError, ValueError):
        text = canonical_json(repr(result))
    return hashlib.sha256(text.encode("ascii")).hexdigest()

"""Writing a streamed evidence bundle to disk, all or nothing.

The bundle goes to a temporary file in the target's directory; only a stream
that ended cleanly is fsynced and renamed over the target, so a dropped
connection never leaves a truncated bundle where a verifier would look.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .models import EvidenceFile


def evidence_params(from_seq: Optional[int], to_seq: Optional[int]) -> dict[str, Any]:
    """The query of ``GET /v1/evidence``."""
    params: dict[str, Any] = {}
    if from_seq is not None:
        params["from_seq"] = from_seq
    if to_seq is not None:
        params["to_seq"] = to_seq
    return params


class EvidenceSink:
    """A temporary file beside ``target`` that becomes ``target`` on commit."""

    def __init__(self, target: Path) -> None:
        self.target = target
        directory = target.parent if str(target.parent) else Path(".")
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self.bytes = 0

    def write(self, chunk: bytes) -> None:
        """Appends a chunk of the stream."""
        self._file.write(chunk)
        self.bytes += len(chunk)

    def commit(self) -> EvidenceFile:
        """Makes the complete bundle durable under the target name."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.target)
        return EvidenceFile(path=str(self.target), bytes=self.bytes)

    def discard(self) -> None:
        """Drops what was written (idempotent)."""
        if not self._file.closed:
            self._file.close()
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

"""Fixtures: a fresh real ``kernels serve`` per test, and clients of each role."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from kernels_client import KernelsClient

from .support import AGENT, AUDITOR, FAST_RETRY, OPERATOR, KernelsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KernelsServer]:
    """A running kernel (strict, policy of support.POLICY) in a temp dir."""
    srv = KernelsServer(tmp_path).start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"kernels serve exited with {code}: {''.join(srv.stderr_lines)}"


@pytest.fixture
def agent(server: KernelsServer) -> Iterator[KernelsClient]:
    with KernelsClient(server.url, AGENT, retry=FAST_RETRY) as c:
        yield c


@pytest.fixture
def auditor(server: KernelsServer) -> Iterator[KernelsClient]:
    with KernelsClient(server.url, AUDITOR, retry=FAST_RETRY) as c:
        yield c


@pytest.fixture
def operator(server: KernelsServer) -> Iterator[KernelsClient]:
    with KernelsClient(server.url, OPERATOR, retry=FAST_RETRY) as c:
        yield c

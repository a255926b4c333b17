"""Test support: the real ``kernels serve`` binary on 127.0.0.1:0, and a TCP
proxy that can lose an answer on the way back.

The server runs in a temp dir (its working directory, so no repository
config leaks in) with every inherited ``KERNELS_*`` variable removed and the
three quick-start tokens set. It prints ``kernels: serving on http://ADDR``
on stderr once bound; the fixture reads that line, then waits for ``/ready``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import httpx

from kernels_client import RetryPolicy

REPO = Path(__file__).resolve().parents[3]
OPERATOR = "py-operator-token-0001"
AUDITOR = "py-auditor-token-0001"
AGENT = "py-agent-token-0001"

#: Retries without the production backoff, so failure tests stay quick.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)

POLICY = """allowed_actors: [agent-001, alice]
allowed_tools: [echo, add, lookup, write_file, search]
max_intent_length: 1000
"""
CONFIG = """external_tools: [lookup, write_file, search]
"""


def kernels_bin() -> str:
    """The binary under test: ``KERNELS_BIN``, else ``<repo>/target/debug/kernels``."""
    path = os.environ.get("KERNELS_BIN") or str(REPO / "target" / "debug" / "kernels")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"the kernels binary {path} is missing: run `cargo build` or set KERNELS_BIN")
    return path


def clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The parent's environment without ``KERNELS_*``, plus the test tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELS_")}
    env.update(
        KERNELS_OPERATOR_TOKEN=OPERATOR,
        KERNELS_AUDITOR_TOKEN=AUDITOR,
        KERNELS_AGENT_TOKEN=AGENT,
        KERNELS_LOG="warn",
        RUST_BACKTRACE="0",
    )
    env.update(extra or {})
    return env


class KernelsServer:
    """A ``kernels serve`` child process."""

    def __init__(
        self,
        workdir: Path,
        *,
        policy: str = POLICY,
        config: str = CONFIG,
        kernel_id: str = "py-001",
        env: Optional[dict[str, str]] = None,
    ) -> None:
        self.workdir = workdir
        self.kernel_id = kernel_id
        self.env = env
        (workdir / "config").mkdir(parents=True, exist_ok=True)
        (workdir / "config" / "kernels.yaml").write_text(config)
        (workdir / "policy.yaml").write_text(policy)
        self.proc: Optional[subprocess.Popen[str]] = None
        self.url = ""
        self.stderr_lines: list[str] = []

    def start(self) -> "KernelsServer":
        """Starts the server and waits until it serves and is ready."""
        self.stderr_lines = []
        self.proc = subprocess.Popen(
            [
                kernels_bin(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "data",
                "--policy",
                "policy.yaml",
                "--kernel-id",
                self.kernel_id,
                "--variant",
                "strict",
            ],
            cwd=self.workdir,
            env=clean_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line)
                if line.startswith("kernels: serving on http://") and not found.is_set():
                    self.url = line.split("serving on ", 1)[1].strip()
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(60) or not self.url:
            self.kill()
            raise RuntimeError(f"kernels serve did not start: {''.join(self.stderr_lines)}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"kernels serve never became ready: {''.join(self.stderr_lines)}")

    def stop(self) -> int:
        """SIGTERM, then wait; answers the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL (cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def ledger_length(self) -> int:
        """The ledger length, read directly (no proxy) with the auditor token."""
        r = httpx.get(f"{self.url}/v1/status", headers={"authorization": f"Bearer {AUDITOR}"}, timeout=10)
        r.raise_for_status()
        return int(r.json()["ledger_length"])

    def entries(self) -> list[dict]:
        """Every entry, read directly with the auditor token."""
        out: list[dict] = []
        seq: Optional[int] = 0
        while seq is not None:
            r = httpx.get(
                f"{self.url}/v1/entries",
                params={"from_seq": seq, "limit": 1000},
                headers={"authorization": f"Bearer {AUDITOR}"},
                timeout=10,
            )
            r.raise_for_status()
            page = r.json()
            out.extend(page["entries"])
            seq = page["next_seq"]
        return out


def _recv_http_message(sock: socket.socket) -> bytes:
    """Reads one HTTP/1.1 message with a Content-Length body (what httpx sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class FaultyProxy:
    """A TCP proxy in front of ``upstream`` that misbehaves on chosen requests.

    Each request (one HTTP message from the client, read whole) is numbered
    from 1. ``fault(n, request_bytes)`` says what to do with request ``n``:
    ``"relay"`` (forward it and relay the answer), ``"drop_answer"`` (forward
    it, wait until the server answered, then close the client's connection
    without the answer), ``"busy"`` (answer 503 without forwarding) or
    ``"hang"`` (never answer). Requests seen are kept in ``requests``.
    """

    def __init__(self, upstream: str, fault: Callable[[int, bytes], str]) -> None:
        host, port = upstream.replace("http://", "").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.fault = fault
        self.requests: list[bytes] = []
        self.forwarded = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self._listener.getsockname()[1]
        self._closing = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._socks.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        try:
            while True:
                request = _recv_http_message(client)
                if not request:
                    return
                with self._lock:
                    self.requests.append(request)
                    n = len(self.requests)
                action = self.fault(n, request)
                if action == "busy":
                    body = b'{"error":"busy, try again","code":"busy"}'
                    client.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                        b"retry-after: 0\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                if action == "hang":
                    time.sleep(3600)
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    self._socks.append(upstream)
                upstream.sendall(request)
                with self._lock:
                    self.forwarded += 1
                answer = _recv_http_message(upstream)
                if action == "drop_answer":
                    with self._lock:
                        self.dropped += 1
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                client.sendall(answer)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def close(self) -> None:
        """Stops accepting and closes every connection."""
        self._closing = True
        self._listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"

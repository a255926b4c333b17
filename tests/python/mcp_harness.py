"""Real components for the MCP tests: the `kernels serve` binary on
127.0.0.1:0 over a temp data dir, `kernels mcp-proxy` in front of the SDK
fixture server (mcp_fixture_server.py), and a few API calls.

The binary is $KERNELS_BIN (scripts/test.sh sets it) or target/debug/kernels.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mcp import StdioServerParameters

REPO = Path(__file__).resolve().parents[2]
KERNELS_BIN = os.environ.get("KERNELS_BIN") or str(REPO / "target" / "debug" / "kernels")
FIXTURE = str(Path(__file__).with_name("mcp_fixture_server.py"))

AGENT = "mcp-agent-token-001"
OTHER_AGENT = "mcp-agent-token-002"
AUDITOR = "mcp-auditor-token-01"
OPERATOR = "mcp-operator-token-1"

POLICY = """\
allowed_actors: [agent-001, agent-002]
allowed_tools: [echo, add, fail, progress, sleep, confirm, exit_now]
"""


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELS_")}
    env["KERNELS_LOG"] = "warn"
    env.update(extra or {})
    return env


class Kernel:
    """A `kernels serve` child process."""

    def __init__(self, tmp: Path, policy: str = POLICY, config_extra: str = "", env_extra=None):
        if not Path(KERNELS_BIN).exists():
            raise RuntimeError(f"{KERNELS_BIN} is missing: build it (cargo build) or set KERNELS_BIN")
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        (tmp / "policy.yaml").write_text(policy)
        (tmp / "kernels.yaml").write_text(
            "tokens:\n"
            "  - {token_env: MCP_AGENT, role: agent, actors: [agent-001], name: mcp-agent}\n"
            "  - {token_env: MCP_AGENT_2, role: agent, actors: [agent-001, agent-002], name: mcp-agent-2}\n"
            "  - {token_env: MCP_AUDITOR, role: auditor, name: auditor}\n"
            "  - {token_env: MCP_OPERATOR, role: operator, name: ops}\n" + config_extra
        )
        self.env = clean_env(
            {
                "MCP_AGENT": AGENT,
                "MCP_AGENT_2": OTHER_AGENT,
                "MCP_AUDITOR": AUDITOR,
                "MCP_OPERATOR": OPERATOR,
                **(env_extra or {}),
            }
        )
        self.proc = None
        self.url = None
        self.stderr_lines = []
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [
                KERNELS_BIN, "serve", "--listen", "127.0.0.1:0",
                "--config", str(self.tmp / "kernels.yaml"),
                "--data-dir", str(self.tmp / "data"),
                "--policy", str(self.tmp / "policy.yaml"),
                "--kernel-id", "mcp-test",
            ],
            cwd=self.tmp, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        found = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                self.stderr_lines.append(line)
                m = re.search(r"serving on (http://\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            self.stop()
            raise RuntimeError("kernels serve did not start:\n" + "".join(self.stderr_lines))
        deadline = time.time() + 30
        while self.request("GET", "/ready", None)[0] != 200:
            if time.time() > deadline:
                raise RuntimeError("kernels serve never became ready")
            time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method, path, token, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def entries(self):
        code, body = self.request("GET", "/v1/entries?limit=1000", AUDITOR)
        assert code == 200, body
        return body["entries"]

    def decisions(self):
        """The entries deciding MCP calls (request ids `mcp-…`), outcomes left out."""
        return [
            e for e in self.entries()
            if (e["request_id"] or "").startswith("mcp-") and e["tool_name"] != "kernel.outcome"
        ]

    def outcomes(self):
        """The payloads of the `kernel.outcome` entries."""
        return [e["payload"] for e in self.entries() if e["tool_name"] == "kernel.outcome"]

    def halt(self, reason="mcp test halt"):
        code, body = self.request("POST", "/v1/halt", OPERATOR, {"reason": reason})
        assert code == 200, body

    def recover(self, reason="mcp test recover"):
        code, body = self.request("POST", "/v1/recover", OPERATOR, {"reason": reason})
        assert code == 200, body

    def set_policy(self, policy: dict, reason="mcp test"):
        code, body = self.request("PUT", "/v1/policy", OPERATOR, {"policy": policy, "reason": reason})
        assert code == 200, body


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def fixture_params(log: Path) -> StdioServerParameters:
    """The fixture server, run directly (no kernel in the path)."""
    return StdioServerParameters(
        command=sys.executable, args=[FIXTURE], env={"MCP_FIXTURE_LOG": str(log)}
    )


def proxy_params(server_url: str, log: Path, *flags: str, token: str = AGENT) -> StdioServerParameters:
    """The fixture server behind `kernels mcp-proxy`."""
    return StdioServerParameters(
        command=KERNELS_BIN,
        args=["mcp-proxy", "--server", server_url, *flags, "--", sys.executable, FIXTURE],
        env={"MCP_FIXTURE_LOG": str(log), "KERNELS_TOKEN": token, "KERNELS_LOG": "warn"},
    )


def ran(log: Path):
    """The tool runs the fixture server logged, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def closed_port_url() -> str:
    """The URL of a port nothing listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class HttpUpstream:
    """The fixture server on Streamable HTTP (127.0.0.1, a free port)."""

    def __init__(self, tmp: Path, log: Path):
        tmp.mkdir(parents=True, exist_ok=True)
        portfile = tmp / "upstream.url"
        self.headers_log = tmp / "headers.log"
        self.proc = subprocess.Popen(
            [sys.executable, FIXTURE, "--http", str(portfile)],
            env={**os.environ, "MCP_FIXTURE_LOG": str(log), "MCP_FIXTURE_HEADERS": str(self.headers_log)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(portfile.exists, timeout=30, what="the upstream MCP server to start")
        self.url = portfile.read_text()
        # Ready when it answers at all.
        def answers():
            try:
                urllib.request.urlopen(self.url, timeout=2)
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True
        wait_for(answers, timeout=30, what="the upstream MCP server to answer")

    def requests_seen(self):
        """Method and headers of every HTTP request the server received."""
        if not self.headers_log.exists():
            return []
        return [json.loads(line) for line in self.headers_log.read_text().splitlines() if line.strip()]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

"""``pip install ./clients/python`` on a fresh venv works, brings only the
core dependencies, and the installed client decides against the real server."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

from .support import AGENT, KernelsServer

CLIENT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys

import kernels_client
from kernels_client import KernelsClient, KernelRequest, ToolCall
assert kernels_client.__file__.find("site-packages") > 0, kernels_client.__file__
with KernelsClient(sys.argv[1], sys.argv[2]) as c:
    call = ToolCall(name="echo", params={"text": "ok"})
    r = c.submit(KernelRequest(actor="agent-001", intent="installed", tool_call=call))
print(r.decision.value, r.tool_result)
try:
    import langchain_core  # noqa: F401
    print("langchain-core installed")
except ImportError:
    print("no langchain-core")
"""


def test_pip_install_on_a_fresh_venv(tmp_path: Path, server: KernelsServer) -> None:
    # A copy, so the build leaves nothing in the source tree.
    src = tmp_path / "kernels-client"
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", "build", "dist"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(src)], capture_output=True, text=True, timeout=600
    )
    assert install.returncode == 0, install.stdout + install.stderr
    run = subprocess.run([str(python), "-c", SCRIPT, server.url, AGENT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["ALLOW ok", "no langchain-core"]

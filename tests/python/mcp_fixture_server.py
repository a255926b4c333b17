"""An MCP server built with the official Python SDK (MCPServer, formerly
FastMCP), used by the MCP proxy tests as the real upstream server.

Every tool that runs appends one JSON line to the file named by
MCP_FIXTURE_LOG, so a test can prove that a denied call never reached it.

    python mcp_fixture_server.py                 # stdio
    python mcp_fixture_server.py --http PORTFILE # Streamable HTTP on 127.0.0.1:0,
                                                 # the URL written to PORTFILE

On HTTP, the headers of every request that reaches it are appended to the
file named by MCP_FIXTURE_HEADERS (one JSON line each).
"""

import json
import os
import sys
import time
from typing import Annotated

import anyio
from pydantic import BaseModel

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Elicit, Resolve

mcp = MCPServer("kernels-fixture")


def ran(tool: str, **args) -> None:
    path = os.environ.get("MCP_FIXTURE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "args": args}, sort_keys=True) + "\n")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text."""
    ran("echo", text=text)
    return text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    ran("add", a=a, b=b)
    return a + b


@mcp.tool()
def delete_file(path: str) -> str:
    """Pretend to delete a file (a tool the policy should deny)."""
    ran("delete_file", path=path)
    return f"deleted {path}"


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails: a tool error (an isError result)."""
    ran("fail", reason=reason)
    raise ValueError(f"failed on purpose: {reason}")


@mcp.tool()
async def progress(steps: int, ctx: Context) -> str:
    """Report `steps` progress notifications, then finish."""
    ran("progress", steps=steps)
    for i in range(1, steps + 1):
        await ctx.report_progress(i, total=steps, message=f"step {i}")
    return f"done {steps} steps"


@mcp.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then log that it finished (a cancelled call never logs 'sleep_done')."""
    ran("sleep", seconds=seconds)
    await anyio.sleep(seconds)
    ran("sleep_done", seconds=seconds)
    return "slept"


class Confirm(BaseModel):
    ok: bool


async def ask_confirm(what: str) -> Elicit[Confirm]:
    return Elicit(f"Really {what}?", Confirm)


@mcp.tool()
async def confirm(what: str, answer: Annotated[Confirm, Resolve(ask_confirm)]) -> str:
    """Ask the user to confirm (elicitation: a server-to-client request on
    2025-11-25, an input_required result on 2026-07-28)."""
    ran("confirm", what=what, ok=answer.ok)
    return f"{what}: {'confirmed' if answer.ok else 'refused'}"


@mcp.tool()
def exit_now(code: int) -> str:
    """Exit the server process with `code` (no answer is sent)."""
    ran("exit_now", code=code)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import socket

        import uvicorn

        sock = socket.socket()
        # Accepted connections inherit it: no Nagle delay between the
        # response's writes on a kept-alive connection (40 ms otherwise).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        inner = mcp.streamable_http_app(host="127.0.0.1")

        async def app(scope, receive, send):
            # Logs the headers of every HTTP request that reaches this server.
            path = os.environ.get("MCP_FIXTURE_HEADERS")
            if path and scope["type"] == "http":
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"method": scope["method"], "headers": headers}, sort_keys=True) + "\n")
            await inner(scope, receive, send)

        config = uvicorn.Config(app, log_level="warning")
        server = uvicorn.Server(config)
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(f"http://127.0.0.1:{port}/mcp")
        os.rename(sys.argv[2] + ".tmp", sys.argv[2])
        anyio.run(lambda: server.serve(sockets=[sock]))
    else:
        mcp.run()

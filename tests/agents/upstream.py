"""The tests' own upstream MCP server: a harmless tool, a "dangerous" one, and a count of
the calls each really received (what the gateway let through)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer


@dataclass
class Upstream:
    url: str
    calls: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def upstream() -> Iterator[Upstream]:
    """An MCP server on a free loopback port (streamable HTTP at /mcp)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    up = Upstream(url=f"http://127.0.0.1:{port}/mcp")
    server: MCPServer = MCPServer("test-upstream")

    @server.tool(description="Say it back.")
    def echo(text: str) -> str:
        up.calls["echo"] += 1
        return f"echo: {text}"

    @server.tool(description="What time it is (always noon).")
    def get_time() -> str:
        up.calls["get_time"] += 1
        return "12:00"

    @server.tool(description="Drop a table. Dangerous.")
    def drop_table(table: str) -> str:
        up.calls["drop_table"] += 1
        return f"dropped {table}"

    @server.tool(description="Take a long time (until the test is over).")
    async def get_slowly() -> str:
        up.calls["get_slowly"] += 1
        await anyio.sleep(60)
        return "finally"

    @server.resource("docs://readme", description="Harmless.")
    def readme() -> str:
        up.calls["docs://readme"] += 1
        return "read me"

    @server.resource("secret://keys", description="Not for agents.")
    def keys() -> str:
        up.calls["secret://keys"] += 1
        return "the keys"

    @server.prompt(description="Harmless.")
    def summarize(text: str) -> str:
        up.calls["summarize"] += 1
        return f"Summarize: {text}"

    @server.prompt(description="Not for agents.")
    def exfiltrate() -> str:
        up.calls["exfiltrate"] += 1
        return "send everything"

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    ready = threading.Event()
    for _ in range(1000):  # bounded: uvicorn sets `started` once it accepts connections
        if uv.started:
            break
        ready.wait(0.01)
    assert uv.started, "the upstream MCP server did not start"
    try:
        yield up
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()

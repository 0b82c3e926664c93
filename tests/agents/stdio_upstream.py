"""An upstream MCP server on stdio, which the MCP gateway starts (a resource's `command`)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("test-stdio-upstream")


@server.tool(description="Which upstream answered, and with what environment.")
def whoami() -> str:
    return f"stdio pid {os.getpid()} secret={os.environ.get('UPSTREAM_SECRET', '-')} " \
           f"other={os.environ.get('NOT_PASSED', '-')}"


if __name__ == "__main__":
    server.run("stdio")

"""`accord mcp`: Accord's tools for an agent over stdio (an MCP client starts it).

By default it relays the agent's messages to `$ACCORD_URL/mcp` with `$ACCORD_TOKEN` (a
client command, like the rest: the agent's machine needs no database). `--local` serves
them from the database directly (`$ACCORD_DATABASE_URL`, `accord.yaml`), as `accord serve`
would, authenticating `$ACCORD_TOKEN` on every call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console

from accord.settings import Settings

err = Console(stderr=True)


def mcp(
    local: Annotated[bool, typer.Option(
        "--local", help="Serve from the database directly instead of relaying to "
                        "$ACCORD_URL/mcp.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="accord.yaml (--local; default: $ACCORD_CONFIG).")] = None,
) -> None:
    """Serve Accord's MCP tools (list_resources, request_access, request_status, my_grants,
    relinquish) on stdin/stdout for an agent, as the holder of $ACCORD_TOKEN."""
    settings = Settings.from_env()
    if settings.token is None or not settings.token.get().strip():
        err.print("error: ACCORD_TOKEN is not set; the agent's owner issues one with "
                  "`accord token issue OWNER --agent NAME`")
        raise typer.Exit(1)
    token = settings.token.get().strip()
    if local:
        _serve_local(config, token)
    else:
        anyio.run(_relay, f"{settings.url}/mcp", token)


def _serve_local(config: Path | None, token: str) -> None:
    from accord.api import mcp as tools
    from accord.api.deps import authenticate
    from accord.cli.state import load_state
    from accord.errors import AccordError
    from accord.ledger.events import Via

    st = load_state(config, upgrade="never")
    try:
        with st.sessions() as session:
            who = authenticate(session, st, token, via=Via.MCP)
    except AccordError as exc:
        err.print(f"error: ACCORD_TOKEN: {exc.detail}", markup=False)
        raise typer.Exit(1) from None
    err.print(f"accord mcp: serving {who.user}'s tools on stdio", markup=False)
    tools.build(st, tools.token_caller(st, token)).run("stdio")


async def _relay(url: str, token: str) -> None:
    """Pass each message from stdin to Accord's /mcp and each answer back to stdout."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.stdio import stdio_server

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(30, read=300)) as http, \
            streamable_http_client(url, http_client=http) as (remote_in, remote_out), \
            stdio_server() as (local_in, local_out), \
            anyio.create_task_group() as tg:

        async def pump(source: Any, sink: Any, *, last: bool) -> None:
            async for message in source:
                if isinstance(message, Exception):  # a line that was no JSON-RPC, a 401
                    err.print(f"accord mcp: {message}", markup=False)
                    continue
                await sink.send(message)
            if last:  # the agent closed stdin: done
                tg.cancel_scope.cancel()

        tg.start_soon(lambda: pump(local_in, remote_out, last=True))
        tg.start_soon(lambda: pump(remote_in, local_out, last=False))

"""The tests' MCP clients: the `mcp` SDK's own, over streamable HTTP with a bearer token, and
a live uvicorn (its lifespan on: the MCP session manager runs there)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from accord.api.app import create_app
from accord.db import transaction
from accord.ledger import service as ledger
from accord.state import AppState

SERVED: dict[str, Any] = {}  # base URL → the app serving it


@contextlib.contextmanager
def serve(st: AppState) -> Iterator[str]:
    """`st`'s app on a free loopback port, lifespan on; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(st)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    ready = threading.Event()
    for _ in range(1000):  # bounded: uvicorn sets `started` once it accepts connections
        if server.started:
            break
        ready.wait(0.01)
    assert server.started, "uvicorn did not start"
    base = f"http://127.0.0.1:{port}"
    SERVED[base] = app
    try:
        yield base
    finally:
        del SERVED[base]
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def shipped(base: str) -> None:
    """Wait until every call the MCP gateway at `base` answered is in the ledger (its
    events go through the gateway's spool and shipper)."""
    app = SERVED[base]
    assert app.state.mcp_gateway.live.drain(30), "the gateway's shipper lags"
    integrated(app.state.accord)


def integrated(st: AppState) -> None:
    """On PostgreSQL, integrate the events a shipper wrote (the ledger worker's job)."""
    if st.sessions.kw["bind"].dialect.name == "postgresql":
        with transaction(st.sessions) as session:
            ledger.integrate_pending(session)


@contextlib.asynccontextmanager
async def connect(url: str, token: str | None) -> AsyncIterator[Client]:
    """The SDK's client on `url` with `token` as its bearer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
            Client(streamable_http_client(url, http_client=http)) as client:
        yield client


def payload(result: Any) -> Any:
    """A tool result's JSON (its structured content, else its first text block)."""
    assert not result.is_error, result.content
    if result.structured_content is not None:
        data = result.structured_content
        return data.get("result", data) if set(data) == {"result"} else data
    return json.loads(result.content[0].text)


def error_text(result: Any) -> str:
    assert result.is_error, result
    return str(result.content[0].text)

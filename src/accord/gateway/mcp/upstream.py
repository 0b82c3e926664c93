"""Tool calls to an HTTP upstream as they are: one JSON-RPC request in a POST on a kept-alive
HTTP/1.1 connection, its answer's bytes back.

The SDK's client costs about a millisecond of CPU a call (pydantic models both ways, a task
per request, httpx); the gateway has no use for any of it on a `tools/call` to an upstream
speaking the per-request protocol (2026-07-28), where a request needs no session. So the
gateway writes the request itself and reads the answer with uvicorn's parser (httptools),
on connections it keeps open between calls (a new one costs a TCP handshake; an idle one
is dropped after `IDLE` seconds, below the usual keep-alive timeouts of servers, 5 s for
uvicorn, so that a server closing one is not what a call runs into).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from urllib.parse import urlsplit

import httptools

IDLE = 2.0  # seconds an idle connection is kept
MAX_IDLE = 64  # idle connections kept per upstream


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in HTTP."""


class _Response:
    """One HTTP response, as httptools hands it over."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        # Asked now: once the message is complete the parser is reset for the next one.
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class HttpUpstream:
    """Kept-alive HTTP/1.1 connections to one upstream URL, and a POST on them."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        host = parts.netloc.rpartition("@")[2]  # never the URL's credentials
        fixed = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                 "Accept: application/json, text/event-stream", "User-Agent: accord-gateway",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self._head = "\r\n".join(fixed).encode("latin-1") + b"\r\n"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._ssl = ssl.create_default_context() if self.tls else None

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < IDLE and not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                             limit=1 << 20)

    async def post(self, body: bytes, headers: bytes = b"") -> tuple[int, bytes, bytes]:
        """POST `body` (with `headers`: more header lines, each ending in CRLF); the
        answer's status, content type and body. Raises UpstreamError or TimeoutError."""
        async with asyncio.timeout(self.timeout):
            reader, writer = await self._connection()
            kept = False
            try:
                writer.write(self._head + headers + b"Content-Length: %d\r\n\r\n" % len(body)
                             + body)
                response = _Response()
                while not response.done:
                    data = await reader.read(65536)
                    if not data:
                        raise UpstreamError("the upstream closed the connection")
                    response.parser.feed_data(data)
                kept = response.keep_alive
            except (OSError, httptools.HttpParserError) as exc:
                raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
            finally:
                if kept and len(self._idle) < MAX_IDLE:
                    self._idle.append((reader, writer, time.monotonic()))
                else:  # cancelled or failed half-way: what is left on it is unknown
                    writer.close()
        content_type = response.headers.get(b"content-type", b"").split(b";")[0].strip()
        return response.status, content_type, b"".join(response.chunks)

    def close(self) -> None:
        for _, writer, _ in self._idle:
            with contextlib.suppress(Exception):
                writer.close()
        self._idle.clear()


def sse_message(body: bytes) -> bytes | None:
    """The last `message` event's data in a text/event-stream body (a response sent as SSE
    ends its stream with it; progress notifications before it are not passed on)."""
    found: bytes | None = None
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].removeprefix(b" ") for line in event.split(b"\n")
                if line.startswith(b"data:")]
        kind = next((line[6:].strip() for line in event.split(b"\n")
                     if line.startswith(b"event:")), b"message")
        if data and kind == b"message":
            found = b"\n".join(data)
    return found

"""A deadline for request headers, which uvicorn does not have.

uvicorn closes a keep-alive connection that stays idle between requests
(`timeout_keep_alive`), but a connection that is opened and then sends nothing, or sends
its headers a byte at a time, is kept for as long as the client likes: each holds a file
descriptor, and enough of them exhaust the process's limit (slowloris). `limit_concurrency`
does not help: uvicorn counts such connections but answers 503 only to a request whose
headers have arrived.

`HeaderDeadline` is a thin layer over uvicorn's own HTTP protocol classes (httptools or h11,
chosen as uvicorn's "auto" would), below ASGI: from the moment a connection opens, and
again when the first byte of a later request on a kept-alive connection arrives, the
client has `header_timeout` seconds to complete the request line and headers, and at most
`max_header_bytes` for them. Past the deadline the connection is closed, with
`408 Request Timeout` if part of a request had come; past the size, `431`. What happens
after the headers (the body, the response, a live page's event stream) is not limited
here: the app limits bodies to 64 KiB and answers promptly.

**Requests per connection.** After `max_requests` requests (100, as Apache's
MaxKeepAliveRequests; nginx's keepalive_requests is 1000) a kept-alive connection's answer
says `Connection: close`, and the client opens another. With `--workers N`, connections are
accepted by whichever worker is first to look: without this, a client's few long-lived
connections (an identity provider's push, a load balancer's pool) stayed on the worker that
happened to accept them, and one process's GIL served all of them while the other idled
(seen in a SCIM push: 1,261 samples of work in one worker, 1 in the other). A reconnect is
accepted first by the worker with time to look: the idle one.

`configure()` sets these limits for the process; `accord serve` calls it, and in
`--workers N` mode each HTTP worker calls it from its settings (ACCORD_HEADER_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("accord.api")

DEFAULT_HEADER_TIMEOUT = 10.0  # seconds (nginx's client_header_timeout is 60, Go's often 5-10)
MAX_HEADER_BYTES = 64 * 1024  # the request line and headers; the body limit is 64 KiB too
MAX_REQUESTS = 100  # on one kept-alive connection (see the module docstring)


def _reply(status: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


REQUEST_TIMEOUT = _reply(b"408 Request Timeout")
TOO_LARGE = _reply(b"431 Request Header Fields Too Large")


class HeaderDeadline(asyncio.Protocol):
    """Mixed in before one of uvicorn's HTTP protocols (see the module docstring)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES
    max_requests: int = MAX_REQUESTS

    # Set by the uvicorn protocol this is mixed into.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any  # the current request/response cycle; a new one once headers are parsed

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_after: Any = None  # the cycle before the request we wait on
        self._header_bytes = 0
        self._requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        if self._deadline is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._deadline is None:
            return
        if self.cycle is not self._waiting_after:  # its headers are in: no deadline now
            self._disarm()
            self._requests += 1
            if self._requests >= self.max_requests:
                self._last_request(self.cycle)
        elif self._header_bytes > self.max_header_bytes:
            self._close(TOO_LARGE, "request headers over %d bytes", self.max_header_bytes)

    def _last_request(self, cycle: Any) -> None:
        """The answer to `cycle` says `Connection: close`, and the connection closes after
        it (httptools' cycle adds the header itself when it will not keep the connection)."""
        cycle.keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_after, self._header_bytes = self.cycle, 0
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._close(REQUEST_TIMEOUT if self._header_bytes else b"",
                    "no complete request headers within %ss", self.header_timeout)

    def _close(self, reply: bytes, why: str, *args: Any) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        log.debug("closing a connection from %s: " + why,
                  self.transport.get_extra_info("peername"), *args)
        if reply:
            self.transport.write(reply)
        self.transport.close()


class H11WithDeadline(HeaderDeadline, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol, with the header deadline."""

    def _last_request(self, cycle: Any) -> None:
        # h11's cycle closes without saying so; with the header in the answer, h11 itself
        # closes after it. The cycle's task has not started: it will call this `send`.
        send = cycle.send

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"connection", b"close")]}
            await send(message)

        cycle.send = closing


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional (uvicorn[standard]); h11 always works
    PROTOCOL = f"{__name__}:H11WithDeadline"
else:

    class HttpToolsWithDeadline(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools (llhttp) protocol, with the header deadline."""

    PROTOCOL = f"{__name__}:HttpToolsWithDeadline"


def configure(*, header_timeout: float, max_header_bytes: int = MAX_HEADER_BYTES) -> str:
    """Set this process's limits; returns the protocol for uvicorn's `http=` setting (an
    import string, which `--workers` mode passes to its processes)."""
    if header_timeout <= 0 or max_header_bytes <= 0:
        raise ValueError("the header timeout and size must be positive")
    HeaderDeadline.header_timeout = header_timeout
    HeaderDeadline.max_header_bytes = max_header_bytes
    return PROTOCOL

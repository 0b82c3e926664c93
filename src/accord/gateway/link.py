"""One side of a proxied connection: an asyncio Protocol read by a coroutine during the
handshake, then handed to a callback for the data path (no copy through streams).

Protocol-neutral: a protocol reads its handshake's framing with `read_exactly`
(`postgres.protocol.read_startup` and `read_message` for PostgreSQL).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast


class Closed(Exception):
    """The peer went away."""


class Link(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Link | None = None  # whose reading pauses while our writes back up
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        on_data = self.on_data
        if on_data is not None:
            on_data(data)
            return
        self._buf += data
        self._wake()

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.resume_reading()

    # -- handshake reading

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake()
        if self.on_lost is not None:
            self.on_lost()

    async def _more(self) -> None:
        if self.closed:
            raise Closed()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._more()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def start_tls(self, ctx: ssl.SSLContext, *, server_side: bool,
                        server_hostname: str | None = None) -> None:
        """Switch this connection to TLS. Bytes already read go to TLS first: a MySQL client
        sends its first TLS record right behind its SSL request, without waiting."""
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        raw = self.transport
        # Nothing more reaches this (plain) protocol: a TLS hello arriving before start_tls
        # has put its own protocol in place would land in our buffer, behind `early`, and the
        # handshake would wait for it until the login's time ran out. start_tls resumes
        # reading once its protocol is connected.
        raw.pause_reading()
        early = bytes(self._buf)
        self._buf.clear()
        task = asyncio.ensure_future(loop.start_tls(raw, self, ctx, server_side=server_side,
                                                    server_hostname=server_hostname))
        if early:
            def feed() -> None:
                proto = raw.get_protocol()
                if proto is self:  # start_tls has not put its TLS protocol in place yet
                    loop.call_soon(feed)
                    return
                # Its connection_made was queued with it: run after that one.
                loop.call_soon(_give, proto, early)

            loop.call_soon(feed)
        self.transport = cast(asyncio.Transport, await task)

    # -- writing and the data path

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def switch(self, on_data: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        """Hand the connection to the data path; bytes already read go first."""
        self.on_lost = on_lost
        self.on_data = on_data
        # Straight to the data path: uvloop takes `data_received` when a protocol is set,
        # so shadowing it and setting ourselves again saves a call per read.
        self.data_received = on_data  # type: ignore[method-assign,assignment]
        if self.transport is not None:
            self.transport.set_protocol(self)
        if self._buf:
            rest = bytes(self._buf)
            self._buf.clear()
            on_data(rest)
        if self.closed:
            on_lost()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _give(proto: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand `data` to a protocol as if it had just been read. By what it implements, not
    its class: uvloop's TLS protocol buffers reads but subclasses neither asyncio class (an
    isinstance test dropped a MySQL client's TLS hello read with its SSL request, and the
    handshake waited until the login's time ran out)."""
    if hasattr(proto, "get_buffer") and hasattr(proto, "buffer_updated"):
        pos = 0
        while pos < len(data):
            buf = memoryview(proto.get_buffer(len(data) - pos))
            n = min(len(buf), len(data) - pos)
            buf[:n] = data[pos:pos + n]
            proto.buffer_updated(n)
            pos += n
    elif hasattr(proto, "data_received"):
        proto.data_received(data)
    else:
        raise TypeError(f"cannot hand bytes to {type(proto).__name__}")

"""A bare byte forwarder on uvloop: no parsing, no auth, no auditing.

The floor for any proxy written in Python: `benchmarks/gateway.py` runs pgbench through it
beside the gateway, so the gateway's cost of reading, enforcing and auditing every
statement is measured against what merely relaying the bytes costs in the same run.

    python benchmarks/forwarder.py PORT UPSTREAM   # UPSTREAM: /path/.s.PGSQL.5432 or HOST:PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Side(asyncio.Protocol):
    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # client bytes sent before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Client(Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.opening = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        if UPSTREAM.startswith("/"):
            _, up = await loop.create_unix_connection(lambda: Side(self), UPSTREAM)
        else:
            host, _, port = UPSTREAM.rpartition(":")
            _, up = await loop.create_connection(lambda: Side(self), host, int(port))
        self.peer = up
        assert up.transport is not None
        for data in self.early:
            up.transport.write(data)
        self.early.clear()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    UPSTREAM = sys.argv[2]
    uvloop.run(main(int(sys.argv[1])))

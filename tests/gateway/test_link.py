"""`Link.start_tls` on uvloop (the gateway's loop), with the client's TLS hello read in the
same read as the plain bytes before it, as a MySQL client sends its SSL request and its
hello back to back. uvloop's TLS protocol subclasses neither asyncio protocol class; the
hello handed over by class test was dropped and the handshake hung until the login's
timeout (a flaky TLS login test found it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from pathlib import Path

import uvloop

from accord.gateway.link import Link
from tests.gateway.test_gateway import _self_signed


def _client(port: int, out: list[bytes]) -> None:
    """Send b"TLS?" and the TLS hello in one write, finish the handshake, read one reply."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        sock.sendall(b"TLS?" + outgoing.read())  # one segment: the server reads both at once
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed during the handshake") from None
                incoming.write(data)
        if outgoing.pending:
            sock.sendall(outgoing.read())
        while True:
            try:
                out.append(tls.read(1024))
                return
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed before the reply") from None
                incoming.write(data)


def test_a_hello_read_with_the_plain_bytes_before_it_reaches_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    loop = uvloop.new_event_loop()
    replies: list[bytes] = []
    threads: list[threading.Thread] = []
    try:
        async def main() -> None:
            links: list[Link] = []

            def made() -> Link:
                link = Link()
                links.append(link)
                return link

            server = await loop.create_server(made, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            client = threading.Thread(target=_client, args=(port, replies), daemon=True)
            threads.append(client)
            client.start()
            while not links:
                await asyncio.sleep(0.01)
            link = links[0]
            assert await link.read_exactly(4) == b"TLS?"
            # the hello is already in the link's buffer: the case the fix is for
            await asyncio.wait_for(link.start_tls(server_ctx, server_side=True), 10)
            link.write(b"hello over TLS")
            while client.is_alive():  # it reads the reply
                await asyncio.sleep(0.01)
            server.close()

        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
        for thread in threads:
            thread.join(15)
    assert replies == [b"hello over TLS"]

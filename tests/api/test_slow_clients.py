"""Slow and idle clients against a real `accord serve`: a deadline for request headers,
uvicorn's keep-alive timeout, and its connection limit (503 past it).

Every wait here is for the server to act (a socket read that returns when the server
closes or answers), bounded; the clock is read only to check that the server waited for
the configured time and no longer.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from accord.api import connections
from tests.conftest import POLICY
from tests.serverproc import Server

HEADER_TIMEOUT = 2.0
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
FULL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _server(tmp: Path, *args: str) -> Server:
    config = tmp / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": f"sqlite:///{tmp / 'accord.db'}",
           "ACCORD_DATA_DIR": str(tmp)}
    return Server(env, config, tmp / "server.log", args)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = _server(tmp_path_factory.mktemp("slow"), "--header-timeout", str(HEADER_TIMEOUT),
                "--timeout-keep-alive", "1", "--limit-concurrency", "500", "--no-worker")
    s.start()
    yield s
    s.stop()


def _open(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def _until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection over {limit} s") from None
    finally:
        sock.close()
    return data, time.monotonic()


def _response(sock: socket.socket) -> bytes:
    """One complete response (headers and a Content-Length body) from a kept-alive socket."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_many_slow_clients_neither_block_the_server_nor_stay(server: Server) -> None:
    start = time.monotonic()
    slow = [_open(server.port, PARTIAL) for _ in range(100)]  # headers never finished
    idle = [_open(server.port) for _ in range(20)]  # nothing sent at all
    # The server answers everyone else meanwhile.
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    answered = time.monotonic()
    assert answered - start < HEADER_TIMEOUT, "too slow to show the slow ones were still open"
    for sock in slow:
        data, closed = _until_closed(sock)
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert HEADER_TIMEOUT * 0.9 <= closed - start <= HEADER_TIMEOUT + 5
    for sock in idle:
        data, closed = _until_closed(sock)
        assert data == b""  # nothing was asked: closed without a word
        assert HEADER_TIMEOUT * 0.9 <= closed - start <= HEADER_TIMEOUT + 5
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def test_a_header_sent_byte_by_byte_does_not_extend_the_deadline(server: Server) -> None:
    sock = _open(server.port, PARTIAL)
    start = time.monotonic()
    sock.settimeout(0.2)  # paces the client: one more byte whenever the server is quiet
    data = b""
    while time.monotonic() - start < HEADER_TIMEOUT + 5:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    closed = time.monotonic()
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert HEADER_TIMEOUT * 0.9 <= closed - start <= HEADER_TIMEOUT + 3


def test_a_kept_alive_connection_idles_out_and_its_next_request_has_a_deadline(
        server: Server) -> None:
    # idle after a response: uvicorn's keep-alive timeout (1 s here) closes it
    sock = _open(server.port, FULL)
    assert _response(sock).startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    data, closed = _until_closed(sock)
    assert data == b"" and 0.9 <= closed - answered <= 4
    # a second request begun and never finished: the header deadline applies again
    sock = _open(server.port, FULL)
    assert _response(sock).startswith(b"HTTP/1.1 200 ")
    sock.sendall(PARTIAL)
    begun = time.monotonic()
    data, closed = _until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert HEADER_TIMEOUT * 0.9 <= closed - begun <= HEADER_TIMEOUT + 5


def test_oversized_headers_are_refused(server: Server) -> None:
    sock = _open(server.port, PARTIAL + b"a" * (connections.MAX_HEADER_BYTES + 1024))
    data, _ = _until_closed(sock)
    assert data.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), data


def test_past_limit_concurrency_requests_get_503(tmp_path: Path) -> None:
    s = _server(tmp_path, "--limit-concurrency", "5", "--header-timeout", "60",
                "--no-worker")
    s.start()
    try:
        held = [_open(s.port) for _ in range(5)]
        r = httpx.get(s.url + "/healthz", timeout=5)
        assert r.status_code == 503, r.text  # uvicorn's own answer, before the app
        for sock in held:
            sock.close()
        # The server sees the closes on its own schedule: ask until it has (bounded).
        deadline = time.monotonic() + 10
        while (status := httpx.get(s.url + "/healthz", timeout=5).status_code) == 503:
            assert time.monotonic() < deadline, "the limit did not free up"
        assert status == 200
    finally:
        s.stop()


# ------------------------------------------------- the guard on both of uvicorn's parsers


async def _ok(scope: dict[str, object], receive: object, send: object) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


PROTOCOLS = ["accord.api.connections:H11WithDeadline",
             "accord.api.connections:HttpToolsWithDeadline"]


@contextmanager
def _serving(protocol: str) -> Iterator[int]:
    """uvicorn with `protocol` in a thread, serving `_ok`; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_ok, http=protocol, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):  # bounded: uvicorn sets `started` once it accepts connections
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_deadline_holds_on_h11_and_httptools(protocol: str) -> None:
    before = connections.HeaderDeadline.header_timeout
    connections.configure(header_timeout=0.5)
    try:
        with _serving(protocol) as port:
            # a complete request is answered, however near the deadline it ends
            fast = _open(port, FULL)
            assert _response(fast).startswith(b"HTTP/1.1 200 ")
            fast.close()
            start = time.monotonic()
            data, closed = _until_closed(_open(port, PARTIAL))
            assert data.startswith(b"HTTP/1.1 408 "), data
            assert 0.45 <= closed - start <= 3
            data, _ = _until_closed(_open(port, PARTIAL + b"a" * (70 * 1024)))
            assert data.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), data
    finally:
        connections.configure(header_timeout=before)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_kept_alive_connection_closes_after_max_requests(
        protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """So that with --workers N a client's long-lived connections are spread again: each
    reconnect goes to the worker first to accept it."""
    monkeypatch.setattr(connections.HeaderDeadline, "max_requests", 3)
    with _serving(protocol) as port:
        conn = _open(port)
        heads = []
        for _ in range(2):
            conn.sendall(FULL)
            heads.append(_response(conn).lower())
        assert all(b"connection: close" not in h for h in heads), heads
        conn.sendall(FULL)
        data, _ = _until_closed(conn)  # the third answer, then the server closes
        assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data.lower()

"""Sinks against real local listeners: files, syslog over UDP and TCP, an HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from accord.db import transaction
from accord.ledger.events import Actor, EventType
from accord.ledger.service import record, tree_size
from accord.ledger.sinks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JsonlSink,
    SinkState,
    SyslogSink,
    WebhookSink,
    pump,
)
from tests.conftest import Env


def _append(env: Env, n: int) -> None:
    with transaction(env.st.sessions) as session:
        for i in range(n):
            record(session, type=EventType.POLICY_LOADED, actor=Actor.system(),
                   subject=f"sink-test:{i}", data={"i": i, "pad": "x" * 200})


def _size(env: Env) -> int:
    with env.st.sessions() as s:
        return tree_size(s)


def test_jsonl_rotates_and_resumes_from_its_cursor(env: Env, tmp_path: Path) -> None:
    _append(env, 30)
    path = tmp_path / "audit" / "events.jsonl"
    state = SinkState(JsonlSink("file", path, max_bytes=4096, keep=50), batch=7)
    first = pump(env.st.sessions, state)
    assert first == _size(env)
    _append(env, 12)
    # a new process: a fresh sink object, the cursor comes from the database
    again = SinkState(JsonlSink("file", path, max_bytes=4096, keep=50), batch=7)
    assert pump(env.st.sessions, again) == 12
    files = sorted(path.parent.glob("events.jsonl*"))
    assert len(files) > 2  # rotated
    seen = [json.loads(line)["index"] for f in files for line in f.read_text().splitlines()]
    assert sorted(seen) == list(range(_size(env)))


class _UDP(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.got.append(self.request[0])  # type: ignore[attr-defined]


class _TCP(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        buf = b""
        while chunk := self.request.recv(65536):
            buf += chunk
            while b" " in buf:
                length, _, rest = buf.partition(b" ")
                if len(rest) < int(length):
                    break
                self.server.got.append(rest[: int(length)])  # type: ignore[attr-defined]
                buf = rest[int(length):]


@pytest.fixture(params=["udp", "tcp"])
def syslog_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, socketserver.BaseServer]]:
    cls = (socketserver.ThreadingUDPServer if request.param == "udp"
           else socketserver.ThreadingTCPServer)
    server = cls(("127.0.0.1", 0), _UDP if request.param == "udp" else _TCP)
    server.got = []  # type: ignore[attr-defined]
    server.daemon_threads = True  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, server
    server.shutdown()
    server.server_close()


RFC5424 = re.compile(rb'^<(\d+)>1 (\S+) (\S+) accord (\d+) (\S+) \[accord@32473 index="(\d+)" '
                     rb'subject="([^"]*)"\] (\{.*\})$', re.S)


def test_syslog_rfc5424(env: Env, syslog_server: tuple[str, Any]) -> None:
    protocol, server = syslog_server
    _append(env, 5)
    sink = SyslogSink("syslog", "127.0.0.1", server.server_address[1], protocol)
    state = SinkState(sink, batch=3)
    n = pump(env.st.sessions, state)
    sink.close()
    assert n == _size(env)
    done = threading.Event()
    for _ in range(200):  # the listener thread files what it read; wait for it, bounded
        if len(server.got) >= n:
            break
        done.wait(0.01)
    assert len(server.got) == n
    indices = []
    for msg in server.got:
        m = RFC5424.match(msg)
        assert m, msg[:120]
        assert int(m.group(1)) == 10 * 8 + 5
        event = json.loads(m.group(8))
        assert m.group(5).decode() == event["type"]
        indices.append(int(m.group(6)))
    assert sorted(indices) == list(range(n))


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv: Any = self.server
        srv.calls += 1
        if srv.calls <= srv.fail_first:
            self.send_response(500)
            self.end_headers()
            return
        stamp = self.headers[TIMESTAMP_HEADER]
        want = "sha256=" + hmac.new(b"s3cret", stamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
        srv.signatures_ok &= hmac.compare_digest(want, self.headers[SIGNATURE_HEADER])
        srv.batches.append((self.headers["Idempotency-Key"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_batches_are_signed_and_retried(env: Env) -> None:
    server: Any = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.calls, server.fail_first, server.batches, server.signatures_ok = 0, 2, [], True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _append(env, 9)
        sink = WebhookSink("hook", f"http://127.0.0.1:{server.server_address[1]}/in", b"s3cret")
        state = SinkState(sink, batch=10)
        assert pump(env.st.sessions, state) == 0  # HTTP 500: nothing delivered, cursor kept
        for _ in range(2):
            state.retry_at = 0  # skip the backoff wait
            pump(env.st.sessions, state)
        sink.close()
    finally:
        server.shutdown()
        server.server_close()
    assert server.calls >= 3
    assert server.signatures_ok
    delivered = [e["index"] for _key, b in server.batches for e in b["events"]]
    assert sorted(delivered) == list(range(_size(env)))
    assert all(key.startswith("hook:") for key, _ in server.batches)


def test_a_refusing_target_keeps_its_cursor(env: Env, tmp_path: Path) -> None:
    _append(env, 3)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    state = SinkState(SyslogSink("down", "127.0.0.1", port, "tcp"), batch=10)
    assert pump(env.st.sessions, state) == 0
    assert state.failures == 1 and state.retry_at > 0
    ok = SinkState(JsonlSink("down", tmp_path / "x.jsonl", 1 << 20, 2), batch=100)
    assert pump(env.st.sessions, ok) == _size(env)  # same cursor name: starts from 0


def test_an_abandoned_bundle_download_lets_go_of_the_database(tmp_path: Path) -> None:
    """A client that stops reading must not leave the export holding SQLite's write lock."""
    import threading as th

    from accord.bootstrap import build_state
    from accord.ledger import views
    from accord.settings import Settings

    config = tmp_path / "accord.yaml"
    from tests.conftest import POLICY

    config.write_text(POLICY, encoding="utf-8")
    env = {"ACCORD_DATA_DIR": str(tmp_path), "ACCORD_DATABASE_URL":
           f"sqlite:///{tmp_path / 'a.db'}"}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    with transaction(st.sessions) as session:
        for i in range(20_000):
            record(session, type=EventType.POLICY_LOADED, actor=Actor.system(),
                   subject=f"bulk:{i}", data={"i": i, "pad": "x" * 300})
    stream = views._stream(st)
    next(stream)  # the client reads one chunk ...
    stream.close()  # ... and goes away
    with transaction(st.sessions) as session:  # a writer gets the lock at once
        record(session, type=EventType.POLICY_LOADED, actor=Actor.system(), subject="after")
    exporters = [t for t in th.enumerate() if t.name == "accord-bundle"]
    for t in exporters:
        t.join(timeout=10)
        assert not t.is_alive()
    st.sessions.kw["bind"].dispose()

"""The webhook connector against a real local HTTP server (http.server in a thread)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from accord.provisioning.base import ConnectorError, GrantSpec
from accord.provisioning.webhook import WebhookConnector
from accord.signing import sign
from accord.signing import verify as verify_signature
from accord.spec.resources import ResourceSpec, WebhookTarget

SECRET = b"webhook-s3cret"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the server answers next, and what it was sent."""

    url: str
    status: int = 200
    reply: Any = None
    block: bool = False  # hold the answer until `release` is set
    release: threading.Event = field(default_factory=threading.Event)
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def _serve(self) -> None:
        receiver: Receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        receiver.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        if receiver.block:
            receiver.release.wait(10)
        payload = b"" if receiver.reply is None else json.dumps(receiver.reply).encode()
        try:
            self.send_response(receiver.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (the timeout test)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    rec = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/accord/hook")
    server.receiver = rec  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def connector(url: str, timeout: timedelta = timedelta(seconds=5)) -> WebhookConnector:
    target = WebhookTarget(type="webhook", url=url, secret_env="HOOK_SECRET", timeout=timeout)
    resource = ResourceSpec(name="tickets", roles=["agent", "admin"], provision=target)
    return WebhookConnector(resource, target, SECRET)


def spec(action: str = "grant", user: str = "alice", role: str = "agent") -> GrantSpec:
    return GrantSpec(grant_id=17, user=user, resource="tickets", role=role,
                     ends_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
                     idempotency_key=f"grant-17-{action}")


def test_grant_posts_signed_json(receiver: Receiver) -> None:
    receiver.reply = {"connection": {"host": "tickets.example", "port": 443, "odd": [1],
                                     "flag": True}}
    conn = connector(receiver.url)
    try:
        result = conn.grant(spec())
    finally:
        conn.close()
    assert result.login == "alice" and result.secret is None
    assert result.connection == {"host": "tickets.example", "port": 443}

    [req] = receiver.seen
    assert (req.method, req.path) == ("POST", "/accord/hook")
    assert json.loads(req.body) == {
        "action": "grant", "grant_id": 17, "user": "alice", "resource": "tickets",
        "role": "agent", "ends_at": "2030-01-02T03:04:05Z", "idempotency_key": "grant-17-grant",
    }
    assert req.headers["Idempotency-Key"] == "grant-17-grant"
    assert req.headers["Content-Type"] == "application/json"
    stamp, signature = req.headers["X-Accord-Timestamp"], req.headers["X-Accord-Signature"]
    assert abs(int(stamp) - time.time()) < 60
    assert signature == sign(SECRET, stamp, req.body) and signature.startswith("sha256=")
    assert verify_signature(SECRET, stamp, req.body, signature, now=time.time())
    assert not verify_signature(b"other", stamp, req.body, signature, now=time.time())
    assert not verify_signature(SECRET, stamp, req.body + b" ", signature, now=time.time())
    assert not verify_signature(SECRET, stamp, req.body, signature, now=int(stamp) + 301)
    assert not verify_signature(SECRET, stamp, req.body, signature, now=int(stamp) - 301)
    assert verify_signature(SECRET, stamp, req.body, signature, now=int(stamp) + 300)


def test_idempotency_key_is_stable_per_spec_and_revoke_says_so(receiver: Receiver) -> None:
    conn = connector(receiver.url)
    try:
        conn.grant(spec())
        conn.grant(spec())  # a retry
        conn.revoke(spec("revoke"))
    finally:
        conn.close()
    first, retry, revoke = receiver.seen
    assert first.headers["Idempotency-Key"] == retry.headers["Idempotency-Key"]
    assert json.loads(first.body) == json.loads(retry.body)
    assert json.loads(revoke.body)["action"] == "revoke"
    assert revoke.headers["Idempotency-Key"] == "grant-17-revoke"
    assert verify_signature(SECRET, revoke.headers["X-Accord-Timestamp"], revoke.body,
                            revoke.headers["X-Accord-Signature"])


@pytest.mark.parametrize(("status", "retryable"),
                         [(500, True), (503, True), (429, True), (400, False), (403, False),
                          (404, False)])
def test_error_statuses(receiver: Receiver, status: int, retryable: bool) -> None:
    receiver.status = status
    receiver.reply = {"error": "nope"}
    conn = connector(receiver.url)
    try:
        for call in (lambda: conn.grant(spec()), lambda: conn.revoke(spec("revoke"))):
            with pytest.raises(ConnectorError) as exc:
                call()
            assert exc.value.retryable is retryable
            assert f"HTTP {status}" in str(exc.value)
            assert receiver.url not in str(exc.value)
    finally:
        conn.close()


def test_timeout_is_retryable(receiver: Receiver) -> None:
    receiver.block = True
    conn = connector(receiver.url, timeout=timedelta(milliseconds=200))
    started = time.monotonic()
    try:
        with pytest.raises(ConnectorError) as exc:
            conn.grant(spec())
    finally:
        conn.close()
    assert exc.value.retryable is True
    assert "timed out" in str(exc.value)
    assert time.monotonic() - started < 3


def test_unreachable_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = connector(f"http://127.0.0.1:{port}/hook?token=abc123")
    try:
        with pytest.raises(ConnectorError) as exc:
            conn.revoke(spec("revoke"))
        assert exc.value.retryable is True and "abc123" not in str(exc.value)
        health = conn.health()
        assert not health.ok and "abc123" not in health.detail
    finally:
        conn.close()


def test_granted_lists_signed_get(receiver: Receiver) -> None:
    receiver.reply = {"grants": [
        {"user": "alice", "role": "agent"},
        {"user": "bob", "role": "admin", "resource": "tickets"},
        {"user": "carol", "role": "agent", "resource": "another-resource"},
        {"user": "dave"},
        "garbage",
    ]}
    conn = connector(receiver.url)
    try:
        assert conn.granted() == {("alice", "agent"), ("bob", "admin")}
    finally:
        conn.close()
    [req] = receiver.seen
    assert req.method == "GET" and req.body == b""
    assert verify_signature(SECRET, req.headers["X-Accord-Timestamp"], b"",
                            req.headers["X-Accord-Signature"])


@pytest.mark.parametrize("status", [404, 405])
def test_granted_cannot_list(receiver: Receiver, status: int) -> None:
    receiver.status = status
    conn = connector(receiver.url)
    try:
        assert conn.granted() == set()
        assert conn.health().ok  # reachable, just cannot list
    finally:
        conn.close()


def test_granted_failures(receiver: Receiver) -> None:
    conn = connector(receiver.url)
    try:
        receiver.status = 502
        with pytest.raises(ConnectorError) as exc:
            conn.granted()
        assert exc.value.retryable is True
        assert not conn.health().ok
        receiver.status, receiver.reply = 200, {"something": "else"}
        with pytest.raises(ConnectorError):
            conn.granted()
    finally:
        conn.close()


def test_verify_signature_rejects_malformed_input() -> None:
    body, stamp = b"{}", str(int(time.time()))
    good = sign(SECRET, stamp, body)
    assert verify_signature(SECRET, stamp, body, good)
    assert not verify_signature(SECRET, "not-a-number", body, good)
    assert not verify_signature(SECRET, stamp, body, good.removeprefix("sha256="))
    assert not verify_signature(SECRET, stamp, body, "")
    assert not verify_signature(SECRET, stamp, body, good, max_age=-1)


def test_empty_secret_and_foreign_spec_are_refused(receiver: Receiver) -> None:
    target = WebhookTarget(type="webhook", url=receiver.url, secret_env="X")
    resource = ResourceSpec(name="tickets", roles=["agent"], provision=target)
    with pytest.raises(ConnectorError) as exc:
        WebhookConnector(resource, target, b"")
    assert exc.value.retryable is False
    conn = connector(receiver.url)
    try:
        other = GrantSpec(grant_id=1, user="a", resource="elsewhere", role="agent",
                          ends_at=datetime.now(UTC), idempotency_key="k")
        with pytest.raises(ConnectorError) as exc:
            conn.grant(other)
        assert exc.value.retryable is False
    finally:
        conn.close()
    assert receiver.seen == []

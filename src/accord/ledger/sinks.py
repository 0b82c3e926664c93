"""Streaming ledger events to existing infrastructure: JSONL files, syslog, HTTP webhooks.

Each sink keeps its own cursor (the next ledger index to deliver) in the database and
advances it only after the target accepted a batch, so a restart never skips an
event. Delivery is at-least-once: after a crash between delivery and cursor update a
batch goes out again, and every message carries its ledger index so receivers can
drop what they already have.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import reading, transaction, utcnow
from accord.ledger.models import LedgerEntry, SinkCursor
from accord.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from accord.spec.ledger import SinkSpec

log = logging.getLogger("accord.ledger.sinks")


@dataclass(frozen=True)
class Item:
    index: int
    leaf: bytes

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "event": json.loads(self.leaf)}


class SinkError(Exception):
    """The target did not take the batch; it will be offered again."""


class Sink(Protocol):
    name: str

    def deliver(self, items: Sequence[Item]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per line; rotates at `max_bytes`, keeping `keep` old files."""

    def __init__(self, name: str, path: Path, max_bytes: int, keep: int) -> None:
        self.name, self.path, self.max_bytes, self.keep = name, path, max_bytes, keep
        path.parent.mkdir(parents=True, exist_ok=True)

    def deliver(self, items: Sequence[Item]) -> None:
        data = b"".join(json.dumps(i.record(), separators=(",", ":")).encode() + b"\n"
                        for i in items)
        if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
            self._rotate()
        with self.path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _rotate(self) -> None:
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        extra = self.path.with_name(f"{self.path.name}.{self.keep + 1}")
        if extra.exists():
            extra.unlink()

    def close(self) -> None:
        pass


class SyslogSink:
    """RFC 5424 messages over UDP (one datagram each) or TCP (RFC 6587 octet counting)."""

    FACILITY = 10  # authpriv: security/authorization messages
    SEVERITY = 5  # notice

    def __init__(self, name: str, host: str, port: int, protocol: str) -> None:
        self.name, self.host, self.port, self.protocol = name, host, port, protocol
        self.hostname = socket.gethostname()[:255] or "-"
        self._sock: socket.socket | None = None

    def format(self, item: Item) -> bytes:
        event = json.loads(item.leaf)
        pri = self.FACILITY * 8 + self.SEVERITY
        msgid = str(event.get("type", "-"))[:32].replace(" ", "_")
        subject = str(event.get("subject", "")).replace("\\", "\\\\").replace('"', '\\"') \
            .replace("]", "\\]")
        sd = f'[accord@32473 index="{item.index}" subject="{subject}"]'
        stamp = event.get("time", "-")
        header = f"<{pri}>1 {stamp} {self.hostname} accord {os.getpid()} {msgid} {sd} "
        return header.encode() + item.leaf

    def _connect(self) -> socket.socket:
        if self._sock is None:
            kind = socket.SOCK_STREAM if self.protocol == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            try:
                sock.settimeout(10)
                sock.connect((self.host, self.port))
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def deliver(self, items: Sequence[Item]) -> None:
        try:
            sock = self._connect()
            if self.protocol == "tcp":
                frames = [self.format(i) for i in items]
                sock.sendall(b"".join(str(len(m)).encode() + b" " + m for m in frames))
            else:
                for i in items:
                    sock.send(self.format(i))
        except OSError as exc:
            self.close()
            raise SinkError(f"syslog {self.host}:{self.port}: {exc}") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class WebhookSink:
    """POSTs batches as JSON, signed with HMAC-SHA256 (see docs/ledger.md to verify)."""

    def __init__(self, name: str, url: str, secret: bytes, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name, self.url, self.secret = name, url, secret
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def deliver(self, items: Sequence[Item]) -> None:
        body = json.dumps({"events": [i.record() for i in items]},
                          separators=(",", ":")).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{self.name}:{items[0].index}-{items[-1].index}",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(self.secret, stamp, body),
        }
        try:
            r = self._http.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise SinkError(f"webhook {self.name}: {type(exc).__name__}") from None
        if not r.is_success:
            raise SinkError(f"webhook {self.name}: HTTP {r.status_code}")

    def close(self) -> None:
        self._http.close()


def build(spec: SinkSpec, env: dict[str, str] | None = None) -> Sink:
    env = dict(os.environ if env is None else env)
    if spec.type == "jsonl":
        return JsonlSink(spec.name, Path(str(spec.path)), spec.max_bytes, spec.keep)
    if spec.type == "syslog":
        return SyslogSink(spec.name, str(spec.host), int(spec.port or 514), spec.protocol)
    secret = env.get(str(spec.secret_env), "") if spec.secret_env else ""
    if not secret:
        raise ValueError(f"sink {spec.name}: set {spec.secret_env or 'secret_env'} to the "
                         "webhook's HMAC secret")
    return WebhookSink(spec.name, str(spec.url), secret.encode())


@dataclass
class SinkState:
    sink: Sink
    batch: int
    failures: int = 0
    retry_at: float = 0.0


def pump(sessions: sessionmaker[Session], state: SinkState, *, limit_batches: int = 50) -> int:
    """Deliver what the sink has not had yet, batch by batch. Returns events delivered."""
    if time.monotonic() < state.retry_at:
        return 0
    bind = sessions.kw.get("bind")
    if bind is not None and bind.dialect.name == "sqlite":
        return _pump_outside_the_lock(sessions, state, limit_batches)
    delivered = 0
    for _ in range(limit_batches):
        with transaction(sessions) as session:
            cursor = _cursor(session, state.sink.name)
            if cursor is None:  # another worker holds this sink right now
                return delivered
            rows = session.execute(
                select(LedgerEntry.idx, LedgerEntry.leaf)
                .where(LedgerEntry.idx >= cursor.position)
                .order_by(LedgerEntry.idx)
                .limit(state.batch)
            ).all()
            if not rows:
                return delivered
            items = [Item(int(i or 0), bytes(leaf)) for i, leaf in rows]
            if not _deliver(state, items):
                return delivered
            cursor.position = items[-1].index + 1
            cursor.updated_at = utcnow()
            delivered += len(items)
    return delivered


def _deliver(state: SinkState, items: list[Item]) -> bool:
    try:
        state.sink.deliver(items)
    except SinkError as exc:
        state.failures += 1
        backoff = min(300.0, 0.5 * 2 ** min(state.failures, 10))
        state.retry_at = time.monotonic() + backoff
        log.warning("%s; retrying in %.1fs", exc, backoff)
        return False
    state.failures = 0
    return True


def _pump_outside_the_lock(sessions: sessionmaker[Session], state: SinkState,
                           limit_batches: int) -> int:
    """SQLite: read a batch in a read transaction and deliver it holding no lock (a target's
    timeout must not hold the one write lock every writer waits for); only moving the
    cursor is a write. Two processes on one file may then both deliver a batch, which
    at-least-once delivery allows; the cursor never moves back."""
    delivered = 0
    for _ in range(limit_batches):
        with reading(), sessions() as session:
            cursor = session.get(SinkCursor, state.sink.name)
            rows = session.execute(
                select(LedgerEntry.idx, LedgerEntry.leaf)
                .where(LedgerEntry.idx >= (cursor.position if cursor is not None else 0))
                .order_by(LedgerEntry.idx)
                .limit(state.batch)
            ).all()
        if not rows:
            return delivered
        items = [Item(int(i or 0), bytes(leaf)) for i, leaf in rows]
        if not _deliver(state, items):
            return delivered
        with transaction(sessions) as session:
            moved = _cursor(session, state.sink.name)
            if moved is not None and moved.position <= items[-1].index:
                moved.position = items[-1].index + 1
                moved.updated_at = utcnow()
        delivered += len(items)
    return delivered


def _cursor(session: Session, name: str) -> SinkCursor | None:
    q = select(SinkCursor).where(SinkCursor.name == name)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    row = session.execute(q).scalar_one_or_none()
    if row is None:
        exists = session.get(SinkCursor, name) is not None
        if exists:
            return None
        row = SinkCursor(name=name, position=0, updated_at=datetime.now(UTC))
        session.add(row)
        session.flush()
    return row

"""Batched, crash-safe auditing of gateway sessions.

The data path never waits on the database. For each client or server chunk the proxy
hands the writer what happened (statements sent, statements finished, refusals); the
writer appends compact records to a local spool file with one `write` and queues the
facts in memory, then the proxy forwards the bytes. A flusher thread turns the queue
into ledger events every `flush_interval` (or sooner when `flush_batch` facts wait), in
one transaction through `ledger.service.record`, with the grants' usage counters and
this process's spool mark in that same transaction.

What holds (see docs/gateway.md):
* A statement is in the spool before it is sent upstream, and its result before the
  result reaches the client. A crashed process (SIGKILL, OOM) loses nothing: the
  kernel keeps the file. The next gateway start replays spools of dead processes:
  what the mark says is committed is skipped, the rest is recorded; statements that
  were sent but never answered are recorded with outcome `unknown`.
* A machine crash can lose what the OS had not yet written: the flusher syncs the spool
  every cycle, so at most one `flush_interval` of statements.
* Clean shutdown flushes everything and removes the spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.gateway import service
from accord.gateway.conversation import Finished, Run, Violation

log = logging.getLogger("accord.gateway")

SEGMENT_BYTES = 16 << 20
DONE = 1 << 62  # a replayed spool's mark: nothing in it is left to record
MAX_EVENT_BYTES = 512 << 10  # a statement event's statements, roughly

# Record kinds in the spool.
R_CLOCK, R_INTENT, R_DONE, R_OPEN, R_CLOSE, R_VIOLATION, R_CONTEXT = range(7)
_HEAD = struct.Struct("<IB")  # record length (after these 5 bytes), kind
_INTENT = struct.Struct("<IIqI")  # session, seq, t0, text length; text, params json follow
_DONE = struct.Struct("<IIQqqB")  # session, seq, rec, duration ns, rows (-1: none), outcome
_FACT = struct.Struct("<IQ")  # session, rec; a JSON object follows
_INTENT_REC = struct.Struct("<IBIIqI")  # _HEAD + _INTENT in one pack
_DONE_REC = struct.Struct("<IBIIQqqB")  # _HEAD + _DONE in one pack
_OUTCOMES = ("ok", "error", "suspended", "skipped", "unknown")
_OUTCOME_CODE = {name: i for i, name in enumerate(_OUTCOMES)}


@dataclass
class SessionInfo:
    """Who a gateway session is, for its events."""

    id: str  # <instance>-<number>: unique across processes
    number: int
    grant_id: int
    user: str
    resource: str
    role: str
    client: str
    application: str
    tls: bool
    upstream_role: str | None
    opened_ns: int = 0  # perf_counter_ns
    statements: int = 0
    violations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "number": self.number, "grant_id": self.grant_id,
                "user": self.user, "resource": self.resource, "role": self.role,
                "client": self.client, "application": self.application, "tls": self.tls,
                "upstream_role": self.upstream_role}

    @classmethod
    def of(cls, data: dict[str, Any]) -> SessionInfo:
        return cls(**{k: data[k] for k in ("id", "number", "grant_id", "user", "resource",
                                            "role", "client", "application", "tls",
                                            "upstream_role")})


# One thing to record, as a plain tuple (the data path makes one per statement):
# (rec, kind, session, wall-clock ns, payload). kind is "open", "statement", "violation"
# or "close"; the payload is a `Finished` for statements, else a dict of event data.
Fact = tuple[int, str, SessionInfo, int, Any]
STATEMENT = "statement"


def _params_json(params: object) -> bytes:
    if params is None:
        return b""
    if type(params) is int:
        return str(params).encode()
    return json.dumps(params).encode()


def _params_value(raw: bytes) -> object:
    return json.loads(raw) if raw else None


class Spool:
    """Append-only segment files of one process, under a directory it holds a lock on."""

    def __init__(self, root: Path, instance: str) -> None:
        self.root = root
        self.dir = root / instance
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.segment = 0
        self.fd = -1
        self.size = 0
        self.last_rec: dict[int, int] = {}  # segment → highest rec written while current
        self.dirty = False
        self._open_next()

    def _open_next(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.segment += 1
        path = self.dir / f"seg-{self.segment:08d}.log"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = 0
        self.last_rec[self.segment] = 0

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.size += len(data)
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            with contextlib.suppress(OSError):
                os.fdatasync(self.fd)

    def release(self, committed: int) -> None:
        """Remove the segments whose every fact is committed (never the current one)."""
        for seg, last in list(self.last_rec.items()):
            if seg < self.segment and last <= committed:
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / f"seg-{seg:08d}.log").unlink()
                del self.last_rec[seg]

    def remove(self) -> None:
        os.close(self.fd)
        self.fd = -1
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._lock_fd)


def record_bytes(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), kind) + payload


def read_records(path: Path) -> Iterable[tuple[int, bytes]]:
    """The whole records of one segment; a torn tail (the crash itself) is ignored."""
    data = path.read_bytes()
    pos = 0
    while pos + _HEAD.size <= len(data):
        length, kind = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if end > len(data):
            break
        yield kind, data[pos + _HEAD.size:end]
        pos = end


class AuditWriter:
    """Spool and queue on the event loop's thread; flush to the ledger on its own thread."""

    def __init__(self, sessions: sessionmaker[Session], spool_root: Path, *,
                 interval: float = 0.1, batch: int = 500, max_backlog: int = 200_000,
                 statements_per_event: int = 1000, max_statement_bytes: int = 16384,
                 now: Callable[[], datetime] | None = None) -> None:
        self.sessions = sessions
        self.interval = interval
        self.batch = batch
        self.max_backlog = max_backlog
        self.per_event = statements_per_event
        self.max_text = max_statement_bytes
        self.instance = uuid.uuid4().hex[:12]
        self.spool_root = spool_root
        self.spool: Spool | None = None
        self._queue: deque[Fact] = deque()
        self._rec = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poked = False  # the flusher was woken for a full batch and has not run yet
        self._flushed = threading.Condition()  # notified after every flush
        self._deferred: list[bytes] = []  # records not yet written (outcomes wait a little)
        self._spooled = 0  # every fact up to this rec is in the spool
        self.committed = 0
        self.failures = 0
        self.live: dict[int, tuple[SessionInfo, Callable[[], list[Run]]]] = {}
        # perf_counter_ns → wall clock ns
        self.offset = time.time_ns() - time.perf_counter_ns()
        self._now = now

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Replay spools of dead processes, then open our own and start flushing."""
        self.spool_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        replay_dead(self.sessions, self.spool_root, self.per_event, self.max_text)
        self.spool = Spool(self.spool_root, self.instance)
        self.spool.write(record_bytes(R_CLOCK, struct.pack("<q", self.offset)))
        self._thread = threading.Thread(target=self._run, name="accord-gateway-audit",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush everything; on success the spool goes away."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.spool is None:
            return
        if not self._queue and self.failures == 0:
            self.spool.remove()
            with contextlib.suppress(Exception), transaction(self.sessions) as session:
                service.forget_mark(session, instance=self.instance)
        else:
            log.error("gateway audit: %d facts not yet in the ledger; the spool %s keeps "
                      "them for the next start", len(self._queue), self.spool.dir)
        self.spool = None

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is in the ledger (True) or `timeout` passes."""
        target = self._rec
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._queue and self._queue[0][0] <= target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._flushed.wait(min(left, self.interval))
        return True

    @property
    def overloaded(self) -> bool:
        return len(self._queue) >= self.max_backlog

    # ------------------------------------------------------------------ data path

    def _fact(self, kind: str, info: SessionInfo, at_ns: int, data: dict[str, Any]) -> Fact:
        self._rec += 1
        fact: Fact = (self._rec, kind, info, at_ns, data)
        self._queue.append(fact)
        return fact

    def opened(self, info: SessionInfo, conversation_in_flight: Callable[[], list[Run]]) -> None:
        assert self.spool is not None
        info.opened_ns = time.perf_counter_ns()
        self.live[info.number] = (info, conversation_in_flight)
        rec, _, _, at_ns, _ = self._fact("open", info, info.opened_ns + self.offset, {})
        payload = json.dumps({"info": info.as_dict(), "at_ns": at_ns}).encode()
        self._deferred.append(record_bytes(R_OPEN, _FACT.pack(info.number, rec) + payload))
        self._write()
        self._poke()

    def closed(self, info: SessionInfo, reason: str, in_flight: list[Run]) -> None:
        assert self.spool is not None
        self.live.pop(info.number, None)
        if in_flight:  # sent, never answered: the session died under them
            now = time.perf_counter_ns()
            self.note(info, [], [(run, None, None, now - run.t0, None, "unknown")
                                 for run in in_flight], [])
        now = time.perf_counter_ns()
        data = {"reason": reason, "statements": info.statements,
                "violations": info.violations, "duration_us": (now - info.opened_ns) // 1000}
        rec, _, _, at_ns, _ = self._fact("close", info, now + self.offset, data)
        self._deferred.append(record_bytes(R_CLOSE, _FACT.pack(info.number, rec)
                                           + json.dumps({"data": data, "at_ns": at_ns}).encode()))
        self._write()
        self._poke()

    def note(self, info: SessionInfo, started: list[Run], finished: list[Finished],
             violations: list[Violation]) -> None:
        """Spool and queue one step of a conversation (call before forwarding its bytes).

        Statements sent upstream are written to the spool at once; outcomes may wait for
        the next write (or `tick`): losing an outcome in a crash leaves its statement
        recorded as `unknown`, never unrecorded. The flusher only takes facts whose
        records are in the spool.
        """
        out = self._deferred
        number = info.number
        pack_intent = _INTENT_REC.pack
        for run in started:
            text = run.text
            params = run.params
            tail = b"" if params is None else (b"%d" % params if type(params) is int
                                               else json.dumps(params).encode())
            out.append(pack_intent(_INTENT.size + len(text) + len(tail), R_INTENT, number,
                                   run.seq, run.t0, len(text)) + text + tail)
        if finished:
            rec = self._rec
            append = self._queue.append
            offset = self.offset
            pack_done = _DONE_REC.pack
            for item in finished:
                run, tag, rows, duration, error, outcome = item
                rec += 1
                append((rec, STATEMENT, info, run.t0 + offset, item))
                tail = tag.encode() + b"\0" if tag else b"\0"
                if error is not None:
                    tail += json.dumps(error).encode()
                out.append(pack_done(_DONE.size + len(tail), R_DONE, number, run.seq, rec,
                                     duration, -1 if rows is None else rows,
                                     _OUTCOME_CODE[outcome]) + tail)
            self._rec = rec
            info.statements += len(finished)
            if not self._poked and len(self._queue) >= self.batch:
                self._poked = True
                self._wake.set()
        for v in violations:
            data = {"statement": v.statement.text.decode("utf-8", "replace")[:self.max_text],
                    "missing": sorted(v.missing), "classes": sorted(v.statement.classes),
                    "protocol": v.protocol}
            rec, _, _, at_ns, _ = self._fact("violation", info, v.t0 + self.offset, data)
            out.append(record_bytes(R_VIOLATION, _FACT.pack(number, rec) + json.dumps(
                {"data": data, "at_ns": at_ns}).encode()))
            info.violations += 1
        if started or violations:
            self._write()

    def _write(self) -> None:
        """Write everything waiting to the spool (one `write`)."""
        spool = self.spool
        out = self._deferred
        if spool is None or not out:
            return
        spool.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()
        self._spooled = self._rec
        spool.last_rec[spool.segment] = self._rec
        if spool.size > SEGMENT_BYTES:
            self._rotate()

    def tick(self) -> None:
        """Called every few milliseconds on the loop: write waiting outcomes."""
        if self._deferred:
            self._write()

    def _rotate(self) -> None:
        """A new segment that carries the live sessions and their unanswered statements."""
        assert self.spool is not None
        self.spool._open_next()
        self.spool.last_rec[self.spool.segment] = self._rec
        parts = [record_bytes(R_CLOCK, struct.pack("<q", self.offset))]
        for info, in_flight in self.live.values():
            parts.append(record_bytes(R_CONTEXT, _FACT.pack(info.number, 0)
                                      + json.dumps({"info": info.as_dict()}).encode()))
            for run in in_flight():
                parts.append(record_bytes(R_INTENT, _INTENT.pack(
                    info.number, run.seq, run.t0, len(run.text)) + run.text
                    + _params_json(run.params)))
        self.spool.write(b"".join(parts))

    def _poke(self) -> None:
        if not self._poked and len(self._queue) >= self.batch:
            self._poked = True
            self._wake.set()

    # ------------------------------------------------------------------ flushing

    def _run(self) -> None:
        backoff = self.interval
        while True:
            stopping = self._stop.is_set()
            self._wake.wait(self.interval if not self.failures else backoff)
            self._wake.clear()
            self._poked = False
            try:
                while self._queue:
                    if not self.flush_once():
                        break  # what waits is not in the spool yet: the next tick writes it
                    if len(self._queue) < self.batch and not self._stop.is_set():
                        break
                self.failures = 0
                backoff = self.interval
            except Exception:  # the database is down or refused: keep the facts, retry
                self.failures += 1
                backoff = min(backoff * 2, 5.0)
                log.exception("gateway audit flush failed (%d facts waiting); retrying in "
                              "%.1fs", len(self._queue), backoff)
                if stopping and self.failures >= 3:
                    return
            if stopping and (not self._queue or self.failures >= 3):
                return

    def flush_once(self) -> int:
        """Record up to 4 * `batch` queued facts in one transaction; returns how many."""
        spool = self.spool
        if spool is not None:
            spool.sync()
        queue = self._queue
        spooled = self._spooled
        facts = [f for f in itertools.islice(queue, self.batch * 4) if f[0] <= spooled]
        take = len(facts)
        if not facts:
            return 0
        with transaction(self.sessions) as session:
            service.record_facts(session, facts=facts, instance=self.instance,
                                 per_event=self.per_event, max_text=self.max_text)
        for _ in range(take):
            queue.popleft()
        self.committed = facts[-1][0]
        with self._flushed:
            self._flushed.notify_all()
        if spool is not None:
            # Only the loop's thread rotates, so the current segment is never released.
            spool.release(self.committed)
        return take


# ---------------------------------------------------------------------- replay


def _load_spool(path: Path) -> tuple[list[Fact], int]:
    """Facts in a dead process's spool (statements never answered become `unknown`)."""
    infos: dict[int, SessionInfo] = {}
    intents: dict[tuple[int, int], Run] = {}
    done: set[tuple[int, int]] = set()
    facts: dict[int, Fact] = {}
    closed: set[int] = set()
    offset = 0
    last_ns = 0
    synthetic = DONE
    for seg in sorted(path.glob("seg-*.log")):
        for kind, payload in read_records(seg):
            if kind == R_CLOCK:
                offset = struct.unpack("<q", payload)[0]
            elif kind == R_INTENT:
                number, seq, t0, length = _INTENT.unpack_from(payload)
                start = _INTENT.size
                text = payload[start:start + length]
                run = Run(seq, "unknown", text, _params_value(payload[start + length:]), t0)
                intents[(number, seq)] = run
                last_ns = max(last_ns, t0 + offset)
            elif kind == R_DONE:
                number, seq, rec, dur, rows, outcome = _DONE.unpack_from(payload)
                tag_raw, _, err_raw = payload[_DONE.size:].partition(b"\0")
                run = intents.get((number, seq)) or Run(seq, "unknown", b"", None, 0)
                error = tuple(json.loads(err_raw)) if err_raw else None
                info = infos.get(number)
                done.add((number, seq))
                if info is not None:
                    item: Finished = (run, tag_raw.decode("utf-8", "replace") or None,
                                      None if rows < 0 else rows, dur,
                                      error, _OUTCOMES[outcome])
                    facts[rec] = (rec, STATEMENT, info, run.t0 + offset, item)
            elif kind in (R_OPEN, R_CONTEXT, R_CLOSE, R_VIOLATION):
                number, rec = _FACT.unpack_from(payload)
                body = json.loads(payload[_FACT.size:])
                if kind in (R_OPEN, R_CONTEXT):
                    infos[number] = SessionInfo.of(body["info"])
                    if kind == R_OPEN:
                        facts[rec] = (rec, "open", infos[number], int(body["at_ns"]), {})
                elif number in infos:
                    if kind == R_CLOSE:
                        closed.add(number)
                    facts[rec] = (rec, "close" if kind == R_CLOSE else "violation",
                                  infos[number], int(body["at_ns"]), body["data"])
    out = [facts[k] for k in sorted(facts)]
    for (number, seq), run in sorted(intents.items()):
        if (number, seq) not in done and number in infos:
            synthetic += 1
            out.append((synthetic, STATEMENT, infos[number], run.t0 + offset,
                        (run, None, None, 0, None, "unknown")))
    for number, info in infos.items():
        if number not in closed:
            synthetic += 1
            out.append((synthetic, "close", info, last_ns or time.time_ns(),
                        {"reason": "gateway stopped (recovered from its spool)",
                         "statements": None, "violations": None, "duration_us": None}))
    return out, synthetic


def replay_dead(sessions: sessionmaker[Session], root: Path, per_event: int,
                max_text: int) -> int:
    """Record what dead gateway processes left in their spools; returns facts recorded."""
    total = 0
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        lock = path / "lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live gateway holds it
            instance = path.name
            facts, _ = _load_spool(path)
            with transaction(sessions) as session:
                mark = service.spool_mark(session, instance=instance)
                todo = [f for f in facts if f[0] > mark] if mark < DONE else []
                if todo:
                    service.record_facts(session, facts=todo, instance=instance,
                                         per_event=per_event, max_text=max_text,
                                         mark=DONE)
            if todo:
                log.warning("gateway: recovered %d audit facts from the spool of stopped "
                            "gateway %s", len(todo), instance)
            total += len(todo)
            shutil.rmtree(path, ignore_errors=True)
            with transaction(sessions) as session:
                service.forget_mark(session, instance=instance)
        finally:
            os.close(fd)
    return total


def wall(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)

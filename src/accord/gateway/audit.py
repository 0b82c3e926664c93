"""Crash-safe auditing of gateway sessions: a local spool, shipped to the ledger in batches.

The data path never waits on the database, and shares no lock with whatever writes to
it. For each client or server chunk the proxy hands the `AuditWriter` what happened
(statements sent, statements finished, refusals); the writer appends compact binary
records to the spool, a directory of segment files of this gateway process, then the
proxy forwards the bytes. A *shipper*, a child process, tails the spool and turns the
records into ledger events every `flush_interval`, one transaction per batch through
`ledger.service.record`, with the grants' usage counters and the spool's mark (the last
record in the ledger) in that same transaction. It runs in a process of its own so that
building and encoding events never holds the gateway's GIL.

Spool segments are memory-mapped files of a fixed size: appending a record is a memory
copy, not a system call (a `write` per statement was a tenth of the gateway's CPU). Records
go in *frames* (length, CRC-32, records); the rest of a segment is zeros, so a reader stops
at a zero length, and a frame torn by a crash fails its CRC and is never read.

What holds (see docs/gateway.md):
* A statement is in the spool before it is sent upstream; its outcome (tag, rows,
  error) within 10 ms after its result came back. A crashed gateway process (SIGKILL,
  OOM) loses nothing it wrote: its pages are the kernel's page cache. Its shipper sees
  the parent gone, records what is left (statements sent but never answered as outcome
  `unknown`, and a close for each open session), and removes the spool. Were the
  shipper killed too, the next gateway start does the same. The mark makes this
  idempotent: nothing is recorded twice.
* A machine crash loses what the OS had not yet written to disk: the shipper syncs the
  spool every `flush_interval`, so at most that much.
* A clean shutdown ships everything and removes the spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import mmap
import multiprocessing
import os
import shutil
import signal
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.gateway import service
from accord.gateway.conversation import Finished, Run, Violation
from accord.gateway.scope import escalation
from accord.ledger.service import SAFE_INT

log = logging.getLogger("accord.gateway")

SEGMENT_BYTES = 16 << 20
# Held (flock) by the gateway process writing a spool for as long as it lives: a spool whose
# writer lock is free belongs to a dead process, and whoever holds its `lock` ships it.
WRITER_LOCK = "writer.lock"
DONE = 1 << 62  # a finished spool's mark: nothing in it is left to record

# Record kinds in the spool.
R_CLOCK, R_INTENT, R_DONE, R_OPEN, R_CLOSE, R_VIOLATION, R_CONTEXT = range(7)
_FRAME = struct.Struct("<II")  # frame body length, CRC-32 of the body; records follow
_HEAD = struct.Struct("<IB")  # record length (after these 5 bytes), kind
_INTENT = struct.Struct("<IIqIB")  # session, seq, t0, text length, protocol; text, params json
_DONE = struct.Struct("<IIQqqB")  # session, seq, rec, duration ns, rows (-1: none), outcome
_FACT = struct.Struct("<IQ")  # session, rec; a JSON object follows
_INTENT_REC = struct.Struct("<IBIIqIB")  # _HEAD + _INTENT in one pack
_DONE_REC = struct.Struct("<IBIIQqqB")  # _HEAD + _DONE in one pack
_OUTCOMES = ("ok", "error", "suspended", "skipped", "unknown")
_OUTCOME_CODE = {name: i for i, name in enumerate(_OUTCOMES)}
_PROTOCOLS = ("simple", "extended", "function", "unknown")
_PROTOCOL_CODE = {name: i for i, name in enumerate(_PROTOCOLS)}
RECOVERED = "gateway stopped (recovered from its spool)"
_TAG_TAILS: dict[str, bytes] = {}  # command tag → its bytes in an outcome record
_NO_INTENT = ("unknown", "", None, 0)  # an outcome whose statement record was lost


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


# One thing to record, as a plain tuple: (rec, kind, session, wall-clock ns, payload).
# kind is "open", "statement", "violation" or "close"; the payload is a statement row
# (`service.COLUMNS`) for statements, else a dict of event data. `rec` numbers a
# process's facts in spool order.
Fact = tuple[int, str, SessionInfo, int, Any]
STATEMENT = "statement"


_SAFE_NS = SAFE_INT * 1000


def _values(params: Any) -> list[str | None]:
    """Parameter values as the writer spooled them (text or None), whatever the bytes said."""
    if type(params) is not list:
        return [] if params is None else [str(params)]
    return [v if v is None or type(v) is str else str(v) for v in params]


def record_bytes(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), kind) + payload


def _intent(number: int, run: Run) -> bytes:
    """The record of a statement sent upstream by session `number`."""
    text = run.text
    params = run.params
    tail = b"" if params is None else (b"%d" % params if type(params) is int
                                       else json.dumps(params).encode())
    return _INTENT_REC.pack(_INTENT.size + len(text) + len(tail), R_INTENT, number, run.seq,
                            run.t0, len(text), _PROTOCOL_CODE[run.protocol]) + text + tail


def _claim(root: Path, instance: str) -> int:
    """Create this process's spool directory holding its writer lock (returned): made
    under a hidden name and renamed into place, so no one ever sees it unlocked."""
    hidden = root / f".{instance}"
    hidden.mkdir(mode=0o700)
    fd = os.open(hidden / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else can hold it
    hidden.rename(root / instance)
    return fd


def writer_alive(directory: Path) -> bool:
    """Whether the process that writes this spool (or one being created) still runs."""
    try:
        fd = os.open(directory / WRITER_LOCK, os.O_RDONLY)
    except FileNotFoundError:  # written by a version without writer locks: long gone
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the shared lock just taken
    return False


def _segment(directory: Path, number: int) -> Path:
    return directory / f"seg-{number:08d}.log"


# ---------------------------------------------------------------------- writing


class AuditWriter:
    """The gateway's side: spool records on the event loop's thread; a shipper ships them."""

    def __init__(self, sessions: sessionmaker[Session], spool_root: Path, *,
                 interval: float = 0.1, batch: int = 500, max_backlog: int = 200_000,
                 statements_per_event: int = 1000, max_statement_bytes: int = 16384) -> None:
        self.sessions = sessions
        self.interval = interval
        self.batch = batch
        self.max_backlog = max_backlog
        self.per_event = statements_per_event
        self.max_text = max_statement_bytes
        self.instance = uuid.uuid4().hex[:12]
        self.spool_root = spool_root
        self.dir = spool_root / self.instance
        self.offset = time.time_ns() - time.perf_counter_ns()  # perf_counter_ns → wall ns
        self.live: dict[int, tuple[SessionInfo, Callable[[], list[Run]]]] = {}
        self._rec = 0
        self._deferred: list[bytes] = []  # records not yet written (outcomes wait a little)
        self._mm: mmap.mmap | None = None
        self._writer_lock: int | None = None
        self._segment = 0
        self._size = 0
        self._pos = 0
        ctx = multiprocessing.get_context("spawn")
        self._ctx = ctx
        self._shipped = ctx.Value("q", 0, lock=False)  # the last rec in the ledger
        # "Stop" is a pipe, not a multiprocessing Event: an Event is five named semaphores
        # shared with a process that can be killed inside them (a terminal's Ctrl-C
        # reaches the shipper too), which wedged the next shipper's wait, left the server
        # waiting two minutes, and left them for the resource tracker's "leaked semaphore
        # objects" warning. The shipper reads "stop" or, when this process dies, EOF.
        self._stop_r, self._stop_w = ctx.Pipe(duplex=False)
        self._proc: Any = None
        self.stopping = False
        self.overloaded = False  # more than max_backlog facts not yet in the ledger
        self.shipper_nice: int | None = None  # the shipper's nice value (None: inherited)

    # -- lifecycle

    def start(self, replay: bool = True) -> None:
        """Ship what dead gateways left (unless `replay` is false), open our spool and
        start its shipper."""
        self.spool_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if replay:
            replay_dead(self.sessions, self.spool_root, per_event=self.per_event,
                        max_text=self.max_text)
        self._writer_lock = _claim(self.spool_root, self.instance)
        self._open_next()
        self._start_shipper()

    def _start_shipper(self) -> None:
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        bind = self.sessions.kw["bind"]
        self._proc = self._ctx.Process(
            target=_shipper_main, name="accord-gateway-shipper", daemon=True,
            args=(bind.url.render_as_string(hide_password=False), str(self.dir),
                  self.interval, self.batch, self.per_event, self.max_text, self._shipped,
                  self._stop_r, ready_w, os.getpid(), self.shipper_nice))
        self._proc.start()
        ready_w.close()  # the child's copy is the only writer: its death reads as EOF
        try:
            started = ready_r.poll(60) and ready_r.recv_bytes() == b"ready"
        except EOFError:
            started = False
        finally:
            ready_r.close()
        if not started:
            raise RuntimeError("the gateway's audit shipper did not start")

    def ensure_shipper(self) -> None:
        """Restart the shipper if it died (it resumes from the mark in the database)."""
        if self.stopping or self._proc is None or self._proc.is_alive():
            return
        log.error("gateway: the audit shipper exited (%s); starting another",
                  self._proc.exitcode)
        self._start_shipper()

    def stop(self) -> bool:
        """Write everything and let the shipper put it in the ledger; True when it did."""
        self.stopping = True
        self.tick()
        self._close_segment(sync=True)
        with contextlib.suppress(OSError):
            self._stop_w.send_bytes(b"stop")
        if self._proc is None:
            return True
        self._proc.join(120)
        if self._proc.is_alive() or self._proc.exitcode != 0:
            log.error("gateway: the audit shipper did not finish; %s keeps what is not in "
                      "the ledger for the next start", self.dir)
            return False
        if self._writer_lock is not None:
            os.close(self._writer_lock)
            self._writer_lock = None
        self._stop_r.close()
        self._stop_w.close()
        return True

    @property
    def shipped(self) -> int:
        value: int = self._shipped.value
        return value

    @property
    def backlog(self) -> int:
        return self._rec - self.shipped

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every fact so far is in the ledger (outcomes reach the spool within
        10 ms on the loop, then the shipper's next round takes them)."""
        target = self._rec
        deadline = time.monotonic() + timeout
        while self.shipped < target:  # another process's progress: nothing to await
            if time.monotonic() > deadline or (self._proc and not self._proc.is_alive()):
                return False
            time.sleep(0.01)
        return True

    # -- the data path (the event loop's thread only)

    def _open_next(self, at_least: int = 0) -> None:
        """Map a new zero-filled segment (made whole under a temporary name, then renamed,
        so a reader never maps a file still being sized)."""
        self._close_segment()
        self._segment += 1
        size = max(SEGMENT_BYTES, at_least + _FRAME.size + 64)
        path = _segment(self.dir, self._segment)
        part = path.with_suffix(".new")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        part.rename(path)
        self._size = size
        self._pos = 0
        self._frame(record_bytes(R_CLOCK, struct.pack("<q", self.offset)))

    def _close_segment(self, sync: bool = False) -> None:
        if self._mm is not None:
            if sync:
                self._mm.flush()
            self._mm.close()
            self._mm = None

    def _frame(self, body: bytes) -> None:
        """Append one frame; the CRC makes a frame cut short by a crash unreadable."""
        need = _FRAME.size + len(body)
        if self._pos + need > self._size:
            self._rotate(need)
        end = self._pos + need
        assert self._mm is not None
        self._mm[self._pos:end] = _FRAME.pack(len(body), zlib.crc32(body)) + body
        self._pos = end

    def _write(self) -> None:
        """Put everything waiting in the spool (one frame; `_frame` inline: this runs for
        every statement)."""
        out = self._deferred
        mm = self._mm
        if not out or mm is None:
            return
        body = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        pos = self._pos
        end = pos + _FRAME.size + len(body)
        if end > self._size:
            self._frame(body)
            return
        mm[pos:end] = _FRAME.pack(len(body), zlib.crc32(body)) + body
        self._pos = end

    def tick(self) -> None:
        """Called on the loop within 10 ms of an outcome: write waiting outcomes, and look
        whether the shipper keeps up (`overloaded` is read on the data path)."""
        if self._deferred:
            self._write()
        self.check()

    def check(self) -> bool:
        """Whether more than `max_backlog` facts are not yet in the ledger (kept in
        `overloaded`)."""
        self.overloaded = self.backlog >= self.max_backlog
        return self.overloaded

    def _rotate(self, need: int) -> None:
        """A new segment carrying the live sessions and their unanswered statements, so the
        shipper can delete the old one once it is in the ledger."""
        parts: list[bytes] = []
        for info, in_flight in self.live.values():
            parts.append(record_bytes(R_CONTEXT, _FACT.pack(info.number, 0)
                                      + json.dumps({"info": info.as_dict()}).encode()))
            parts += (_intent(info.number, run) for run in in_flight())
        context = b"".join(parts)
        self._open_next(need + _FRAME.size + len(context))
        if context:
            self._frame(context)

    def _fact_record(self, kind: int, info: SessionInfo, at_ns: int,
                     data: dict[str, Any]) -> None:
        self._rec += 1
        self._deferred.append(record_bytes(kind, _FACT.pack(info.number, self._rec)
                                           + json.dumps({"data": data, "at_ns": at_ns}).encode()))

    def opened(self, info: SessionInfo, in_flight: Callable[[], list[Run]]) -> None:
        info.opened_ns = time.perf_counter_ns()
        self.live[info.number] = (info, in_flight)
        self._rec += 1
        payload = json.dumps({"info": info.as_dict(), "at_ns": info.opened_ns + self.offset})
        self._deferred.append(record_bytes(R_OPEN, _FACT.pack(info.number, self._rec)
                                           + payload.encode()))
        self._write()

    def closed(self, info: SessionInfo, reason: str, in_flight: list[Run]) -> None:
        self.live.pop(info.number, None)
        now = time.perf_counter_ns()
        if in_flight:  # sent, never answered: the session died under them
            self.note(info, [], [(run, None, None, now - run.t0, None, "unknown")
                                 for run in in_flight], [])
        data = {"reason": reason, "statements": info.statements,
                "violations": info.violations, "duration_us": (now - info.opened_ns) // 1000}
        self._fact_record(R_CLOSE, info, now + self.offset, data)
        self._write()

    def sent(self, number: int, run: Run) -> None:
        """`note` of one statement sent upstream and nothing else (the data path's common
        case): spooled at once."""
        self._deferred.append(_intent(number, run))
        self._write()

    def answered(self, info: SessionInfo, finished: list[Finished]) -> None:
        """`note` of outcomes only (the data path's common case: they wait for the next
        write or tick)."""
        out = self._deferred
        number = info.number
        rec = self._rec
        pack_done = _DONE_REC.pack
        tails = _TAG_TAILS
        for run, tag, rows, duration, error, outcome in finished:
            rec += 1
            if tag:  # the tag, a NUL, and the error as JSON when there was one
                tail = tails.get(tag)
                if tail is None:
                    tail = tag.encode() + b"\0"
                    if len(tails) < 1024 and len(tail) <= 64:
                        tails[tag] = tail
            else:
                tail = b"\0"
            if error is not None:
                tail += json.dumps(error).encode()
            out.append(pack_done(_DONE.size + len(tail), R_DONE, number, run.seq, rec,
                                 duration, -1 if rows is None else rows,
                                 _OUTCOME_CODE[outcome]) + tail)
        self._rec = rec
        info.statements += len(finished)

    def note(self, info: SessionInfo, started: list[Run], finished: list[Finished],
             violations: list[Violation]) -> None:
        """Spool one step of a conversation (call before forwarding its bytes).

        Statements sent upstream are written at once; outcomes may wait for the next
        write or tick (a crash then leaves the statement recorded as `unknown`, never
        unrecorded). The hot path: a few struct packs and at most one frame.
        """
        out = self._deferred
        number = info.number
        for run in started:
            out.append(_intent(number, run))
        if finished:
            self.answered(info, finished)
        for v in violations:
            data = {"statement": v.statement.text.decode("utf-8", "replace")[:self.max_text],
                    "missing": sorted(v.missing), "classes": sorted(v.statement.classes),
                    "protocol": v.protocol}
            attempt = escalation(v.statement, v.missing, v.protocol)
            if attempt is not None:  # an attempt to leave the grant: the detectors alert
                data["escalation"] = attempt
            self._fact_record(R_VIOLATION, info, v.t0 + self.offset, data)
            info.violations += 1
        if started or violations:
            self._write()


# ---------------------------------------------------------------------- reading


class Reader:
    """Turns one spool directory into facts: incrementally (the shipper) or all at once."""

    def __init__(self, directory: Path, max_text: int = 16384) -> None:
        self.dir = directory
        self.max_text = max_text
        self.segment: int | None = None
        self.position = 0
        self.offset = 0  # the writer's perf_counter → wall clock offset
        self.infos: dict[int, SessionInfo] = {}
        # session << 32 | seq → (protocol, text, parameters, t0) of statements not answered
        self.intents: dict[int, tuple[str, str, object, int]] = {}
        self.closed: set[int] = set()
        self.ready: list[Fact] = []
        self.done_segments: list[Path] = []  # read to their end, with a newer one after
        self._tags: dict[bytes, str] = {}  # command tags repeat: decode each once
        self.last_ns = 0

    def _segments(self) -> list[int]:
        return sorted(int(p.name[4:12]) for p in self.dir.glob("seg-*.log"))

    def poll(self) -> None:
        """Read every whole record written so far."""
        numbers = self._segments()
        if self.segment is None:
            if not numbers:
                return
            self.segment = numbers[0]
        while True:
            later = [n for n in numbers if n > self.segment]  # looked at before reading:
            self._read(_segment(self.dir, self.segment))  # then this read sees it all
            if not later:
                return
            self.done_segments.append(_segment(self.dir, self.segment))
            self.segment, self.position = later[0], 0
            numbers = self._segments()

    def _read(self, path: Path) -> None:
        """Apply every whole frame after `position`; stop at zeros or a torn frame."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            if size <= self.position + _FRAME.size:
                return
            bodies: list[bytes] = []
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
                pos = self.position
                frame = _FRAME.unpack_from
                crc32 = zlib.crc32
                while pos + _FRAME.size <= size:
                    length, crc = frame(mm, pos)
                    end = pos + _FRAME.size + length
                    if length == 0 or end > size:
                        break  # the end of what was written
                    body = mm[pos + _FRAME.size:end]
                    if crc32(body) != crc:
                        break  # being written, or torn by a crash
                    bodies.append(body)
                    pos = end
            if bodies:
                self._records(b"".join(bodies))
                if pos > self.position:  # bound what a machine crash can take: one round
                    with contextlib.suppress(OSError):
                        os.fdatasync(fd)
                self.position = pos
        finally:
            os.close(fd)

    def _records(self, body: bytes) -> None:
        """Apply a frame's records; statements and outcomes (nearly all of them) inline."""
        pos = 0
        n = len(body)
        head = _HEAD.unpack_from
        intent = _INTENT_REC.unpack_from  # header and fields in one call
        done = _DONE_REC.unpack_from
        isize, dsize = _INTENT_REC.size, _DONE_REC.size
        intents = self.intents
        infos = self.infos
        ready = self.ready
        max_text = self.max_text
        offset = self.offset
        tags = self._tags
        last_t0 = 0
        params: object
        while pos < n:
            kind = body[pos + 4]
            if kind == R_DONE:
                length, _, number, seq, rec, duration, rows, outcome = done(body, pos)
                end = pos + 5 + length
                protocol, text, params, t0 = intents.pop(number << 32 | seq, _NO_INTENT)
                info = infos.get(number)
                if info is not None:  # a row of service.COLUMNS (offset_us set when shipped)
                    # The tail: the tag, a NUL, and the error as JSON when there was one.
                    error: list[str] | None = None
                    if body[end - 1] == 0:
                        nul = end - 1
                    else:
                        nul = body.index(b"\0", pos + dsize, end)
                        code, message = json.loads(body[nul + 1:end])
                        error = [str(code), str(message)[:2000]]
                    tag: str | None = None
                    if nul > pos + dsize:
                        raw = body[pos + dsize:nul]
                        tag = tags.get(raw)
                        if tag is None:
                            tag = raw.decode("utf-8", "replace")
                            if len(tags) < 1024:
                                tags[raw] = tag
                    if params is None:
                        count, values = 0, None
                    elif type(params) is int:
                        count, values = params, None
                    else:
                        count, values = len(params), params  # type: ignore[arg-type]
                    # Ints stay below 2**53, which JSON carries exactly (the ledger encodes
                    # these rows without looking at each value: service._emit).
                    ready.append((rec, STATEMENT, info, t0 + offset, [
                        seq, 0, protocol, text, count, values, tag,
                        None if rows < 0 else rows if rows < SAFE_INT else SAFE_INT - 1,
                        duration // 1000 if duration < _SAFE_NS else SAFE_INT - 1,
                        _OUTCOMES[outcome], error]))
            elif kind == R_INTENT:
                length, _, number, seq, t0, size, protocol = intent(body, pos)
                end = pos + 5 + length
                start = pos + isize
                if size > max_text:
                    text = body[start:start + max_text].decode("utf-8", "ignore") + \
                        f"…[{size - max_text} bytes cut]"
                else:
                    text = body[start:start + size].decode("utf-8", "replace")
                params = None  # a count (redacted) is digits; values are a JSON list
                if start + size < end:
                    tail = body[start + size:end]
                    params = int(tail) if tail.isdigit() else _values(json.loads(tail))
                intents[number << 32 | seq] = (_PROTOCOLS[protocol], text, params, t0)
                if t0 > last_t0:
                    last_t0 = t0
            else:
                length = head(body, pos)[0]
                end = pos + 5 + length
                if last_t0 and last_t0 + offset > self.last_ns:
                    self.last_ns = last_t0 + offset  # under the clock these intents had
                last_t0 = 0
                self._apply(kind, body[pos + _HEAD.size:end])
                offset = self.offset
            pos = end
        if last_t0 and last_t0 + offset > self.last_ns:
            self.last_ns = last_t0 + offset

    def _apply(self, kind: int, payload: bytes) -> None:
        """Records other than statements and outcomes."""
        if kind == R_CLOCK:
            self.offset = struct.unpack("<q", payload)[0]
        elif kind in (R_OPEN, R_CONTEXT, R_CLOSE, R_VIOLATION):
            number, rec = _FACT.unpack_from(payload)
            body = json.loads(payload[_FACT.size:])
            if kind in (R_OPEN, R_CONTEXT):
                info = self.infos.get(number) or SessionInfo.of(body["info"])
                self.infos[number] = info
                if kind == R_OPEN:
                    self.ready.append((rec, "open", info, int(body["at_ns"]), {}))
            elif number in self.infos:
                if kind == R_CLOSE:
                    self.closed.add(number)
                self.ready.append((rec, "close" if kind == R_CLOSE else "violation",
                                   self.infos[number], int(body["at_ns"]), body["data"]))

    def take(self) -> list[Fact]:
        out, self.ready = self.ready, []
        return out

    def finish(self) -> list[Fact]:
        """The writer is gone: unanswered statements and unclosed sessions, recorded as such."""
        out: list[Fact] = []
        number = DONE
        for key, (protocol, text, params, t0) in sorted(self.intents.items()):
            session, seq = key >> 32, key & 0xFFFFFFFF
            info = self.infos.get(session)
            if info is not None and session not in self.closed:
                number += 1
                out.append((number, STATEMENT, info, t0 + self.offset, service.statement_row(
                    seq, protocol, text, params, None, None, 0, "unknown", None)))
        self.intents.clear()
        for session, info in self.infos.items():
            if session not in self.closed:
                number += 1
                out.append((number, "close", info, self.last_ns or time.time_ns(),
                            {"reason": RECOVERED, "statements": None, "violations": None,
                             "duration_us": None}))
                self.closed.add(session)
        return out


# ---------------------------------------------------------------------- shipping


def _lock(directory: Path) -> int | None:
    """The spool's lock, held by whoever ships it; None when someone alive holds it."""
    try:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def ship(sessions: sessionmaker[Session], directory: Path, *, per_event: int, max_text: int,
         interval: float = 0.5, batch: int = 10_000, gone: Callable[[], bool] = lambda: True,
         shipped: Any = None, ready: Any = None, wait: Callable[[float], Any] = time.sleep,
         ) -> int | None:
    """Put one spool directory in the ledger; with `gone` false, keep following it.

    Returns how many facts it recorded, or None when another live process ships it.
    When `gone()` turns true (the writer stopped or died), whatever is left is recorded
    and the directory removed. Every `interval` it reads what was written since and
    records it in transactions of at most `batch` facts (`gateway.flush_interval` and
    `flush_batch`).
    """
    fd = _lock(directory)
    if fd is None:
        return None
    if ready is not None:
        ready.set()
    instance = directory.name
    total = 0
    try:
        with sessions() as s:
            mark = service.spool_mark(s, instance=instance)
        reader = Reader(directory, max_text)
        pending: list[Fact] = []
        failures = 0
        while True:
            final = gone()
            if mark < DONE:
                reader.poll()
                taken = reader.take()
                if taken and taken[0][0] <= mark:  # after a restart: some are in already
                    taken = [f for f in taken if f[0] > mark]
                pending += taken
                if final:
                    pending += reader.finish()
            try:
                while pending:
                    chunk, rest = pending[:batch], pending[batch:]
                    last = not rest and final
                    with transaction(sessions) as s:
                        service.record_facts(s, facts=chunk, instance=instance,
                                             per_event=per_event, max_text=max_text,
                                             mark=DONE if last else chunk[-1][0])
                    mark = DONE if last else chunk[-1][0]
                    total += len(chunk)
                    pending = rest
                    real = next((f[0] for f in reversed(chunk) if f[0] < DONE), 0)
                    if shipped is not None and real > shipped.value:
                        shipped.value = real
                failures = 0
            except Exception:  # the database is down or refused: keep the facts, retry
                failures += 1
                log.exception("gateway audit: shipping %d facts failed (attempt %d)",
                              len(pending), failures)
                if final and failures >= 5:
                    return total  # the directory stays for the next start
                wait(min(interval * 2 ** failures, 5.0))
                continue
            for path in reader.done_segments:  # everything read from it is in the ledger
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            reader.done_segments.clear()
            if final:
                shutil.rmtree(directory, ignore_errors=True)
                with transaction(sessions) as s:
                    service.forget_mark(s, instance=instance)
                return total
            wait(interval)
    finally:
        os.close(fd)


def replay_dead(sessions: sessionmaker[Session], root: Path, *, per_event: int,
                max_text: int, waiting: list[Path] | None = None) -> int:
    """Ship what dead gateway processes left when their shippers died too (a live
    process's spool, or a dead one's that its shipper is shipping, is left alone); returns
    facts recorded. Safe beside running gateways (the prefork parent runs it now and then).
    `waiting` gets the dead processes' spools that someone else still held."""
    total = 0
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        if writer_alive(path):
            continue
        if path.name.startswith("."):  # being created, or its process died doing so
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > 60:  # the latter: nothing in it
                    shutil.rmtree(path, ignore_errors=True)
            continue
        recorded = ship(sessions, path, per_event=per_event, max_text=max_text)
        if recorded is None and waiting is not None:
            waiting.append(path)  # its shipper is at it (or dying: a SIGKILL waits for I/O)
        if recorded:
            log.warning("gateway: recovered %d audit facts from the spool of stopped "
                        "gateway %s", recorded, path.name)
            total += recorded
    return total


def _shipper_main(db_url: str, directory: str, interval: float, batch: int, per_event: int,
                  max_text: int, shipped: Any, stop: Any, ready: Any, parent: int,
                  nice: int | None = None) -> None:
    """The shipper process: follow the spool until the gateway stops or dies.

    It ignores SIGINT and SIGTERM: a terminal's Ctrl-C or an init system signals the whole
    process group, and the shipper must not die mid-batch under its gateway; the gateway
    stops it in order (`stop` reads "stop"), or its death shows as EOF on `stop`."""
    from accord.db import make_engine, make_sessionmaker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    if nice is not None:  # background work: not the data path's `gateway.priority`
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    gc.freeze()  # rows and tuples by the thousand, none of them cyclic
    gc.set_threshold(50_000, 20, 20)
    engine = make_engine(db_url, pool_size=1)
    path = Path(directory)

    def gone() -> bool:  # told to stop, or the gateway died (EOF; a new parent)
        return bool(stop.poll()) or os.getppid() != parent

    def wait(seconds: float) -> None:
        stop.poll(seconds)

    class Ready:
        def set(self) -> None:
            ready.send_bytes(b"ready")
            ready.close()

    try:
        result = ship(make_sessionmaker(engine), path, per_event=per_event, max_text=max_text,
                      interval=interval, batch=batch, gone=gone, shipped=shipped,
                      ready=Ready(), wait=wait)
    finally:
        engine.dispose()
    if result is None or path.exists():
        raise SystemExit(1)


def wall(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)

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
import json
import logging
import mmap
import multiprocessing
import os
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, with SIMD: the same checksums

from accord.gateway.records import Finished, GuardrailHit, Run, SessionInfo, Violation
from accord.gateway.shipper import replay_dead, shipper_main
from accord.gateway.spool import (
    BLOB_HEAD,
    DONE_REC,
    DONE_STRUCT,
    FACT,
    FRAME,
    HEAD,
    INTENT,
    INTENT_REC,
    OUTCOME_CODE,
    PIECE,
    PIECE_FRAME,
    PROTOCOL_CODE,
    R_BLOB,
    R_CLOCK,
    R_CLOSE,
    R_CONTEXT,
    R_DONE,
    R_GUARDRAIL,
    R_INTENT,
    R_OPEN,
    R_PIECE,
    R_VIOLATION,
    SEGMENT_BYTES,
    TAG_TAILS,
    claim,
    intent_record,
    record_bytes,
    segment_path,
)

log = logging.getLogger("accord.gateway")
PWRITE_BYTES = 16 << 10  # `piece`: from this size, a write instead of a copy into the mapping
INTENT_SIZE = INTENT.size
FRAME_SIZE = FRAME.size
pack_frame = FRAME.pack_into

# ---------------------------------------------------------------------- writing



_MASKED_TAILS: dict[frozenset[str], bytes] = {}  # masked columns → their bytes in a record


def _masked_tail(columns: set[str]) -> bytes:
    """The masked columns of an outcome record (a masked session's every statement: its
    result's columns repeat, and `json.dumps` costs more than the rest of the record)."""
    key = frozenset(columns)
    tail = _MASKED_TAILS.get(key)
    if tail is None:
        tail = b"\x1e" + json.dumps(sorted(columns)).encode()
        if len(_MASKED_TAILS) >= 1024:
            _MASKED_TAILS.clear()
        _MASKED_TAILS[key] = tail
    return tail

class AuditWriter:
    """The gateway's side: spool records on the event loop's thread; a shipper ships them."""

    def __init__(self, sessions: sessionmaker[Session], spool_root: Path, *,
                 interval: float = 0.1, batch: int = 500, max_backlog: int = 200_000,
                 statements_per_event: int = 1000, max_statement_bytes: int = 16384,
                 max_spool_bytes: int = 1 << 30, recordings_dir: Path | None = None) -> None:
        self.sessions = sessions
        self.recordings_dir = recordings_dir  # pack files for recordings (None: database)
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
        # A session's streams (`piece`) restated in each new segment (`spool.R_STREAM`).
        self.carry: dict[int, Callable[[], list[bytes]]] = {}
        self._rec = 0
        self._deferred: list[bytes] = []  # records not yet written (outcomes wait a little)
        self._mm: mmap.mmap | None = None
        self._fd = -1  # the segment's file, for `piece`'s large writes
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
        self.max_spool_bytes = max_spool_bytes
        self.spool_full = False  # more than max_spool_bytes not yet shipped (`spool_check`)
        self.shipper_nice: int | None = None  # the shipper's nice value (None: inherited)
        # Statements answered and refused since the start: the server adds what is new to
        # its counters now and then, the data path only to these ints.
        self.statements = 0
        self.violations = 0

    # -- lifecycle

    def start(self, replay: bool = True) -> None:
        """Ship what dead gateways left (unless `replay` is false), open our spool and
        start its shipper."""
        self.spool_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if replay:
            replay_dead(self.sessions, self.spool_root, per_event=self.per_event,
                        max_text=self.max_text, recordings_dir=self.recordings_dir)
        self._writer_lock = claim(self.spool_root, self.instance)
        self._open_next()
        self._start_shipper()

    def _start_shipper(self) -> None:
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        bind = self.sessions.kw["bind"]
        self._proc = self._ctx.Process(
            target=shipper_main, name="accord-gateway-shipper", daemon=True,
            args=(bind.url.render_as_string(hide_password=False), str(self.dir),
                  self.interval, self.batch, self.per_event, self.max_text, self._shipped,
                  self._stop_r, ready_w, os.getpid(), self.shipper_nice,
                  str(self.recordings_dir) if self.recordings_dir is not None else None))
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
        size = max(SEGMENT_BYTES, at_least + FRAME.size + 64)
        path = segment_path(self.dir, self._segment)
        part = path.with_suffix(".new")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            # A fault on the mapping would otherwise read ahead: zero-fill pages of the hole
            # beyond it that `piece`'s pwritev then writes over (a sixth of the SSH gateway's
            # CPU on a recorded `cat`); each page of the mapping is faulted in as it is written.
            self._mm.madvise(mmap.MADV_RANDOM)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        part.rename(path)
        self._size = size
        self._pos = 0
        self._frame(record_bytes(R_CLOCK, struct.pack("<q", self.offset)))

    def _close_segment(self, sync: bool = False) -> None:
        if self._mm is not None:
            if sync:
                self._mm.flush()  # msync: the file's range, `piece`'s writes too
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _frame(self, body: bytes) -> None:
        """Append one frame; the CRC makes a frame cut short by a crash unreadable."""
        need = FRAME.size + len(body)
        if self._pos + need > self._size:
            self._rotate(need)
        end = self._pos + need
        assert self._mm is not None
        self._mm[self._pos:end] = FRAME.pack(len(body), crc32(body)) + body
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
        end = pos + FRAME.size + len(body)
        if end > self._size:
            self._frame(body)
            return
        mm[pos:end] = FRAME.pack(len(body), crc32(body)) + body
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

    def spool_check(self) -> bool:
        """Whether the segments not yet shipped (the shipper deletes a segment once all of
        it is in the ledger) hold more than `max_spool_bytes` (kept in `spool_full`): a
        recording's bytes are not facts, so `overloaded` does not see them. Looked at when
        a segment is full, and by whoever waits for it to clear."""
        held = self._pos
        current = segment_path(self.dir, self._segment).name
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                name = entry.name
                if name.startswith("seg-") and name.endswith(".log") and name != current:
                    with contextlib.suppress(OSError):  # shipped meanwhile
                        held += entry.stat().st_size
        self.spool_full = held > self.max_spool_bytes
        return self.spool_full

    def _rotate(self, need: int) -> None:
        """A new segment carrying the live sessions and their unanswered statements, so the
        shipper can delete the old one once it is in the ledger."""
        parts: list[bytes] = []
        for info, in_flight in self.live.values():
            parts.append(record_bytes(R_CONTEXT, FACT.pack(info.number, 0)
                                      + json.dumps({"info": info.as_dict()}).encode()))
            parts += (intent_record(info.number, run) for run in in_flight())
            carry = self.carry.get(info.number)
            if carry is not None:
                parts += carry()
        context = b"".join(parts)
        self._open_next(need + FRAME.size + len(context))
        if context:
            self._frame(context)
        self.spool_check()

    def _fact_record(self, kind: int, info: SessionInfo, at_ns: int,
                     data: dict[str, Any]) -> None:
        self._rec += 1
        self._deferred.append(record_bytes(kind, FACT.pack(info.number, self._rec)
                                           + json.dumps({"data": data, "at_ns": at_ns}).encode()))

    def blob(self, info: SessionInfo, name: str, data: dict[str, Any], blob: bytes = b"",
             at_ns: int | None = None) -> None:
        """Spool a protocol's own fact `name` (`recording.BLOB_FACTS`) with its bytes, at
        once (an SSH recording chunk: its bytes reach the ledger's storage with its event)."""
        self._rec += 1
        head = json.dumps({"name": name, "data": data,
                           "at_ns": at_ns if at_ns is not None else time.time_ns()}).encode()
        self._deferred.append(record_bytes(R_BLOB, BLOB_HEAD.pack(info.number, self._rec,
                                                                  len(head)) + head + blob))
        self._write()

    def piece(self, number: int, stream: int, *parts: bytes) -> None:
        """Append `parts` to stream `stream` of session `number` in the spool, at once and
        each copied once (a recording as it is made, before its bytes are forwarded; a
        `blob` fact naming the stream takes them: `spool.R_PIECE`)."""
        if self._deferred:
            self._write()  # in order
        size = PIECE.size + sum(map(len, parts))
        need = FRAME.size + HEAD.size + size
        if self._pos + need > self._size:
            self._rotate(need)
        mm = self._mm
        assert mm is not None
        pos = self._pos
        head = PIECE_FRAME.pack(need - FRAME.size, 0, size, R_PIECE, number, stream)
        crc = crc32(memoryview(head)[FRAME.size:])
        for part in parts:
            crc = crc32(part, crc)
        if need >= PWRITE_BYTES:
            # A large piece (a burst of output) goes in with one pwritev into the same
            # pages the mapping shows: copying it into the mapping costs a page fault per
            # 4 KiB of fresh segment, about twice the CPU of the write.
            written = os.pwritev(self._fd, [PIECE_FRAME.pack(need - FRAME.size, crc, size,
                                                             R_PIECE, number, stream), *parts],
                                 pos)
            if written != need:  # a short write: only on a full disk
                raise OSError(f"spool: wrote {written} of {need} bytes")
            self._pos = pos + need
            return
        PIECE_FRAME.pack_into(mm, pos, need - FRAME.size, crc, size, R_PIECE, number, stream)
        at = pos + PIECE_FRAME.size
        for part in parts:
            mm[at:at + len(part)] = part
            at += len(part)
        self._pos = at

    def opened(self, info: SessionInfo, in_flight: Callable[[], list[Run]]) -> None:
        info.opened_ns = time.perf_counter_ns()
        self.live[info.number] = (info, in_flight)
        self._rec += 1
        payload = json.dumps({"info": info.as_dict(), "at_ns": info.opened_ns + self.offset})
        self._deferred.append(record_bytes(R_OPEN, FACT.pack(info.number, self._rec)
                                           + payload.encode()))
        self._write()

    def closed(self, info: SessionInfo, reason: str, in_flight: list[Run]) -> None:
        self.live.pop(info.number, None)
        self.carry.pop(info.number, None)
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
        case): spooled at once, in one frame with the outcomes waiting (`intent_record`
        and `_write` inline: this runs for every statement)."""
        text = run.text
        params = run.params
        tail = b"" if params is None else (b"%d" % params if type(params) is int
                                           else json.dumps(params).encode())
        out = self._deferred
        out.append(INTENT_REC.pack(INTENT_SIZE + len(text) + len(tail), R_INTENT, number,
                                   run.seq, run.t0, len(text), PROTOCOL_CODE[run.protocol]))
        out.append(text)
        if tail:
            out.append(tail)
        mm = self._mm
        if mm is None:  # stopped: kept, as `_write` keeps them
            return
        body = b"".join(out)
        out.clear()
        pos = self._pos
        end = pos + FRAME_SIZE + len(body)
        if end > self._size:
            self._frame(body)
            return
        pack_frame(mm, pos, len(body), crc32(body))
        mm[pos + FRAME_SIZE:end] = body
        self._pos = end

    def answered(self, info: SessionInfo, finished: list[Finished]) -> None:
        """`note` of outcomes only (the data path's common case: they wait for the next
        write or tick)."""
        out = self._deferred
        number = info.number
        rec = self._rec
        pack_done = DONE_REC.pack
        tails = TAG_TAILS
        codes = OUTCOME_CODE
        size = DONE_STRUCT.size
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
            if run.masked:  # after a record separator (never in JSON): old readers stop
                tail += _masked_tail(run.masked)
            if run.infile:  # after a group separator, likewise
                tail += b"\x1d" + json.dumps(run.infile).encode()
            out.append(pack_done(size + len(tail), R_DONE, number, run.seq, rec, duration,
                                 -1 if rows is None else rows, codes[outcome]) + tail)
        self._rec = rec
        info.statements += len(finished)
        self.statements += len(finished)

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
            out.append(intent_record(number, run))
        if finished:
            self.answered(info, finished)
        for v in violations:
            data = {"statement": v.text.decode("utf-8", "replace")[:self.max_text],
                    "missing": sorted(v.missing), "classes": sorted(v.classes),
                    "protocol": v.protocol}
            if v.escalation is not None:  # an attempt to leave the grant: detectors alert
                data["escalation"] = v.escalation
            if v.reason is not None:
                data["reason"] = v.reason
            self._fact_record(R_VIOLATION, info, v.t0 + self.offset, data)
            info.violations += 1
            self.violations += 1
        if started or violations:
            self._write()

    def guardrails(self, info: SessionInfo, hits: list[GuardrailHit]) -> None:
        """Spool statements guardrail rules matched (`gateway.guardrail` events), before
        the bytes that follow from them are forwarded."""
        for hit in hits:
            data: dict[str, Any] = {
                "statement": hit.text.decode("utf-8", "replace")[:self.max_text],
                "action": hit.action, "rule": hit.rule, "rules": list(hit.rules),
                "protocol": hit.protocol}
            if hit.request_id is not None:
                data["request_id"] = hit.request_id
            if hit.detail:
                data["detail"] = hit.detail
            self._fact_record(R_GUARDRAIL, info, hit.t0 + self.offset, data)
        self._write()



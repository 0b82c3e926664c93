"""The gateway's spool: the binary records a gateway process appends as its sessions run,
and the `Reader` that turns them back into audit facts.

Segments are memory-mapped files of a fixed size: appending a record is a memory copy, not a
system call (a `write` per statement was a tenth of the gateway's CPU). Records go in
*frames* (length, CRC-32, records); the rest of a segment is zeros, so a reader stops at a
zero length, and a frame torn by a crash fails its CRC and is never read. The writer is
`audit.AuditWriter`; the reader serves `shipper`.

Protocol-neutral: a record carries a statement's text, parameters and outcome, and the name
of the sub-protocol that carried it (`PROTOCOLS`: a new gateway protocol adds its names at
the end, so old spools still read).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from accord.gateway import recording
from accord.gateway.records import Run, SessionInfo
from accord.ledger.service import SAFE_INT

log = logging.getLogger("accord.gateway")
SEGMENT_BYTES = 16 << 20
# Held (flock) by the gateway process writing a spool for as long as it lives: a spool whose
# writer lock is free belongs to a dead process, and whoever holds its `lock` ships it.
WRITER_LOCK = "writer.lock"
DONE = 1 << 62  # a finished spool's mark: nothing in it is left to record

# Record kinds in the spool.
R_CLOCK, R_INTENT, R_DONE, R_OPEN, R_CLOSE, R_VIOLATION, R_CONTEXT, R_GUARDRAIL = range(8)
# A protocol's own facts (SSH: a recording chunk with its bytes, a command's exit): FACT,
# the length of a JSON object, the object ({"name", "data", "at_ns"}), then raw bytes.
R_BLOB = 8
BLOB_HEAD = struct.Struct("<IQI")  # session, rec, JSON length
# A protocol's recording as it is made (SSH: each event of a channel, spooled before its
# bytes are forwarded): R_PIECE appends bytes to a *stream* of a session; an R_BLOB fact
# whose data names that `stream` takes what was appended since the last one as its bytes.
# Such a stream's facts are numbered chunks (`index`, `final`): when the writer dies, the
# reader ends each stream left open with a last chunk of what it holds (`recovered`).
# R_STREAM restates a stream at the start of a new segment (its last fact, what it holds),
# so a shipper restarted there loses nothing once the old segment is deleted.
R_PIECE, R_STREAM = 9, 10
PIECE = struct.Struct("<II")  # session, stream; the bytes follow
PIECE_FRAME = struct.Struct("<IIIBII")  # FRAME + HEAD + PIECE in one pack
STREAM = struct.Struct("<III")  # session, stream, JSON length; the JSON, then the bytes
FRAME = struct.Struct("<II")  # frame body length, CRC-32 of the body; records follow
HEAD = struct.Struct("<IB")  # record length (after these 5 bytes), kind
INTENT = struct.Struct("<IIqIB")  # session, seq, t0, text length, protocol; text, params json
DONE_STRUCT = struct.Struct("<IIQqqB")  # session, seq, rec, duration ns, rows (-1: none), outcome
FACT = struct.Struct("<IQ")  # session, rec; a JSON object follows
INTENT_REC = struct.Struct("<IBIIqIB")  # HEAD + INTENT in one pack
DONE_REC = struct.Struct("<IBIIQqqB")  # HEAD + DONE_STRUCT in one pack
OUTCOMES = ("ok", "error", "suspended", "skipped", "unknown")
OUTCOME_CODE = {name: i for i, name in enumerate(OUTCOMES)}
# PostgreSQL's simple and extended query protocols and fast-path calls; MySQL's text
# (COM_QUERY) and binary (prepared statements) protocols.
PROTOCOLS = ("simple", "extended", "function", "unknown", "text", "binary")
PROTOCOL_CODE = {name: i for i, name in enumerate(PROTOCOLS)}
RECOVERED = "gateway stopped (recovered from its spool)"
TAG_TAILS: dict[str, bytes] = {}  # command tag → its bytes in an outcome record
NO_INTENT = ("unknown", "", None, 0)  # an outcome whose statement record was lost


# One thing to record, as a plain tuple: (rec, kind, session, wall-clock ns, payload).
# kind is "open", "statement", "violation", "guardrail" or "close", or a protocol's own
# (`R_BLOB`: "ssh_chunk", "ssh_exec"); the payload is a statement row
# (`recording.COLUMNS`) for statements, else a dict of event data (a protocol's: with its
# bytes under "blob"). `rec` numbers a process's facts in spool order.
Fact = tuple[int, str, SessionInfo, int, Any]
STATEMENT = "statement"


SAFE_NS = SAFE_INT * 1000


def param_values(params: Any) -> list[str | None]:
    """Parameter values as the writer spooled them (text or None), whatever the bytes said."""
    if type(params) is not list:
        return [] if params is None else [str(params)]
    return [v if v is None or type(v) is str else str(v) for v in params]


def record_bytes(kind: int, payload: bytes) -> bytes:
    return HEAD.pack(len(payload), kind) + payload


def intent_record(number: int, run: Run) -> bytes:
    """The record of a statement sent upstream by session `number`."""
    text = run.text
    params = run.params
    tail = b"" if params is None else (b"%d" % params if type(params) is int
                                       else json.dumps(params).encode())
    return INTENT_REC.pack(INTENT.size + len(text) + len(tail), R_INTENT, number, run.seq,
                            run.t0, len(text), PROTOCOL_CODE[run.protocol]) + text + tail


def stream_record(number: int, stream: int, last: dict[str, Any] | None,
                  held: bytes) -> bytes:
    """A stream restated: its last fact ({"name", "data"}) and the bytes appended since."""
    head = json.dumps(last).encode()
    return record_bytes(R_STREAM, STREAM.pack(number, stream, len(head)) + head + held)


def claim(root: Path, instance: str) -> int:
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


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"seg-{number:08d}.log"



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
        # session << 32 | stream → [its last fact's (name, data) or None, bytes appended]
        self.streams: dict[int, list[Any]] = {}

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
            self._read(segment_path(self.dir, self.segment))  # then this read sees it all
            if not later:
                return
            self.done_segments.append(segment_path(self.dir, self.segment))
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
            if size <= self.position + FRAME.size:
                return
            bodies: list[bytes] = []
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
                pos = self.position
                frame = FRAME.unpack_from
                crc32 = zlib.crc32
                while pos + FRAME.size <= size:
                    length, crc = frame(mm, pos)
                    end = pos + FRAME.size + length
                    if length == 0 or end > size:
                        break  # the end of what was written
                    body = mm[pos + FRAME.size:end]
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
        head = HEAD.unpack_from
        intent = INTENT_REC.unpack_from  # header and fields in one call
        done = DONE_REC.unpack_from
        isize, dsize = INTENT_REC.size, DONE_REC.size
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
                protocol, text, params, t0 = intents.pop(number << 32 | seq, NO_INTENT)
                info = infos.get(number)
                if info is not None:  # a row of recording.COLUMNS (offset_us set when shipped)
                    # The tail: the tag, a NUL, and the error as JSON when there was one;
                    # then, when values were masked, a record separator and their columns;
                    # then, when the client sent a file, a group separator and its digest.
                    error: list[str] | None = None
                    masked: list[str] | None = None
                    infile: dict[str, Any] | None = None
                    if body[end - 1] == 0:
                        nul = end - 1
                    else:
                        nul = body.index(b"\0", pos + dsize, end)
                        rest = end
                        sep = body.find(b"\x1d", nul + 1, end)
                        if sep >= 0:
                            sent = json.loads(body[sep + 1:end])
                            infile = {"bytes": int(sent["bytes"]),
                                      "sha256": str(sent["sha256"])}
                            rest = sep
                        sep = body.find(b"\x1e", nul + 1, rest)
                        if sep >= 0:
                            masked = [str(c) for c in json.loads(body[sep + 1:rest])]
                            rest = sep
                        if rest > nul + 1:
                            code, message = json.loads(body[nul + 1:rest])
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
                    # these rows without looking at each value: recording._emit).
                    ready.append((rec, STATEMENT, info, t0 + offset, [
                        seq, 0, protocol, text, count, values, tag,
                        None if rows < 0 else rows if rows < SAFE_INT else SAFE_INT - 1,
                        duration // 1000 if duration < SAFE_NS else SAFE_INT - 1,
                        OUTCOMES[outcome], error, masked, infile]))
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
                    params = int(tail) if tail.isdigit() else param_values(json.loads(tail))
                intents[number << 32 | seq] = (PROTOCOLS[protocol], text, params, t0)
                if t0 > last_t0:
                    last_t0 = t0
            else:
                length = head(body, pos)[0]
                end = pos + 5 + length
                if last_t0 and last_t0 + offset > self.last_ns:
                    self.last_ns = last_t0 + offset  # under the clock these intents had
                last_t0 = 0
                self._apply(kind, body[pos + HEAD.size:end])
                offset = self.offset
            pos = end
        if last_t0 and last_t0 + offset > self.last_ns:
            self.last_ns = last_t0 + offset

    def _apply(self, kind: int, payload: bytes) -> None:
        """Records other than statements and outcomes."""
        if kind == R_PIECE:
            number, stream = PIECE.unpack_from(payload)
            state = self.streams.get(number << 32 | stream)
            if state is None:
                state = self.streams[number << 32 | stream] = [None, []]
            state[1].append(payload[PIECE.size:])
        elif kind == R_CLOCK:
            self.offset = struct.unpack("<q", payload)[0]
        elif kind == R_BLOB:
            number, rec, size = BLOB_HEAD.unpack_from(payload)
            head = json.loads(payload[BLOB_HEAD.size:BLOB_HEAD.size + size])
            data = dict(head["data"])
            blob = payload[BLOB_HEAD.size + size:]
            stream = data.pop("stream", None)
            if stream is not None:  # its bytes: the stream's since its last fact
                key = number << 32 | int(stream)
                state = self.streams.pop(key, None)
                if state is not None and state[1]:
                    blob = blob + b"".join(state[1])
                if not data.get("final"):
                    self.streams[key] = [(str(head["name"]), dict(data)), []]
            info = self.infos.get(number)
            if info is not None:
                data["blob"] = blob
                self.ready.append((rec, str(head["name"]), info, int(head["at_ns"]), data))
        elif kind == R_STREAM:
            number, stream, size = STREAM.unpack_from(payload)
            last = json.loads(payload[STREAM.size:STREAM.size + size])
            self.streams[number << 32 | stream] = [
                (str(last["name"]), dict(last["data"])) if last else None,
                [payload[STREAM.size + size:]]]
        elif kind in (R_OPEN, R_CONTEXT, R_CLOSE, R_VIOLATION, R_GUARDRAIL):
            number, rec = FACT.unpack_from(payload)
            body = json.loads(payload[FACT.size:])
            if kind in (R_OPEN, R_CONTEXT):
                info = self.infos.get(number) or SessionInfo.of(body["info"])
                self.infos[number] = info
                if kind == R_OPEN:
                    self.ready.append((rec, "open", info, int(body["at_ns"]), {}))
            elif number in self.infos:
                if kind == R_CLOSE:
                    self.closed.add(number)
                name = {R_CLOSE: "close", R_GUARDRAIL: "guardrail"}.get(kind, "violation")
                self.ready.append((rec, name, self.infos[number], int(body["at_ns"]),
                                   body["data"]))

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
                out.append((number, STATEMENT, info, t0 + self.offset, recording.statement_row(
                    seq, protocol, text, params, None, None, 0, "unknown", None)))
        self.intents.clear()
        for key, (last, held) in sorted(self.streams.items()):
            info = self.infos.get(key >> 32)
            if info is None or last is None:
                continue
            name, data = last
            number += 1
            data = {k: v for k, v in data.items() if k != "flagged"}
            data.update(index=int(data.get("index", -1)) + 1, final=True, recovered=True,
                        blob=b"".join(held))
            out.append((number, name, info, self.last_ns or time.time_ns(), data))
        self.streams.clear()
        for session, info in self.infos.items():
            if session not in self.closed:
                number += 1
                out.append((number, "close", info, self.last_ns or time.time_ns(),
                            {"reason": RECOVERED, "statements": None, "violations": None,
                             "duration_us": None}))
                self.closed.add(session)
        return out



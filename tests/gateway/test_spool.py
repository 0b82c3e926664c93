"""The audit spool on its own: memory-mapped segments of CRC-checked frames.

No database and no shipper here: a writer fed by a real `Conversation` and a `Reader` of
the same directory, as the shipper uses it. The crash cases of whole processes are in
test_crash.py.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from accord.gateway import audit, shipper, spool
from accord.gateway.audit import AuditWriter
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.conversation import Conversation
from accord.gateway.postgres.scope import Classifier, role_classes
from accord.gateway.records import Run, SessionInfo
from accord.gateway.spool import Reader

RESULT = (pq.message(b"T", b"\0\x01n\0" + bytes(18)) + pq.message(b"D", b"\0\x01\0\0\0\x011")
          + pq.message(b"C", b"SELECT 1\0") + pq.message(b"Z", b"I"))


class Session:
    """One proxied session, driven the way ProxySession drives it."""

    def __init__(self, writer: AuditWriter, number: int = 1) -> None:
        self.writer = writer
        self.conv = Conversation(allowed=role_classes("read", None), classifier=Classifier(),
                                 role="read", resource="db")
        self.info = SessionInfo(id=f"w-{number}", number=number, grant_id=7, user="alice",
                                resource="db", role="read", client="127.0.0.1:1",
                                application="test", tls=False, upstream_role=None)
        writer.opened(self.info, self.conv.in_flight)

    def send(self, sql: str) -> None:
        self.conv.client(pq.message(b"Q", sql.encode() + b"\0"))
        started, _, violations = self.conv.drain()
        self.writer.note(self.info, started, [], violations)

    def answer(self, reply: bytes = RESULT) -> None:
        self.conv.server(reply)
        _, finished, _ = self.conv.drain()
        self.writer.note(self.info, [], finished, [])

    def query(self, sql: str) -> None:
        self.send(sql)
        self.answer()


@pytest.fixture
def writer(tmp_path: Path) -> AuditWriter:
    w = AuditWriter(None, tmp_path)  # type: ignore[arg-type]  # no shipper: nothing to open
    w.dir.mkdir()
    w._open_next()
    return w


def statements(facts: list[spool.Fact]) -> list[tuple[str, str | None, str]]:
    return [(f[4][3], f[4][6], f[4][9]) for f in facts if f[1] == spool.STATEMENT]


def test_a_session_round_trips(writer: AuditWriter) -> None:
    s = Session(writer)
    s.query("SELECT 1")
    s.send("SELECT 2")
    s.answer(pq.error_response("22012", "division by zero") + pq.message(b"Z", b"E"))
    s.send("DELETE FROM orders")  # refused for role read: a violation, never sent
    s.answer(pq.error_response("42601", "syntax error") + pq.message(b"Z", b"I"))
    writer.closed(s.info, "client disconnected", [])
    reader = Reader(writer.dir)
    reader.poll()
    facts = reader.take()
    assert [f[1] for f in facts] == ["open", "statement", "statement", "violation", "close"]
    assert statements(facts) == [("SELECT 1", "SELECT 1", "ok"), ("SELECT 2", None, "error")]
    assert facts[2][4][10] == ["22012", "division by zero"]
    assert facts[3][4]["missing"] == ["write"]
    assert facts[4][4]["reason"] == "client disconnected"
    assert [f[0] for f in facts] == sorted(f[0] for f in facts)  # spool order is rec order


def test_a_frame_cut_short_is_never_read(writer: AuditWriter) -> None:
    """A crash in the middle of copying a frame: the CRC fails, the reader stops there, and
    reads it once it is whole (a reader can also meet a frame still being written)."""
    s = Session(writer)
    s.query("SELECT 1")
    writer.tick()
    whole = writer._pos
    s.send("SELECT 2")
    mm = writer._mm
    assert mm is not None
    frame = bytes(mm[whole:writer._pos])
    mm[writer._pos - 6:writer._pos] = bytes(6)  # the tail of the frame never arrived
    reader = Reader(writer.dir)
    reader.poll()
    assert statements(reader.take()) == [("SELECT 1", "SELECT 1", "ok")]
    assert reader.position == whole
    assert reader.intents == {}  # "SELECT 2" is not known: it was never sent upstream
    mm[whole:writer._pos] = frame
    reader.poll()
    assert reader.position == writer._pos and len(reader.intents) == 1


def test_a_dead_writer_leaves_unanswered_statements_and_open_sessions(
        writer: AuditWriter) -> None:
    s = Session(writer)
    s.query("SELECT 1")
    s.send("SELECT count(*) FROM big_table")
    reader = Reader(writer.dir)
    reader.poll()
    facts = reader.take() + reader.finish()
    assert statements(facts) == [("SELECT 1", "SELECT 1", "ok"),
                                 ("SELECT count(*) FROM big_table", None, "unknown")]
    assert facts[-1][1] == "close" and facts[-1][4]["reason"] == spool.RECOVERED


def test_segments_rotate_carrying_live_sessions(writer: AuditWriter,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Small segments: rotations while another session's statement is in flight, a
    statement larger than a segment, and a reader that follows across files and lets the
    old ones go."""
    monkeypatch.setattr(audit, "SEGMENT_BYTES", 4096)
    writer._open_next()
    slow, busy = Session(writer, 1), Session(writer, 2)
    reader = Reader(writer.dir)
    big = "SELECT '" + "x" * 10_000 + "'"
    expected = []
    for round_ in range(4):
        first = writer._segment
        slow.send("SELECT count(*) FROM slow_view")
        for i in range(150):
            sql = big if (round_, i) == (2, 30) else f"SELECT {i}"
            busy.query(sql)
            expected.append((sql, "SELECT 1", "ok"))
            if i % 7 == 0:
                reader.poll()
        assert writer._segment > first + 1  # rotated while the slow one ran
        slow.answer()
        expected.append(("SELECT count(*) FROM slow_view", "SELECT 1", "ok"))
    writer.tick()
    for s in (slow, busy):
        writer.closed(s.info, "client disconnected", [])
    reader.poll()
    facts = reader.take()
    got = [f for f in facts if f[1] == spool.STATEMENT]
    assert reader.done_segments and len(reader.done_segments) == writer._segment - 1
    assert sorted(statements(got)) == sorted(expected)
    assert len({f[0] for f in got}) == len(got)  # each outcome once
    assert [f[1] for f in facts].count("close") == 2
    assert reader.finish() == []  # nothing left unanswered or open


def test_tags_and_errors_with_odd_bytes_read_back_whole(writer: AuditWriter) -> None:
    """A command tag is whatever the server sent: a NUL in it must not split the record."""
    s = Session(writer)
    s.send("select 1")
    s.answer(pq.message(b"C", b"SELECT\x001\0") + pq.message(b"Z", b"I"))
    s.send("select 2")
    s.answer(pq.error_response("22000", 'bad "\0" byte') + pq.message(b"Z", b"I"))
    writer.tick()
    reader = Reader(writer.dir)
    reader.poll()
    facts = [f[4] for f in reader.take() if f[1] == spool.STATEMENT]
    assert [(f[6], f[9], f[10]) for f in facts] == [
        ("SELECT\x001", "ok", None), (None, "error", ["22000", 'bad "" byte'])]


def test_rows_hold_only_what_the_ledger_encodes_without_looking(writer: AuditWriter) -> None:
    """The shipper vouches that statement rows are plain (str, None, ints below 2**53):
    counts beyond what JSON carries exactly are capped, parameters read back as text."""
    s = Session(writer)
    big = Run(1, "extended", b"SELECT $1", ["1", None, "\\x00ff"], 5)
    odd = Run(2, "extended", b"SELECT $1", [3, 2.5, True], 6)
    writer.note(s.info, [big, odd], [], [])
    writer.note(s.info, [], [(big, "SELECT 99", 2**62, 2**63 - 1, None, "ok"),
                             (odd, None, None, 1000, None, "ok")], [])
    writer.tick()
    reader = Reader(writer.dir)
    reader.poll()
    rows = [f[4] for f in reader.take() if f[1] == spool.STATEMENT]
    assert rows[0][5] == ["1", None, "\\x00ff"] and rows[0][7] == 2**53 - 1
    assert rows[0][8] == 2**53 - 1
    assert rows[1][5] == ["3", "2.5", "True"] and rows[1][7] is None and rows[1][8] == 1


def test_recording_pieces_read_back_exactly(writer: AuditWriter,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's pieces, small ones copied into the mapping and large ones written with
    pwritev (`audit.PWRITE_BYTES`), taken by chunk facts, across segment rotations (the
    open chunk carried); a large piece cut short is not read until it is whole; a dead
    writer's open chunk comes back as the recovered last one."""
    monkeypatch.setattr(audit, "SEGMENT_BYTES", 256 << 10)
    writer._open_next()
    s = Session(writer)
    number = s.info.number
    rng = random.Random(27)  # noqa: S311 - reproducible test data, not secrets
    last: dict[str, object] | None = None
    held: list[bytes] = []
    writer.carry[number] = lambda: [spool.stream_record(
        number, 3, {"name": "ssh_chunk", "data": last} if last else None, b"".join(held))]
    reader = Reader(writer.dir)
    chunks: list[bytes] = []
    for index in range(12):
        for _ in range(rng.randrange(1, 6)):
            size = rng.choice((1, 40, 3000, audit.PWRITE_BYTES, 40_000, 100_000))
            data = rng.randbytes(size)
            parts = (data[:size // 3], data[size // 3:])
            writer.piece(number, 3, *parts)
            held += parts
        if index == 5:  # a large piece torn (a crash, or a reader meeting it mid-write)
            writer.piece(number, 3, b"x" * 70_000)
            mm = writer._mm
            assert mm is not None
            tail = bytes(mm[writer._pos - 6:writer._pos])  # written, seen through the map
            assert tail == b"x" * 6
            mm[writer._pos - 6:writer._pos] = bytes(6)
            reader.poll()
            assert reader.position < writer._pos
            mm[writer._pos - 6:writer._pos] = tail
            held.append(b"x" * 70_000)
        meta = {"channel": 3, "index": index, "final": False}
        writer.blob(s.info, "ssh_chunk", {**meta, "stream": 3})
        chunks.append(b"".join(held))
        last, held = meta, []
        if index % 4 == 1:
            reader.poll()
    writer.piece(number, 3, b"the chunk still open", rng.randbytes(50_000))
    assert writer._segment > 3  # rotated, carrying the open chunk each time
    reader.poll()
    taken = [f[4] for f in reader.take() if f[1] == "ssh_chunk"]
    assert [f["index"] for f in taken] == list(range(12))
    assert [f["blob"] for f in taken] == chunks
    recovered = [f[4] for f in reader.finish() if f[1] == "ssh_chunk"]
    assert len(recovered) == 1 and recovered[0]["index"] == 12
    assert recovered[0]["recovered"] and recovered[0]["blob"][:20] == b"the chunk still open"
    fresh = Reader(writer.dir)  # a shipper restarted on the last segment alone
    for path in sorted(writer.dir.glob("seg-*.log"))[:-1]:
        path.unlink()
    fresh.poll()
    later = [f[4] for f in fresh.take() if f[1] == "ssh_chunk"]  # cut in the last segment
    assert [f["blob"] for f in later] == chunks[len(chunks) - len(later):]
    again = [f[4] for f in fresh.finish() if f[1] == "ssh_chunk"]
    assert [f["blob"] for f in again] == [recovered[0]["blob"]]


def test_a_last_chunk_read_with_its_pieces(writer: AuditWriter) -> None:
    """A channel's whole recording in one read: its pieces, views of the mapping, are taken
    by its final chunk, and none is left when the mapping closes."""
    s = Session(writer)
    data = os.urandom(3 * audit.PWRITE_BYTES)
    writer.piece(s.info.number, 3, b"small ")
    writer.piece(s.info.number, 3, data)
    writer.blob(s.info, "ssh_chunk", {"channel": 3, "index": 0, "final": True, "stream": 3})
    reader = Reader(writer.dir)
    reader.poll()
    assert [f[4]["blob"] for f in reader.take() if f[1] == "ssh_chunk"] == [b"small " + data]
    assert reader.streams == {}


def test_a_spool_is_locked_by_its_writer_from_the_moment_it_appears(tmp_path: Path) -> None:
    fd = spool.claim(tmp_path, "abc")
    made = tmp_path / "abc"
    assert made.is_dir() and not (tmp_path / ".abc").exists()
    assert spool.writer_alive(made)  # another open file: the lock holds against it
    os.close(fd)  # as the kernel does when the process dies
    assert not spool.writer_alive(made)
    assert not spool.writer_alive(tmp_path)  # no writer lock at all: an older version's


def test_replay_leaves_live_writers_and_young_hidden_spools_alone(tmp_path: Path) -> None:
    fd = spool.claim(tmp_path, "live")
    (tmp_path / ".starting").mkdir()  # a writer between mkdir and its lock
    (tmp_path / ".died").mkdir()
    os.utime(tmp_path / ".died", (0, 0))  # ... and one that died there long ago
    try:
        # No database is touched: nothing here is a dead writer's spool to ship.
        assert shipper.replay_dead(None, tmp_path, per_event=10,  # type: ignore[arg-type]
                                   max_text=100) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == [".starting", "live"]
    finally:
        os.close(fd)


def test_replay_reports_a_dead_writers_spool_its_shipper_still_holds(tmp_path: Path) -> None:
    os.close(spool.claim(tmp_path, "dead"))  # its writer died
    held = shipper.ship_lock(tmp_path / "dead")  # ... its shipper is still at it
    assert held is not None
    try:
        waiting: list[Path] = []
        assert shipper.replay_dead(None, tmp_path, per_event=10,  # type: ignore[arg-type]
                                   max_text=100, waiting=waiting) == 0
        assert waiting == [tmp_path / "dead"]
    finally:
        os.close(held)


def test_the_spool_is_full_past_max_spool_bytes_until_shipped(
        writer: AuditWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded bytes are not facts: `spool_full` counts the bytes of the segments not yet
    shipped (deleted), looked at when a segment fills and by `spool_check`."""
    monkeypatch.setattr(audit, "SEGMENT_BYTES", 64 << 10)
    writer.max_spool_bytes = 300 << 10
    writer._open_next()
    piece = b"o" * (20 << 10)
    while not writer.spool_full:
        writer.piece(1, 1, piece)
        assert writer._segment < 20, "never full"
    segments = sorted(writer.dir.glob("seg-*.log"))
    assert sum(p.stat().st_size for p in segments) > 300 << 10
    assert writer.spool_check()  # nothing shipped: still full
    for path in segments[:-1]:  # what the shipper does once a segment is in the ledger
        path.unlink()
    assert not writer.spool_check() and not writer.spool_full

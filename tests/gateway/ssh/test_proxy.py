"""A recorded channel's output waits while the spool is full (`gateway.max_spool_bytes`):
upstream reading paused until the shipper has caught up, and resumed only when the client
reads too. The packets of one read are recorded together, before they go on. The
channel's parts are stand-ins; the real session's flow is in test_gateway.py."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from accord.gateway.ssh import lib, proxy
from accord.gateway.ssh.cast import Recorder


class Up:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Audit:
    def __init__(self) -> None:
        self.spool_full = False
        self.shipped: bool | None = None  # what a look at the spool finds (None: as set)

    def spool_check(self) -> bool:
        if self.shipped is not None:
            self.spool_full = not self.shipped
        return self.spool_full


def channel() -> tuple[proxy.Channel, Up, Audit, list[bytes]]:
    audit, sent = Audit(), list[bytes]()
    live: Any = SimpleNamespace(audit=audit, channels={})
    chan = proxy.Channel(live, 1)
    chan.chan = SimpleNamespace(write=sent.append, write_stderr=sent.append)
    chan.up = up = Up()
    return chan, up, audit, sent


def test_output_waits_for_a_full_spool_then_resumes() -> None:
    async def run() -> None:
        chan, up, audit, sent = channel()
        chan.output(b"before", False)
        assert up.reading and chan._spool_wait is None
        audit.spool_full = True
        chan.output(b"burst", False)  # forwarded (already spooled), then no more reads
        assert sent == [b"before", b"burst"] and not up.reading
        assert chan._spool_wait is not None
        chan._spool_wait.cancel()
        chan.spool_waited()  # still full: waits again
        assert not up.reading and chan._spool_wait is not None
        chan._spool_wait.cancel()
        audit.spool_full = False
        chan.spool_waited()
        assert up.reading and chan._spool_wait is None

    asyncio.run(run())


def test_a_slow_client_and_a_full_spool_both_hold_upstream() -> None:
    async def run() -> None:
        chan, up, audit, _ = channel()
        audit.spool_full = True
        chan.output(b"x", False)
        chan.pause_writing()
        chan.resume_writing()  # the client reads again, the spool is still full
        assert not up.reading
        chan.pause_writing()
        assert chan._spool_wait is not None
        chan._spool_wait.cancel()
        audit.spool_full = False
        chan.spool_waited()  # the spool cleared, the client is still slow
        assert not up.reading
        chan.resume_writing()
        assert up.reading

    asyncio.run(run())


def test_a_finished_channel_stops_waiting() -> None:
    async def run() -> None:
        chan, _, audit, _ = channel()
        audit.spool_full = True
        chan.output(b"x", False)
        wait = chan._spool_wait
        assert wait is not None
        chan.finish()
        assert chan._spool_wait is None and wait.cancelled()

    asyncio.run(run())


def test_a_full_spool_left_from_an_ended_episode_does_not_pause_the_next_burst() -> None:
    async def run() -> None:
        chan, up, audit, sent = channel()
        audit.spool_full = True  # the channel that waited for it ended before it cleared
        audit.shipped = True
        chan.output(b"burst", False)
        assert sent == [b"burst"] and up.reading and chan._spool_wait is None
        assert not audit.spool_full

    asyncio.run(run())


def test_the_packets_of_one_read_are_recorded_once_before_they_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    chan, _up, _audit, _sent = channel()
    seen: list[tuple[str, Any]] = []  # what was spooled and what was sent, in order
    chan.chan = SimpleNamespace(write=lambda d: seen.append(("out", d)),
                                write_stderr=lambda d: seen.append(("err", d)))
    chan.rec = Recorder(lambda *parts: seen.append(("spool", orjson.loads(b"".join(parts)))),
                        lambda index, final: None, width=80, height=24, term=None,
                        command="cat", title="t", chunk_bytes=1 << 20)
    chan._arm = lambda: None  # type: ignore[method-assign]
    seen.clear()  # the header

    def read(conn: Any, data: Any, datatype: Any = None) -> None:  # one read of upstream
        for packet in (b"a" * 10, b"b" * 10, b"c" * 10):
            chan.output(packet, False)
        assert seen == []  # held until the read is handled
        chan.output(b"oops", True)  # stderr: what stdout held goes first
        chan.output(b"d", False)

    monkeypatch.setattr(lib, "_data_received", read)
    lib._in_steps(SimpleNamespace(_transport=None), b"x")
    abc = "a" * 10 + "b" * 10 + "c" * 10
    assert [(kind, what[1:] if kind == "spool" else what) for kind, what in seen] == [
        ("spool", ["o", abc]), ("out", abc.encode()),
        ("spool", ["o", "oops"]), ("err", b"oops"),
        ("spool", ["o", "d"]), ("out", b"d")]
    # Outside a read (nothing to wait for), output goes at once.
    chan.output(b"e", False)
    assert seen[-1] == ("out", b"e") and chan.out_held.parts == []


def test_the_input_of_one_read_is_recorded_once_before_it_goes_upstream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    chan, _up, _audit, _sent = channel()
    seen: list[tuple[str, Any]] = []  # what was spooled and what went upstream, in order
    chan.up = SimpleNamespace(write=lambda d: seen.append(("up", d)),
                              write_eof=lambda: seen.append(("eof", None)),
                              change_terminal_size=lambda *size: seen.append(("size", size)))
    chan.rec = Recorder(lambda *parts: seen.append(("spool", orjson.loads(b"".join(parts)))),
                        lambda index, final: None, width=80, height=24, term=None,
                        command=None, title="t", chunk_bytes=1 << 20)
    chan._arm = lambda: None  # type: ignore[method-assign]
    chan.live.patterns = [("rm", re.compile(r"rm -rf"))]
    seen.clear()  # the header

    def read(conn: Any, data: Any, datatype: Any = None) -> None:  # one read of the client
        for packet in (b"a" * 10, b"rm -", b"rf /\r"):
            chan.data_received(packet, None)
        assert seen == []  # held until the read is handled
        chan.terminal_size_changed(100, 30, 0, 0)  # what was typed before goes first
        chan.data_received(b"d", None)
        chan.eof_received()  # so does what came before the end of input

    monkeypatch.setattr(lib, "_data_received", read)
    lib._in_steps(SimpleNamespace(_transport=None), b"x")
    typed = "a" * 10 + "rm -rf /\r"
    assert [(kind, what[1:] if kind == "spool" else what) for kind, what in seen] == [
        ("spool", ["i", typed]), ("up", typed.encode()),
        ("spool", ["r", "100x30"]), ("size", (100, 30, 0, 0)),
        ("spool", ["i", "d"]), ("up", b"d"), ("eof", None)]
    # The line split over two packets was seen whole by the typed-command patterns.
    assert chan.flags == [{"pattern": "rm", "line": "a" * 10 + "rm -rf /"}]
    # Outside a read (nothing to wait for), input goes at once.
    chan.data_received(b"e", None)
    assert seen[-1] == ("up", b"e") and chan.in_held.parts == []

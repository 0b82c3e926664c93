"""A recorded channel's output waits while the spool is full (`gateway.max_spool_bytes`):
upstream reading paused until the shipper has caught up, and resumed only when the client
reads too. The channel's parts are stand-ins; the real session's flow is in
test_gateway.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from accord.gateway.ssh import proxy


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

    def spool_check(self) -> bool:
        return self.spool_full


def channel() -> tuple[proxy.Channel, Up, Audit, list[bytes]]:
    audit, sent = Audit(), []
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

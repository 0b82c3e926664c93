"""What the gateway changes in how asyncssh is driven: input handed over in steps (the
same bytes in the same order), what a read makes it send held until the read is handled
(then one writev per connection, in order), and no empty MSG_IGNORE before each packet
unless a CBC cipher was negotiated."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from accord.gateway.ssh import lib
from accord.gateway.ssh.lib import asyncssh


class Transport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []  # each write or writelines: one system call

    def write(self, data: bytes) -> None:
        self.writes.append([data])

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(list(data))


class Conn:
    def __init__(self, cipher: str = "aes128-gcm@openssh.com") -> None:
        self._transport: Any = Transport()
        self.cipher = cipher
        self.got: list[bytes] = []
        self.errors: list[BaseException | None] = []

    def get_extra_info(self, name: str) -> str | None:
        return self.cipher if name == "send_cipher" else None

    def internal_error(self) -> None:
        self.errors.append(sys.exc_info()[1])


def test_a_large_read_is_handed_over_in_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def received(conn: Conn, data: Any, datatype: Any = None) -> None:
        assert len(data) <= lib.FEED_BYTES
        conn.got.append(bytes(data))

    monkeypatch.setattr(lib, "_data_received", received)
    conn = Conn()
    data = os.urandom(256 << 10 | 1234)
    lib._in_steps(conn, data)
    assert b"".join(conn.got) == data and len(conn.got) == 5
    small = Conn()
    lib._in_steps(small, b"x" * 100)
    assert small.got == [b"x" * 100]


def test_the_steps_stop_when_the_connection_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def received(conn: Conn, data: Any, datatype: Any = None) -> None:
        conn.got.append(bytes(data))
        conn._transport = None  # a protocol error in the first step

    monkeypatch.setattr(lib, "_data_received", received)
    conn = Conn()
    lib._in_steps(conn, bytes(200_000))
    assert len(conn.got) == 1


def test_the_empty_ignore_is_sent_only_with_cbc(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(lib, "_send_packet",
                        lambda conn, pkttype, *args, handler=None: sent.append((pkttype, args)))
    ignore, data = asyncssh.constants.MSG_IGNORE, asyncssh.constants.MSG_CHANNEL_DATA
    for cipher in sorted(lib.NOT_CBC):
        lib._no_empty_ignore(Conn(cipher), ignore, b"\0\0\0\0")
    assert sent == []
    lib._no_empty_ignore(Conn(), data, b"\0\0\0\1", b"\0\0\0\1x")  # data always goes
    lib._no_empty_ignore(Conn(), ignore, b"\0\0\0\2hi")  # an ignore with content too
    lib._no_empty_ignore(Conn("aes128-cbc"), ignore, b"\0\0\0\0")  # CBC: as asyncssh
    assert [p for p, _ in sent] == [data, ignore, ignore]


def test_what_a_read_sends_goes_out_once_it_is_handled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reader, other = Conn(), Conn()
    a, b = reader._transport, other._transport
    seen: list[str] = []

    def later() -> None:  # a deferred callback: it sends too, still before the flush
        assert a.writes == [] and b.writes == []
        seen.append("later")
        lib._send(other, b"4")

    def received(conn: Conn, data: Any, datatype: Any = None) -> None:
        lib._send(other, b"1")  # a relayed packet to the other side
        lib._send(reader, b"2")  # a window adjust back
        assert lib.defer(later)
        if conn is reader:
            lib._in_steps(other, b"nested")  # a read within a read: it does not flush
        lib._send(other, b"3")
        assert a.writes == [] and b.writes == []

    monkeypatch.setattr(lib, "_data_received", received)
    lib._in_steps(reader, b"x" * 100)
    # the nested read's packets in their place; the deferred callbacks after both reads
    assert b.writes == [[b"1", b"1", b"3", b"3", b"4", b"4"]] and a.writes == [[b"2", b"2"]]
    assert seen == ["later", "later"]
    # Outside a read, a packet goes at once and nothing is deferred.
    lib._send(other, b"5")
    assert b.writes[-1] == [b"5"] and not lib.defer(later)


def test_a_packet_goes_to_the_transport_it_was_sent_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    conn = Conn()
    transport = conn._transport

    def received(conn: Conn, data: Any, datatype: Any = None) -> None:
        lib._send(conn, b"disconnect")
        conn._transport = None  # asyncssh's _force_close: the abort comes on the next turn
        lib._send(conn, b"after")  # as asyncssh: nothing once the transport is gone

    monkeypatch.setattr(lib, "_data_received", received)
    lib._in_steps(conn, b"x")
    assert transport.writes == [[b"disconnect"]]


def test_an_error_in_a_deferred_callback_closes_the_connection_and_loses_nothing_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    conn = Conn()

    def broken() -> None:
        raise OSError("no space left on the spool's disk")

    def other() -> None:  # another channel's output, deferred after the broken one
        lib._send(conn, b"2")

    def received(conn: Conn, data: Any, datatype: Any = None) -> None:
        lib._send(conn, b"1")
        lib.defer(broken)
        lib.defer(other)

    monkeypatch.setattr(lib, "_data_received", received)
    lib._in_steps(conn, b"x")
    assert [type(e) for e in conn.errors] == [OSError]
    assert conn._transport.writes == [[b"1", b"2"]]
    assert not lib.defer(broken)  # nothing left over for the next read

    def raising(conn: Conn, data: Any, datatype: Any = None) -> None:
        lib.defer(other)
        raise ValueError("a bug in a handler")

    monkeypatch.setattr(lib, "_data_received", raising)
    lib._in_steps(conn, b"x")  # the connection closes; what was deferred still runs
    assert [type(e) for e in conn.errors] == [OSError, ValueError]
    assert conn._transport.writes[-1] == [b"2"]


def test_the_wrappers_are_what_asyncssh_calls() -> None:
    from asyncssh.connection import SSHConnection
    assert SSHConnection.data_received is lib._in_steps
    assert SSHConnection.send_packet is lib._no_empty_ignore
    assert SSHConnection._send is lib._send

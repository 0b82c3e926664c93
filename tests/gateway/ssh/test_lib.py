"""What the gateway changes in how asyncssh is driven: input handed over in steps (the
same bytes in the same order), and no empty MSG_IGNORE before each packet unless a CBC
cipher was negotiated."""

from __future__ import annotations

import os
from typing import Any

import pytest

from accord.gateway.ssh import lib
from accord.gateway.ssh.lib import asyncssh


class Conn:
    def __init__(self, cipher: str = "aes128-gcm@openssh.com") -> None:
        self._transport: object | None = object()
        self.cipher = cipher
        self.got: list[bytes] = []

    def get_extra_info(self, name: str) -> str | None:
        return self.cipher if name == "send_cipher" else None


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


def test_the_wrappers_are_what_asyncssh_calls() -> None:
    from asyncssh.connection import SSHConnection
    assert SSHConnection.data_received is lib._in_steps
    assert SSHConnection.send_packet is lib._no_empty_ignore

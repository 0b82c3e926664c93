"""Following an SFTP conversation relayed byte for byte, to record each file transfer: the
path, which way, how many bytes and their sha256 (in transfer order; null when the client
read or wrote out of order, as parallel downloads do).

Only the packets that matter are read (draft-ietf-secsh-filexfer-02, what OpenSSH speaks):
OPEN and its HANDLE reply, READ and its DATA reply, WRITE, and CLOSE. Everything else
passes untouched; the relay never waits on this.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
HANDLE, DATA = 102, 103
WRITE_FLAG = 0x02
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
MAX_PACKET = 1 << 20  # more than any packet OpenSSH sends; beyond it, stop following


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = U32.unpack_from(buf, pos)
    return buf[pos + 4:pos + 4 + n], pos + 4 + n


class Transfer:
    def __init__(self, path: str, upload: bool) -> None:
        self.path = path
        self.upload = upload
        self.size = 0
        self.next = 0  # the offset expected next: data in order is hashed
        self.hash: Any = hashlib.sha256()

    def add(self, offset: int, data: bytes) -> None:
        if self.hash is not None and offset == self.next:
            self.hash.update(data)
            self.next += len(data)
        elif data:
            self.hash = None
        self.size += len(data)


class Follower:
    """Feed it the client's bytes (`client`) and the server's (`server`); `done` gets each
    finished transfer as event data."""

    def __init__(self, done: Callable[[dict[str, Any]], None]) -> None:
        self.done = done
        self._bufs = {True: bytearray(), False: bytearray()}
        self.opening: dict[int, tuple[str, bool]] = {}  # request id -> path, upload
        self.reading: dict[int, tuple[bytes, int]] = {}  # request id -> handle, offset
        self.open: dict[bytes, Transfer] = {}
        self.broken = False

    def client(self, data: bytes) -> None:
        self._feed(True, data)

    def server(self, data: bytes) -> None:
        self._feed(False, data)

    def finish(self) -> None:
        """The channel ended: transfers never closed are recorded as they stand."""
        for t in list(self.open.values()):
            self._record(t, closed=False)
        self.open.clear()

    def _feed(self, from_client: bool, data: bytes) -> None:
        if self.broken:
            return
        buf = self._bufs[from_client]
        buf += data
        while len(buf) >= 4:
            (n,) = U32.unpack_from(buf, 0)
            if n > MAX_PACKET or n == 0:
                self.broken = True  # not SFTP as we know it: stop following
                return
            if len(buf) < 4 + n:
                return
            packet = bytes(buf[4:4 + n])
            del buf[:4 + n]
            try:
                (self._request if from_client else self._reply)(packet)
            except (struct.error, ValueError):
                self.broken = True
                return

    def _request(self, p: bytes) -> None:
        kind = p[0]
        if kind == OPEN:
            (rid,) = U32.unpack_from(p, 1)
            path, pos = _string(p, 5)
            (flags,) = U32.unpack_from(p, pos)
            self.opening[rid] = (path.decode("utf-8", "replace"), bool(flags & WRITE_FLAG))
        elif kind == READ:
            (rid,) = U32.unpack_from(p, 1)
            handle, pos = _string(p, 5)
            if handle in self.open:
                self.reading[rid] = (handle, U64.unpack_from(p, pos)[0])
        elif kind == WRITE:
            handle, pos = _string(p, 5)
            t = self.open.get(handle)
            if t is not None:
                offset = U64.unpack_from(p, pos)[0]
                data, _ = _string(p, pos + 8)
                t.add(offset, data)
        elif kind == CLOSE:
            handle, _ = _string(p, 5)
            t = self.open.pop(handle, None)
            if t is not None:
                self._record(t, closed=True)

    def _reply(self, p: bytes) -> None:
        kind = p[0]
        (rid,) = U32.unpack_from(p, 1)
        if kind == HANDLE:
            opened = self.opening.pop(rid, None)
            if opened is not None:
                handle, _ = _string(p, 5)
                self.open[handle] = Transfer(*opened)
        elif kind == DATA:
            reading = self.reading.pop(rid, None)
            if reading is not None and reading[0] in self.open:
                data, _ = _string(p, 5)
                self.open[reading[0]].add(reading[1], data)
        else:
            self.opening.pop(rid, None)
            self.reading.pop(rid, None)

    def _record(self, t: Transfer, closed: bool) -> None:
        if t.size == 0 and not t.upload:
            return  # opened and closed without reading: a stat in disguise
        self.done({"path": t.path[:4096], "direction": "upload" if t.upload else "download",
                   "size": t.size, "sha256": t.hash.hexdigest() if t.hash is not None else None,
                   "closed": closed})

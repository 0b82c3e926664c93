"""The export bundle: a self-contained, streamable copy of the ledger for offline audit.

Layout (all integers big-endian):
    b"ACCORD-LEDGER-BUNDLE/1\\n"
    one JSON line: {"origin", "key" (the verifier key in force), "keys" (every key that
    signed checkpoints, oldest first: see `keys.py`), "size", "checkpoints": [signed
    notes], ...}
    per leaf: u64 index, u32 length n, 0x00, the n leaf bytes, 32-byte chain value
    end mark: u64 2**64-1, u32 0
    seek table: b"SEEK\n", u32 block size B, u64 count, count x u64 byte offsets (of
    records 0, B, 2B, ...), then u64 offset of the table itself
Binary records keep verification close to the raw speed of SHA-256 (no per-leaf JSON
or base64 to decode): the 0x00 before each leaf is RFC 9162's leaf prefix, so a
verifier hashes `0x00 || leaf` where it lies, without copying. The index in each
record lets a verifier name a missing one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.ledger.events import format_time
from accord.ledger.models import LedgerCheckpoint, LedgerEntry
from accord.ledger.service import load_head

MAGIC = b"ACCORD-LEDGER-BUNDLE/1\n"
RECORD = struct.Struct(">QI")
END_INDEX = 2**64 - 1
CHAIN = 32
OVERHEAD = RECORD.size + 1 + CHAIN  # bytes per record besides the leaf
SEEK_MAGIC = b"SEEK\n"
SEEK_BLOCK = 1 << 14  # records per seek-table entry: the verifier's unit of parallel work


class BundleError(ValueError):
    """The bundle itself is unreadable (truncated, wrong format)."""


def write(
    session: Session,
    out: IO[bytes],
    *,
    origin: str,
    key: str,
    exported_at: Any,
    keys: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 5000,
    upto: int | None = None,
) -> int:
    """Stream every integrated leaf and checkpoint up to the current head, or up to `upto`
    leaves (a checkpoint's size: what the caller just signed, so events integrated since
    do not leave the bundle a tail no checkpoint covers). Constant memory."""
    size = load_head(session, lock=False).size
    if upto is not None:
        size = min(size, upto)
    checkpoints = [
        cp.note for cp in session.execute(
            select(LedgerCheckpoint).where(LedgerCheckpoint.size <= size)
            .order_by(LedgerCheckpoint.size)
        ).scalars()
    ]
    header = {"format": "accord-ledger-bundle", "version": 1, "origin": origin, "key": key,
              "keys": keys or [key], "size": size, "checkpoints": checkpoints,
              "exported_at": format_time(exported_at)}
    out.write(MAGIC)
    out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
    done = 0
    start = 0
    written = len(MAGIC) + len(json.dumps(header, separators=(",", ":")).encode()) + 1
    offsets: list[int] = []
    while start < size:
        rows = session.execute(
            select(LedgerEntry.idx, LedgerEntry.leaf, LedgerEntry.chain)
            .where(LedgerEntry.idx >= start, LedgerEntry.idx < min(size, start + batch))
            .order_by(LedgerEntry.idx)
        ).all()
        if not rows:
            break
        chunk = bytearray()
        for n, (idx, leaf, chain) in enumerate(rows, start=done):
            if isinstance(leaf, str):  # only a hand edit stores text here; export it as it is
                leaf = leaf.encode()
            if n % SEEK_BLOCK == 0:
                offsets.append(written + len(chunk))
            chunk += RECORD.pack(idx, len(leaf))
            chunk += b"\x00"
            chunk += leaf
            chunk += chain or bytes(CHAIN)
        out.write(chunk)
        written += len(chunk)
        done += len(rows)
        start = int(rows[-1][0] or 0) + 1
        if progress:
            progress(done, size)
    out.write(RECORD.pack(END_INDEX, 0))
    table = written + RECORD.size
    out.write(SEEK_MAGIC + struct.pack(">IQ", SEEK_BLOCK, len(offsets)))
    out.write(struct.pack(f">{len(offsets)}Q", *offsets))
    out.write(struct.pack(">Q", table))
    return done


def seek_table(f: IO[bytes]) -> tuple[int, list[int]] | None:
    """(block size, byte offset of each block's first record), if the bundle has one."""
    try:
        f.seek(-8, 2)
        (table,) = struct.unpack(">Q", f.read(8))
        f.seek(table)
        if f.read(len(SEEK_MAGIC)) != SEEK_MAGIC:
            return None
        block, count = struct.unpack(">IQ", f.read(12))
        raw = f.read(8 * count)
        if len(raw) != 8 * count or block <= 0:
            return None
        return block, list(struct.unpack(f">{count}Q", raw))
    except (OSError, struct.error, ValueError):
        return None


@dataclass
class Header:
    origin: str
    key: str
    size: int
    checkpoints: list[str]
    raw: dict[str, Any]

    @property
    def keys(self) -> list[str]:
        """Every key the bundle says signed its checkpoints, oldest first (a bundle from
        before key rotation names only `key`). Claims: a key counts only once a checkpoint
        signed by the key in force introduced it."""
        listed = self.raw.get("keys")
        out = [str(k) for k in listed] if isinstance(listed, list) else []
        return out if self.key in out else [*out, self.key]


def read_header(f: IO[bytes]) -> Header:
    if f.read(len(MAGIC)) != MAGIC:
        raise BundleError("not an Accord ledger bundle (bad magic)")
    line = f.readline()
    try:
        raw = json.loads(line)
        return Header(str(raw["origin"]), str(raw["key"]), int(raw["size"]),
                      [str(c) for c in raw["checkpoints"]], raw)
    except (ValueError, KeyError, TypeError):
        raise BundleError("bundle header is not valid") from None


def records(f: IO[bytes], chunk_size: int = 1 << 20) -> Iterator[tuple[int, bytes, bytes]]:
    """(index, leaf, chain) for each record, until the end mark."""
    buf = b""
    pos = 0
    head = RECORD.size
    while True:
        if len(buf) - pos < head:
            buf = buf[pos:] + f.read(chunk_size)
            pos = 0
            if len(buf) < head:
                raise BundleError("bundle ends before its end mark (truncated)")
        idx, n = RECORD.unpack_from(buf, pos)
        if idx == END_INDEX:
            return
        need = OVERHEAD + n
        if len(buf) - pos < need:
            buf = buf[pos:] + f.read(max(chunk_size, need))
            pos = 0
            if len(buf) < need:
                raise BundleError("bundle ends inside a record (truncated)")
        start = pos + head + 1
        yield idx, buf[start : start + n], buf[start + n : start + n + CHAIN]
        pos += need


def blocks(f: IO[bytes], per_block: int, chunk_size: int = 1 << 22) -> Iterator[bytes]:
    """The records region cut into runs of `per_block` whole records (the last may be short)."""
    buf = b""
    pos = 0  # start of the current block in buf
    scan = 0  # next record header to read
    count = 0
    head = RECORD.size
    unpack = RECORD.unpack_from
    while True:
        if len(buf) - scan < head:
            more = f.read(chunk_size)
            if not more:
                raise BundleError("bundle ends before its end mark (truncated)")
            buf = buf[pos:] + more
            scan -= pos
            pos = 0
            continue
        idx, n = unpack(buf, scan)
        if idx == END_INDEX:
            if scan > pos:
                yield buf[pos:scan]
            return
        if len(buf) - scan < OVERHEAD + n:
            more = f.read(max(chunk_size, OVERHEAD + n))
            if not more:
                raise BundleError("bundle ends inside a record (truncated)")
            buf = buf[pos:] + more
            scan -= pos
            pos = 0
            continue
        scan += OVERHEAD + n
        count += 1
        if count == per_block:
            yield buf[pos:scan]
            pos = scan
            count = 0

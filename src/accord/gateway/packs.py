"""Recording chunks kept in pack files under a directory (`gateway.ssh.recordings_dir`)
instead of in the database: what PostgreSQL spent storing them (TOAST and WAL, up to 0.4
CPU-second per 100 MB of random bytes, on the gateway's cores when they share a machine)
becomes a file append.

A shipper appends a round's chunks to its own pack file (`<instance>-<random>.pack`, a new
one past `PACK_BYTES`), fsyncs it, and only then commits the round: a chunk's event is
never in the ledger before its bytes are on disk. The database keeps each chunk's row
(sha256, size) with where its bytes are (`name@offset`) instead of the bytes. A round
whose commit failed is appended again on the retry: the first copy is never referenced.
The bytes are checked against the ledger's sha256 wherever they are read, so an edited,
truncated or replaced pack fails verification like an edited row."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from accord.spec.gateway import GatewaySpec

PACK_BYTES = 256 << 20  # a pack file is closed past this size (and a new one begun)
IOV_MAX = 512  # buffers per writev (Linux takes 1024)
_LOCATION = re.compile(r"([A-Za-z0-9_.-]{1,200}\.pack)@([0-9]{1,19})")


def root(data_dir: Path, spec: GatewaySpec | None) -> Path | None:
    """The directory of recordings' pack files (None: they are kept in the database)."""
    where = spec.ssh.recordings_dir if spec is not None and spec.ssh is not None else None
    return None if where is None else data_dir / where  # an absolute path stays as it is


class PackWriter:
    """One shipper's pack files under `root` (made if missing)."""

    def __init__(self, root: Path, instance: str) -> None:
        self.root = root
        self.prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", instance)[:120]
        self._fd: int | None = None
        self._name = ""
        self._size = 0

    def _open(self) -> None:
        # What people typed (passwords among it) and saw: for this user only, as the spool.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._name = f"{self.prefix}-{secrets.token_hex(6)}.pack"
        self._fd = os.open(self.root / self._name,
                           os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._size = 0
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:  # the new file's name survives a machine crash with its first round
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def append(self, blobs: dict[str, bytes]) -> dict[str, str]:
        """Append `blobs` (by sha256) and fsync; returns each one's location."""
        if self._fd is None or self._size >= PACK_BYTES:
            self.close()
            self._open()
        fd = self._fd
        assert fd is not None
        where: dict[str, str] = {}
        parts: list[bytes] = []
        at = self._size
        for digest, blob in blobs.items():
            where[digest] = f"{self._name}@{at}"
            parts.append(blob)
            at += len(blob)
        for start in range(0, len(parts), IOV_MAX):
            _write_all(fd, parts[start:start + IOV_MAX])
        os.fsync(fd)
        self._size = at
        return where

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, parts: list[bytes]) -> None:
    total = sum(map(len, parts))
    written = os.writev(fd, parts)
    if written < total:  # stopped short (a signal; a full disk raises on the next write)
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]


def read(root: Path | None, location: str, size: int) -> bytes | None:
    """A chunk's bytes at `location` (`name@offset`), or None when they are not there (no
    directory configured, a missing or short pack: what verification reports as missing)."""
    found = _LOCATION.fullmatch(location)
    if root is None or found is None:
        return None
    name, offset = found.groups()
    try:
        fd = os.open(root / name, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, int(offset))
    finally:
        os.close(fd)
    return data if len(data) == size else None

"""The checkpoint signing keys: the key in force and every key before it, in one file.

A key rotation (`accord audit rotate-key`) makes a new Ed25519 key. The next checkpoint is
signed by both the old and the new key (a C2SP signed note may carry several signatures):
that cosigned checkpoint introduces the new key, and later ones are signed by the new key
alone. Old keys stay in the file as public keys, each with the size of the checkpoint that
retired it, so every stored checkpoint still verifies, and a checkpoint signed by an old
key after it was retired does not.

The key file (`$ACCORD_DATA_DIR/ledger.key`, mode 0600), one key a line:

    PRIVATE+KEY+<name>+<id>+<base64>            the key in force (the only line at first)
    previous PRIVATE+KEY+<name>+<id>+<base64>   while a rotation is under way: the key it
                                                succeeds, which cosigns the next checkpoint
    retired <name>+<id>+<base64> <size>         an older key (public only), oldest first,
                                                and the size of the cosigned checkpoint that
                                                introduced its successor

The file is replaced whole (written beside it, then renamed), under a lock, so a process
reading it sees one state or the next. Running processes re-read it when it changes (its
inode, size or modification time), before each use.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from accord.ledger.note import Checkpoint, NoteError, Signer, Verifier, open_checkpoint


@dataclass(frozen=True)
class Retired:
    """A key no longer in force: it signed checkpoints up to `until` (the cosigned one)."""

    verifier: Verifier
    until: int


@dataclass(frozen=True)
class Epoch:
    """The sizes of the checkpoints a key signs: from `since` (the cosigned checkpoint that
    introduced it; 0 for the first key) to `until` (the one that introduced its successor;
    None while it is in force)."""

    verifier: Verifier
    since: int
    until: int | None

    def covers(self, size: int) -> bool:
        return self.since <= size and (self.until is None or size <= self.until)


@dataclass(frozen=True)
class KeyRing:
    signer: Signer  # the key in force
    previous: Signer | None = None  # a rotation under way: it cosigns the next checkpoint
    retired: tuple[Retired, ...] = ()

    @property
    def chain(self) -> list[Verifier]:
        """Every key, oldest first; the last is the key in force."""
        out = [r.verifier for r in self.retired]
        if self.previous is not None:
            out.append(self.previous.verifier)
        return [*out, self.signer.verifier]

    def epochs(self) -> list[Epoch]:
        out: list[Epoch] = []
        since = 0
        for r in self.retired:
            out.append(Epoch(r.verifier, since, r.until))
            since = r.until
        if self.previous is not None:
            # Under way: the cosigned checkpoint is not stored yet (or not yet noted here);
            # it will be larger than any checkpoint signed before the rotation began.
            out.append(Epoch(self.previous.verifier, since, None))
            since += 1
        out.append(Epoch(self.signer.verifier, since, None))
        return out

    def open(self, text: str, size: int | None = None) -> tuple[Checkpoint, list[Verifier]]:
        """Parse a checkpoint that must be signed by a key in force at its size: the
        checkpoint and the keys that signed it. At the size where a key was retired, both
        it and its successor must have signed (the cosigned checkpoint)."""
        cp, signed = open_checkpoint(text, self.chain)
        at = cp.size if size is None else size
        in_force = [e.verifier for e in self.epochs() if e.covers(at)]
        if not any(v in signed for v in in_force):
            names = ", ".join(_label(v) for v in in_force)
            others = [_label(v) for v in signed]
            by = f" (it is signed by {', '.join(others)})" if others else ""
            raise NoteError(f"no signature by the key in force at size {at} "
                            f"({names}){by}")
        if any(r.until == at for r in self.retired):
            missing = [v for v in in_force if v not in signed]
            if missing:
                raise NoteError(f"the checkpoint of size {at} retired a key, so it must "
                                f"be signed by both keys; {_label(missing[0])} did not sign")
        return cp, signed

    def check(self, text: str, size: int | None = None) -> Checkpoint:
        return self.open(text, size)[0]

    def cosigners(self, latest_note: str | None) -> list[Signer]:
        """Who signs the next checkpoint: during a rotation, the previous key and the new
        one until a checkpoint signed by the new key is stored; else the key in force."""
        if self.previous is None:
            return [self.signer]
        if latest_note is not None and self.signed_by_current(latest_note):
            return [self.signer]
        return [self.previous, self.signer]

    def signed_by_current(self, note: str) -> bool:
        try:
            return bool(open_checkpoint(note, [self.signer.verifier])[1])
        except NoteError:
            return False

    def retire_previous(self, until: int) -> KeyRing:
        """The rotation is done: the checkpoint of size `until` is signed by both keys."""
        if self.previous is None:
            return self
        return replace(self, previous=None,
                       retired=(*self.retired, Retired(self.previous.verifier, until)))

    def rotated(self, new: Signer) -> KeyRing:
        if self.previous is not None:
            raise NoteError("a key rotation is already under way")
        return KeyRing(signer=new, previous=self.signer, retired=self.retired)

    # -- the file

    def encode(self) -> str:
        lines = [self.signer.encode()]
        if self.previous is not None:
            lines.append(f"previous {self.previous.encode()}")
        lines += [f"retired {r.verifier.encode()} {r.until}" for r in self.retired]
        return "\n".join(lines) + "\n"

    @classmethod
    def decode(cls, text: str) -> KeyRing:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()
                 and not ln.lstrip().startswith("#")]
        if not lines:
            raise NoteError("the key file is empty")
        signer = Signer.decode(lines[0])
        previous: Signer | None = None
        retired: list[Retired] = []
        for ln in lines[1:]:
            word, _, rest = ln.partition(" ")
            if word == "previous" and previous is None:
                previous = Signer.decode(rest)
            elif word == "retired":
                key, _, until = rest.strip().rpartition(" ")
                if not until.isdigit():
                    raise NoteError(f"key file: {ln[:40]!r}: a retired key ends with the "
                                    f"size that retired it")
                retired.append(Retired(Verifier.decode(key), int(until)))
            else:
                raise NoteError(f"key file: cannot read the line starting {ln[:20]!r}")
        ring = cls(signer, previous, tuple(retired))
        ids = [(v.name, v.id) for v in ring.chain]
        if len(set(ids)) != len(ids):
            raise NoteError("key file: a key appears twice")
        return ring


def _label(v: Verifier) -> str:
    return f"{v.name} key {v.id.hex()}"


def generate(name: str, avoid: Sequence[Verifier] = ()) -> Signer:
    """A new key whose id differs from those of `avoid` (ids are 32 bits)."""
    taken = {(v.name, v.id) for v in avoid}
    while True:
        signer = Signer.generate(name)
        if (signer.name, signer.verifier.id) not in taken:
            return signer


def read(path: Path) -> KeyRing:
    return KeyRing.decode(path.read_text(encoding="utf-8"))


def load_or_create(path: Path, name: str) -> KeyRing:
    """Read the key file at `path`, or create it there (mode 0600) on first start."""
    if path.exists():
        return read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ring = KeyRing(Signer.generate(name))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return read(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(ring.encode())
        f.flush()
        os.fsync(f.fileno())
    return ring


def stamp(path: Path) -> tuple[int, int, int, int]:
    """What changes when the key file is replaced or rewritten."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the key file's lock (`<key>.lock` beside it) while reading and replacing it."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write(path: Path, ring: KeyRing) -> None:
    """Replace the key file with `ring`: written beside it (0600), synced, renamed over it.
    Call with `locked(path)` held."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a copy left by a crash may have had other bits
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(ring.encode())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

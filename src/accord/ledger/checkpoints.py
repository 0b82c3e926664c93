"""Signing checkpoints, and the copies kept where the database operator cannot rewrite them.

The signer never signs two roots for one size, never signs a tree that is not an
extension of what it signed before (the previous checkpoint in the database, and the
last one it remembers beside its key, which a database rewrite cannot touch), and never
signs entries whose stored bytes do not hash to the stored tree: it re-hashes what was
appended since the last checkpoint first (`integrity.verify_extension`).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.ledger import integrity, keys, merkle
from accord.ledger.keys import KeyRing
from accord.ledger.models import LedgerCheckpoint
from accord.ledger.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    checkpoint_body,
    open_checkpoint,
    parse_checkpoint,
    sign_note,
    signature_keys,
)
from accord.ledger.service import LedgerCorruption, consistency_proof, load_head, root_at

log = logging.getLogger("accord.ledger")
DEFAULT_INTERVAL = timedelta(seconds=2)


class SigningKeyError(LedgerCorruption):
    """The key file cannot be read, or does not hold the key the latest checkpoint is
    signed by (rotated on another host): nothing is signed until it does."""


@dataclass
class LedgerConfig:
    origin: str
    key_path: Path
    witness_dir: Path | None = None
    interval: timedelta = DEFAULT_INTERVAL
    _ring: KeyRing | None = field(default=None, init=False, repr=False, compare=False)
    _stamp: tuple[int, int, int, int] | None = field(default=None, init=False, repr=False,
                                                     compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                  compare=False)

    def ring(self) -> KeyRing:
        """The signing keys, read again whenever the key file changed (a rotation by
        `accord audit rotate-key`, in this process or another)."""
        with self._lock:
            try:
                now = keys.stamp(self.key_path)
                if self._ring is None or now != self._stamp:
                    self._ring, self._stamp = keys.read(self.key_path), now
            except (OSError, NoteError) as exc:
                raise SigningKeyError(f"the ledger key file {self.key_path}: {exc}") from None
            return self._ring

    @property
    def signer(self) -> Signer:
        """The key in force."""
        return self.ring().signer

    @property
    def verifiers(self) -> list[Verifier]:
        """Every key that signed checkpoints here, oldest first."""
        return self.ring().chain

    @property
    def memory_path(self) -> Path:
        """The last checkpoint this key signed, kept beside the key."""
        return self.key_path.with_name(self.key_path.name + ".last-checkpoint")

    def remembered(self) -> Checkpoint | None:
        try:
            text = self.memory_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return self.ring().check(text)

    def remember(self, note: str) -> None:
        # A temporary file of this writer's own: replicas sharing the key's directory (a
        # mounted secret) may remember at the same moment, and one shared name made one
        # writer's rename fail or publish the other's half-written note.
        tmp = self.memory_path.with_name(
            f"{self.memory_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_text(note, encoding="utf-8")
            tmp.replace(self.memory_path)
        finally:
            tmp.unlink(missing_ok=True)

    def rotate(self, new: Signer) -> KeyRing:
        """Install `new` as the key in force; the current key cosigns the next checkpoint.
        Raises NoteError when a rotation is already under way."""
        with keys.locked(self.key_path):
            ring = keys.read(self.key_path).rotated(new)
            keys.write(self.key_path, ring)
        return ring

    def finish_rotation(self, note: str, size: int) -> bool:
        """If `note` (stored, committed) is signed by both keys of a rotation under way, it
        introduced the new key: the old one is retired at `size` (public part kept)."""
        with keys.locked(self.key_path):
            ring = keys.read(self.key_path)
            if ring.previous is None:
                return False
            try:
                _, by = open_checkpoint(note, [ring.previous.verifier, ring.signer.verifier])
            except NoteError:
                return False
            if len(by) != 2:
                return False
            keys.write(self.key_path, ring.retire_previous(size))
        log.warning("ledger key rotation complete: the checkpoint of size %d is signed by "
                    "%s and %s; %s is retired", size, ring.previous.verifier.encode(),
                    ring.signer.verifier.encode(), ring.previous.verifier.id.hex())
        return True


def latest(session: Session) -> LedgerCheckpoint | None:
    return session.execute(
        select(LedgerCheckpoint).order_by(LedgerCheckpoint.size.desc()).limit(1)
    ).scalar_one_or_none()


def _check_extends(session: Session, size: int, root: bytes, old_size: int, old_root: bytes,
                   what: str) -> None:
    if old_size > size:
        raise LedgerCorruption(
            f"the tree has {size} entries but {what} covers {old_size}: entries were removed"
        )
    proof = consistency_proof(session, old_size, size)
    if not merkle.verify_consistency(old_size, size, proof, old_root, root):
        raise LedgerCorruption(
            f"the tree of size {size} does not extend {what} of size {old_size}"
        )


def _due(cfg: LedgerConfig, head_size: int, last: LedgerCheckpoint | None, now: datetime,
         force: bool) -> bool:
    return last is None or last.size == head_size or force or now - last.signed_at >= cfg.interval


def _verified_root(session: Session, cfg: LedgerConfig, size: int, head_root: bytes,
                   last: LedgerCheckpoint | None, remembered: Checkpoint | None) -> bytes:
    """The root at `size` from the stored subtrees, checked against the head and as an
    extension of the latest checkpoint and the one remembered beside the key."""
    root = root_at(session, size)
    if root != head_root:
        raise LedgerCorruption(f"stored subtrees give a root that differs from the head at "
                               f"size {size}")
    if last is not None and last.size != size:
        _check_extends(session, size, root, last.size, last.root, "the latest checkpoint")
    if remembered is not None:
        try:
            _check_extends(session, size, root, remembered.size, remembered.root,
                           "the checkpoint remembered beside the signing key")
        except LedgerCorruption as exc:
            raise LedgerCorruption(
                f"{exc} (if the database was restored from an older backup, an admin "
                f"accepts the loss with `accord audit accept-restore`)") from None
    return root


def _rehash_since(session: Session, ring: KeyRing, size: int, root: bytes,
                  last: LedgerCheckpoint | None) -> None:
    """Never sign over entries that do not hash to the stored tree: re-hash what was
    appended since the last checkpoint (all of it the first time). Older entries are the
    integrity monitor's (`refuse_if_damaged`)."""
    base = last if last is not None and last.size <= size else None
    damage = integrity.verify_extension(session, ring, size=size, root=root, base=base)
    if damage is not None:
        raise LedgerCorruption(str(damage))


def refuse_if_damaged(session: Session) -> None:
    """While the integrity monitor has found an entry changed, nothing is signed and no
    checkpoint is handed out as evidence (a report's, an export's)."""
    found = integrity.open_finding(session)
    if found is not None:
        raise LedgerCorruption(
            f"the integrity monitor found the ledger changed at index {found.idx} "
            f"({found.what}); nothing is signed until a whole pass finds it mended")


def _stored(session: Session, ring: KeyRing, size: int, root: bytes
            ) -> LedgerCheckpoint | None:
    """The checkpoint stored for `size`, which must have `root` and a good signature."""
    existing = session.get(LedgerCheckpoint, size)
    if existing is None:
        return None
    if existing.root != root:
        raise LedgerCorruption(f"a checkpoint with another root exists for size {size}")
    try:
        parsed = ring.check(existing.note, size)
    except NoteError as exc:
        raise LedgerCorruption(f"the stored checkpoint for size {size}: {exc}") from None
    if (parsed.size, parsed.root) != (size, root):
        raise LedgerCorruption(f"the stored checkpoint for size {size} says otherwise")
    return existing


def _signers(session: Session, cfg: LedgerConfig, ring: KeyRing,
             last: LedgerCheckpoint | None) -> list[Signer]:
    """Who signs the next checkpoint (both keys while a rotation is under way). Never a key
    older than the one the latest checkpoint is signed by: a process whose key file lags
    behind a rotation made elsewhere signs nothing until it has the new file."""
    if last is None:
        return ring.cosigners(None)
    known = {(v.name, v.id) for v in ring.chain}
    newer = [kid for name, kid in signature_keys(last.note)
             if name == ring.signer.name and (name, kid) not in known]
    if newer:
        raise SigningKeyError(
            f"the latest checkpoint (size {last.size}) is also signed by key "
            f"{newer[0].hex()}, which {cfg.key_path} does not hold: the key was rotated "
            f"on another host (install that host's key file here) or the checkpoint is "
            f"forged; nothing is signed with an older key")
    try:
        ring.check(last.note, last.size)
    except NoteError as exc:
        raise SigningKeyError(
            f"the latest checkpoint (size {last.size}) does not verify with the keys in "
            f"{cfg.key_path}: {exc}; a forgery, or a key rotated on another host (then "
            f"install that host's key file here)") from None
    if ring.previous is not None and ring.signed_by_current(last.note):
        settle(session, cfg, ring)  # the cosigned checkpoint is stored: note it
    return ring.cosigners(last.note)


def settle(session: Session, cfg: LedgerConfig, ring: KeyRing | None = None) -> bool:
    """Finish a rotation whose cosigned checkpoint is stored but not yet noted in the key
    file (the process that stored it stopped first): find the first checkpoint the new key
    signed, newest first. True when a rotation was finished."""
    ring = ring or cfg.ring()
    if ring.previous is None:
        return False
    first: LedgerCheckpoint | None = None
    rows = session.execute(select(LedgerCheckpoint).order_by(LedgerCheckpoint.size.desc())
                           .execution_options(yield_per=100)).scalars()
    for row in rows:
        if not ring.signed_by_current(row.note):
            break
        first = row
    if first is None:
        return False
    return cfg.finish_rotation(first.note, first.size)


def sign(
    session: Session, cfg: LedgerConfig, *, now: datetime, force: bool = False
) -> LedgerCheckpoint | None:
    """Sign the current tree if it grew (and, unless `force`, the interval has passed).

    Returns the newest checkpoint (possibly an existing one), or None when it is too soon.
    The caller commits, then calls `after_commit`.
    """
    head = load_head(session, lock=True)
    last = latest(session)
    if not _due(cfg, head.size, last, now, force):
        return None
    refuse_if_damaged(session)
    root = _verified_root(session, cfg, head.size, head.root, last, cfg.remembered())
    # Read after the head lock: a rotation installs its key before it signs under this lock.
    ring = cfg.ring()
    signers = _signers(session, cfg, ring, last)
    existing = _stored(session, ring, head.size, root)
    if existing is not None:
        return existing
    _rehash_since(session, ring, head.size, root, last)
    note = sign_note(checkpoint_body(cfg.origin, head.size, root), signers)
    cp = LedgerCheckpoint(size=head.size, root=root, note=note, signed_at=now)
    session.add(cp)
    session.flush()
    return cp


@dataclass(frozen=True)
class Draft:
    """A checkpoint verified and signed from a snapshot of the tree, not stored yet."""

    size: int
    root: bytes
    note: str
    signers: tuple[bytes, ...] = ()  # the ids of the keys that signed it


def draft(session: Session, cfg: LedgerConfig, *, now: datetime
          ) -> Draft | LedgerCheckpoint | None:
    """`sign`'s reading and checking, in a read transaction; `store` then writes the draft
    in a short write transaction. On SQLite the proofs are read without the one write lock
    (the stored subtrees of a size never change, so a snapshot proves as much as the
    latest state). None when it is too soon; the stored checkpoint when the tree did not
    grow. The session must not have begun: the checkpoint remembered beside the key is
    read first, so that the snapshot covers it (it is written after its commit)."""
    remembered = cfg.remembered()
    head = load_head(session, lock=False)
    last = latest(session)
    if not _due(cfg, head.size, last, now, False):
        return None
    refuse_if_damaged(session)
    root = _verified_root(session, cfg, head.size, head.root, last, remembered)
    ring = cfg.ring()
    signers = _signers(session, cfg, ring, last)
    existing = _stored(session, ring, head.size, root)
    if existing is not None:
        return existing
    _rehash_since(session, ring, head.size, root, last)
    return Draft(head.size, root, sign_note(checkpoint_body(cfg.origin, head.size, root), signers),
                 tuple(s.verifier.id for s in signers))


def store(session: Session, cfg: LedgerConfig, drafted: Draft, *, now: datetime
          ) -> LedgerCheckpoint | None:
    """Write a drafted checkpoint, unless one as large was stored meanwhile (that one is
    returned: each stored checkpoint was checked to extend the ones before it). One
    stored for the same size must have the same root. A draft signed by other keys than
    the next checkpoint needs now (a rotation began or ended meanwhile) is dropped."""
    last = latest(session)
    if last is not None and last.size > drafted.size:
        return last
    ring = cfg.ring()
    existing = _stored(session, ring, drafted.size, drafted.root)
    if existing is not None:
        return existing
    wanted = tuple(s.verifier.id for s in _signers(session, cfg, ring, last))
    if wanted != drafted.signers:
        return last
    cp = LedgerCheckpoint(size=drafted.size, root=drafted.root, note=drafted.note,
                          signed_at=now)
    session.add(cp)
    session.flush()
    return cp


def after_commit(cfg: LedgerConfig, cp: LedgerCheckpoint | None) -> None:
    """Once a checkpoint is committed: remember it and publish it to the witness; if it
    is a rotation's cosigned checkpoint, retire the old key in the key file."""
    if cp is None:
        return
    remembered = cfg.remembered()
    if remembered is None or remembered.size < cp.size:
        cfg.remember(cp.note)
    if cfg.witness_dir is not None:
        publish(cfg.witness_dir, cp.size, cp.note)
    if cfg.ring().previous is not None:
        cfg.finish_rotation(cp.note, cp.size)


def publish(directory: Path, size: int, note: str) -> None:
    """Write `<dir>/<size>` once; an existing copy is never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / str(size)
    # Written whole under a name of its own, then linked into place: the link fails if the
    # size is there already, and nobody ever reads a copy half written (another process
    # publishing the same checkpoint read an empty file and cried "different checkpoint").
    tmp = directory / f".{size}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(note)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            if path.read_text(encoding="utf-8") != note:
                log.critical("witness %s holds a different checkpoint for size %d",
                             directory, size)
    finally:
        tmp.unlink(missing_ok=True)


def publish_missing(session: Session, cfg: LedgerConfig) -> int:
    """Catch the witness up with every committed checkpoint it lacks (after a crash)."""
    if cfg.witness_dir is None:
        return 0
    have = {p.name for p in cfg.witness_dir.glob("*")} if cfg.witness_dir.exists() else set()
    n = 0
    for cp in session.execute(select(LedgerCheckpoint).order_by(LedgerCheckpoint.size)).scalars():
        if str(cp.size) not in have:
            publish(cfg.witness_dir, cp.size, cp.note)
            n += 1
    return n


def read_witness(directory: Path, verifiers: list[Verifier]) -> list[Checkpoint]:
    """Every checkpoint in a witness directory, by size."""
    out = []
    for path in sorted(directory.glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        if not path.name.isdigit():
            continue
        try:
            out.append(parse_checkpoint(path.read_text(encoding="utf-8"), verifiers))
        except NoteError as exc:
            raise NoteError(f"witness copy {path}: {exc}") from None
    return out

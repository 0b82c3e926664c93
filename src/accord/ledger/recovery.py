"""After a restore from backup: accepting, on the record, that the ledger lost its tail.

The signer keeps the last checkpoint it signed beside its key, out of reach of a database
restore. A database restored from an older backup holds a tree that does not extend that
checkpoint (fewer entries, or other ones after the backup was taken), so the signer signs
nothing and the integrity monitor reports it. Only an admin can decide that the loss is
what happened (`accord audit accept-restore --reason ...`):

1. the restored ledger must itself be whole: every entry re-hashes, every stored checkpoint
   verifies, and each witness copy within the restored tree matches it (it is an older
   state of the same log, not another one);
2. a `ledger.restore_acknowledged` event records the lost checkpoint (size, root and the
   whole signed note) and the restored size;
3. the remembered checkpoint is moved aside (`<key>.last-checkpoint.lost-<size>`), the
   findings the loss caused are closed after a whole re-hash (`ledger.mended`), and the
   signer signs the restored tree, event included: it continues from there.

Checkpoints signed for the lost entries (an auditor's pin, the witness copies beyond the
restored size) no longer match the log: the event says why.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import reading, readonly_sessions, transaction
from accord.ledger import checkpoints, integrity, merkle
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.events import Actor, EventType, os_user
from accord.ledger.models import LedgerCheckpoint, LedgerEntry
from accord.ledger.note import Checkpoint, NoteError
from accord.ledger.service import (
    LedgerCorruption,
    consistency_proof,
    record,
    root_at,
    tree_size,
)
from accord.ledger.upkeep import catch_up, sign_now


class NothingToAccept(Exception):
    """The tree extends the checkpoint kept beside the key: nothing was lost."""


@dataclass(frozen=True)
class Accepted:
    lost: Checkpoint  # the checkpoint the restored tree does not extend
    restored_size: int  # the restored tree's size, before the event
    moved_to: Path  # where the remembered checkpoint was moved
    witnessed_lost: list[int]  # sizes of witness copies the restored tree does not reach
    checkpoint: LedgerCheckpoint | None  # the first checkpoint signed afterwards


def lost_tail(session: Session, cfg: LedgerConfig) -> Checkpoint | None:
    """The checkpoint remembered beside the key, if the stored tree does not extend it."""
    remembered = cfg.remembered()
    if remembered is None:
        return None
    size = tree_size(session)
    if remembered.size > size:
        return remembered
    root = root_at(session, size)
    proof = consistency_proof(session, remembered.size, size)
    if merkle.verify_consistency(remembered.size, size, proof, remembered.root, root):
        return None
    return remembered


def _witness(session: Session, cfg: LedgerConfig, size: int) -> list[int]:
    """Check each witness copy within the restored tree against it; the sizes beyond."""
    if cfg.witness_dir is None or not cfg.witness_dir.exists():
        return []
    ring = cfg.ring()
    beyond: list[int] = []
    for path in sorted(cfg.witness_dir.glob("*"),
                       key=lambda p: int(p.name) if p.name.isdigit() else -1):
        if not path.name.isdigit():
            continue
        try:
            cp = ring.check(path.read_text(encoding="utf-8"))
        except NoteError as exc:
            raise LedgerCorruption(f"witness copy {path}: {exc}") from None
        if cp.size > size:
            beyond.append(cp.size)
        elif root_at(session, cp.size) != cp.root:
            raise LedgerCorruption(
                f"the restored tree differs from the witness copy of size {cp.size}: it is "
                f"not an older state of the same log; restore another backup")
    return beyond


def _acknowledged(session: Session, lost: Checkpoint) -> bool:
    root = base64.b64encode(lost.root).decode()
    leaves = session.execute(
        select(LedgerEntry.leaf)
        .where(LedgerEntry.type == str(EventType.LEDGER_RESTORE_ACKNOWLEDGED))
        .order_by(LedgerEntry.id.desc()).limit(20)).scalars()
    for leaf in leaves:
        data = json.loads(bytes(leaf)).get("data", {}).get("lost", {})
        if (data.get("size"), data.get("root")) == (lost.size, root):
            return True
    return False


def _aside(path: Path, size: int) -> Path:
    target = path.with_name(f"{path.name}.lost-{size}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.lost-{size}.{n}")
    path.replace(target)
    return target


def mend(sessions: sessionmaker[Session], cfg: LedgerConfig, now: datetime) -> list[int]:
    """Re-hash the whole ledger; if every entry re-hashes, close the findings made before
    (what the integrity monitor's walk from index 0 does), recording `ledger.mended`."""
    with reading(), readonly_sessions(sessions)() as session:
        mark = integrity.last_finding_id(session)
        _, damage = integrity.verify(session, cfg.ring, remembered=cfg.remembered())
    if damage is not None:
        raise LedgerCorruption(f"the restored ledger is damaged: {damage}")
    with transaction(sessions) as session:
        return integrity.clear_findings(session, upto=mark, now=now)


def accept_restore(sessions: sessionmaker[Session], cfg: LedgerConfig, *, actor: Actor,
                   now: Callable[[], datetime], reason: str) -> Accepted:
    """Record that the ledger was restored without its tail, and let the signer continue.
    Raises NothingToAccept, or LedgerCorruption when the restored ledger is not a whole,
    older state of the same log."""
    catch_up(sessions)  # rows the backup caught pending
    with reading(), readonly_sessions(sessions)() as session:
        lost = lost_tail(session, cfg)
        if lost is None:
            raise NothingToAccept
        size = tree_size(session)
        _, damage = integrity.verify(session, cfg.ring)  # all of it, without the memory
        if damage is not None:
            raise LedgerCorruption(f"the restored ledger is itself damaged ({damage}); "
                                   f"restore another backup")
        beyond = _witness(session, cfg, size)
        latest = checkpoints.latest(session)
        known = _acknowledged(session, lost)
    if not known:
        with transaction(sessions) as session:
            record(session, type=EventType.LEDGER_RESTORE_ACKNOWLEDGED, actor=actor,
                   subject="ledger", time=now(), data={
                       "lost": {"size": lost.size,
                                "root": base64.b64encode(lost.root).decode(),
                                "checkpoint": lost.text},
                       "restored_size": size,
                       "restored_checkpoint": latest.size if latest is not None else None,
                       "witnessed_lost": beyond,
                       "reason": reason, "os_user": os_user(), "host": socket.gethostname()})
    catch_up(sessions)
    moved = _aside(cfg.memory_path, lost.size)
    mend(sessions, cfg, now())
    cp = sign_now(sessions, cfg, now())
    return Accepted(lost, size, moved, beyond, cp)

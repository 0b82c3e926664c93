"""Rotating the key that signs checkpoints (`accord audit rotate-key`).

1. The tree as it stands is signed by the old key alone (with every check the signer
   makes: a damaged ledger is not rotated, it is repaired first).
2. The key file is replaced: the new key is in force and the old one cosigns
   (`KeyRing.previous`). Every process re-reads the file when it changes, and the first
   checkpoint any of them signs from now on is signed by both keys.
3. A `ledger.key_rotated` event names both keys, and is integrated; the tree has grown, so
   the command signs: the cosigned checkpoint, unless a worker signed it first.
4. Once the cosigned checkpoint is stored, the old key is retired in the key file (its
   public part and the checkpoint's size are kept). Later checkpoints are signed by the
   new key alone.

Interrupted after 2, the rotation completes by itself (whichever process signs next
cosigns), and running `rotate-key` again finishes it: it records the event if it is
missing, and makes no other key.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.ledger import checkpoints, keys
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.events import Actor, EventType, os_user
from accord.ledger.models import LedgerCheckpoint, LedgerEntry
from accord.ledger.note import Verifier
from accord.ledger.service import LedgerCorruption, record
from accord.ledger.upkeep import sign_now


@dataclass(frozen=True)
class Rotation:
    old: Verifier
    new: Verifier
    checkpoint: str  # the cosigned checkpoint: pin it
    size: int
    resumed: bool  # a rotation begun earlier was finished


def _has_event(session: Session, new: Verifier) -> bool:
    """Whether a `ledger.key_rotated` event names `new` as the new key."""
    leaves = session.execute(
        select(LedgerEntry.leaf).where(LedgerEntry.type == str(EventType.LEDGER_KEY_ROTATED))
        .order_by(LedgerEntry.id.desc()).limit(20)).scalars()
    for leaf in leaves:
        data = json.loads(bytes(leaf)).get("data", {})
        if data.get("new", {}).get("key") == new.encode():
            return True
    return False


def _record(sessions: sessionmaker[Session], *, old: Verifier, new: Verifier, actor: Actor,
            now: datetime, reason: str, late: bool) -> None:
    with transaction(sessions) as session:
        if _has_event(session, new):
            return
        data: dict[str, object] = {
            "old": {"name": old.name, "id": old.id.hex(), "key": old.encode()},
            "new": {"name": new.name, "id": new.id.hex(), "key": new.encode()},
            "reason": reason, "os_user": os_user(), "host": socket.gethostname()}
        if late:
            data["late"] = True  # the command that installed the key stopped before this
        record(session, type=EventType.LEDGER_KEY_ROTATED, actor=actor, subject="ledger",
               time=now, data=data)


def rotate(sessions: sessionmaker[Session], cfg: LedgerConfig, *, actor: Actor,
           now: Callable[[], datetime], reason: str = "") -> Rotation:
    """Rotate the signing key and return the cosigned checkpoint; finish a rotation under
    way instead, if there is one. Raises LedgerCorruption when the signer refuses to sign
    (nothing is rotated then)."""
    ring = cfg.ring()
    resumed = ring.previous is not None
    if ring.previous is None and ring.retired:
        with sessions() as session:
            recorded = _has_event(session, ring.signer.verifier)
        if not recorded:
            # The last rotation's command stopped after installing its key, and a worker
            # finished the rotation: what is left to do is its event. No new key.
            last = ring.retired[-1]
            _record(sessions, old=last.verifier, new=ring.signer.verifier, actor=actor,
                    now=now(), reason=reason, late=True)
            sign_now(sessions, cfg, now())
            with sessions() as session:
                row = session.get(LedgerCheckpoint, last.until)
                note = row.note if row is not None else ""
            return Rotation(last.verifier, ring.signer.verifier, note, last.until, True)
    if ring.previous is None:
        sign_now(sessions, cfg, now())
        new = keys.generate(ring.signer.name, avoid=ring.chain)
        ring = cfg.rotate(new)
    assert ring.previous is not None
    old_v, new_v = ring.previous.verifier, ring.signer.verifier
    _record(sessions, old=old_v, new=new_v, actor=actor, now=now(), reason=reason,
            late=resumed)
    sign_now(sessions, cfg, now())
    with sessions() as session:
        checkpoints.settle(session, cfg)
    done = cfg.ring()
    until = next((r.until for r in done.retired if r.verifier == old_v), None)
    if until is None:
        raise LedgerCorruption("the rotation's cosigned checkpoint was not stored; run "
                               "`accord audit rotate-key` again to finish it")
    with sessions() as session:
        row = session.get(LedgerCheckpoint, until)
        assert row is not None
        note = row.note
    return Rotation(old_v, new_v, note, until, resumed)

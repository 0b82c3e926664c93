"""What the pages show about the ledger: its signed state and per-event inclusion badges.

A badge says "verified" only when the event's stored leaf bytes, hashed afresh, lead
through an RFC 9162 inclusion proof to the root of a checkpoint whose Ed25519 signature
checks out with the server's verifier key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from accord.ledger import merkle
from accord.ledger import service as ledger
from accord.ledger.checkpoints import LedgerConfig, latest
from accord.ledger.models import LedgerEntry
from accord.ledger.note import Checkpoint, NoteError, parse_checkpoint


@dataclass(frozen=True)
class LedgerState:
    size: int  # entries integrated now
    checkpoint: Checkpoint | None
    signed_at: str | None
    problems: list[str]  # empty: the checks passed
    checks: list[str]  # what was checked, in words

    @property
    def ok(self) -> bool:
        return not self.problems


def state(session: Session, cfg: LedgerConfig) -> LedgerState:
    """Check the newest checkpoint: signature, root against the stored tree, and that it
    extends the last checkpoint this key remembers signing (kept outside the database)."""
    size = ledger.tree_size(session)
    row = latest(session)
    if row is None:
        return LedgerState(size, None, None, [], ["no checkpoint has been signed yet"])
    problems: list[str] = []
    checks: list[str] = []
    try:
        cp = parse_checkpoint(row.note, [cfg.signer.verifier])
        checks.append(f"signature by {cfg.signer.verifier.name} is valid")
    except NoteError as exc:
        return LedgerState(size, None, row.signed_at.isoformat(), [f"checkpoint: {exc}"], [])
    try:
        if ledger.root_at(session, cp.size) == cp.root:
            checks.append(f"root of the first {cp.size} stored entries matches the checkpoint")
        else:
            problems.append(f"the stored tree's root at size {cp.size} differs from the "
                            "signed checkpoint: the database was changed after signing")
    except ledger.LedgerCorruption as exc:
        problems.append(str(exc))
    mem = cfg.remembered()
    if mem is not None and mem.size <= cp.size:
        proof = ledger.consistency_proof(session, mem.size, cp.size)
        if merkle.verify_consistency(mem.size, cp.size, proof, mem.root, cp.root):
            checks.append(f"extends the checkpoint at size {mem.size} kept beside the key")
        else:
            problems.append(f"not consistent with the checkpoint at size {mem.size} kept "
                            "beside the key")
    return LedgerState(size, cp, row.signed_at.isoformat(), problems, checks)


@dataclass(frozen=True)
class TimelineEntry:
    index: int
    event: dict[str, Any]
    badge: str  # verified | pending | failed


def timeline(session: Session, st: LedgerState, subjects: list[str]) -> list[TimelineEntry]:
    """Integrated events about `subjects`, oldest first, each with its inclusion badge."""
    q = (select(LedgerEntry)
         .where(LedgerEntry.idx.is_not(None), or_(*[LedgerEntry.subject == s for s in subjects]))
         .order_by(LedgerEntry.idx))
    out = []
    cp = st.checkpoint if st.ok else None
    for entry in session.execute(q).scalars():
        idx = int(entry.idx)  # type: ignore[arg-type]
        event: dict[str, Any] = json.loads(entry.leaf)
        if cp is None or idx >= cp.size:
            badge = "pending"
        else:
            proof = ledger.inclusion_proof(session, idx, cp.size)
            good = merkle.verify_inclusion(merkle.leaf_hash(entry.leaf), idx, cp.size, proof,
                                           cp.root)
            badge = "verified" if good else "failed"
        out.append(TimelineEntry(idx, event, badge))
    return out

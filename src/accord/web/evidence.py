"""What the pages show about the ledger: its signed state and per-event inclusion badges.

Nothing here says "verified" without hashing afresh what it shows, nor over a ledger
whose checks failed:

* A badge says "verified" only when the event's stored leaf bytes, hashed afresh, lead
  through an RFC 9162 inclusion proof to the root of a checkpoint whose Ed25519 signature
  checks out with the server's verifier key.
* The ledger's state re-hashes every stored entry (`ledger.integrity`) when the ledger is
  small enough to do so on a page view (`REHASH_LIMIT`); above that it says that only the
  entries shown were re-hashed, and that the worker's integrity monitor re-hashes the rest.
  An unresolved `ledger_integrity` alert, or a finding of the monitor's not yet seen mended,
  makes it fail whatever else was checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from accord.detect import service as detect
from accord.ledger import integrity, merkle
from accord.ledger import service as ledger
from accord.ledger.checkpoints import LedgerConfig, latest
from accord.ledger.models import LedgerEntry
from accord.ledger.note import Checkpoint, NoteError

REHASH_LIMIT = 20_000  # entries re-hashed on a page view (about a tenth of a second)


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


def state(session: Session, cfg: LedgerConfig, *, rehash_limit: int = REHASH_LIMIT
          ) -> LedgerState:
    """Check the newest checkpoint's signature, re-hash the stored entries against the
    stored tree and every signed checkpoint (all of them up to `rehash_limit`), check it
    extends the last checkpoint this key remembers signing (kept outside the database), and
    count unresolved integrity alerts from the worker's monitor."""
    size = ledger.tree_size(session)
    problems: list[str] = []
    checks: list[str] = []
    for alarm in detect.unresolved(session, rule="ledger_integrity"):
        problems.append(f"integrity alert #{alarm.id} is not resolved: {alarm.title}")
    # The monitor's finding stays open until a whole pass finds the ledger mended, even
    # once someone resolved the alert: until then nothing is signed either.
    if (found := integrity.open_finding(session)) is not None:
        problems.append(f"the integrity monitor found the ledger changed at index "
                        f"{found.idx} ({found.what}); no walk since found it mended")
    row = latest(session)
    if row is None:
        return LedgerState(size, None, None, problems, ["no checkpoint has been signed yet"])
    try:
        cp, signed = cfg.ring().open(row.note, row.size)
        by = " and ".join(f"{v.name} (key {v.id.hex()})" for v in signed)
        checks.append(f"signature by {by} is valid" if len(signed) == 1 else
                      f"signatures by {by} are valid: this checkpoint introduced the new key")
    except (NoteError, ledger.LedgerCorruption) as exc:
        return LedgerState(size, None, row.signed_at.isoformat(),
                           [*problems, f"checkpoint: {exc}"], [])
    remembered = cfg.remembered()
    if size <= rehash_limit:
        _, damage = integrity.verify(session, cfg.ring, remembered=remembered)
        if damage is not None:
            problems.append(f"re-hashing the stored entries: {damage}")
        else:
            checks.append(f"all {size} stored entries re-hashed just now: each matches its "
                          f"hash and chain, they give the stored tree, the root signed for "
                          f"size {cp.size} and the head")
    else:
        try:
            if ledger.root_at(session, cp.size) != cp.root:
                problems.append(f"the stored tree's root at size {cp.size} differs from the "
                                "signed checkpoint: the database was changed after signing")
        except ledger.LedgerCorruption as exc:
            problems.append(str(exc))
        checks.append(f"{size} entries are too many to re-hash on a page view: each entry "
                      f"shown below is re-hashed and proven against the signed checkpoint, "
                      f"and the worker's integrity monitor re-hashes all of them")
    if remembered is not None and remembered.size <= cp.size:
        proof = ledger.consistency_proof(session, remembered.size, cp.size)
        if merkle.verify_consistency(remembered.size, cp.size, proof, remembered.root,
                                     cp.root):
            checks.append(f"extends the checkpoint at size {remembered.size} kept beside the "
                          f"key")
        else:
            problems.append(f"not consistent with the checkpoint at size {remembered.size} "
                            "kept beside the key")
    elif remembered is not None:
        problems.append(f"the checkpoint kept beside the key covers {remembered.size} "
                        f"entries, more than the newest in the database ({cp.size})")
    return LedgerState(size, cp, row.signed_at.isoformat(), problems, checks)


def badges(session: Session, st: LedgerState, entries: list[LedgerEntry]) -> dict[int, str]:
    """For each integrated entry shown: `verified` (its stored bytes, hashed afresh, are
    proven included in the signed checkpoint), `failed`, or `pending` (not yet signed).

    Over a ledger whose checks failed (`st.problems`: an edit the re-hash found, or an
    unresolved integrity alert from the monitor), an entry whose own proof checks out is
    `doubtful`, never `verified`: rows may be missing around it (a deleted row or a cut tail
    leaves the others' proofs intact), and nothing the ledger shows counts as verified until
    an admin has looked."""
    out = _proven(session, st, entries)
    if st.problems:
        return {idx: "doubtful" if badge == "verified" else badge for idx, badge in out.items()}
    return out


def _proven(session: Session, st: LedgerState, entries: list[LedgerEntry]) -> dict[int, str]:
    cp = st.checkpoint if st.checkpoint is not None else None
    out: dict[int, str] = {}
    plans: dict[int, list[tuple[int, int]]] = {}
    for entry in entries:
        idx = int(entry.idx)  # type: ignore[arg-type]
        if cp is None or idx >= cp.size:
            out[idx] = "pending"
        else:
            plans[idx] = merkle.inclusion_plan(idx, cp.size)
    if not plans:
        return out
    needed = set().union(*(merkle.plan(r) for r in plans.values()))
    try:
        nodes = ledger.fetch_nodes(session, needed)
    except ledger.LedgerCorruption:
        return {**out, **{idx: "failed" for idx in plans}}
    assert cp is not None
    for entry in entries:
        idx = int(entry.idx)  # type: ignore[arg-type]
        if idx in plans:
            proof = merkle.build(plans[idx], nodes)
            good = merkle.verify_inclusion(merkle.leaf_hash(bytes(entry.leaf)), idx, cp.size,
                                           proof, cp.root)
            out[idx] = "verified" if good else "failed"
    return out


@dataclass(frozen=True)
class TimelineEntry:
    index: int
    event: dict[str, Any]
    badge: str  # verified | pending | failed | doubtful


def timeline(session: Session, st: LedgerState, subjects: list[str]) -> list[TimelineEntry]:
    """Integrated events about `subjects`, oldest first, each with its inclusion badge."""
    q = (select(LedgerEntry)
         .where(LedgerEntry.idx.is_not(None), or_(*[LedgerEntry.subject == s for s in subjects]))
         .order_by(LedgerEntry.idx))
    entries = list(session.execute(q).scalars())
    marks = badges(session, st, entries)
    return [TimelineEntry(int(e.idx), json.loads(e.leaf), marks[int(e.idx)])  # type: ignore[arg-type]
            for e in entries]

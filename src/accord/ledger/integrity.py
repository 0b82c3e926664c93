"""Re-hashing the stored ledger: what it holds against what it claims and what was signed.

Every check here starts from the stored leaf bytes and hashes them afresh; nothing trusts
a stored hash on its own. Walking entries in index order, a `Scan` checks for each one:

* it is there (indices contiguous from 0: a deleted row is a gap);
* `leaf_hash` is SHA-256(0x00 || leaf) of the stored bytes;
* `chain` is SHA-256(previous chain || leaf hash);
* every perfect subtree the entry completes equals the stored `ledger_nodes` row (the
  rows inclusion and consistency proofs are built from);
* at the size of each signed checkpoint, the root of the re-hashed tree equals the
  checkpoint's root, whose Ed25519 signature is checked with the key in force at that
  size (`keys.KeyRing`: after a rotation, older checkpoints with the older keys);
* at the head, the re-hashed root and chain equal the head row's, and no checkpoint (in
  the database or remembered beside the signing key) covers more entries than there are.

The first failure is returned as `Damage`, naming the first bad index. The integrity
monitor (worker) runs a scan incrementally over new entries and a full pass every
`ledger.integrity.full_interval`; the signer re-hashes what it is about to sign first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from accord.ledger import merkle
from accord.ledger.events import Actor, EventType
from accord.ledger.keys import KeyRing
from accord.ledger.models import (
    LedgerCheckpoint,
    LedgerEntry,
    LedgerFinding,
    LedgerHead,
    LedgerNode,
)
from accord.ledger.note import Checkpoint, NoteError, Verifier, parse_checkpoint
from accord.ledger.service import record

ZERO = bytes(32)
BATCH = 5000


@dataclass(frozen=True)
class Damage:
    """The first thing found wrong: the first bad leaf index and what is wrong there."""

    index: int
    what: str

    def __str__(self) -> str:
        return f"ledger index {self.index}: {self.what}"


@dataclass
class Scan:
    """Where a re-hashing walk stands: the next index, the tree and chain re-hashed so far."""

    position: int = 0
    tree: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    chain: bytes = ZERO
    checked_checkpoints: int = 0  # how many signed checkpoints the walk has matched
    signed: int = 0  # the size of the last signed checkpoint the walk matched

    @classmethod
    def at_checkpoint(cls, session: Session, checkpoint: LedgerCheckpoint) -> Scan:
        """A walk that resumes after a signed checkpoint: its right edge comes from the
        stored subtrees, which must give the signed root (else the walk starts at 0)."""
        size = checkpoint.size
        if size == 0:
            return cls()
        needed = merkle.CompactRange.nodes_for(size)
        stored = _nodes(session, needed)
        if any(n not in stored for n in needed):
            return cls()
        tree = merkle.CompactRange(size, [stored[n] for n in needed])
        if tree.root() != checkpoint.root:
            return cls()
        chain = session.execute(select(LedgerEntry.chain).where(
            LedgerEntry.idx == size - 1)).scalar_one_or_none()
        return cls(size, tree, chain or ZERO, signed=size)


def _nodes(session: Session, needed: list[merkle.Node]) -> dict[merkle.Node, bytes]:
    """Stored hashes of the perfect subtrees `needed` (level 0: the entries' leaf hashes)."""
    out: dict[merkle.Node, bytes] = {}
    leaves = [i for level, i in needed if level == 0]
    if leaves:
        for idx, lh in session.execute(select(LedgerEntry.idx, LedgerEntry.leaf_hash)
                                       .where(LedgerEntry.idx.in_(leaves))):
            out[(0, int(idx or 0))] = bytes(lh)
    by_level: dict[int, list[int]] = {}
    for level, i in needed:
        if level > 0:
            by_level.setdefault(level, []).append(i)
    for level, ids in by_level.items():
        for start in range(0, len(ids), 2000):
            chunk = ids[start:start + 2000]
            for lv, idx, h in session.execute(
                    select(LedgerNode.level, LedgerNode.idx, LedgerNode.hash).where(
                        and_(LedgerNode.level == level, LedgerNode.idx.in_(chunk)))):
                out[(int(lv), int(idx))] = bytes(h)
    return out


def _node_ranges(session: Session, expected: dict[merkle.Node, tuple[int, bytes]]
                 ) -> dict[merkle.Node, bytes]:
    """The stored subtrees a walk over contiguous entries completed: one range per level
    (the subtrees a run of leaves completes are contiguous at every level)."""
    spans: dict[int, tuple[int, int]] = {}
    for level, i in expected:
        lo, hi = spans.get(level, (i, i))
        spans[level] = (min(lo, i), max(hi, i))
    out: dict[merkle.Node, bytes] = {}
    for level, (lo, hi) in spans.items():
        for idx, h in session.execute(
                select(LedgerNode.idx, LedgerNode.hash).where(
                    LedgerNode.level == level, LedgerNode.idx >= lo, LedgerNode.idx <= hi)):
            out[(level, int(idx))] = bytes(h)
    return out


Keys = Verifier | KeyRing | Callable[[], KeyRing]
"""The keys checkpoints are checked with: one verifier key, or the key ring (a callable is
asked only once the checkpoints are read, so that a key rotated meanwhile is known)."""


def _opener(keys: Keys) -> Callable[[str, int], Checkpoint]:
    if isinstance(keys, Verifier):
        return lambda note, _size: parse_checkpoint(note, [keys])
    ring = keys if isinstance(keys, KeyRing) else keys()
    return ring.check


def signed_checkpoints(session: Session, keys: Keys, *, above: int = 0,
                       upto: int | None = None) -> tuple[dict[int, bytes], Damage | None]:
    """Sizes and roots of the stored checkpoints in (above, upto], each signature checked
    (by a key in force at its size: a rotation's keys each sign their own range)."""
    q = select(LedgerCheckpoint).where(LedgerCheckpoint.size > above)
    if upto is not None:
        q = q.where(LedgerCheckpoint.size <= upto)
    rows = list(session.execute(q.order_by(LedgerCheckpoint.size)).scalars())
    out: dict[int, bytes] = {}
    if not rows:
        return out, None
    check = _opener(keys)  # read after the rows: a key they need is in the file by then
    for row in rows:
        try:
            cp: Checkpoint = check(row.note, row.size)
        except NoteError as exc:
            return out, Damage(max(row.size - 1, 0),
                               f"the checkpoint stored for size {row.size} does not verify: "
                               f"{exc}")
        if cp.size != row.size or cp.root != row.root:
            return out, Damage(max(row.size - 1, 0),
                               f"the checkpoint stored for size {row.size} does not say "
                               f"what its row says")
        out[row.size] = cp.root
    return out, None


def advance(session: Session, scan: Scan, *, end: int, checkpoints: dict[int, bytes],
            limit: int = BATCH) -> Damage | None:
    """Re-hash entries [scan.position, min(end, position + limit)) and move `scan` past
    them; the first damage found, or None. `checkpoints`: size -> signed root."""
    start = scan.position
    stop = min(end, start + limit)
    if stop <= start:
        return None
    rows = session.execute(
        select(LedgerEntry.idx, LedgerEntry.leaf, LedgerEntry.leaf_hash, LedgerEntry.chain)
        .where(LedgerEntry.idx >= start, LedgerEntry.idx < stop)
        .order_by(LedgerEntry.idx)).all()
    tree = scan.tree
    chain = scan.chain
    expected: dict[merkle.Node, tuple[int, bytes]] = {}  # subtree -> (its last leaf, hash)
    sha256 = hashlib.sha256
    position = start
    for idx, leaf, stored_hash, stored_chain in rows:
        if idx != position:
            return Damage(position, "the entry is missing (deleted?)")
        lh = merkle.leaf_hash(bytes(leaf))
        if lh != bytes(stored_hash):
            return Damage(position, "its stored bytes do not hash to its stored leaf hash "
                                    "(changed?)")
        chain = sha256(chain + lh).digest()
        if stored_chain is None or bytes(stored_chain) != chain:
            return Damage(position, "its chain value does not follow from the entries before it")
        for level, i, h in tree.append(lh):
            expected[(level, i)] = (position, h)
        position += 1
        root = checkpoints.get(position)
        if root is not None:
            if tree.root() != root:
                # Leaf hashes and chain were rewritten to match: only the signature tells,
                # and only that the damage lies after the last checkpoint that matched.
                return Damage(scan.signed, f"entries {scan.signed}-{position - 1} no longer "
                                           f"hash to the root signed for size {position}")
            scan.checked_checkpoints += 1
            scan.signed = position
    if position != stop:
        return Damage(position, "the entry is missing (deleted?)")
    stored = _node_ranges(session, expected)
    bad = [(first, node) for node, (first, h) in expected.items() if stored.get(node) != h]
    if bad:
        last, (level, i) = min(bad)
        return Damage(i << level, f"the stored subtree (level {level}, index {i}) over "
                                  f"entries {i << level}-{last} differs from its entries' "
                                  f"hashes (proofs built from it would lie)")
    scan.position, scan.tree, scan.chain = position, tree, chain
    return None


def finish(session: Session, scan: Scan, head: LedgerHead, *,
           remembered: Checkpoint | None = None) -> Damage | None:
    """At the head: the re-hashed root and chain are the head row's, and nothing signed
    covers more entries than the tree holds."""
    if scan.position != head.size:
        return None  # not there yet
    if scan.tree.root() != bytes(head.root) or (head.size and scan.chain != bytes(head.chain)):
        return Damage(max(head.size - 1, 0), "the head row's root or chain differs from the "
                                             "re-hashed entries")
    # What was read later may be newer than `head` (PostgreSQL's READ COMMITTED reads each
    # statement afresh): the integrator writes the head with the entries it integrates, so
    # compare with the head as it is now, read after everything else.
    beyond = session.execute(select(LedgerCheckpoint.size).order_by(
        LedgerCheckpoint.size.desc()).limit(1)).scalar_one_or_none()
    extra = session.execute(select(LedgerEntry.idx).where(LedgerEntry.idx >= head.size)
                            .order_by(LedgerEntry.idx.desc()).limit(1)).scalar_one_or_none()
    now_size = head_size(session)
    if beyond is not None and beyond > now_size:
        return Damage(now_size, f"a checkpoint covers {beyond} entries but the tree holds "
                                f"{now_size}: entries were removed from the end")
    if remembered is not None and remembered.size > now_size:
        return Damage(now_size, f"the checkpoint kept beside the signing key covers "
                                f"{remembered.size} entries but the tree holds {now_size}: "
                                f"entries were removed from the end (restored from an older "
                                f"backup? see `accord audit accept-restore`)")
    if extra is not None and int(extra) >= now_size:
        return Damage(now_size, "an entry lies beyond the head (the head was rewound?)")
    return None


def verify(session: Session, keys: Keys, *, scan: Scan | None = None,
           remembered: Checkpoint | None = None, limit: int | None = None
           ) -> tuple[Scan, Damage | None]:
    """Re-hash from `scan` (default: index 0) up to the head, or `limit` entries.

    Returns where the walk stands and the first damage. Run inside one read transaction so
    that the head, entries and nodes are one snapshot.
    """
    scan = scan or Scan()
    head = session.execute(select(LedgerHead).where(LedgerHead.id == 1)).scalar_one()
    end = head.size if limit is None else min(head.size, scan.position + limit)
    checkpoints, damage = signed_checkpoints(session, keys, above=scan.position, upto=end)
    if damage is not None:
        return scan, damage
    while scan.position < end:
        damage = advance(session, scan, end=end, checkpoints=checkpoints)
        if damage is not None:
            return scan, damage
    return scan, finish(session, scan, head, remembered=remembered)


def verify_extension(session: Session, keys: Keys, *, size: int, root: bytes,
                     base: LedgerCheckpoint | None) -> Damage | None:
    """For the signer: do entries [base.size, size) re-hash, with the stored subtrees, to
    `root` (the tree about to be signed)? Costs what was appended since `base`."""
    scan = Scan.at_checkpoint(session, base) if base is not None else Scan()
    checkpoints, damage = signed_checkpoints(session, keys, above=scan.position, upto=size)
    if damage is not None:
        return damage
    while scan.position < size:
        damage = advance(session, scan, end=size, checkpoints=checkpoints)
        if damage is not None:
            return damage
    if scan.tree.root() != root:
        return Damage(max(size - 1, 0), "the stored tree's root differs from the re-hashed "
                                        "entries")
    return None


def first_bad(session: Session, keys: Keys) -> Damage | None:
    """A whole pass from index 0."""
    return verify(session, keys)[1]


# ------------------------------------------------------------------ findings


def open_finding(session: Session) -> LedgerFinding | None:
    """The open finding with the lowest index (None: nothing known wrong)."""
    return session.execute(
        select(LedgerFinding).where(LedgerFinding.cleared_at.is_(None))
        .order_by(LedgerFinding.idx, LedgerFinding.id).limit(1)).scalar_one_or_none()


def record_finding(session: Session, damage: Damage, *, now: datetime) -> bool:
    """Keep `damage` as an open finding (False: it already is one)."""
    known = session.execute(select(LedgerFinding.id).where(
        LedgerFinding.cleared_at.is_(None), LedgerFinding.idx == damage.index,
        LedgerFinding.what == damage.what).limit(1)).scalar_one_or_none()
    if known is not None:
        return False
    session.add(LedgerFinding(idx=damage.index, what=damage.what, found_at=now))
    session.flush()
    return True


def last_finding_id(session: Session) -> int:
    """Where a whole pass starting now stands among findings (see `clear_findings`)."""
    return int(session.execute(select(func.max(LedgerFinding.id))).scalar_one() or 0)


def clear_findings(session: Session, *, upto: int, now: datetime) -> list[int]:
    """Close the findings up to id `upto`, recorded before a whole pass began that then
    found every entry re-hashing: that pass saw the ledger mended. Records `ledger.mended`
    when it closes any (the signer resumes); returns their indices."""
    rows = list(session.execute(
        select(LedgerFinding).where(LedgerFinding.cleared_at.is_(None),
                                    LedgerFinding.id <= upto)
        .order_by(LedgerFinding.idx)).scalars())
    for row in rows:
        row.cleared_at = now
    closed = [row.idx for row in rows]
    if closed:
        record(session, type=EventType.LEDGER_MENDED, actor=Actor.system(), subject="ledger",
               time=now, data={"indices": closed, "size": head_size(session)})
    return closed


def head_size(session: Session) -> int:
    return int(session.execute(select(LedgerHead.size).where(LedgerHead.id == 1)).scalar_one())

"""The audit ledger: append events with the state change, integrate them into the tree.

`record` is the only way anything writes an audit event. It buffers the event on the
session; the session's commit writes it in the same transaction as the change it
describes. Integration (contiguous index, chain value, completed subtrees, head)
happens inline on SQLite, whose writers are serialized anyway. On PostgreSQL the
commit leaves a pending row (and a NOTIFY while the integrators are idle: see
`LedgerWake`); an integrator holding the head row lock assigns indices in batches, so
concurrent writers never queue on one lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785
from sqlalchemy import (
    Select,
    Table,
    and_,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, SessionTransaction

from accord.db import utcnow
from accord.ledger import merkle
from accord.ledger.events import Actor, EventType, PolicyRef, envelope
from accord.ledger.models import LedgerEntry, LedgerHead, LedgerNode

BUFFER = "accord.ledger.buffer"
INLINE = "accord.ledger.inline"  # sessionmaker info flag: integrate in the writer's transaction
NOTIFY_CHANNEL = "accord_ledger"
ZERO = bytes(32)


ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
NODES: Table = LedgerNode.__table__  # type: ignore[assignment]
_SQLITE_INSERT = (
    "INSERT INTO ledger_entries (idx, type, time, actor, subject, resource, leaf, leaf_hash, chain)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_HEAD = "SELECT size, frontier, chain FROM ledger_head WHERE id = 1"
_SQLITE_NODES = "INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)"
_SQLITE_HEAD_UPDATE = ("UPDATE ledger_head SET size = ?, root = ?, frontier = ?, chain = ?,"
                       " updated_at = ? WHERE id = 1")
SAFE_INT = 2**53  # JCS writes numbers as IEEE doubles: larger ints would not round-trip


def _plain(value: Any) -> bool:
    """Only strings, safe ints, bools, nulls, lists, and dicts with ASCII keys."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-SAFE_INT < value < SAFE_INT)
    if t is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if t is list:
        # Scalars inline: a gateway event is a thousand rows of a dozen values each.
        for v in value:
            tv = type(v)
            if tv is str or v is None or tv is bool:
                continue
            if tv is int:
                if not -SAFE_INT < v < SAFE_INT:
                    return False
            elif not _plain(v):
                return False
        return True
    return False


_JCS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER  # ints beyond 2**53 raise


def encode(env: dict[str, Any], *, plain: bool = False) -> bytes:
    """The leaf bytes: RFC 8785 canonical JSON of the envelope, stored and hashed verbatim.

    For plain data (no floats, ASCII keys) orjson with sorted keys produces exactly the
    JCS bytes (tests compare it with the reference implementation, which handles
    everything else). `plain=True` is the caller's promise that the data is plain, for
    events of thousands of values built by code that knows their types (the gateway's
    statement rows): walking them cost as much as encoding them with the json module.
    orjson still refuses an integer JSON cannot carry exactly.
    """
    if plain or _plain(env):
        try:
            return orjson.dumps(env, option=_JCS)
        except orjson.JSONEncodeError:  # an unsafe int: the reference raises a clear error
            pass
    data: bytes = rfc8785.dumps(env)
    return data


def record(
    session: Session,
    *,
    type: EventType,
    actor: Actor,
    subject: str,
    resource: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    policy: PolicyRef | None = None,
    time: datetime | None = None,
    plain: bool = False,
) -> dict[str, Any]:
    """Add one event to the session's transaction; it commits (or not) with the change.

    `plain`: the caller vouches that `data` holds only str, bool, None, int, lists and
    dicts with ASCII keys (see `encode`)."""
    when = time or utcnow()
    env = envelope(
        type=type, time=when, actor=actor, subject=subject, resource=resource,
        data=data or {}, policy=policy,
    )
    leaf = encode(env, plain=plain)
    session.info.setdefault(BUFFER, []).append({
        "type": str(type),
        "time": when,
        "actor": actor.id,
        "subject": subject,
        "resource": (resource or {}).get("name"),
        "leaf": leaf,
        "leaf_hash": merkle.leaf_hash(leaf),
    })
    return env


@event.listens_for(Session, "before_commit")
def _write_buffer(session: Session) -> None:
    rows = session.info.pop(BUFFER, None)
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite" or session.info.get(INLINE):
        _integrate(session, rows, pending_ids=None)
        return
    session.execute(insert(ENTRIES), rows)  # a statement trigger NOTIFYs the integrators


@event.listens_for(Session, "after_transaction_end")
def _forget_buffer(session: Session, transaction: SessionTransaction) -> None:
    # A rolled-back unit of work takes its events with it.
    if transaction.parent is None:
        session.info.pop(BUFFER, None)


# ---------------------------------------------------------------- integration


def load_head(session: Session, *, lock: bool) -> LedgerHead:
    q = select(LedgerHead).where(LedgerHead.id == 1)
    if lock and session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    return session.execute(q).scalar_one()


def _frontier(head: LedgerHead) -> merkle.CompactRange:
    return _compact(head.size, head.frontier)


def _compact(size: int, f: bytes) -> merkle.CompactRange:
    return merkle.CompactRange(size, [f[i : i + 32] for i in range(0, len(f), 32)])


def _sqlite_time(value: datetime) -> str:
    """How a UTC time column stores it on SQLite: naive UTC text."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _integrate(
    session: Session, rows: Sequence[dict[str, Any]], pending_ids: Sequence[int] | None
) -> int:
    """Give `rows` the next indices under the head lock; insert them (or update pending ones)."""
    if pending_ids is None and session.get_bind().dialect.name == "sqlite":
        return _integrate_sqlite(session, rows)
    head = load_head(session, lock=True)
    cr = _frontier(head)
    chain, nodes = _extend(cr, head.chain, rows)
    if pending_ids is None:
        session.execute(insert(ENTRIES), list(rows))
    else:
        # PostgreSQL: one statement per batch, arrays in, no per-row round trips.
        session.execute(
            text("UPDATE ledger_entries AS e SET idx = v.idx, chain = v.chain"
                 " FROM unnest(CAST(:ids AS bigint[]), CAST(:idxs AS bigint[]),"
                 " CAST(:chains AS bytea[])) AS v(id, idx, chain) WHERE e.id = v.id"),
            {"ids": list(pending_ids), "idxs": [r["idx"] for r in rows],
             "chains": [r["chain"] for r in rows]},
        )
    if nodes and session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("INSERT INTO ledger_nodes (level, idx, hash) SELECT * FROM"
                 " unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[]),"
                 " CAST(:hashes AS bytea[]))"),
            {"levels": [n["level"] for n in nodes], "idxs": [n["idx"] for n in nodes],
             "hashes": [n["hash"] for n in nodes]},
        )
    elif nodes:
        session.execute(insert(NODES), nodes)
    session.execute(
        update(LedgerHead).where(LedgerHead.id == 1).values(
            size=cr.size, root=cr.root(), frontier=b"".join(cr.hashes), chain=chain,
            updated_at=utcnow(),
        )
    )
    session.expire(head)
    return len(rows)


def _extend(cr: merkle.CompactRange, chain: bytes, rows: Sequence[dict[str, Any]]
            ) -> tuple[bytes, list[dict[str, Any]]]:
    """Append `rows` to the tree `cr` (in place) and the chain: each row gets its index
    and chain value; returns the last chain value and the completed subtrees."""
    nodes: list[dict[str, Any]] = []
    for row in rows:
        row["idx"] = cr.size
        for level, idx, h in cr.append(row["leaf_hash"]):
            nodes.append({"level": level, "idx": idx, "hash": h})
        chain = hashlib.sha256(chain + row["leaf_hash"]).digest()
        row["chain"] = chain
    return chain, nodes


def _integrate_sqlite(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """SQLite, inline in the writer's transaction (it holds the database's one write lock,
    so no other writer can move the head meanwhile). Through the driver: the ORM's
    statement building and bookkeeping cost more than the statements themselves, and this
    runs in every write transaction while every other writer waits."""
    conn = session.connection()
    size, frontier, chain = conn.exec_driver_sql(_SQLITE_HEAD).one()
    cr = _compact(size, frontier)
    chain, nodes = _extend(cr, chain, rows)
    conn.exec_driver_sql(_SQLITE_INSERT, [
        (r["idx"], r["type"], _sqlite_time(r["time"]), r["actor"], r["subject"],
         r["resource"], r["leaf"], r["leaf_hash"], r["chain"])
        for r in rows
    ])
    if nodes:
        conn.exec_driver_sql(_SQLITE_NODES, [(n["level"], n["idx"], n["hash"]) for n in nodes])
    conn.exec_driver_sql(_SQLITE_HEAD_UPDATE, (
        cr.size, cr.root(), b"".join(cr.hashes), chain, _sqlite_time(utcnow())))
    loaded = session.identity_map.get(session.identity_key(LedgerHead, 1))
    if loaded is not None:  # a head this session read before is stale now
        session.expire(loaded)
    return len(rows)


def integrate_pending(session: Session, *, limit: int = 5000) -> int:
    """Integrate up to `limit` committed pending rows (PostgreSQL). Returns how many."""
    head = load_head(session, lock=True)  # the coordinator lock, held until commit
    del head
    pending = session.execute(
        select(LedgerEntry.id, LedgerEntry.leaf_hash)
        .where(LedgerEntry.idx.is_(None))
        .order_by(LedgerEntry.id)
        .limit(limit)
    ).all()
    if not pending:
        return 0
    rows = [{"leaf_hash": lh} for _id, lh in pending]
    return _integrate(session, rows, pending_ids=[pid for pid, _ in pending])


def pending_count(session: Session) -> int:
    from sqlalchemy import func

    return int(session.execute(
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.idx.is_(None))
    ).scalar_one())


# ---------------------------------------------------------------- tree reads


# One statement, one round trip, for every hash a proof or root needs: leaves by index,
# completed subtrees by their (level, idx) key. Text, not an expression built per call:
# building the OR of IN lists took more CPU than PostgreSQL took to answer (2-3 ms a proof).
_PG_NODES = (  # constant text; the values are bound parameters
    "SELECT 0, idx, leaf_hash FROM ledger_entries WHERE idx = ANY(CAST(:leaves AS bigint[]))"
    " UNION ALL SELECT n.level, n.idx, n.hash FROM ledger_nodes AS n"
    " JOIN unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[])) AS w(level, idx)"
    " ON n.level = w.level AND n.idx = w.idx"
)
_PG_FETCH = text(_PG_NODES)
# A proof's nodes and the tree size in one round trip (level -1: the head's size). The nodes
# are read whatever the size says; the caller checks the size before it uses them.
_PG_FETCH_SIZED = text("SELECT -1, size, NULL FROM ledger_head WHERE id = 1 UNION ALL "  # noqa: S608
                       + _PG_NODES)


def fetch_nodes(session: Session, needed: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
    """Hashes of the perfect subtrees `needed`: one query on PostgreSQL, two on SQLite."""
    needed = set(needed)
    return _complete(needed, _fetch(session, needed, sized=False)[1])


def _fetch(session: Session, needed: set[merkle.Node], *, sized: bool
           ) -> tuple[int | None, dict[merkle.Node, bytes]]:
    """(the tree size when `sized`, the nodes `needed`). On PostgreSQL the size comes in
    the nodes' query; a caller that asked for nodes beyond it gets what is there and must
    check the size first (missing nodes raise only when `sized` is false)."""
    leaves = [i for level, i in needed if level == 0]
    upper = [(level, i) for level, i in needed if level > 0]
    out: dict[merkle.Node, bytes] = {}
    size: int | None = None
    if session.get_bind().dialect.name == "postgresql":
        if needed or sized:
            for level, idx, h in session.execute(_PG_FETCH_SIZED if sized else _PG_FETCH, {
                    "leaves": leaves, "levels": [lv for lv, _ in upper],
                    "idxs": [i for _, i in upper]}):
                if level == -1:
                    size = int(idx)
                else:
                    out[(level, idx)] = h
    else:
        size = tree_size(session) if sized else None
        out = _fetch_nodes_sqlite(session, leaves, upper)
    return size, out


def _complete(needed: set[merkle.Node], got: dict[merkle.Node, bytes]
              ) -> dict[merkle.Node, bytes]:
    missing = needed - got.keys()
    if missing:
        raise LedgerCorruption(f"stored tree is missing subtrees {sorted(missing)[:5]}")
    return got


def _fetch_nodes_sqlite(session: Session, leaves: list[int], upper: list[merkle.Node]
                        ) -> dict[merkle.Node, bytes]:
    out: dict[merkle.Node, bytes] = {}
    if leaves:
        for idx, lh in session.execute(
            select(LedgerEntry.idx, LedgerEntry.leaf_hash).where(LedgerEntry.idx.in_(leaves))
        ):
            out[(0, int(idx or 0))] = lh
    if upper:
        # One IN list per level, so SQLite walks the (level, idx) primary key.
        by_level: dict[int, list[int]] = {}
        for level, i in upper:
            by_level.setdefault(level, []).append(i)
        clause = or_(*(and_(LedgerNode.level == level, LedgerNode.idx.in_(ids))
                       for level, ids in by_level.items()))
        for level, idx, h in session.execute(
            select(LedgerNode.level, LedgerNode.idx, LedgerNode.hash).where(clause)
        ):
            out[(level, idx)] = h
    return out


class LedgerCorruption(Exception):
    """The stored tree disagrees with itself or with what was signed: never sign over it."""


class ProofRangeError(ValueError):
    """Proof arguments outside the tree."""


def tree_size(session: Session) -> int:
    """The number of integrated entries (the head's size; a column, not the ORM row)."""
    return int(session.execute(select(LedgerHead.size).where(LedgerHead.id == 1)).scalar_one())


def root_at(session: Session, size: int) -> bytes:
    if size == 0:
        return merkle.EMPTY_ROOT
    return merkle.root_of(size, fetch_nodes(session, merkle.CompactRange.nodes_for(size)))


# No tree is larger than a bigint index: a size past it is refused by the size check, not
# planned (its node indices would not fit the query's parameters).
_MAX_SIZE = 2**63 - 1


def inclusion_proof(session: Session, index: int, size: int) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `size` leaves: one round trip on
    PostgreSQL (the tree size and the nodes together)."""
    valid = 0 <= index < size <= _MAX_SIZE
    ranges = merkle.inclusion_plan(index, size) if valid else []
    needed = set(merkle.plan(ranges))
    current, got = _fetch(session, needed, sized=True)
    assert current is not None
    if not 0 < size <= current:
        raise ProofRangeError(f"size must be between 1 and the tree size {current}")
    if not 0 <= index < size:
        raise ProofRangeError(f"index must be between 0 and size - 1 ({size - 1})")
    return merkle.build(ranges, _complete(needed, got))


def consistency_proof(session: Session, old: int, new: int) -> list[bytes]:
    """The proof that the tree of `new` leaves extends the one of `old`: one round trip on
    PostgreSQL, as `inclusion_proof`."""
    valid = 0 <= old <= new <= _MAX_SIZE
    ranges = merkle.consistency_plan(old, new) if valid else []
    needed = set(merkle.plan(ranges))
    current, got = _fetch(session, needed, sized=True)
    assert current is not None
    if not 0 <= new <= current:
        raise ProofRangeError(f"to must be between 0 and the tree size {current}")
    if not 0 <= old <= new:
        raise ProofRangeError("from must be between 0 and to")
    return merkle.build(ranges, _complete(needed, got))


# ---------------------------------------------------------------- event reads


def decode(entry: LedgerEntry) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(entry.leaf)
    return value


def query_events(
    *,
    type: str | None = None,
    subject: str | None = None,
    resource: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    start: int | None = None,
) -> Select[LedgerEntry]:
    """Integrated events in index order, filtered."""
    q = select(LedgerEntry).where(LedgerEntry.idx.is_not(None)).order_by(LedgerEntry.idx)
    if type:
        q = q.where(LedgerEntry.type == type)
    if subject:
        q = q.where(LedgerEntry.subject == subject)
    if resource:
        q = q.where(LedgerEntry.resource == resource)
    if actor:
        q = q.where(LedgerEntry.actor == actor)
    if since:
        q = q.where(LedgerEntry.time >= since)
    if until:
        q = q.where(LedgerEntry.time < until)
    if start is not None:
        q = q.where(LedgerEntry.idx >= start)
    return q

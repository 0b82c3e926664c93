"""The database itself refuses to change or remove ledger rows (migration 0002's triggers).

Raw SQL, as someone with a database shell would send it, on SQLite and PostgreSQL. Each
refused statement runs in a savepoint so the test can go on after the refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerCheckpoint, LedgerEntry, LedgerNode
from accord.ledger.service import record

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A ledger with a few integrated entries, their subtrees and one checkpoint row."""
    with transaction(sessions) as s:
        for i in range(5):
            record(s, type=EventType.GRANT_EXPIRED, actor=Actor.system(), subject=f"grant:{i}",
                   resource={"name": "lab"} if i % 2 else None, data={"i": i})
    with transaction(sessions) as s:
        s.add(LedgerCheckpoint(size=5, root=hashlib.sha256(b"r").digest(), note="n\n",
                               signed_at=WHEN))
    with sessions() as s:
        assert s.execute(select(LedgerEntry.idx).where(LedgerEntry.idx.is_not(None))).all()
        assert s.execute(select(LedgerNode.level)).all()
        yield s


def refused(session: Session, sql: str, **params: Any) -> str:
    """Run `sql` in a savepoint; it must fail. Returns the database's message."""
    with pytest.raises(DatabaseError) as info, session.begin_nested():
        session.execute(text(sql), params)
    return str(info.value.orig)


def says_append_only(*messages: str) -> None:
    """The refusal names its reason (checked after the rows were found unchanged)."""
    for message in messages:
        assert "append-only" in message, message


def table_state(session: Session, table: str) -> list[Any]:
    return [tuple(row) for row in session.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]


# ---------------------------------------------------------------- integrated entries


@pytest.mark.parametrize(
    ("assignment", "params"),
    [
        ("leaf = :v", {"v": b'{"forged":true}'}),
        ("leaf_hash = :v", {"v": bytes(32)}),
        ("chain = :v", {"v": bytes(32)}),
        ("chain = NULL", {}),
        ("idx = 999", {}),
        ("idx = NULL", {}),
        ("type = 'grant.revoked'", {}),
        ("subject = 'someone-else'", {}),
        ("actor = 'mallory'", {}),
        ("resource = 'orders-db'", {}),
        ("time = :v", {"v": datetime(2020, 1, 1, tzinfo=UTC)}),
        ("subject = subject", {}),  # even a no-op rewrite
    ],
)
def test_updating_an_integrated_entry_is_refused(
    session: Session, assignment: str, params: dict[str, Any]
) -> None:
    before = table_state(session, "ledger_entries")
    one = refused(session, f"UPDATE ledger_entries SET {assignment} WHERE idx = 0", **params)
    every = refused(session, f"UPDATE ledger_entries SET {assignment}", **params)
    assert table_state(session, "ledger_entries") == before
    says_append_only(one, every)


def test_deleting_entries_is_refused(session: Session) -> None:
    before = table_state(session, "ledger_entries")
    one = refused(session,
                  "DELETE FROM ledger_entries WHERE idx = (SELECT MAX(idx) FROM ledger_entries)")
    every = refused(session, "DELETE FROM ledger_entries")
    assert table_state(session, "ledger_entries") == before
    says_append_only(one, every)


# ---------------------------------------------------------------- subtrees and checkpoints


@pytest.mark.parametrize(
    ("table", "assignment"),
    [
        ("ledger_nodes", "hash = :v"),
        ("ledger_nodes", "idx = idx + 100"),
        ("ledger_nodes", "level = level"),
        ("ledger_checkpoints", "root = :v"),
        ("ledger_checkpoints", "note = 'rewritten'"),
        ("ledger_checkpoints", "size = size + 1"),
    ],
)
def test_updating_subtrees_and_checkpoints_is_refused(
    session: Session, table: str, assignment: str
) -> None:
    before = table_state(session, table)
    message = refused(session, f"UPDATE {table} SET {assignment}", v=bytes(32))
    assert table_state(session, table) == before
    says_append_only(message)


@pytest.mark.parametrize("table", ["ledger_nodes", "ledger_checkpoints"])
def test_deleting_subtrees_and_checkpoints_is_refused(session: Session, table: str) -> None:
    before = table_state(session, table)
    assert before
    message = refused(session, f"DELETE FROM {table}")
    assert table_state(session, table) == before
    says_append_only(message)


@pytest.mark.parametrize("table", ["ledger_entries", "ledger_nodes", "ledger_checkpoints"])
def test_truncate_is_refused_on_postgresql(session: Session, table: str) -> None:
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE (its DELETE FROM is refused above)")
    before = table_state(session, table)
    plain = refused(session, f"TRUNCATE {table}")
    cascade = refused(session, f"TRUNCATE {table} CASCADE")
    assert table_state(session, table) == before
    says_append_only(plain, cascade)


# ---------------------------------------------------------------- the one allowed update


def pending(session: Session, *, resource: str | None, subject: str = "pending") -> int:
    """Insert a pending leaf (idx NULL, chain NULL) the way a PostgreSQL writer does."""
    leaf = b'{"pending":true}'
    row = session.execute(insert(LedgerEntry).values(
        type="grant.expired", time=WHEN, actor="accord", subject=subject, resource=resource,
        leaf=leaf, leaf_hash=hashlib.sha256(b"\x00" + leaf).digest(),
    ).returning(LedgerEntry.id)).scalar_one()
    return int(row)


@pytest.mark.parametrize("resource", [None, "lab"])
def test_a_pending_entry_gets_its_index_and_chain_once(
    session: Session, resource: str | None
) -> None:
    pid = pending(session, resource=resource)
    before = session.execute(text("SELECT leaf, leaf_hash, type, time, actor, subject, "
                                  "resource FROM ledger_entries WHERE id = :id"), {"id": pid}).one()
    chain = hashlib.sha256(b"chain").digest()
    session.execute(text("UPDATE ledger_entries SET idx = 100000, chain = :c WHERE id = :id"),
                    {"c": chain, "id": pid})
    after = session.execute(text("SELECT idx, chain FROM ledger_entries WHERE id = :id"),
                            {"id": pid}).one()
    assert (after[0], bytes(after[1])) == (100000, chain)
    assert session.execute(text("SELECT leaf, leaf_hash, type, time, actor, subject, "
                                "resource FROM ledger_entries WHERE id = :id"),
                           {"id": pid}).one() == before
    # once integrated, it is frozen like every other entry
    says_append_only(
        refused(session, "UPDATE ledger_entries SET idx = 100001 WHERE id = :id", id=pid),
        refused(session, "UPDATE ledger_entries SET chain = :c WHERE id = :id", c=bytes(32),
                id=pid),
        refused(session, "DELETE FROM ledger_entries WHERE id = :id", id=pid),
    )


@pytest.mark.parametrize(
    ("assignment", "params"),
    [
        ("idx = 100000", {}),  # an index without a chain value
        ("chain = :c", {"c": bytes(32)}),  # a chain value without an index
        ("idx = 100000, chain = :c, leaf = :v", {"c": bytes(32), "v": b"{}"}),
        ("idx = 100000, chain = :c, leaf_hash = :v", {"c": bytes(32), "v": bytes(32)}),
        ("idx = 100000, chain = :c, subject = 'x'", {"c": bytes(32)}),
        ("idx = 100000, chain = :c, actor = 'x'", {"c": bytes(32)}),
        ("idx = 100000, chain = :c, type = 'x'", {"c": bytes(32)}),
        ("idx = 100000, chain = :c, resource = 'x'", {"c": bytes(32)}),
        ("idx = 100000, chain = :c, resource = NULL", {"c": bytes(32)}),
        ("idx = 100000, chain = :c, time = :t",
         {"c": bytes(32), "t": datetime(2020, 1, 1, tzinfo=UTC)}),
        ("idx = 100000, chain = :c, id = id + 100000", {"c": bytes(32)}),
        ("subject = 'x'", {}),
    ],
)
def test_a_pending_entry_cannot_change_anything_else(
    session: Session, assignment: str, params: dict[str, Any]
) -> None:
    pid = pending(session, resource="lab")
    before = table_state(session, "ledger_entries")
    message = refused(session, f"UPDATE ledger_entries SET {assignment} WHERE id = :id", id=pid,
                      **params)
    assert table_state(session, "ledger_entries") == before
    says_append_only(message)


def test_a_pending_entry_cannot_be_deleted(session: Session) -> None:
    pid = pending(session, resource=None)
    message = refused(session, "DELETE FROM ledger_entries WHERE id = :id", id=pid)
    assert session.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE id = :id"),
                           {"id": pid}).scalar_one() == 1
    says_append_only(message)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_leaves_are_compressed_with_lz4_on_postgresql(sessions: sessionmaker[Session]) -> None:
    """Migration 0011: big leaves (gateway events) compress with lz4 where the server can."""
    with sessions() as s:
        can = s.execute(text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                             " WHERE name = 'default_toast_compression'")).scalar()
        method = s.execute(text("SELECT attcompression FROM pg_attribute WHERE attrelid ="
                                " 'ledger_entries'::regclass AND attname = 'leaf'")).scalar()
    assert method == ("l" if can else "")

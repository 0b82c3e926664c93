"""Background jobs on SQLite hold the one write lock briefly: what they only read, they read
in read transactions (no lock, no wait), and their write transactions are small.

These tests commit for real on a SQLite file of their own, and watch which statements run
inside write transactions (begun with BEGIN IMMEDIATE) and which inside read ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from accord import migrations
from accord.db import WriteGate, make_engine, make_sessionmaker, transaction, write_gate
from accord.errors import Busy
from accord.ledger import checkpoints
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerCheckpoint, LedgerHead, SinkCursor
from accord.ledger.note import parse_checkpoint
from accord.ledger.service import LedgerCorruption, record, root_at, tree_size
from accord.ledger.sinks import Item, SinkState, pump
from accord.worker import ledger_jobs, sweeper
from tests.conftest import Env, make_env


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'accord.db'}")
    migrations.upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path)
    with e.client:
        yield e


@contextmanager
def transactions(engine: Engine) -> Iterator[list[tuple[str, list[str]]]]:
    """Every transaction begun meanwhile: ("write" or "read", its statements)."""
    seen: list[tuple[str, list[str]]] = []
    current: dict[int, list[str]] = {}

    def before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if statement in ("BEGIN IMMEDIATE", "BEGIN"):
            current[key] = []
            seen.append(("write" if statement == "BEGIN IMMEDIATE" else "read", current[key]))
        elif key in current:
            current[key].append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def writes(seen: list[tuple[str, list[str]]]) -> list[list[str]]:
    return [statements for kind, statements in seen if kind == "write"]


# ---------------------------------------------------------------- checkpoints


def test_a_due_checkpoint_is_proved_in_a_read_and_stored_in_a_short_write(
        env: Env, engine: Engine) -> None:
    st = env.st
    ledger_jobs.sign_if_due(st.sessions, st.ledger, env.clock())
    for _ in range(5):
        env.ask("alice", "staging-db")
    env.clock.advance(seconds=10)
    with transactions(engine) as seen:
        ledger_jobs.sign_if_due(st.sessions, st.ledger, env.clock())
    [write] = writes(seen)
    # The proofs (subtree hashes, leaves) were read outside the write lock.
    assert not [s for s in write if "ledger_nodes" in s or "ledger_entries" in s], write
    assert any(s.startswith("INSERT INTO ledger_checkpoints") for s in write)
    assert any("ledger_nodes" in s for kind, stmts in seen if kind == "read" for s in stmts)
    with st.sessions() as s:
        cp = checkpoints.latest(s)
        assert cp is not None and cp.size == tree_size(s)
        assert parse_checkpoint(cp.note, [st.ledger.signer.verifier]).size == cp.size
    # Nothing grew and nothing is due: no write transaction at all.
    with transactions(engine) as seen:
        ledger_jobs.sign_if_due(st.sessions, st.ledger, env.clock.advance(seconds=10))
    assert writes(seen) == []


def test_a_draft_overtaken_by_a_larger_checkpoint_is_not_stored(env: Env) -> None:
    st = env.st
    with st.sessions() as s:
        drafted = checkpoints.draft(s, st.ledger, now=env.clock())
    assert isinstance(drafted, checkpoints.Draft)
    env.ask("alice", "staging-db")
    with transaction(st.sessions) as s:  # another signer, meanwhile, on the grown tree
        newer = checkpoints.sign(s, st.ledger, now=env.clock(), force=True)
    assert newer is not None and newer.size > drafted.size
    with transaction(st.sessions) as s:
        assert checkpoints.store(s, st.ledger, drafted, now=env.clock()).size == newer.size
    with st.sessions() as s:
        assert s.get(LedgerCheckpoint, drafted.size) is None


def test_a_draft_for_a_size_stored_with_another_root_is_corruption(env: Env) -> None:
    st = env.st
    with st.sessions() as s:
        drafted = checkpoints.draft(s, st.ledger, now=env.clock())
    assert isinstance(drafted, checkpoints.Draft)
    with transaction(st.sessions) as s:
        checkpoints.store(s, st.ledger, drafted, now=env.clock())
    forged = checkpoints.Draft(drafted.size, bytes(32), drafted.note)
    with pytest.raises(LedgerCorruption, match="another root"), \
            transaction(st.sessions) as s:
        checkpoints.store(s, st.ledger, forged, now=env.clock())


# ---------------------------------------------------------------- the sweeper


def test_a_sweep_writes_only_when_something_is_due_a_few_at_a_time(
        env: Env, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper, "SQLITE_BATCH", 2)
    for _ in range(5):
        env.ask("alice", "staging-db", duration="1h")  # auto-approved: active for an hour
    with transactions(engine) as seen:
        assert sweeper.sweep_once(env.st.sessions, env.clock()) == 0
    assert writes(seen) == []  # nothing due: read, no write lock
    env.clock.advance(hours=1, seconds=1)
    with transactions(engine) as seen:
        assert sweeper.sweep_once(env.st.sessions, env.clock()) == 5
    assert len(writes(seen)) == 3  # 2 + 2 + 1
    assert len(env.events(type="grant.expired")) == 5


# ---------------------------------------------------------------- sinks


class Recording:
    """A sink that notes, at each delivery, whether this process's writers could write."""

    name = "recording"

    def __init__(self, gate: WriteGate) -> None:
        self.gate = gate
        self.got: list[int] = []
        self.while_locked = 0

    def deliver(self, items: Sequence[Item]) -> None:
        try:
            self.gate.acquire(bounded=True)  # max_waiting 0: refused if someone holds it
        except Busy:
            self.while_locked += 1
        else:
            self.gate.release()
        self.got += [item.index for item in items]

    def close(self) -> None:
        pass


def test_a_sink_is_delivered_to_without_holding_the_write_lock(
        env: Env, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        env.ask("alice", "staging-db")
    gate = write_gate(engine)
    assert gate is not None
    monkeypatch.setattr(gate, "max_waiting", 0)
    sink = Recording(gate)
    state = SinkState(sink, batch=4)
    with env.st.sessions() as s:
        size = tree_size(s)
    with transactions(engine) as seen:
        assert pump(env.st.sessions, state) == size
    assert sink.got == list(range(size)) and sink.while_locked == 0
    for write in writes(seen):  # only the cursor moves under the lock
        assert not [s for s in write if "ledger_entries" in s], write
    with env.st.sessions() as s:
        cursor = s.get(SinkCursor, "recording")
        assert cursor is not None and cursor.position == size
    assert pump(env.st.sessions, state) == 0  # and from there on nothing is sent again


# ---------------------------------------------------------------- the ledger, inline


def test_a_head_read_before_a_commit_is_fresh_after_it(sessions: sessionmaker[Session]) -> None:
    """SQLite integrates through the driver, past the ORM: a head this session had loaded
    must not be served stale from its identity map afterwards."""
    with sessions() as s:
        head = s.get(LedgerHead, 1)  # held: it stays in the session's identity map
        assert head is not None
        before = head.size
        record(s, type=EventType.POLICY_LOADED, actor=Actor.system(), subject="policy:x")
        s.commit()
        assert tree_size(s) == head.size == before + 1
        assert head.updated_at.tzinfo is not None and head.root == root_at(s, head.size)

"""The embedded SQLite server under a write burst: writers queue fairly with a bound and get
503 + Retry-After past it, never a 500; reads and health checks never wait for writers.

These tests commit for real on a SQLite file of their own (the shared fixture's rolled-back
outer transaction would hold the write lock for the whole test).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, exc, select, text
from sqlalchemy.orm import Session, sessionmaker

from accord import migrations
from accord.api import problems
from accord.db import (
    WriteGate,
    WriteInReadTransaction,
    make_engine,
    make_sessionmaker,
    serving,
    transaction,
    write_gate,
)
from accord.errors import Busy
from accord.identity.models import ApiToken
from accord.identity.service import hash_token
from accord.ledger.models import LedgerEntry
from tests import scrape
from tests.conftest import Env, LiveServer, make_env

REQUESTS = "/api/v1/requests"
PROBLEM = "application/problem+json"
GOOD = {"resource": "staging-db", "role": "read", "duration": "1h", "reason": "INC-7 burst"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file of this test's own, migrated, committed to for real."""
    e = make_engine(f"sqlite:///{tmp_path / 'accord.db'}")
    migrations.upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def gate(engine: Engine) -> WriteGate:
    found = write_gate(engine)
    assert found is not None
    return found


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """The app on that file (overrides conftest's `env`, so `live` serves this one too)."""
    e = make_env(sessions, tmp_path)
    with e.client:
        yield e


@pytest.fixture
def sqlite_lock(engine: Engine) -> Iterator[sqlite3.Connection]:
    """A connection from outside the engine (as another process's), to take SQLite's lock."""
    conn = sqlite3.connect(str(engine.url.database), isolation_level=None)
    yield conn
    conn.rollback()
    conn.close()


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for another thread to reach a state it cannot announce (bounded)."""
    ready = threading.Event()
    for _ in range(2000):
        if condition():
            return
        ready.wait(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`'s result, failing (instead of hanging) if it has not answered in time."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            return future.result(timeout=seconds)
        except TimeoutError:
            raise AssertionError(f"no answer within {seconds} s") from None


def assert_busy(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["status"] == 503 and body["type"].endswith("/busy")
    assert "try again" in body["detail"]


# ---------------------------------------------------------------- the gate itself


def test_waiting_writers_get_the_gate_first_come_first_served() -> None:
    gate = WriteGate()
    order: list[int] = []
    threads = []
    gate.acquire(bounded=False)
    for n in range(5):
        def writer(n: int = n) -> None:
            gate.acquire(bounded=True)
            order.append(n)
            gate.release()

        thread = threading.Thread(target=writer)
        thread.start()
        threads.append(thread)
        until(lambda n=n: gate.waiting == n + 1, f"writer {n} waits")  # type: ignore[misc]
    gate.release()
    for thread in threads:
        thread.join(timeout=10)
    assert order == [0, 1, 2, 3, 4]
    assert gate.waiting == 0 and gate.refused == 0


def test_a_call_that_already_waited_goes_ahead_of_later_calls() -> None:
    """An HTTP call's second write keeps the place the call arrived at."""
    gate = WriteGate()
    order: list[str] = []
    gate.acquire(bounded=False)
    arrived = time.monotonic()  # the earlier call: it waited once, for its first write

    def writer(name: str, at: float | None) -> None:
        gate.acquire(bounded=True, arrived=at)
        order.append(name)
        gate.release()

    later = threading.Thread(target=writer, args=("later call", None))
    later.start()
    until(lambda: gate.waiting == 1, "the later call waits")
    earlier = threading.Thread(target=writer, args=("earlier call", arrived))
    earlier.start()
    until(lambda: gate.waiting == 2, "the earlier call waits again")
    gate.release()
    for thread in (later, earlier):
        thread.join(timeout=10)
    assert order == ["earlier call", "later call"]


def test_past_the_bound_a_writer_is_refused_and_a_background_job_waits() -> None:
    gate = WriteGate(max_waiting=1, max_wait=0.05)
    gate.acquire(bounded=False)
    queued = threading.Thread(target=lambda: (gate.acquire(bounded=True), gate.release()))
    queued.start()
    until(lambda: gate.waiting == 1, "one writer waits")
    with pytest.raises(Busy, match="1 writes are already waiting"):
        gate.acquire(bounded=True)
    job = threading.Thread(target=lambda: (gate.acquire(bounded=False), gate.release()))
    job.start()  # not an HTTP call: it queues past the bound
    until(lambda: gate.waiting == 2, "the job waits too")
    gate.release()
    queued.join(timeout=10)
    job.join(timeout=10)
    assert gate.refused == 1
    gate.acquire(bounded=False)
    with pytest.raises(Busy, match=r"waited 0\.05 s"):  # a holder that does not let go
        gate.acquire(bounded=True)
    gate.release()
    assert gate.waiting == 0 and gate.refused == 2


def test_a_read_call_begins_deferred_but_transaction_takes_the_gate(
    sessions: sessionmaker[Session], gate: WriteGate
) -> None:
    gate.max_waiting = 0  # a bounded writer finding the gate taken is refused at once
    with gate.held(), serving(reads=True):
        with sessions() as s:  # a GET handler's session: reads without the gate
            assert s.execute(select(ApiToken.id)).all() == []
        with pytest.raises(Busy), transaction(sessions) as s:  # a unit of work writes
            s.execute(select(ApiToken.id)).all()


def test_a_write_in_a_read_transaction_is_warned_about(
    sessions: sessionmaker[Session],
) -> None:
    with serving(reads=True), sessions() as s:
        s.execute(text("SELECT 1"))
        with pytest.warns(WriteInReadTransaction, match="writing"):
            s.execute(text("UPDATE policy_state SET version = version WHERE id = 0"))
        s.commit()


# ---------------------------------------------------------------- over HTTP


def test_reads_and_health_answer_while_a_writer_holds_the_lock(
    env: Env, gate: WriteGate, sqlite_lock: sqlite3.Connection
) -> None:
    mine = env.ask("alice", "staging-db")
    gate.max_waiting = 0
    # A writer holds this process's gate and SQLite's lock (as a long transaction would).
    with gate.held():
        sqlite_lock.execute("BEGIN IMMEDIATE")
        for path in ("/healthz", "/readyz", "/metrics", REQUESTS, f"{REQUESTS}/{mine['id']}",
                     "/api/v1/grants", "/api/v1/me"):
            r = within(10, lambda path=path: env.get("alice", path))
            assert r.status_code == 200, (path, r.text)
        page = env.get(None, "/metrics").text
        assert "accord_requests_pending" in page
        refused = scrape.value(page, "accord_sqlite_writes_refused_total")
        assert_busy(within(10, lambda: env.post("alice", REQUESTS, json=GOOD)))
        assert gate.refused == 1
        page = env.get(None, "/metrics").text  # the counter is the process's: count on
        assert scrape.value(page, "accord_sqlite_writes_refused_total") == refused + 1
        sqlite_lock.rollback()
    # The refused request left no trace, and the next one goes through.
    assert len(env.get("alice", REQUESTS).json()["items"]) == 1
    env.ask("alice", "staging-db")
    assert len(env.get("alice", REQUESTS).json()["items"]) == 2


@pytest.mark.parametrize("path", ["/api/v1/audit/checkpoint?fresh=true", "/api/v1/audit/bundle"])
def test_a_gets_own_writes_take_the_gate(env: Env, gate: WriteGate, path: str) -> None:
    """GET /audit/checkpoint?fresh and GET /audit/bundle sign the grown tree: they write, so
    they queue like a writer. Without `writing()` they would write inside a read transaction
    (a warning, an error here) and, with another process writing, fail at once with
    "database is locked" instead of waiting for it."""
    env.ask("alice", "staging-db")
    r = env.get("dave", path)
    assert r.status_code == 200, r.text
    env.ask("alice", "staging-db")  # the tree grows again: the next call signs
    gate.max_waiting = 0
    with gate.held():
        assert_busy(env.get("dave", path))


def test_a_posts_token_and_policy_checks_read_without_the_gate(env: Env, gate: WriteGate) -> None:
    """A POST checks its token (and whether the policy changed) in a read transaction: a bad
    token is a 401 however long the writers' line, and a good one queues only for its write."""
    gate.max_waiting = 0
    assert env.st.policies.due() and env.st.tokens.get(hash_token(env.tokens["alice"])) is None
    with gate.held():
        bad = within(10, lambda: env.client.post(
            REQUESTS, json=GOOD, headers={"Authorization": "Bearer acc_" + "0" * 64}))
        assert bad.status_code == 401, bad.text
        assert not env.st.policies.due()  # followed, without the gate
        assert gate.refused == 0
        assert_busy(within(10, lambda: env.post("alice", REQUESTS, json=GOOD)))
        assert gate.refused == 1  # the write was refused, not the token check before it
    assert env.st.tokens.get(hash_token(env.tokens["alice"])) is not None
    env.ask("alice", "staging-db")


def test_a_burst_gets_only_2xx_and_503_with_retry_after(
    live: LiveServer, gate: WriteGate, sessions: sessionmaker[Session]
) -> None:
    gate.max_waiting = 3
    tokens = live.env.tokens
    users = ["alice", "erin", "gina"]
    statuses: list[tuple[str, int, dict[str, str], str]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        token = tokens[users[i % len(users)]]
        with httpx.Client(base_url=live.url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            for j in range(4):
                if (i + j) % 2:
                    r = client.post(REQUESTS, json={**GOOD, "reason": f"burst {i}.{j}"})
                else:
                    r = client.get(REQUESTS if j % 4 else "/healthz")
                with lock:
                    statuses.append((r.request.method, r.status_code, dict(r.headers), r.text))

    # Hold the gate until the queue overflowed, so the burst meets a full queue for sure.
    with ThreadPoolExecutor(16) as pool:
        with gate.held():
            futures = [pool.submit(call, i) for i in range(16)]
            until(lambda: gate.refused >= 1, "a writer is refused")
        for future in futures:
            future.result(timeout=60)

    assert len(statuses) == 16 * 4
    refused = 0
    for method, status, headers, body in statuses:
        assert status in (200, 201, 503), (method, status, body)
        if status == 503:
            refused += 1
            assert method == "POST", body  # reads never queue for the gate
            assert headers["content-type"].startswith(PROBLEM)
            assert headers["retry-after"] == "1"
    assert refused >= 1 and refused == gate.refused
    assert gate.waiting == 0  # and nobody kept the gate: a bounded writer gets it at once
    gate.max_waiting = 0
    with serving(reads=False), transaction(sessions) as s:
        s.execute(select(ApiToken.id)).all()
    created = sum(1 for m, s, _h, _b in statuses if m == "POST" and s == 201)
    with sessions() as s:  # every 201 is in the ledger, and nothing else is
        kinds = s.execute(select(LedgerEntry.type)).scalars().all()
    assert kinds.count("request.created") == created


# ---------------------------------------------------------------- lock errors are 503s


def test_lock_and_pool_timeouts_are_503_and_other_database_errors_500() -> None:
    app = FastAPI()
    problems.install(app)
    errors: dict[str, Exception] = {
        "locked": exc.OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError(
            "database is locked")),
        "pool": exc.TimeoutError("QueuePool limit of size 10 overflow 90 reached"),
        "broken": exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(
            "disk I/O error")),
    }

    def failing(error: Exception) -> Callable[[], None]:
        def fail() -> None:
            raise error

        return fail

    for name, error in errors.items():
        app.get(f"/{name}")(failing(error))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_busy(client.get("/locked"))
        assert_busy(client.get("/pool"))
        broken = client.get("/broken")
        assert broken.status_code == 500 and "retry-after" not in broken.headers
        assert "disk I/O" not in broken.text  # the driver's message stays in the log

"""The ledger worker on PostgreSQL: integrates on notice, survives losing its LISTEN
connection, and stops at once however long it would otherwise wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from accord.bootstrap import ledger_config
from accord.db import make_sessionmaker, transaction, utcnow
from accord.ledger.events import Actor, EventType
from accord.ledger.service import pending_count, record
from accord.policy.engine import Policy
from accord.settings import Settings
from accord.spec.load import parse_policy_text
from accord.worker import ledger_jobs
from accord.worker.ledger_jobs import LedgerWorker
from tests.conftest import POLICY

pytestmark = pytest.mark.postgres


def until(what: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether `what` turns true within `timeout` (another thread's work: looked at often)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not what():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.02)
    return True


def listeners(engine: Engine, role: str = "integrator") -> list[int]:
    """Backends of the ledger role's connections (`role`: integrator or standby)."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as c:
        return [pid for (pid,) in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE %s AND pid <> pg_backend_pid()",
            (f"accord ledger {role} %",)).fetchall()]


def test_integrates_on_notice_and_after_losing_its_listen_connection(
        fresh_pg: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_jobs, "RELISTEN_SECONDS", 0.2)
    sessions = make_sessionmaker(fresh_pg)
    settings = Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)})
    worker = LedgerWorker(sessions, ledger_config(settings, Policy(parse_policy_text(POLICY))),
                          utcnow)
    worker.start()

    def add(subject: str) -> None:
        with transaction(sessions) as s:
            record(s, type=EventType.POLICY_LOADED, actor=Actor.system(), subject=subject)

    def integrated() -> bool:
        with sessions() as s:
            return pending_count(s) == 0

    try:
        assert until(lambda: len(listeners(fresh_pg)) == 1)
        add("a")  # the worker's safety poll is 5 s away: the notice wakes it
        assert until(integrated, timeout=2)

        (pid,) = listeners(fresh_pg)
        with fresh_pg.connect() as c:  # as a server restart would
            c.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        add("b")
        assert until(integrated, timeout=5)  # polled until it listens again
        assert until(lambda: len(listeners(fresh_pg)) == 1 and listeners(fresh_pg) != [pid])
        add("c")
        assert until(integrated, timeout=2)
    finally:
        started = time.monotonic()
        worker.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < ledger_jobs.SAFETY_SECONDS / 2  # a wait for notices ends at once


def test_one_integrator_at_a_time_and_a_standby_takes_over_when_it_goes(
        fresh_pg: Engine, tmp_path: Path) -> None:
    sessions = make_sessionmaker(fresh_pg)
    settings = Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)})
    cfg = ledger_config(settings, Policy(parse_policy_text(POLICY)))
    first, second = LedgerWorker(sessions, cfg, utcnow), LedgerWorker(sessions, cfg, utcnow)

    def integrated() -> bool:
        with sessions() as s:
            return pending_count(s) == 0

    def add(subject: str) -> None:
        with transaction(sessions) as s:
            record(s, type=EventType.POLICY_LOADED, actor=Actor.system(), subject=subject)

    first.start()
    second.start()
    try:
        assert until(lambda: len(listeners(fresh_pg)) == 1
                     and len(listeners(fresh_pg, "standby")) == 1)
        assert first.integrator != second.integrator  # the advisory lock elected one
        holder, standby = (first, second) if first.integrator else (second, first)
        add("a")
        assert until(integrated, timeout=2)

        holder.stop()  # its role connection closes: the lock is free at once
        started = time.monotonic()
        assert until(lambda: standby.integrator, timeout=5)
        assert time.monotonic() - started < ledger_jobs.STANDBY_SECONDS + 1.0
        add("b")
        assert until(integrated, timeout=2)
    finally:
        first.stop()
        second.stop()


def notices_after(engine: Engine, act: Callable[[], None]) -> int:
    """How many ledger notices a listener gets for what `act` commits."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"LISTEN {ledger_jobs.NOTIFY_CHANNEL}")
        act()
        c.execute("SELECT 1")  # notices committed before this arrive before its answer
        return len(list(c.notifies(timeout=0, stop_after=1000)))


def test_writers_notify_only_while_the_integrators_are_idle(fresh_pg: Engine,
                                                             tmp_path: Path) -> None:
    """A NOTIFY makes its commit queue on a lock of the whole cluster, held through the WAL
    flush: while an integrator is busy, commits send none; idle again, they do."""
    sessions = make_sessionmaker(fresh_pg)
    settings = Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)})
    worker = LedgerWorker(sessions, ledger_config(settings, Policy(parse_policy_text(POLICY))),
                          utcnow)  # not started: its passes are driven here

    def add() -> None:
        with transaction(sessions) as s:
            record(s, type=EventType.POLICY_LOADED, actor=Actor.system(), subject="x")

    def idle() -> bool:
        with fresh_pg.connect() as c:
            return bool(c.exec_driver_sql("SELECT idle FROM ledger_wake").scalar())

    for end in (worker._wake_r, worker._wake_w):  # a stop's wake-up line: unused here
        end.close()
    assert idle() and notices_after(fresh_pg, add) == 1
    worker._integrate()  # found the event: busy
    assert worker._busy and not idle()
    assert notices_after(fresh_pg, add) == 0
    worker._integrate()  # found the second one: still busy
    assert worker._busy and not idle()
    worker._integrate()  # found none: idle, and writers notify again
    assert not worker._busy and idle()
    assert notices_after(fresh_pg, add) == 1
    with sessions() as s:
        assert pending_count(s) == 1  # the last one waits for the notice's pass

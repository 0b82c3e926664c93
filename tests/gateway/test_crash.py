"""A gateway process killed with SIGKILL loses no statement: its spool is replayed, once.

Also: the audit writer's ledger transaction on both databases (usage and marks upserted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.gateway import audit, recording, records, shipper, spool
from accord.gateway.models import GatewaySpoolMark, GatewayUsage
from accord.ledger.models import LedgerEntry
from tests.gateway.conftest import DSN_ENV, World, children, free_port, gone, policy_text

ACCORD = str(Path(sys.executable).parent / "accord")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # another process: nothing to await but its port
        assert proc.poll() is None, log.read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the gateway did not start: " + log.read_text())


@pytest.fixture
def killed_gateway(world: World, tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes],
                                                                     Path]]:
    """`accord gateway` in a process of its own, flushing only every 300 ms."""
    port = free_port()
    config = tmp_path / "accord.yaml"
    config.write_text(policy_text(world.resource, world.database, port=port,
                                  gateway=", flush_interval: 300ms"), encoding="utf-8")
    log = tmp_path / "gateway.log"
    env = {**os.environ, "ACCORD_DATABASE_URL": world.engine.url.render_as_string(False),
           "ACCORD_DATA_DIR": str(tmp_path / "data"), DSN_ENV: world.target_dsn}
    env["ACCORD_DATABASE_URL"] = env["ACCORD_DATABASE_URL"].replace("+psycopg", "")
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "gateway", "--config", str(config), "--processes",
                                 "1"], env=env, stdout=out, stderr=out)  # the one we kill
    try:
        _wait_port(port, proc, log)
        yield port, proc, tmp_path / "data" / "gateway-spool"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _in_ledger(world: World, grant_id: int) -> list[dict[str, Any]]:
    with world.env.st.sessions() as s:
        leaves = s.execute(select(LedgerEntry.leaf).where(
            LedgerEntry.type == "gateway.statement",
            LedgerEntry.subject == f"grant:{grant_id}").order_by(LedgerEntry.id)).scalars()
        out: list[dict[str, Any]] = []
        for leaf in leaves:
            event = json.loads(leaf)
            out += [{**st, "session": event["data"]["session"]}
                    for st in recording.as_dicts(event["data"])]
        return out


def _workload_then_kill(world: World, port: int, proc: subprocess.Popen[bytes],
                        *, shipper_too: bool) -> dict[str, Any]:
    """20 statements (10 surely in the ledger first), one still running, then SIGKILL."""
    grant = world.grant("alice", "admin")  # pg_sleep is admin
    token = world.token(grant)
    with world.connect(token, port=port) as conn:
        for i in range(10):
            conn.execute("select %s::int", (i,))
        deadline = time.monotonic() + 20
        while len(_in_ledger(world, grant["id"])) < 10:  # the other process's round
            assert time.monotonic() < deadline, "the first statements never reached the ledger"
            time.sleep(0.05)
        for i in range(10, 20):
            conn.execute(f"select {i}")
        sleeper = world.connect(token, port=port)
        threading.Thread(target=_ignore, args=(sleeper.execute, "select pg_sleep(3)"),
                         daemon=True).start()
        deadline = time.monotonic() + 20
        while not world.target("select 1 from pg_stat_activity where query = "
                               "'select pg_sleep(3)' and state = 'active'"):
            assert time.monotonic() < deadline, "the sleeper never started"
            time.sleep(0.02)
        kill_gateway(proc, shipper_too=shipper_too)
    return grant


def kill_gateway(proc: subprocess.Popen[bytes], *, shipper_too: bool) -> None:
    """SIGKILL a gateway process (and its shipper), until they are gone."""
    victims = ([*children(proc.pid), proc.pid] if shipper_too else [proc.pid])
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # A SIGKILLed shipper in an fdatasync lives on until the sync ends, holding its
    # spool's lock: whoever replays must find it dead, as after a real crash.
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in victims):  # init reaps the orphan
        assert time.monotonic() < deadline, "a killed process lived on"
        time.sleep(0.02)


def _check_recovered(world: World, grant: dict[str, Any]) -> None:
    after = _in_ledger(world, grant["id"])
    keys = [(s["session"], s["seq"]) for s in after]
    assert len(keys) == len(set(keys)) == 21  # every statement, each once
    texts = [s["text"] for s in after]
    assert texts.count("select $1::int") == 10
    assert [t for t in texts if t.startswith("select 1") and t != "select $1::int"] == [
        f"select {i}" for i in range(10, 20)]
    sleeping = [s for s in after if s["text"] == "select pg_sleep(3)"]
    assert [s["outcome"] for s in sleeping] == ["unknown"]
    closed = world.events("gateway.session_closed", grant["id"])
    assert {e["data"]["reason"] for e in closed} == {spool.RECOVERED}
    with world.env.st.sessions() as s:
        usage = s.get(GatewayUsage, grant["id"])
        assert usage is not None and usage.statement_count == 21 and usage.session_count == 2


@pytest.mark.postgres
def test_sigkill_of_the_gateway_its_shipper_records_the_rest_once(
        world: World, killed_gateway: tuple[int, subprocess.Popen[bytes], Path]) -> None:
    port, proc, spool = killed_gateway
    grant = _workload_then_kill(world, port, proc, shipper_too=False)
    deadline = time.monotonic() + 30
    while any(spool.iterdir()):  # the orphaned shipper finishing, in its own process
        assert time.monotonic() < deadline, "the shipper did not finish the spool"
        time.sleep(0.05)
    _check_recovered(world, grant)


@pytest.mark.postgres
def test_sigkill_of_gateway_and_shipper_the_next_start_records_the_rest_once(
        world: World, killed_gateway: tuple[int, subprocess.Popen[bytes], Path]) -> None:
    port, proc, spool = killed_gateway
    grant = _workload_then_kill(world, port, proc, shipper_too=True)
    before = _in_ledger(world, grant["id"])
    assert 10 <= len(before) < 21
    recovered = shipper.replay_dead(world.env.st.sessions, spool, per_event=1000,
                                  max_text=16384)
    assert recovered > 0 and not any(spool.iterdir())
    _check_recovered(world, grant)
    assert shipper.replay_dead(world.env.st.sessions, spool, per_event=1000, max_text=16384) == 0


def _ignore(fn: Any, *args: Any) -> None:
    with contextlib.suppress(psycopg.Error):  # the gateway is killed under it
        fn(*args)


# ------------------------------------------------------------------ both databases


def test_record_facts_writes_events_usage_and_mark(sessions: sessionmaker[Session]) -> None:
    info = records.SessionInfo(id="abc-1", number=1, grant_id=7, user="alice", resource="db",
                             role="read", client="127.0.0.1:5", application="psql", tls=False,
                             upstream_role=None)
    base = 1_800_000_000_000_000_000
    facts: list[spool.Fact] = [(1, "open", info, base, {})]
    for i in range(5):
        row = recording.statement_row(i + 1, "simple", f"select {i}", None, "SELECT 1", 1, 500,
                                    "ok", None)
        facts.append((i + 2, spool.STATEMENT, info, base + i * 1000, row))
    facts.append((7, "violation", info, base + 9000, {"statement": "delete from t"}))
    facts.append((8, "close", info, base + 10_000, {"reason": "client terminated"}))
    other = dataclasses.replace(info, id="abc-2", number=2, grant_id=8)  # a second grant
    facts.append((9, spool.STATEMENT, other, base + 11_000, recording.statement_row(
        1, "simple", "select 9", None, "SELECT 1", 1, 500, "ok", None)))
    with transaction(sessions) as s:
        events = recording.record_facts(s, facts=facts, instance="abc", per_event=2,
                                      max_text=100)
    assert events == 7  # open, 3 statement events (2 + 2 + 1), violation, close; grant 8's
    with transaction(sessions) as s:  # a second batch adds to the counters
        recording.record_facts(s, facts=facts[1:2], instance="abc", per_event=2, max_text=100)
    with sessions() as s:
        usage = s.get(GatewayUsage, 7)
        assert usage is not None
        assert (usage.statement_count, usage.violation_count, usage.session_count) == (6, 1, 1)
        assert usage.first_used_at < usage.last_used_at
        usage8 = s.get(GatewayUsage, 8)
        assert usage8 is not None and usage8.statement_count == 1
        mark = s.get(GatewaySpoolMark, "abc")
        assert mark is not None and mark.committed == 2
        types = s.execute(select(LedgerEntry.type).where(LedgerEntry.subject == "grant:7")
                          .order_by(LedgerEntry.id)).scalars().all()
    assert types == ["gateway.session_opened", "gateway.statement", "gateway.statement",
                     "gateway.statement", "gateway.violation", "gateway.session_closed",
                     "gateway.statement"]


def test_a_round_goes_in_transactions_of_flush_batch_facts(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.gateway.test_spool import Session as Proxied

    writer = audit.AuditWriter(None, tmp_path)  # type: ignore[arg-type]  # no shipper
    writer.dir.mkdir()
    writer._open_next()
    proxied = Proxied(writer)
    for i in range(25):
        proxied.query(f"select {i}")
    writer.closed(proxied.info, "client terminated", [])
    chunks: list[int] = []
    record = recording.record_facts

    def counted(s: Session, **kw: Any) -> int:
        chunks.append(len(kw["facts"]))
        return record(s, **kw)

    monkeypatch.setattr(recording, "record_facts", counted)
    shipped = shipper.ship(sessions, writer.dir, per_event=1000, max_text=100, batch=10)
    assert shipped == 27 and chunks == [10, 10, 7]  # open, 25 statements, close
    assert not writer.dir.exists()  # all in: the spool is gone
    with sessions() as s:
        usage = s.get(GatewayUsage, 7)
        assert usage is not None and usage.statement_count == 25

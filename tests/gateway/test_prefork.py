"""`accord gateway --processes 2`: a real parent and two real gateway processes.

Connections alternate between the children; a cancel request reaching the other child is
passed on; every child's statements reach the ledger; SIGTERM stops them all cleanly; a
killed child is replaced while the other's sessions carry on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.gateway.conftest import DSN_ENV, World, children, free_port, gone, policy_text
from tests.gateway.test_crash import ACCORD, _in_ledger, _wait_port

pytestmark = pytest.mark.postgres


@dataclass
class Prefork:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def ready(self, *, child: int | None = None, times: int = 1) -> None:
        """Wait until the children (or one) said they are ready `times` (after restarts)."""
        deadline = time.monotonic() + 60
        while True:  # other processes: nothing to await but what they log
            text = self.log.read_text()
            counts = [len(re.findall(rf"gateway process {i} \(pid \d+\) is ready", text))
                      for i in ((child,) if child else (1, 2))]
            if min(counts) >= times:
                return
            assert self.proc.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.05)

    def child(self, index: int) -> int:
        for pid in children(self.proc.pid):
            if f"--index\0{index}\0" in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
        raise AssertionError(f"no child {index}")


@contextlib.contextmanager
def running(world: World, tmp_path: Path, gateway: str = "",
            args: tuple[str, ...] = ()) -> Iterator[Prefork]:
    """`accord gateway --processes 2` on a free port, until SIGTERM (or already dead)."""
    port = free_port()
    config = tmp_path / "accord.yaml"
    config.write_text(policy_text(world.resource, world.database, port=port, gateway=gateway),
                      encoding="utf-8")
    log = tmp_path / "gateway.log"
    env = {**os.environ, "ACCORD_DATA_DIR": str(tmp_path / "data"), DSN_ENV: world.target_dsn,
           "ACCORD_DATABASE_URL": world.engine.url.render_as_string(False).replace(
               "+psycopg", "")}
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "gateway", "--config", str(config), "--processes", "2",
                                 "--log-level", "info", *args], env=env, stdout=out,
                                stderr=out)
    try:
        _wait_port(port, proc, log)
        gw = Prefork(proc, port, log)
        gw.ready()
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def prefork(world: World, tmp_path: Path) -> Iterator[Prefork]:
    with running(world, tmp_path) as gw:
        yield gw


def _ledger(world: World, grant_id: int, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while len(rows := _in_ledger(world, grant_id)) < count:  # another process's rounds
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    return rows


def _sleep_then_cancel(conn: psycopg.Connection[Any]) -> None:
    timer = threading.Timer(0.5, conn.cancel)
    timer.start()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
    finally:
        timer.cancel()


def test_connections_alternate_and_every_child_audits_cancels_and_stops(
        world: World, prefork: Prefork) -> None:
    grant = world.grant("alice", "admin")  # pg_sleep is admin
    token = world.token(grant)
    conns = [world.connect(token, port=prefork.port) for _ in range(4)]
    # The key's top bits name the child: connections went to 1, 2, 1, 2.
    assert [c.info.backend_pid >> 24 for c in conns] == [1, 2, 1, 2]
    for i, conn in enumerate(conns):
        for j in range(5):
            assert conn.execute("select %s::int * 10", (i * 5 + j,)).fetchone() == (
                (i * 5 + j) * 10,)
    # The cancel request is the fifth connection: child 1, while the query runs on 2.
    started = time.monotonic()
    _sleep_then_cancel(conns[1])
    # The sixth: child 2, for a query on child 1's session... after a connection to 2.
    _sleep_then_cancel(conns[2])
    assert time.monotonic() - started < 10  # neither waited for its pg_sleep(20)
    assert conns[1].execute("select 1").fetchone() == (1,)
    rows = _ledger(world, grant["id"], 4 * 5 + 2 + 1)
    sessions = {r["session"] for r in rows}
    assert len(sessions) == 4 and len({s.rsplit("-", 1)[0] for s in sessions}) == 2
    assert sorted(r["outcome"] for r in rows if "pg_sleep" in r["text"]) == ["error", "error"]
    prefork.proc.send_signal(signal.SIGTERM)
    assert prefork.proc.wait(timeout=60) == 0
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn.close()
    closed = world.events("gateway.session_closed", grant["id"])
    assert sorted(e["data"]["reason"] for e in closed
                  if e["data"]["session"] in sessions) == ["gateway shutting down"] * 4
    assert list((prefork.log.parent / "data" / "gateway-spool").iterdir()) == []  # all shipped


def test_a_killed_child_is_replaced_and_the_other_carries_on(
        world: World, prefork: Prefork) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    first, second = (world.connect(token, port=prefork.port) for _ in range(2))
    assert (first.info.backend_pid >> 24, second.info.backend_pid >> 24) == (1, 2)
    for conn in (first, second):
        conn.execute("select 1")
    victim = prefork.child(1)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(psycopg.OperationalError):
        first.execute("select 2")
    assert second.execute("select 3").fetchone() == (3,)  # the other child's session
    prefork.ready(child=1, times=2)  # the parent started another child 1
    assert prefork.child(1) != victim
    third, fourth = (world.connect(token, port=prefork.port) for _ in range(2))
    assert {third.info.backend_pid >> 24, fourth.info.backend_pid >> 24} == {1, 2}
    assert third.execute("select 4").fetchone() == (4,)
    assert fourth.execute("select 5").fetchone() == (5,)
    # The killed child's shipper recorded its statement and closed its session.
    rows = _ledger(world, grant["id"], 5)
    assert sorted(r["text"] for r in rows) == [f"select {i}" for i in (1, 1, 3, 4, 5)]
    for conn in (first, second, third, fourth):
        conn.close()


def test_a_child_killed_with_its_shipper_is_shipped_by_the_parent(
        world: World, prefork: Prefork) -> None:
    from accord.gateway import spool

    grant = world.grant("alice", "read")
    token = world.token(grant)
    first, second = (world.connect(token, port=prefork.port) for _ in range(2))
    with first, second:
        assert first.info.backend_pid >> 24 == 1
        first.execute("select 1")
        victim = prefork.child(1)
        (shipper,) = [pid for pid in children(victim)
                      if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        # Stopped first, the child cannot start another shipper in between; the shipper
        # goes before the child, else it would ship on its parent's death.
        os.kill(victim, signal.SIGSTOP)
        os.kill(shipper, signal.SIGKILL)
        os.kill(victim, signal.SIGKILL)
        # Nobody is left to ship child 1's spool but the parent, which looks when a child
        # dies. It logs what it shipped after the commit that the events come with.
        deadline = time.monotonic() + 30
        recovered = re.compile(r"recovered \d+ audit facts from the spool of stopped gateway")
        while not (closed := [e for e in world.events("gateway.session_closed", grant["id"])
                              if e["data"]["reason"] == spool.RECOVERED]) \
                or not recovered.search(log := prefork.log.read_text()):
            assert time.monotonic() < deadline, prefork.log.read_text()  # another process
            time.sleep(0.05)
        assert [e["data"]["session"].rsplit("-", 1)[1] for e in closed] == ["1"], (closed, log)
        assert [r["text"] for r in _ledger(world, grant["id"], 1)] == ["select 1"]
        assert second.execute("select 2").fetchone() == (2,)


def test_children_stop_cleanly_when_the_parent_dies(world: World, prefork: Prefork) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conns = [world.connect(token, port=prefork.port) for _ in range(2)]
    for i, conn in enumerate(conns):
        conn.execute(f"select {i}")
    workers = [prefork.child(1), prefork.child(2)]
    prefork.proc.kill()
    prefork.proc.wait()
    deadline = time.monotonic() + 60
    while not all(gone(pid) for pid in workers):  # other processes: nothing to await
        assert time.monotonic() < deadline, "the children kept running without their parent"
        time.sleep(0.05)
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn.close()
    rows = _ledger(world, grant["id"], 2)
    assert sorted(r["text"] for r in rows) == ["select 0", "select 1"]
    closed = world.events("gateway.session_closed", grant["id"])
    assert [e["data"]["reason"] for e in closed] == ["gateway shutting down"] * 2


def test_every_process_speaks_tls_and_can_require_it(world: World, tmp_path: Path) -> None:
    from tests.gateway.test_gateway import _self_signed

    cert, key = _self_signed(tmp_path)
    tls = f", tls: {{cert: '{cert}', key: '{key}', required: true}}"
    with running(world, tmp_path, gateway=tls) as gw:
        grant = world.grant("erin", "read")
        token = world.token(grant, "erin")
        conns = [world.connect(token, port=gw.port, sslmode="require") for _ in range(2)]
        assert [c.info.backend_pid >> 24 for c in conns] == [1, 2]
        for conn in conns:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select count(*) from orders").fetchone() == (100,)
            conn.close()
        for _ in range(2):  # refused by both processes
            with pytest.raises(psycopg.OperationalError, match="requires TLS"):
                world.connect(token, port=gw.port, sslmode="disable")


def test_one_scrape_sums_every_gateway_process(world: World, tmp_path: Path) -> None:
    """`--metrics-listen`: the parent answers scrapes with what both children counted
    (multi-process mode in <data dir>/metrics/gateway-<port>), and a killed child's
    sessions stop counting as open while its counts stay."""
    from tests import scrape

    mport = free_port()
    with running(world, tmp_path, args=("--metrics-listen", f"127.0.0.1:{mport}")) as gw:
        token = world.token(world.grant("alice", "read"))
        conns = [world.connect(token, port=gw.port) for _ in range(4)]
        assert sorted(c.info.backend_pid >> 24 for c in conns) == [1, 1, 2, 2]
        for conn in conns:
            for _ in range(3):
                assert conn.execute("select 1").fetchone() == (1,)
        conns.pop().close()

        def page() -> str:
            return str(httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text)

        deadline = time.monotonic() + 30
        while (scrape.value(text := page(), "accord_gateway_statements_total") < 12
               or scrape.value(text, "accord_gateway_sessions_open") != 3):
            assert time.monotonic() < deadline, text  # each child adds them every 0.5 s
            time.sleep(0.1)
        assert scrape.value(text, "accord_gateway_sessions_total", protocol="postgres") == 4
        os.kill(gw.child(2), signal.SIGKILL)
        gw.ready(child=2, times=2)
        text = page()
        assert scrape.value(text, "accord_gateway_sessions_total", protocol="postgres") == 4
        assert scrape.value(text, "accord_gateway_statements_total") == 12
        open_now = scrape.value(text, "accord_gateway_sessions_open", protocol="postgres")
        assert open_now == sum(1 for c in conns if c.info.backend_pid >> 24 == 1)
        for conn in conns:
            conn.close()
    assert (tmp_path / "data" / "metrics" / f"gateway-{gw.port}").is_dir()

"""`accord serve --demo` (what ./scripts/demo runs): it starts, seeds, signs people in, and,
when a PostgreSQL answers, serves orders-db through the gateway."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy.orm import Session, sessionmaker

from accord import demo
from accord.worker.job_runner import detect_all
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, _pg_reachable, make_env
from tests.serverproc import Demo, _free_port, demo_postgres_lock

FRIDAY_21 = datetime(2026, 11, 27, 21, 0, 0, 123456, tzinfo=UTC)  # outside 08-19 Mon-Fri


def _wait(what: str, check: Any, seconds: float = 30) -> Any:
    """Poll another process until `check()` is truthy (nothing to await across processes)."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _alert_rules(d: Demo) -> list[str]:
    items = httpx.get(d.url + "/api/v1/alerts", params={"limit": 100}, headers=d.headers("dave"),
                      timeout=5).json()["items"]
    return sorted(a["rule"] for a in items)


def test_the_demo_without_postgres_starts_and_says_how_to_get_the_gateway(
        tmp_path: Path) -> None:
    closed = _free_port()  # nothing listens there
    d = Demo(tmp_path, {"ACCORD_DEMO_PG": f"postgresql://postgres@127.0.0.1:{closed}/x"})
    try:
        d.start()
        assert "pick a demo user" in d.printed
        assert set(d.tokens) == {"alice", "bob", "carol", "dave", "erin", "frank", "gina"}
        hint = d.line("No PostgreSQL for the gateway")
        assert f"127.0.0.1:{closed}: no answer" in hint and "apt-get install postgresql" in hint
        assert "accord connect" not in d.printed
        page = httpx.get(d.url + "/login", timeout=5)
        assert page.status_code == 200 and 'name="user"' in page.text  # the demo picker
        items = httpx.get(d.url + "/api/v1/requests", params={"limit": 100},
                          headers=d.headers("dave"), timeout=5).json()["items"]
        assert {"pending", "active", "denied", "cancelled"} <= {r["status"] for r in items}
        assert any(r["emergency"] for r in items)  # the break-glass example
        # The worker's detectors: the break-glass and erin's attempt to approve her own
        # change, whatever the hour the demo started at.
        _wait("the seeded alerts", lambda: len(_alert_rules(d)) >= 2)
        assert _alert_rules(d) == ["break_glass", "self_approval"]
        r = httpx.post(d.url + "/api/v1/connect", json={"resource": "orders-db"},
                       headers=d.headers("alice"), timeout=5)
        assert r.status_code == 409 and "gateway is not configured" in r.json()["detail"]
        policy = (tmp_path / ".accord/demo/accord.yaml").read_text()
        assert "gateway:" not in policy and "provision:" not in policy
    finally:
        d.stop()


@pytest.fixture
def demo_pg() -> Iterator[str]:
    """ACCORD_DEMO_PG for a demo database of this test's own, dropped afterwards."""
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but {PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable")
    name = f"accord_demo_t{uuid.uuid4().hex[:8]}"
    with demo_postgres_lock():
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _cli(d: Demo, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["accord", *args], env=d.client_env(user), capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_demo_with_postgres_serves_orders_db_through_the_gateway(
        tmp_path: Path, demo_pg: str) -> None:
    d = Demo(tmp_path, {"ACCORD_DEMO_PG": demo_pg})
    try:
        d.start()
        database = demo_pg.rsplit("/", 1)[1]
        assert re.search(rf"orders-db is PostgreSQL 127\.0\.0\.1:5432, database {database}",
                         d.printed)
        assert "No PostgreSQL" not in d.printed
        # What it prints to try, run as printed: alice asks, bob and carol approve.
        ask = d.line(r"accord request create orders-db read")
        out = subprocess.run(shlex.split(ask), env=d.client_env("alice"), capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        rid = int(re.search(r"request (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
        for user in ("bob", "carol"):
            printed = d.line(rf"ACCORD_TOKEN={d.tokens[user]} accord request approve")
            assert printed.endswith(f"approve {rid} --reason ok")
            r = httpx.post(f"{d.url}/api/v1/requests/{rid}/approve", json={"comment": "ok"},
                           headers=d.headers(user), timeout=10)
            assert r.status_code == 200, r.text

        def granted() -> dict[str, Any] | None:
            req = httpx.get(f"{d.url}/api/v1/requests/{rid}", headers=d.headers("alice"),
                            timeout=5).json()
            grant: dict[str, Any] | None = req.get("grant")
            return grant if grant and grant["status"] == "active" else None

        grant = _wait("the worker to provision the grant", granted)
        assert d.line(r"accord connect orders-db").startswith("accord connect orders-db")
        printed_psql = d.line(r"PGPASSWORD='acg_…' psql")
        out = _cli(d, "alice", "connect", "orders-db")
        assert out.returncode == 0, out.stderr
        psql_line = out.stdout.splitlines()[0]
        assert re.sub(r"acg_\S+'", "acg_…'", psql_line) == printed_psql
        rows = subprocess.run(
            ["bash", "-c", psql_line + " -X -A -t -c 'SELECT id, customer FROM orders "
             "ORDER BY id'"], capture_output=True, text=True, timeout=30, check=False)
        assert rows.returncode == 0, rows.stderr
        assert rows.stdout.splitlines()[:2] == ["1001|ACME Corp", "1002|Globex"]
        masked = subprocess.run(  # the demo's masking rule: readers see no contacts
            ["bash", "-c", psql_line + " -X -A -t -c 'SELECT id, contact FROM orders "
             "ORDER BY id LIMIT 2'"], capture_output=True, text=True, timeout=30, check=False)
        assert masked.stdout.splitlines() == ["1001|****", "1002|****"], masked.stderr
        dsn = re.search(r"^DSN:\s+(\S+)$", out.stdout, re.M).group(1)  # type: ignore[union-attr]
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (6,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM orders")  # alice holds read
        # The seeded story's alerts, and the demo's own gateway session's refusal.
        _wait("the seeded alerts", lambda: len(_alert_rules(d)) >= 4)
        assert _alert_rules(d) == ["break_glass", "scope_violation", "scope_violation",
                                   "self_approval"]
        usage = httpx.get(f"{d.url}/api/v1/grants/{grant['id']}", headers=d.headers("dave"),
                          timeout=5).json()["usage"]
        assert usage["statement_count"] >= 2 and usage["violation_count"] == 1
        policy = (tmp_path / ".accord/demo/accord.yaml").read_text()
        dsn_file = tmp_path / ".accord/demo" / demo.ADMIN_DSN_FILE
        assert dsn_file.stat().st_mode & 0o077 == 0 and "dsn_file:" in policy
        assert "postgresql://" not in policy and "postgresql://" not in d.printed
        d.stop()
        # Restarted: the database is kept (not created again), the policy is unchanged.
        with psycopg.connect(demo_pg, autocommit=True) as conn:
            conn.execute("INSERT INTO orders (id, customer, total, status) "
                         "VALUES (2001, 'Kept', 1, 'shipped')")
        d.start()
        # (the gateway's port aside: 6432 may be another test's demo's by now, and the demo
        # then takes a free one)
        port = re.compile(r"127\.0\.0\.1:\d+")
        assert port.sub("PORT", (tmp_path / ".accord/demo/accord.yaml").read_text()) == \
            port.sub("PORT", policy)
        with psycopg.connect(demo_pg) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (7,)
        assert _cli(d, "alice", "connect", "orders-db").returncode == 0
    finally:
        d.stop()


def test_the_demo_policy_is_rewritten_only_while_it_is_the_demos_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_pg = {"ACCORD_DEMO_PG": f"postgresql://postgres@127.0.0.1:{_free_port()}/x"}
    path = tmp_path / "accord.yaml"
    path.write_text("# an earlier demo's\n", encoding="utf-8")
    setup = demo.write_policy(tmp_path, no_pg)  # edited (or not the demo's): kept
    assert path.read_text() == "# an earlier demo's\n"
    assert "was edited" in setup.note and f"rm -rf {tmp_path}" in setup.note
    path.unlink()
    setup = demo.write_policy(tmp_path, no_pg)
    assert "No PostgreSQL for the gateway" in setup.note and setup.gateway_listen is None
    written = path.read_text()
    assert demo.write_policy(tmp_path, no_pg).note == setup.note
    assert path.read_text() == written
    # A demo directory from before the gateway: its unedited policy is replaced.
    earlier = "# the demo policy of an earlier version\n"
    monkeypatch.setattr(demo, "EARLIER_POLICIES", frozenset({sha256(earlier.encode()).hexdigest()}))
    path.write_text(earlier, encoding="utf-8")
    (tmp_path / demo.POLICY_HASH_FILE).unlink()
    demo.write_policy(tmp_path, no_pg)
    assert path.read_text() == written


def test_the_demo_story_raises_a_few_meaningful_alerts_at_any_hour(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Started on a Friday evening, the seeded requests raise no off-hours or quick-approval
    alerts (the demo files them all in its first second): only the break-glass and the
    self-approval attempt."""
    env = make_env(sessions, tmp_path, demo.render_policy(tmp_path, None, None))
    env.clock.value = FRIDAY_21
    assert demo.seed(env.st) is not None
    assert demo.seed(env.st) is None  # once per database
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)
    alerts = env.get("dave", "/api/v1/alerts").json()["items"]
    assert sorted((a["rule"], a["user"]) for a in alerts) == [
        ("break_glass", "erin"), ("self_approval", "erin")]
    [refused] = env.events(type="approval.refused")
    assert refused["actor"]["id"] == "erin" and refused["data"]["reason"] == "self_decision"

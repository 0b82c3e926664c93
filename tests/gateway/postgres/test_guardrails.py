"""Guardrails and one-statement reviews end to end: real PostgreSQL behind the gateway,
real psql and psycopg in front of it, requests filed and approved through the real API.

Each guardrail action (block, warn, review), and none of them bypassed by comments, case,
quoting, CTEs, prepared statements (SQL and protocol level), EXPLAIN ANALYZE or
multi-statement strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from accord.db import transaction
from accord.ledger import service as ledger
from tests.gateway.conftest import World, open_world, serve_api
from tests.web.test_pages import login, text_of

pytestmark = pytest.mark.postgres

RULES = """\
    gateway:
      review_window: 10m
      guardrails:
        - {name: no-unbounded-writes, action: block, statements: [delete, update],
           without_where: true, message: "UPDATE and DELETE need a WHERE clause"}
        - {name: no-drop, action: block, statements: [drop, truncate]}
        - {name: orders-scan, action: warn, statements: [select], tables: [public.orders],
           without_limit: true, message: "add a LIMIT"}
        - {name: payments-writes, action: review, tables: [payments],
           statements: [insert, update, delete],
           message: "payments change with a second pair of eyes"}
        - {name: no-sleep, action: block, functions: [pg_sleep]}
web: {local_login: true}
"""
WORKFLOWS = """\
  - name: statements
    match: 'request.kind == "statement" && request.statement.contains("payments")'
    require_reason: false
    max_duration: 1h
    steps: [{approvers: [leads]}]
"""
SETUP = ("CREATE TABLE payments (id int PRIMARY KEY, amount int)",
         "INSERT INTO payments SELECT g, g * 100 FROM generate_series(1, 20) g")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(tmp_path_factory, extra=RULES, setup=SETUP, workflows=WORKFLOWS) as w:
        yield w


@pytest.fixture(scope="module")
def writer(gw: World) -> dict[str, Any]:
    """alice's write grant's connection token."""
    return gw.token(gw.grant("alice", "write"))


def count(gw: World, table: str) -> int:
    return int(gw.target(f"SELECT count(*) FROM {table}")[0][0])


def guardrail_events(gw: World) -> list[dict[str, Any]]:
    return [e["data"] for e in gw.events("gateway.guardrail")]


# ------------------------------------------------------------------ block and warn


def test_delete_without_where_is_blocked_and_one_with_where_runs(gw: World,
                                                                 writer: dict[str, Any]) -> None:
    before = count(gw, "orders")
    r = gw.psql(writer, "DELETE FROM orders")
    assert r.returncode != 0
    assert "ERROR:  Accord gateway: UPDATE and DELETE need a WHERE clause " \
           "(guardrail no-unbounded-writes)" in r.stderr
    assert count(gw, "orders") == before
    r = gw.psql(writer, "DELETE FROM orders WHERE id = 100")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "DELETE 1"
    assert count(gw, "orders") == before - 1
    blocked = [e for e in guardrail_events(gw) if e["statement"] == "DELETE FROM orders"]
    assert blocked and blocked[-1]["action"] == "block"
    assert blocked[-1]["rule"] == "no-unbounded-writes"
    assert blocked[-1]["rules"] == ["no-unbounded-writes"]
    assert blocked[-1]["protocol"] == "simple"
    # A refused statement never reached the server: it is not a statement run.
    texts = [s["text"] for s in gw.statements(writer["grant_id"])]
    assert "DELETE FROM orders" not in texts and "DELETE FROM orders WHERE id = 100" in texts


BYPASSES = [
    "delete from ORDERS",
    'DeLeTe /* where id = 1 */ FROM "orders" -- where id = 1',
    "DELETE FROM public.orders WHERE true",
    "UPDATE orders SET total = 0 WHERE 1 = 1",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "EXPLAIN (ANALYZE true, FORMAT json) UPDATE orders SET total = 0",
    "SELECT 1; DELETE FROM orders",
    "PREPARE wipe AS DELETE FROM orders",
    "SELECT query_to_xml('delete from orders', true, true, '')",
]
# An admin session may run ddl and admin statements: the rules still hold there.
ADMIN_BYPASSES = [
    "DROP TABLE orders",
    'drop table if exists "ORDERS", public.orders cascade',
    "truncate orders",
    "BEGIN; TRUNCATE orders; COMMIT",
    "SELECT pg_sleep(0)",
    "select PG_CATALOG.pg_sleep(0)",
    "DO $$ BEGIN PERFORM 1; END $$; DELETE FROM orders",
]


@pytest.fixture(scope="module")
def admin(gw: World) -> dict[str, Any]:
    return gw.token(gw.grant("erin", "admin"), "erin")


@pytest.mark.parametrize("sql", [*BYPASSES, *(f"admin:{s}" for s in ADMIN_BYPASSES)])
def test_blocked_statements_are_not_bypassed_through_psql(gw: World, writer: dict[str, Any],
                                                          admin: dict[str, Any],
                                                          sql: str) -> None:
    before = count(gw, "orders")
    token = writer
    if sql.startswith("admin:"):
        token, sql = admin, sql.removeprefix("admin:")
    r = gw.psql(token, sql)
    assert r.returncode != 0, (sql, r.stdout)
    assert "(guardrail " in r.stderr and "42501" not in r.stdout
    assert count(gw, "orders") == before


def test_blocked_statements_are_not_bypassed_through_psycopg(gw: World,
                                                             writer: dict[str, Any]) -> None:
    before = count(gw, "orders")
    with gw.connect(writer) as conn:
        for sql, prepare in [("DELETE FROM orders", True), ("DELETE FROM orders", False),
                             ("delete from orders where %s", None),
                             ("UPDATE orders SET total = %s", True)]:
            params = (True,) if "%s" in sql and "where" in sql else (0,) if "%s" in sql \
                else None
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="guardrail"):
                conn.execute(sql, params, prepare=prepare)
        # The session goes on, and a statement with a WHERE runs (prepared too).
        for _ in range(3):
            conn.execute("UPDATE orders SET total = total WHERE id = %s", (1,), prepare=True)
        # In a transaction, the refusal aborts it as any error would.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("UPDATE orders SET total = 1 WHERE id = 2")
            conn.execute("DELETE FROM orders")
    assert count(gw, "orders") == before
    assert gw.target("SELECT total FROM orders WHERE id = 2")[0][0] == 20


def test_warn_sends_a_notice_and_the_statement_runs(gw: World, writer: dict[str, Any]) -> None:
    r = gw.psql(writer, "SELECT count(*) FROM orders")
    assert r.returncode == 0, r.stderr
    assert "WARNING:  Accord gateway: add a LIMIT (guardrail orders-scan)" in r.stderr
    r = gw.psql(writer, "SELECT id FROM orders ORDER BY id LIMIT 2")
    assert r.returncode == 0 and "WARNING" not in r.stderr
    notices: list[str] = []
    with gw.connect(writer) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for prepare in (False, True, True):
            rows = conn.execute("SELECT id FROM orders WHERE id < %s", (4,),
                                prepare=prepare).fetchall()
            assert sorted(rows) == [(1,), (2,), (3,)]
    assert notices == ["Accord gateway: add a LIMIT (guardrail orders-scan)"] * 3
    warned = [e for e in guardrail_events(gw) if e["action"] == "warn"]
    assert {e["protocol"] for e in warned} == {"simple", "extended"}
    assert all(e["rule"] == "orders-scan" for e in warned)


def test_rules_are_per_role(gw: World) -> None:
    """A read session cannot delete at all: the role's classes refuse it first."""
    reader = gw.token(gw.grant("erin", "read"), "erin")
    r = gw.psql(reader, "DELETE FROM orders")
    assert r.returncode != 0 and "may not run write statements" in r.stderr


# ------------------------------------------------------------------ one-statement reviews


def _filed(stderr: str) -> int:
    """The request id a review refusal names."""
    import re

    m = re.search(r"request (\d+)", stderr)
    assert m, stderr
    return int(m[1])


def test_reviewed_statement_runs_once_after_another_person_approves(
        gw: World, writer: dict[str, Any]) -> None:
    sql = "DELETE FROM payments WHERE id = 1"
    r = gw.psql(writer, sql)
    assert r.returncode != 0
    assert "this statement needs approval; filed request" in r.stderr
    assert "(guardrail payments-writes: payments change with a second pair of eyes)" in r.stderr
    assert "accord exec" in r.stderr  # how to run it once approved
    rid = _filed(r.stderr)
    assert count(gw, "payments") == 20
    req = gw.env.get("alice", f"/api/v1/requests/{rid}").json()
    assert req["kind"] == "statement" and req["status"] == "pending"
    assert req["workflow"]["name"] == "statements"  # CEL saw request.kind and .statement
    assert req["statement"]["sql"] == sql and req["grant"] is None
    assert req["statement"]["rule"] == "payments-writes"
    created = next(e for e in gw.events("request.created") if e["data"]["request_id"] == rid)
    assert created["data"]["kind"] == "statement"
    assert created["data"]["statement"]["sql"] == sql
    digest = created["data"]["statement"]["sha256"]

    # Sent again before approval: refused, naming the same request (no second one).
    r = gw.psql(writer, sql)
    assert r.returncode != 0 and f"waits for approval in request {rid}" in r.stderr
    # The requester cannot approve it; another person can.
    assert gw.env.act("alice", rid, "approve").status_code == 403
    assert gw.env.act("bob", rid, "approve").status_code == 200
    approved = [e for e in gw.events("request.approved") if e["data"]["request_id"] == rid]
    assert approved[0]["data"]["sha256"] == digest

    # A modified statement is not the approved one: refused, and filed on its own.
    r = gw.psql(writer, "DELETE FROM payments WHERE id = 1 OR id = 2")
    assert r.returncode != 0 and "filed request" in r.stderr
    assert _filed(r.stderr) != rid
    assert count(gw, "payments") == 20

    r = gw.psql(writer, sql)  # the identical text: runs, once
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "DELETE 1"
    assert count(gw, "payments") == 19
    executed = [e for e in gw.events("request.statement_executed")
                if e["data"]["request_id"] == rid]
    assert len(executed) == 1 and executed[0]["data"]["sha256"] == digest
    assert executed[0]["data"]["grant_id"] == writer["grant_id"]
    assert gw.env.get("alice", f"/api/v1/requests/{rid}").json()["status"] == "executed"
    # The request page shows the SQL, and its execution as the ledger holds it.
    with transaction(gw.env.st.sessions) as s:  # the ledger integrates what was written
        ledger.integrate_pending(s)
    page = text_of(login(gw.env, "bob").get(f"/requests/{rid}"))
    assert f"Statement to run once {sql} " in page and f"sha256 {digest}" in page
    assert "guardrail payments-writes" in page
    assert re.search(r"executed \S+ \S+ UTC in session \S+ \(ledger #\d+: "
                     r"request\.statement_executed by alice, grant #" +
                     str(writer["grant_id"]) + r"\)", page), page

    gw.target("INSERT INTO payments VALUES (1, 100) RETURNING id")
    r = gw.psql(writer, sql)  # a second run: refused and recorded; a new request filed
    assert r.returncode != 0
    assert f"request {rid} approved this statement once and it already ran" in r.stderr
    again = _filed(r.stderr.split("DETAIL")[0])
    assert again != rid
    assert count(gw, "payments") == 20
    refused = [e for e in gw.events("request.statement_refused")
               if e["data"]["request_id"] == rid]
    assert refused and refused[-1]["data"]["reason"] == "already_executed"
    review = [e for e in guardrail_events(gw) if e.get("request_id") == rid]
    assert [e["detail"] for e in review] == ["filed", "pending", "executed"]
    # The statement's run is in the ledger bound to the grant, as every statement is.
    runs = [s for s in gw.statements(writer["grant_id"]) if s["text"] == sql]
    assert len(runs) == 1 and runs[0]["tag"] == "DELETE 1"


def test_approval_lapses_after_the_window(gw: World, writer: dict[str, Any]) -> None:
    sql = "UPDATE payments SET amount = 0 WHERE id = 5"
    r = gw.psql(writer, sql)
    rid = _filed(r.stderr)
    assert gw.env.act("carol", rid, "approve").status_code == 200
    with gw.connect(writer) as conn:  # a session opened now lasts as long as the grant
        gw.env.clock.advance(minutes=11)  # the window is 10m
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="filed request") as exc:
                conn.execute(sql)
        finally:
            gw.env.clock.advance(minutes=-11)
    assert "its window to run it ended" in (exc.value.diag.message_detail or "")
    assert gw.target("SELECT amount FROM payments WHERE id = 5")[0][0] == 500
    refused = [e for e in gw.events("request.statement_refused")
               if e["data"]["request_id"] == rid]
    assert refused[-1]["data"]["reason"] == "window_over"
    assert gw.env.get("alice", f"/api/v1/requests/{rid}").json()["status"] == "expired"


def test_review_binds_parameters_and_holds_for_prepared_statements(
        gw: World, writer: dict[str, Any]) -> None:
    with gw.connect(writer) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="filed request") as exc:
            conn.execute("DELETE FROM payments WHERE id = %s", (7,), prepare=True)
        rid = _filed(str(exc.value))
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    assert gw.env.act("bob", rid, "approve").status_code == 200
    with gw.connect(writer) as conn:
        # The same text with another value is another statement.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="filed request"):
            conn.execute("DELETE FROM payments WHERE id = %s", (8,), prepare=True)
        cur = conn.execute("DELETE FROM payments WHERE id = %s", (7,), prepare=True)
        assert cur.rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="already ran"):
            conn.execute("DELETE FROM payments WHERE id = %s", (7,), prepare=True)
    assert gw.target("SELECT count(*) FROM payments WHERE id IN (7, 8)")[0][0] == 1


def test_statements_needing_review_cannot_be_prepared_or_hidden(
        gw: World, writer: dict[str, Any]) -> None:
    before = count(gw, "payments")
    for sql in ["PREPARE p AS DELETE FROM payments WHERE id = 3",
                "WITH d AS (DELETE FROM payments WHERE id = 3 RETURNING 1) SELECT * FROM d",
                "EXPLAIN ANALYZE DELETE FROM payments WHERE id = 3",
                "SELECT 1; DELETE FROM PUBLIC.\"payments\" WHERE id = 3",
                "/* hi */ insert into payments values (99, 1)"]:
        r = gw.psql(writer, sql)
        assert r.returncode != 0, sql
        assert "cannot be prepared" in r.stderr if sql.startswith("PREPARE") \
            else "filed request" in r.stderr
    assert count(gw, "payments") == before and gw.target("SELECT 1 FROM payments WHERE id = 3")


@pytest.fixture(scope="module")
def live_url(gw: World) -> Iterator[str]:
    with serve_api(gw) as url:
        yield url


def test_accord_exec_runs_the_approved_statement_once(gw: World, writer: dict[str, Any],
                                                      live_url: str) -> None:
    from typer.testing import CliRunner

    from accord.cli.main import app

    sql = "UPDATE payments SET amount = amount + 1 WHERE id = 10 RETURNING amount"
    r = gw.psql(writer, sql)
    rid = _filed(r.stderr)
    assert gw.env.act("carol", rid, "approve").status_code == 200
    env = {"ACCORD_URL": live_url, "ACCORD_TOKEN": gw.env.tokens["alice"], "COLUMNS": "200"}
    out = CliRunner().invoke(app, ["exec", str(rid)], env=env)
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ["amount", "1001", "UPDATE 1"]
    out = CliRunner().invoke(app, ["exec", str(rid)], env=env)
    assert out.exit_code == 1 and "already ran" in out.output
    assert gw.target("SELECT amount FROM payments WHERE id = 10")[0][0] == 1001

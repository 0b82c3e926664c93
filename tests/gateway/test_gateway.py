"""The gateway end to end: real PostgreSQL behind it, real psql and psycopg in front of it.

Grants come from the real API and are provisioned on the target by the real job runner;
the gateway logs in upstream as its own login for the granted role (a member of that
role's group only), which it makes with the provision DSN; the provision DSN itself
never serves a session.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from accord.cli.main import app
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.proxy import PostgresGateway as Gateway
from accord.provisioning import postgres as pgconn
from accord.spec.gateway import GatewayTLSSpec
from tests.gateway.conftest import World
from tests.gateway.rawclient import Raw, error_of

pytestmark = pytest.mark.postgres


def fails(world: World, token: dict[str, Any], sql: str) -> str:
    r = world.psql(token, sql)
    assert r.returncode != 0, r.stdout
    return r.stderr


# ------------------------------------------------------------------ who may connect


def test_no_grant_bad_token_unknown_resource_expired_token_are_refused(world: World) -> None:
    stranger = {"user": "alice", "token": "acg_not-a-real-token"}
    assert "not a valid Accord connection token" in fails(world, stranger, "select 1")
    refused = world.events("gateway.login_refused")[-1]
    assert refused["subject"] == "user:alice" and refused["data"]["code"] == "28P01"
    # Unauthenticated: never an event in alice's name; the claim is in the data.
    assert refused["actor"] == {"kind": "anonymous", "id": "unauthenticated", "via": "gateway"}
    assert refused["data"]["user"] == "alice"
    assert refused["resource"] == {"name": world.resource, "role": None}
    r = world.env.post("dave", "/api/v1/connect", json={"resource": world.resource})
    assert r.status_code == 404 and "no active grant" in r.json()["detail"]

    grant = world.grant("erin")
    token = world.token(grant, "erin")
    with pytest.raises(psycopg.OperationalError, match='resource "nope" does not exist'):
        world.connect(token, dbname="nope")
    with pytest.raises(psycopg.OperationalError, match="not a valid Accord connection token"):
        world.connect({**token, "user": "alice"})  # someone else's token

    world.env.clock.advance(minutes=6)  # past the 5m token, well within the 1h grant
    try:
        assert "connection token expired" in fails(world, token, "select 1")
    finally:
        world.env.clock.advance(minutes=-6)
    # erin's own (expired) token: she proved who she is, the refusal is hers
    assert world.events("gateway.login_refused")[-1]["actor"] == {
        "kind": "user", "id": "erin", "via": "gateway"}

    assert world.env.act("erin", grant["request_id"], "relinquish").status_code == 200
    with pytest.raises(psycopg.OperationalError, match="no active grant") as exc:
        world.connect(token)
    assert "relinquished" in str(exc.value)
    r = world.env.post("erin", f"/api/v1/grants/{grant['id']}/connect")
    assert r.status_code == 409


def test_read_grant_selects_and_refuses_writes_with_42501(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    r = world.psql(token, "select count(*) from orders", "-At")
    assert r.returncode == 0 and r.stdout.strip() == "100", r.stderr
    err = fails(world, token, "delete from orders where id = 1")
    assert "role read on" in err and "may not run write statements" in err
    err = fails(world, token, "select 1; delete from orders")
    assert "delete from orders" in err
    with world.connect(token) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("update orders set total = 0")
        assert exc.value.sqlstate == "42501"
        # the gateway's own login for the read role, which holds only that role's group
        assert conn.execute("select current_user, session_user").fetchone() == (
            (pgconn.gateway_login_name(world.resource, "read"),) * 2)
        for sql in ("set role postgres", "reset role",
                    "select set_config('role', 'postgres', false)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="may not change its role"):
                conn.execute(sql)
    assert world.target("select count(*), sum(total) from orders") == [(100, 50500)]
    violations = world.events("gateway.violation", grant["id"])
    assert [v["data"]["statement"] for v in violations] == [
        "delete from orders where id = 1", "delete from orders", "update orders set total = 0",
        "set role postgres", "reset role", "select set_config('role', 'postgres', false)"]
    assert violations[0]["data"]["missing"] == ["write"]
    assert violations[0]["resource"] == {"name": world.resource, "role": "read"}
    assert violations[0]["actor"] == {"kind": "user", "id": "alice", "via": "gateway"}
    done = world.statements(grant["id"])
    assert done[0]["text"] == "select count(*) from orders"
    assert (done[0]["tag"], done[0]["rows"], done[0]["outcome"]) == ("SELECT 1", 1, "ok")


def test_prepared_statements_through_psycopg_are_audited_with_their_text(world: World) -> None:
    grant = world.grant("erin", "write")
    token = world.token(grant, "erin")
    with world.connect(token) as conn:
        for i in (1, 2, 3):
            conn.execute("select total from orders where id = %s", (i,), prepare=True)
        conn.execute("update orders set total = total where id = %s", (4,), prepare=True)
        with conn.pipeline():
            conn.execute("select %s::int", (7,))
            conn.execute("select count(*) from orders where total > %s", (500,))
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from missing_table where id = %s", (1,))
    seen = [(s["protocol"], s["text"], s["param_count"], s["params"], s["tag"], s["outcome"])
            for s in world.statements(grant["id"])]
    select = "select total from orders where id = $1"
    assert seen == [
        ("extended", select, 1, None, "SELECT 1", "ok"),
        ("extended", select, 1, None, "SELECT 1", "ok"),
        ("extended", select, 1, None, "SELECT 1", "ok"),
        ("extended", "update orders set total = total where id = $1", 1, None, "UPDATE 1",
         "ok"),
        ("extended", "select $1::int", 1, None, "SELECT 1", "ok"),
        ("extended", "select count(*) from orders where total > $1", 1, None, "SELECT 1",
         "ok"),
        ("extended", "select * from missing_table where id = $1", 1, None, None, "error"),
    ]
    failed = world.statements(grant["id"])[-1]
    assert failed["error"][0] == "42P01"


def test_repeated_unnamed_statements_are_prepared_once_upstream(world: World) -> None:
    """psycopg without its own prepare sends Parse of the unnamed statement every time:
    from the 5th (`auto_prepare`), the gateway reuses one prepared upstream."""
    with psycopg.connect(world.target_dsn, autocommit=True) as admin:
        admin.execute("CREATE TABLE reuse_t (id int PRIMARY KEY, v int)")
        admin.execute("GRANT SELECT ON reuse_t TO PUBLIC")
        admin.execute("INSERT INTO reuse_t VALUES (1, 10)")
    grant = world.grant("erin", "read")
    token = world.token(grant, "erin")
    ours = "select name from pg_prepared_statements where name like '\\_accord\\_%%'"
    with world.connect(token, prepare_threshold=None) as conn:
        totals = [conn.execute("select total from orders where id = %s", (i,)).fetchone()
                  for i in range(1, 13)]
        assert totals == [(i * 10,) for i in range(1, 13)]
        assert len(conn.execute(ours).fetchall()) == 1
        conn.execute("deallocate all")  # ours go too: the gateway prepares afresh
        assert conn.execute(ours).fetchall() == []
        totals = [conn.execute("select total from orders where id = %s", (i,)).fetchone()
                  for i in range(1, 13)]
        assert totals == [(i * 10,) for i in range(1, 13)]
        assert len(conn.execute(ours).fetchall()) == 1
        # A table changing under a prepared statement: that execution fails as it would
        # for the client's own prepared statement, the next is prepared afresh.
        star = "select * from reuse_t where id = %s"
        for _ in range(6):
            assert conn.execute(star, (1,)).fetchone() == (1, 10)
        with psycopg.connect(world.target_dsn, autocommit=True) as admin:
            admin.execute("ALTER TABLE reuse_t ADD COLUMN w int DEFAULT 7")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(star, (1,))
        assert conn.execute(star, (1,)).fetchone() == (1, 10, 7)
    texts = [s["text"] for s in world.statements(grant["id"])]
    assert texts.count("select total from orders where id = $1") == 24
    assert texts.count("select * from reuse_t where id = $1") == 8


def test_copy_in_and_out_are_classified_and_counted(world: World) -> None:
    grant = world.grant("erin", "write")
    token = world.token(grant, "erin")
    with world.connect(token) as conn:
        with conn.cursor().copy("copy orders (id, total) from stdin") as copy:
            for i in range(1001, 1004):
                copy.write_row((i, 1))
        with conn.cursor().copy("copy (select id from orders where id > 1000) to stdout") as copy:
            assert len(list(copy.rows())) == 3
        conn.execute("delete from orders where id > 1000")
    tags = [(s["text"].split()[0], s["tag"], s["rows"]) for s in world.statements(grant["id"])]
    assert tags == [("copy", "COPY 3", 3), ("copy", "COPY 3", 3), ("delete", "DELETE 3", 3)]


# ------------------------------------------------------------------ sessions end with the grant


def test_revoking_the_grant_disconnects_live_sessions_within_2s(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conn = world.connect(token)
    with Raw(world.port) as raw:
        assert raw.login("alice", world.resource, token["token"])[-1][0] == "Z"
        assert raw.query("select 1")[-1][0] == "Z"
        assert world.env.act("bob", grant["request_id"], "revoke",
                             comment="done").status_code == 200
        start = time.monotonic()
        rest = raw.until()  # everything until the gateway closes the connection
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    fields = error_of(rest)
    assert fields is not None and fields["C"] == "57P01" and fields["S"] == "FATAL"
    assert f"grant {grant['id']}" in fields["M"] and "revoked" in fields["M"]
    with pytest.raises(psycopg.OperationalError, match="revoked"):
        conn.execute("select 1")
    conn.close()
    closed = world.events("gateway.session_closed", grant["id"])
    assert {e["data"]["reason"] for e in closed} == {"grant revoked"}


def test_expiry_ends_sessions_on_time(world: World) -> None:
    grant = world.grant("erin", "read")
    token = world.token(grant, "erin")
    with Raw(world.port) as raw:
        assert raw.login("erin", world.resource, token["token"])[-1][0] == "Z"
        world.env.clock.advance(hours=1, seconds=1)  # the grant was for 1h
        try:
            start = time.monotonic()
            fields = error_of(raw.until())
            assert time.monotonic() - start < 2.0
        finally:
            world.env.clock.advance(hours=-1, seconds=-1)
    assert fields is not None and "expired" in fields["M"] and fields["C"] == "57P01"


# ------------------------------------------------------------------ audit and usage


def cli(live_url: str, user: str, token: str, *args: str) -> Any:
    env = {"ACCORD_URL": live_url, "ACCORD_TOKEN": token, "COLUMNS": "250"}
    return CliRunner().invoke(app, list(args), env=env)


def test_every_statement_is_in_the_ledger_bound_to_its_grant(world: World, live_url: str
                                                             ) -> None:
    mine, other = world.grant("alice", "read"), world.grant("erin", "read")
    mine_token, other_token = world.token(mine), world.token(other, "erin")

    def run(token: dict[str, Any], n: int) -> None:
        with world.connect(token) as conn:
            for i in range(n):
                conn.execute(f"select {i} as n, count(*) from orders")
                conn.execute("select %s::text", (str(i),))

    threads = [threading.Thread(target=run, args=(mine_token, 40)),
               threading.Thread(target=run, args=(other_token, 25))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert world.psql(mine_token, "select 1; select 2").returncode == 0
    mine_stmts = world.statements(mine["id"])
    other_stmts = world.statements(other["id"])
    assert len(mine_stmts) == 40 * 2 + 2 and len(other_stmts) == 25 * 2
    assert [s["text"] for s in mine_stmts[:2]] == ["select 0 as n, count(*) from orders",
                                                   "select $1::text"]
    assert [s["text"] for s in mine_stmts[-2:]] == ["select 1", "select 2"]
    for event in world.events("gateway.statement", mine["id"]):
        assert event["subject"] == f"grant:{mine['id']}"
        assert event["data"]["grant_id"] == mine["id"]
        assert event["resource"] == {"name": world.resource, "role": "read"}
        assert event["actor"]["id"] == "alice"
    opened = world.events("gateway.session_opened", mine["id"])
    assert len(opened) == 2 and opened[1]["data"]["application"] == "psql"

    usage = world.env.get("alice", f"/api/v1/grants/{mine['id']}").json()["usage"]
    assert usage["statement_count"] == 82 and usage["session_count"] == 2
    assert usage["first_used_at"] <= usage["last_used_at"]
    listed = world.env.get("dave", "/api/v1/grants", params={"user": "alice"}).json()
    assert next(g for g in listed["items"] if g["id"] == mine["id"])["usage"] == usage

    alice = world.env.tokens["alice"]
    shown = cli(live_url, "alice", alice, "grant", "show", str(mine["id"]))
    assert shown.exit_code == 0, shown.output
    assert "statements  82" in shown.stdout
    listed_cli = cli(live_url, "alice", alice, "grant", "list", "--user", "alice")
    assert listed_cli.exit_code == 0 and "82 statements" in listed_cli.stdout
    as_json = cli(live_url, "alice", alice, "grant", "list", "--user", "alice", "--json")
    items = json.loads(as_json.stdout)["items"]
    assert next(g for g in items if g["id"] == mine["id"])["usage"]["statement_count"] == 82


def test_accord_connect_prints_a_psql_command_that_works(world: World, live_url: str) -> None:
    world.grant("carol", "admin")  # bob approves: carol is no engineer
    carol = world.env.tokens["carol"]
    result = cli(live_url, "carol", carol, "connect", world.resource)
    assert result.exit_code == 0, result.output
    command = result.stdout.splitlines()[0]
    assert command.startswith("PGPASSWORD='acg_") and f"dbname={world.resource}" in command
    assert "DSN:     postgresql://carol:acg_" in result.stdout
    out = subprocess.run(["bash", "-c", command + " -XAtc 'select count(*) from orders'"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "100", out.stderr
    missing = cli(live_url, "carol", carol, "connect", "nope")
    assert missing.exit_code == 1 and "no active grant on nope" in missing.stderr


# ------------------------------------------------------------------ robustness


def test_garbage_slow_and_oversized_clients_do_not_hurt_other_sessions(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    good = world.connect(token)
    assert good.execute("select 1").fetchone() == (1,)

    with Raw(world.port) as raw:  # not a startup packet at all
        raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        fields = error_of(raw.until())
        assert fields is not None and fields["C"] == "08P01"
    with Raw(world.port) as raw:  # a huge announced length
        raw.send(b"\x7f\xff\xff\xff" + b"\x00" * 64)
        assert error_of(raw.until())["C"] == "08P01"  # type: ignore[index]
    with Raw(world.port) as raw:  # says nothing: the startup timeout (2s here) closes it
        start = time.monotonic()
        fields = error_of(raw.until())
        assert fields is not None and 1.5 < time.monotonic() - start < 6
    for bad in (pq.message(b"Q", b"x" * 64)[:5] + b"\xff" * 3,  # half a message, then silence
                b"Q\x7f\x00\x00\x00",  # a 2 GB message
                pq.message(b"p", b"password again\0"),  # no such message after login
                pq.message(b"Z", b"I")):  # a backend message from a client
        with Raw(world.port) as raw:
            assert raw.login("alice", world.resource, token["token"])[-1][0] == "Z"
            raw.send(bad)
            fields = error_of(raw.until())
            assert fields is not None and fields["C"] == "08P01", bad
    assert good.execute("select count(*) from orders").fetchone() == (100,)
    with world.connect(token) as fresh:
        assert fresh.execute("select 2").fetchone() == (2,)
    good.close()
    reasons = [e["data"]["reason"] for e in world.events("gateway.session_closed", grant["id"])]
    assert reasons.count("protocol violation") == 3 and "slow client" in reasons


def test_cancel_requests_reach_the_server(world: World) -> None:
    grant = world.grant("erin", "admin")  # pg_sleep is admin
    token = world.token(grant, "erin")
    with world.connect(token) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)  # cancel() would hold the GIL
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        assert time.monotonic() - start < 10
        assert conn.execute("select 1").fetchone() == (1,)
    last = world.statements(grant["id"])[-2]
    assert last["text"] == "select pg_sleep(20)" and last["error"][0] == "57014"


def test_api_connect_needs_a_single_active_grant(world: World) -> None:
    r = world.env.post("bob", "/api/v1/connect", json={"resource": world.resource})
    assert r.status_code == 404
    world.grant("alice", "read")
    world.grant("alice", "write")
    r = world.env.post("alice", "/api/v1/connect", json={"resource": world.resource})
    assert r.status_code == 422 and "several roles" in r.json()["detail"]
    r = world.env.post("alice", "/api/v1/connect",
                       json={"resource": world.resource, "role": "write"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["role"] == "write" and body["port"] == world.port
    assert body["dsn"].startswith(f"postgresql://alice:{body['token']}@127.0.0.1:")
    expires = body["expires_at"]
    assert expires.startswith(str((world.env.clock() + timedelta(minutes=5)).date()))
    issued = world.events("gateway.token_issued")
    assert issued and all(body["token"] not in str(e) for e in issued)


# ------------------------------------------------------------------ TLS


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "gw.crt", tmp / "gw.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_is_offered_and_can_be_required(world: World, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    spec = world.env.st.policies.current.loaded.spec.gateway
    assert spec is not None
    tls_spec = spec.model_copy(update={
        "tls": GatewayTLSSpec(cert=str(cert), key=str(key), required=True),
        "spool_dir": str(tmp_path / "spool")})
    gateway = Gateway(world.env.st, tls_spec, listen=("127.0.0.1", 0))
    gateway.start_thread()
    try:
        grant = world.grant("erin", "read")
        token = world.token(grant, "erin")
        with world.connect(token, port=gateway.port, sslmode="require") as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select count(*) from orders").fetchone() == (100,)
        with pytest.raises(psycopg.OperationalError, match="requires TLS"):
            world.connect(token, port=gateway.port, sslmode="disable")
        assert gateway.audit.drain(timeout=20)
        opened = world.events("gateway.session_opened", grant["id"])
        assert [e["data"]["tls"] for e in opened] == [True]
    finally:
        gateway.stop_thread()


def test_repeated_refused_logins_raise_one_alert(world: World) -> None:
    from accord.ledger.upkeep import integrate_all
    from accord.worker.job_runner import detect_all

    # bob: nobody else's refused logins in this module's shared world count for him
    before = len(world.events("gateway.login_refused"))
    stranger = {"user": "bob", "token": "acg_guessing"}
    for _ in range(5):  # the default threshold: 5 within 5 minutes
        with pytest.raises(psycopg.OperationalError, match="not a valid"):
            world.connect(stranger)
    assert len(world.events("gateway.login_refused")) == before + 5
    st = world.env.st
    integrate_all(st.sessions)  # as the ledger worker does, before the detectors read
    detect_all(st.sessions, st.policies.current, st.now)
    r = world.env.get("dave", "/api/v1/alerts", params={"rule": "failed_gateway_logins"})
    (alert,) = [a for a in r.json()["items"] if a["data"]["claimed_user"] == "bob"]
    assert alert["severity"] == "high" and len(alert["evidence"]) == 5
    assert alert["user"] is None  # an unproven claim: not an alert about bob


# ------------------------------------------------------------------ the audit backlog


def on_loop(world: World, fn: Any) -> Any:
    """Run `fn` on the gateway's event loop (its thread) and return what it returns."""
    import asyncio

    async def call() -> Any:
        return fn()

    loop = world.gateway._loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(call(), loop).result(5)


def test_a_full_audit_backlog_ends_sessions_with_53000_until_it_drains(world: World) -> None:
    audit = world.gateway.audit
    grant = world.grant("erin")
    token = world.token(grant, "erin")
    with world.connect(token) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        limit = audit.max_backlog
        on_loop(world, lambda: setattr(audit, "max_backlog", 0))
        try:
            assert on_loop(world, audit.check) is True  # what a tick or the watcher sees
            with pytest.raises(psycopg.OperationalError) as caught:
                conn.execute("select 2")
            assert caught.value.sqlstate == "53000"
            assert "the audit ledger is behind" in str(caught.value)
        finally:
            on_loop(world, lambda: setattr(audit, "max_backlog", limit))
    # The flag is still set (no tick or watcher round since): the data path looks again
    # rather than refuse a backlog that is no longer there.
    assert audit.overloaded
    with world.connect(token) as conn:
        assert conn.execute("select 3").fetchone() == (3,)
    assert not audit.overloaded
    closed = world.events("gateway.session_closed", grant["id"])
    assert any(e["data"]["reason"] == "audit backlog full" for e in closed)


def test_an_idle_gateway_arms_no_timer(world: World) -> None:
    grant = world.grant("erin")
    token = world.token(grant, "erin")
    with world.connect(token) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        # The outcome waits (at most 10 ms) for a timer that writes it to the spool;
        # once it is in the ledger nothing waits, and nothing wakes the loop up.
        world.flush()
        assert on_loop(world, lambda: world.gateway.ticker) is None
        assert conn.execute("select 2").fetchone() == (2,)
    assert [s["text"] for s in world.statements(grant["id"])][-2:] == ["select 1", "select 2"]


def nice_of(pid: int, tid: int | None = None) -> int:
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_priority_applies_to_the_data_path_thread_not_to_the_shipper(world: World) -> None:
    import os

    base = os.getpriority(os.PRIO_PROCESS, 0)  # whatever the test runs at
    if base >= 19:
        pytest.skip("already at the lowest priority")
    want = min(base + 7, 19)  # a lower priority needs no privilege
    spec = world.gateway.spec.model_copy(update={"priority": want, "listen": "127.0.0.1:0"})
    gateway = Gateway(world.env.st, spec)
    gateway.start_thread()
    try:
        assert gateway._thread is not None and gateway._thread.native_id is not None
        assert nice_of(os.getpid(), gateway._thread.native_id) == want
        assert nice_of(os.getpid()) == base  # the rest of the process is left alone
        assert nice_of(gateway.audit._proc.pid) == base  # the shipper is background work
        grant = world.grant("erin")
        with world.connect(world.token(grant, "erin"), port=gateway.port) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        gateway.stop_thread()


def test_deactivating_a_person_in_the_directory_ends_their_live_session_within_2s(
        world: World) -> None:
    """The identity provider deactivates someone (issue 22): their grant is revoked in the
    same transaction and the gateway ends the session as for any revocation."""
    from accord.db import transaction
    from accord.directory.service import Change, UserFields, user_named
    from accord.identity import service as identity
    from accord.ledger.events import Actor

    env = world.env

    def push(edit: Any) -> None:
        with transaction(env.st.sessions) as s:
            change = Change(s, store=env.st.policies, actor=Actor.scim("okta"), now=env.clock())
            edit(change)
            change.finish()
        change.after_commit()
        with env.st.sessions() as s:
            env.st.policies.follow(s)

    push(lambda c: c.create_user(UserFields(user_name="zed")))
    with transaction(env.st.sessions) as s:
        _row, env.tokens["zed"] = identity.issue(s, policy=env.st.policies.current, user="zed",
                                                 actor=Actor.system("cli"), now=env.clock())
    grant = world.grant("zed")  # bob (leads) approves
    token = world.token(grant, "zed")
    with Raw(world.port) as raw:
        assert raw.login("zed", world.resource, token["token"])[-1][0] == "Z"

        def deactivate(c: Change) -> None:
            row = user_named(c.session, "zed")
            assert row is not None
            f = UserFields.of(row)
            f.active = False
            c.update_user(row, f)
        push(deactivate)
        start = time.monotonic()
        rest = raw.until()
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    fields = error_of(rest)
    assert fields is not None and fields["C"] == "57P01" and "revoked" in fields["M"]
    closed = world.events("gateway.session_closed", grant["id"])
    assert {e["data"]["reason"] for e in closed} == {"grant revoked"}

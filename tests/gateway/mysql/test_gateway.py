"""The MySQL gateway end to end: real MariaDB behind it; the mariadb client, PyMySQL and
mysql-connector-python (server-side prepared statements) in front of it.

Grants come from the real API and are provisioned on MariaDB by the real job runner; the
gateway logs in upstream as its own login for the granted role.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest

from accord.gateway.mysql import protocol as my
from tests.gateway.mysql.conftest import World

pytestmark = pytest.mark.mariadb


def refused(world: World, **kw: Any) -> pymysql.MySQLError:
    with pytest.raises(pymysql.MySQLError) as info:
        world.connect(**kw).close()
    return info.value


# ------------------------------------------------------------------ who may connect


def test_no_grant_and_a_bad_token_are_refused_and_recorded(world: World) -> None:
    exc = refused(world, token={"user": "bob", "token": "acg_not-a-token"})
    assert exc.args[0] == 1045 and "not a valid Accord connection token" in exc.args[1]
    grant = world.grant("alice", "read")
    token = world.token(grant)
    exc = refused(world, token={**token, "user": "bob"})  # alice's token is not bob's
    assert exc.args[0] == 1045
    refusals = world.events("gateway.login_refused")
    assert {e["data"]["user"] for e in refusals} >= {"bob"}
    assert all(e["actor"]["kind"] == "anonymous" for e in refusals)


def test_read_role_selects_and_a_delete_is_refused_and_audited(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conn = world.connect(token)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), SUM(total) FROM orders")
        assert cur.fetchone() == (100, 50500)
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute("DELETE FROM orders WHERE id = 1")
        assert info.value.args[0] == 1142 and "write" in info.value.args[1]
        cur.execute("SELECT total FROM orders WHERE id = 7")  # the session goes on
        assert cur.fetchone() == (70,)
    conn.close()
    assert world.target("SELECT COUNT(*) FROM orders") == ((100,),)
    rows = world.statements(grant["id"])
    texts = [(r["protocol"], r["text"], r["outcome"], r["rows"]) for r in rows]
    assert ("text", "SELECT COUNT(*), SUM(total) FROM orders", "ok", 1) in texts
    assert ("text", "SELECT total FROM orders WHERE id = 7", "ok", 1) in texts
    assert not any("DELETE" in r["text"] for r in rows)
    violations = world.events("gateway.violation", grant["id"])
    assert [v["data"]["statement"] for v in violations] == ["DELETE FROM orders WHERE id = 1"]
    assert violations[0]["data"]["missing"] == ["write"]
    opened = world.events("gateway.session_opened", grant["id"])
    assert opened and opened[-1]["data"]["upstream_role"].startswith("accord_gw_")


def test_the_mariadb_client_without_tls_sends_the_token_encrypted(world: World) -> None:
    grant = world.grant("erin", "read")
    token = world.token(grant, "erin")
    r = world.cli(token, "SELECT id, total FROM orders WHERE id IN (1, 2); SELECT 3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["id\ttotal", "1\t10", "2\t20", "3", "3"]
    r = world.cli(token, "UPDATE orders SET total = 0")
    assert r.returncode == 1 and "ERROR 1142" in r.stderr, r.stderr
    texts = [s["text"] for s in world.statements(grant["id"])]
    assert "SELECT id, total FROM orders WHERE id IN (1, 2)" in texts and "SELECT 3" in texts


def test_write_role_writes_and_multi_statements_are_checked_one_by_one(world: World) -> None:
    grant = world.grant("erin", "write")
    token = world.token(grant, "erin")
    conn = world.connect(token, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    with conn.cursor() as cur:
        cur.execute("UPDATE orders SET total = total + 1 WHERE id = 100")
        assert cur.rowcount == 1
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute("SELECT 1; DROP TABLE orders")
        assert info.value.args[0] == 1142 and "ddl" in info.value.args[1]
        cur.execute("SELECT 1; SELECT total FROM orders WHERE id = 100")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset() and cur.fetchall() == ((1001,),)
        cur.execute("UPDATE orders SET total = total - 1 WHERE id = 100")
    conn.close()
    rows = world.statements(grant["id"])
    assert [(r["text"], r["tag"], r["rows"]) for r in rows][-3:] == [
        ("SELECT 1", "ROWS", 1), ("SELECT total FROM orders WHERE id = 100", "ROWS", 1),
        ("UPDATE orders SET total = total - 1 WHERE id = 100", "OK", 1)]


def test_server_side_prepared_statements_are_audited_with_their_text(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conn = mysql.connector.connect(host="127.0.0.1", port=world.port, user="alice",
                                   password=token["token"], database=world.resource,
                                   ssl_disabled=True, use_pure=True, connection_timeout=5)
    try:
        cur = conn.cursor(prepared=True)
        for i in (3, 4):
            cur.execute("SELECT total FROM orders WHERE id = %s", (i,))
            assert cur.fetchall() == [(i * 10,)]
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute("DELETE FROM orders WHERE id = %s", (3,))
        assert info.value.errno == 1142
        cur.close()
    finally:
        conn.close()
    rows = [r for r in world.statements(grant["id"]) if r["protocol"] == "binary"]
    assert [(r["text"], r["param_count"], r["params"], r["outcome"]) for r in rows] == [
        ("SELECT total FROM orders WHERE id = ?", 1, None, "ok")] * 2
    violations = world.events("gateway.violation", grant["id"])
    assert violations[-1]["data"]["statement"] == "DELETE FROM orders WHERE id = ?"
    assert violations[-1]["data"]["protocol"] == "binary"


def test_init_db_change_user_and_load_data_local_are_refused(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conn = world.connect(token)
    conn.select_db(world.resource)  # COM_INIT_DB of its own database (the resource name)
    with pytest.raises(pymysql.MySQLError) as info:
        conn.select_db("mysql")
    assert info.value.args[0] == 1044
    with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as info:
        cur.execute("USE mysql")
    assert info.value.args[0] == 1044
    with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as info:
        cur.execute("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE orders")
    assert info.value.args[0] == 1148
    conn.ping()
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (world.database,)
    conn.close()
    mc = mysql.connector.connect(host="127.0.0.1", port=world.port, user="alice",
                                 password=token["token"], database=world.resource,
                                 ssl_disabled=True, use_pure=True, connection_timeout=5)
    try:
        with pytest.raises(mysql.connector.Error) as err:
            mc.cmd_change_user(username="root", password="")
        assert "COM_CHANGE_USER" in str(err.value)
    finally:
        mc.close()


# ------------------------------------------------------------------ sessions end with the grant


def _until_closed(conn: pymysql.connections.Connection[Any]) -> bytes:
    sock = conn._sock
    assert sock is not None
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_load_data_local_infile_when_the_role_allows_it(world: World, tmp_path: Path) -> None:
    """`gateway.allow: {write: [local_infile]}`: the mariadb client sends a file of its
    machine through the gateway; the statement's row has the file's size and sha256."""
    data = b"".join(f"{i}\t{i * 7}\n".encode() for i in range(5001, 25001))
    path = tmp_path / "orders.tsv"
    path.write_bytes(data)
    load = f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE orders"
    grant = world.grant("erin", "write")
    token = world.token(grant, "erin")
    try:
        r = world.cli(token, f"{load}; SELECT COUNT(*) FROM orders WHERE id > 5000",
                      "--local-infile=1")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["COUNT(*)", "20000"]
        assert world.target("SELECT SUM(total) FROM orders WHERE id > 5000") == (
            (sum(i * 7 for i in range(5001, 25001)),),)
        rows = [x for x in world.statements(grant["id"]) if x["text"] == load]
        assert [(x["outcome"], x["rows"], x["infile"]) for x in rows] == [
            ("ok", 20000, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})]
        # A role without it: refused before the server hears of it, and audited.
        other = world.grant("alice", "read")
        r = world.cli(world.token(other), load, "--local-infile=1")
        assert r.returncode != 0 and "1148" in r.stderr, r.stderr
        refused = world.events("gateway.violation", other["id"])
        assert refused[-1]["data"]["statement"] == load
    finally:
        world.target("DELETE FROM orders WHERE id > 5000")


def test_revoking_the_grant_kills_the_session_within_2s(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conn = world.connect(token)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert world.env.act("bob", grant["request_id"], "revoke",
                         comment="done").status_code == 200
    start = time.monotonic()
    rest = _until_closed(conn)
    assert time.monotonic() - start < 2.0
    err = my.parse_err(rest[4:])
    assert err.errno == 1927 and f"grant {grant['id']}" in err.message and \
        "revoked" in err.message
    closed = world.events("gateway.session_closed", grant["id"])
    assert {e["data"]["reason"] for e in closed} == {"grant revoked"}


def test_expiry_kills_a_running_statement_within_2s(world: World) -> None:
    grant = world.grant("carol", "admin")
    token = world.token(grant, "carol")
    conn = world.connect(token, read_timeout=10)
    world.env.clock.advance(hours=1, seconds=1)
    try:
        start = time.monotonic()
        with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as info:
            cur.execute("SELECT SLEEP(8)")
        assert time.monotonic() - start < 2.0
    finally:
        world.env.clock.advance(hours=-1, seconds=-1)
    assert info.value.args[0] == 1927 and "expired" in info.value.args[1]
    rows = world.statements(grant["id"])
    assert rows[-1]["text"] == "SELECT SLEEP(8)"
    # the upstream session is gone, not left sleeping
    assert world.target("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                        "WHERE INFO = 'SELECT SLEEP(8)'") == ((0,),)


# ------------------------------------------------------------------ robustness


def test_garbage_closes_that_connection_and_others_keep_working(world: World) -> None:
    grant = world.grant("alice", "read")
    token = world.token(grant)
    conn = world.connect(token)
    for junk in (b"\xff" * 64, b"\x05\x00\x00\x01garbage", b"\xff\xff\xff\x01" + b"x" * 100):
        with socket.create_connection(("127.0.0.1", world.port), timeout=5) as raw:
            raw.recv(4096)  # the greeting
            raw.sendall(junk)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(4096):
                pass
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM orders")
        assert cur.fetchone() == (100,)
    conn.close()


# ------------------------------------------------------------------ TLS, accord connect


def test_tls_is_offered_and_can_be_required(world: World, tmp_path: Path) -> None:
    from accord.gateway.protocols import build
    from accord.spec.gateway import GatewayMySQLSpec, GatewayTLSSpec
    from tests.gateway.test_gateway import _self_signed

    cert, key = _self_signed(tmp_path)
    spec = world.env.st.policies.current.loaded.spec.gateway
    assert spec is not None
    tls_spec = spec.model_copy(update={
        "tls": GatewayTLSSpec(cert=str(cert), key=str(key), required=True),
        "mysql": GatewayMySQLSpec(listen="127.0.0.1:0"), "spool_dir": str(tmp_path / "spool")})
    gateway = build(world.env.st, tls_spec, listen=("127.0.0.1", 0))
    gateway.start_thread()
    port = gateway.fronts[0].port
    try:
        grant = world.grant("erin", "read")
        token = world.token(grant, "erin")
        conn = world.connect(token, port=port, ssl={"check_hostname": False,
                                                    "verify_mode": ssl.CERT_NONE})
        with conn.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")  # the upstream's; the client's is ours
            cur.execute("SELECT COUNT(*) FROM orders")
            assert cur.fetchone() == (100,)
        conn.close()
        exc = refused(world, token=token, port=port, ssl_disabled=True)
        assert exc.args[0] == 1045 and "requires TLS" in exc.args[1]
        # the mariadb client: --ssl (no verification of the test's self-signed certificate)
        r = subprocess.run(
            ["mariadb", "--no-defaults", "--host=127.0.0.1", f"--port={port}", "--user=erin",
             "--ssl", "--skip-ssl-verify-server-cert", "--batch", "-e",
             "SELECT total FROM orders WHERE id = 9", world.resource],
            env={**os.environ, "MYSQL_PWD": token["token"]}, capture_output=True, text=True,
            timeout=30, check=False)
        assert r.returncode == 0 and r.stdout.split() == ["total", "90"], r.stderr
        assert gateway.audit.drain(timeout=20)
        opened = world.events("gateway.session_opened", grant["id"])
        assert [e["data"]["tls"] for e in opened][-2:] == [True, True]
    finally:
        gateway.stop_thread()


def test_accord_connect_prints_a_ready_mariadb_command(world: World) -> None:
    grant = world.grant("alice", "read")
    r = world.env.post("alice", "/api/v1/connect", json={"resource": world.resource})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["protocol"] == "mysql" and out["psql"] == ""
    assert out["command"].startswith(f"MYSQL_PWD='{out['token']}' mariadb --host=127.0.0.1 "
                                     f"--port={world.port} --user=alice --skip-ssl ")
    assert out["dsn"] == (f"mysql://alice:{out['token']}@127.0.0.1:{world.port}/"
                          f"{world.resource}?ssl-mode=DISABLED")
    command = out["command"] + " --batch -e 'SELECT total FROM orders WHERE id = 5'"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0 and done.stdout.split() == ["total", "50"], done.stderr
    assert grant["id"] == out["grant_id"]


def test_the_upstream_client_logs_in_with_caching_sha2_password(world: World) -> None:
    """The gateway's upstream side against a caching_sha2_password server (its own front):
    a scramble, then full authentication over plain TCP with the server's RSA key. Its
    session setup then pins sql_mode, which the front refuses as `pinned` (a computed
    mode): that refusal comes after a successful login."""
    import asyncio

    from accord.gateway.mysql import upstream

    grant = world.grant("alice", "read")
    token = world.token(grant)
    target = upstream.Target(host="127.0.0.1", port=world.port, user="alice",
                             password=token["token"], database=world.resource)
    side = upstream.ClientSide(my.CLIENT_PROTOCOL_41 | my.CLIENT_DEPRECATE_EOF, 45)
    with pytest.raises(upstream.UpstreamError) as info:
        asyncio.run(upstream.connect(target, side))
    assert "(1142)" in info.value.message and "pinned" in info.value.message
    bad = upstream.Target(host="127.0.0.1", port=world.port, user="alice",
                          password="acg_wrong", database=world.resource)
    with pytest.raises(upstream.UpstreamError) as info:
        asyncio.run(upstream.connect(bad, side))
    assert info.value.server_code == 1045

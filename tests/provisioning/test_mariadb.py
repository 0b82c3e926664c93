"""The MariaDB connector against a real MariaDB (127.0.0.1:3306, root, no password).

Each run works in its own database `accord_prov_<hex>` with resource, user and account
names carrying the same <hex>, and drops all of them at the end. Set
ACCORD_REQUIRE_MARIADB=1 to turn "MariaDB unreachable" from a skip into a failure;
ACCORD_TEST_MARIADB overrides the admin DSN.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest
from pymysql.connections import Connection
from pymysql.cursors import Cursor

from accord.provisioning.base import ConnectorError, GrantResult, GrantSpec
from accord.provisioning.mariadb import (
    MAX_LOGIN,
    MariaDBConnector,
    admin_dsn,
    login_for,
    native_password_hash,
    personal_role,
    role_name,
)
from accord.spec.resources import MariaDBTarget, ResourceSpec, RolePrivileges

ADMIN_DSN = os.environ.get("ACCORD_TEST_MARIADB", "mysql://root@127.0.0.1:3306/")
REQUIRE = os.environ.get("ACCORD_REQUIRE_MARIADB") == "1"
_ADMIN = urlsplit(ADMIN_DSN)
HOST, PORT = _ADMIN.hostname or "127.0.0.1", _ADMIN.port or 3306
KILLED = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


def _admin_connect() -> Connection[Cursor]:
    return pymysql.connect(host=HOST, port=PORT, user=unquote(_ADMIN.username or "root"),
                           password=unquote(_ADMIN.password or ""), autocommit=True,
                           connect_timeout=3)


def _close(conn: Connection[Cursor]) -> None:
    if conn.open:
        conn.close()


@dataclass
class World:
    tag: str
    db: str
    admin: Connection[Cursor]

    def resource(self, name: str, db: str | None = None) -> tuple[ResourceSpec, MariaDBTarget]:
        db = db or self.db
        target = MariaDBTarget(type="mariadb", host=HOST, port=PORT, database=db, roles={
            "read": RolePrivileges(privileges=[f"SELECT ON `{db}`.*"]),
            "write": RolePrivileges(privileges=[f"SELECT ON `{db}`.*",
                                                f"INSERT, UPDATE, DELETE ON `{db}`.*"]),
        })
        spec = ResourceSpec(name=f"{name}-{self.tag}", roles=["read", "write", "admin"],
                            provision=target)
        return spec, target

    def connector(self, name: str = "shop", db: str | None = None) -> MariaDBConnector:
        spec, target = self.resource(name, db)
        return MariaDBConnector(spec, target, ADMIN_DSN)

    def user(self, name: str) -> str:
        return f"{name}.{self.tag}"

    def sql(self, statement: str, args: Any = None) -> tuple[tuple[Any, ...], ...]:
        with self.admin.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    try:
        admin = _admin_connect()
    except pymysql.MySQLError as exc:
        if REQUIRE:
            pytest.fail(f"MariaDB is required (ACCORD_REQUIRE_MARIADB=1) but {HOST}:{PORT} "
                        f"is unreachable: {exc}")
        pytest.skip("MariaDB is not reachable")
    tag = uuid.uuid4().hex[:8]
    w = World(tag=tag, db=f"accord_prov_{tag}", admin=admin)
    for db in (w.db, w.db + "_b"):
        w.sql(f"CREATE DATABASE `{db}`")
        w.sql(f"CREATE TABLE `{db}`.orders (id int, total int)")
        w.sql(f"INSERT INTO `{db}`.orders VALUES (1, 100)")
    try:
        yield w
    finally:
        for user, host in w.sql("SELECT User, Host FROM mysql.user WHERE User LIKE %s",
                                (f"%{tag}%",)):
            w.sql("DROP USER %s@%s" if host else "DROP ROLE %s", (user, host) if host else (user,))
        for db in (w.db, w.db + "_b"):
            w.sql(f"DROP DATABASE IF EXISTS `{db}`")
        admin.close()


def spec(connector: MariaDBConnector, user: str, role: str = "read",
         grant_id: int = 1) -> GrantSpec:
    return GrantSpec(grant_id=grant_id, user=user, resource=connector.resource.name, role=role,
                     ends_at=datetime.now(UTC) + timedelta(hours=1),
                     idempotency_key=f"grant-{grant_id}-x")


def login(result: GrantResult, db: str) -> Connection[Cursor]:
    assert result.secret
    return pymysql.connect(host=HOST, port=PORT, user=result.login, password=result.secret,
                           database=db, autocommit=True, connect_timeout=3)


def query(conn: Connection[Cursor], statement: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall()


# ------------------------------------------------------------------ real MariaDB


def test_grant_read_connect_then_revoke_kills_and_locks(world: World) -> None:
    conn = world.connector()
    user = world.user("alice")
    try:
        result = conn.grant(spec(conn, user))
        assert result.login == login_for(user)
        assert result.connection == {"host": HOST, "port": PORT, "database": world.db,
                                     "user": result.login}
        assert result.secret and len(result.secret) >= 32
        assert result.secret not in repr(result)

        session = login(result, world.db)  # a fresh session: the default role is in effect
        assert query(session, "SELECT id, total FROM orders") == ((1, 100),)
        with pytest.raises(pymysql.err.OperationalError) as denied:
            query(session, "DELETE FROM orders")
        assert denied.value.args[0] == 1142
        assert (user, "read") in conn.granted()

        conn.revoke(spec(conn, user))
        with pytest.raises(KILLED):
            query(session, "SELECT 1")  # the open session was killed
        _close(session)
        with pytest.raises(pymysql.err.OperationalError):
            _close(login(result, world.db))  # and the account is locked
        assert (user, "read") not in conn.granted()
    finally:
        conn.close()


def test_grant_and_revoke_are_idempotent(world: World) -> None:
    conn = world.connector()
    user = world.user("bob")
    try:
        first = conn.grant(spec(conn, user, "write"))
        again = conn.grant(spec(conn, user, "write"))  # a retried job: a fresh password
        assert again.login == first.login and again.secret != first.secret
        with pytest.raises(pymysql.err.OperationalError):
            _close(login(first, world.db))
        session = login(again, world.db)
        query(session, "UPDATE orders SET total = total WHERE id = 1")
        _close(session)
        assert [p for p in conn.granted() if p[0] == user] == [(user, "write")]

        conn.revoke(spec(conn, user, "write"))
        conn.revoke(spec(conn, user, "write"))
        conn.revoke(spec(conn, world.user("never"), "read"))  # nothing there at all
        assert all(p[0] != user for p in conn.granted())

        # granting again after a revoke unlocks the account
        back = conn.grant(spec(conn, user, "read"))
        session = login(back, world.db)
        assert query(session, "SELECT COUNT(*) FROM orders") == ((1,),)
        _close(session)
        conn.revoke(spec(conn, user, "read"))
    finally:
        conn.close()


def test_roles_on_two_resources_are_both_effective(world: World) -> None:
    shop, crm = world.connector("shop"), world.connector("crm", db=world.db + "_b")
    user = world.user("carol")
    try:
        shop.grant(spec(shop, user))
        result = crm.grant(spec(crm, user))  # the latest password serves both
        session = login(result, world.db)
        query(session, f"SELECT * FROM `{world.db}`.orders")
        query(session, f"SELECT * FROM `{world.db}_b`.orders")
        _close(session)

        shop.revoke(spec(shop, user))  # the login stays usable for crm
        session = login(result, world.db + "_b")
        query(session, f"SELECT * FROM `{world.db}_b`.orders")
        with pytest.raises(pymysql.err.OperationalError) as denied:
            query(session, f"SELECT * FROM `{world.db}`.orders")
        assert denied.value.args[0] == 1142
        _close(session)
        assert (user, "read") not in shop.granted()
        assert (user, "read") in crm.granted()
        crm.revoke(spec(crm, user))
        assert (user, "read") not in crm.granted()
    finally:
        shop.close()
        crm.close()


def test_hand_granted_role_shows_up_and_enforcement_removes_it(world: World) -> None:
    conn = world.connector()
    try:
        conn.grant(spec(conn, world.user("dave")))  # makes sure the role exists
        role = role_name(conn.resource.name, "read")
        outsider = f"bob{world.tag}"
        world.sql("CREATE USER %s@'%%' IDENTIFIED BY 'pw-by-hand'", (outsider,))
        world.sql("GRANT %s TO %s@'%%'", (role, outsider))
        world.sql("CREATE ROLE %s", (f"team{world.tag}",))
        world.sql("GRANT %s TO %s", (role, f"team{world.tag}"))

        found = conn.granted()
        assert (world.user("dave"), "read") in found
        assert (outsider, "read") in found  # an unmappable member: its raw login
        assert (f"team{world.tag}", "read") in found
        assert not any(u == "root" for u, _ in found)  # the creator's admin option

        conn.revoke(spec(conn, outsider))  # what reconcile(enforce) does with drift
        conn.revoke(spec(conn, f"team{world.tag}"))
        left = conn.granted()
        assert (outsider, "read") not in left and (f"team{world.tag}", "read") not in left
        assert (world.user("dave"), "read") in left
        conn.revoke(spec(conn, world.user("dave")))
    finally:
        conn.close()


def test_unknown_role_and_bad_spec_are_permanent(world: World) -> None:
    conn = world.connector()
    try:
        with pytest.raises(ConnectorError) as exc:
            conn.grant(spec(conn, world.user("erin"), role="admin"))  # offered, not provisioned
        assert exc.value.retryable is False
        other = GrantSpec(grant_id=1, user="erin", resource="elsewhere", role="read",
                          ends_at=datetime.now(UTC), idempotency_key="k")
        with pytest.raises(ConnectorError) as exc:
            conn.grant(other)
        assert exc.value.retryable is False
    finally:
        conn.close()


def test_bad_privilege_text_is_permanent(world: World) -> None:
    spec_, target = world.resource("broken")
    target = target.model_copy(update={"roles": {"read": RolePrivileges(
        privileges=["SELEKT ON nothing.*"])}})
    conn = MariaDBConnector(spec_, target, ADMIN_DSN)
    try:
        with pytest.raises(ConnectorError) as exc:
            conn.grant(spec(conn, world.user("frank")))
        assert exc.value.retryable is False
        assert "SELEKT" in str(exc.value)  # operator text: useful in the message
    finally:
        conn.close()


def test_wrong_admin_password_is_permanent_and_not_echoed(world: World) -> None:
    spec_, target = world.resource("shop")
    dsn = f"mysql://root:Wr0ngPassw0rd@{HOST}:{PORT}/"
    conn = MariaDBConnector(spec_, target, dsn)
    with pytest.raises(ConnectorError) as exc:
        conn.granted()
    assert exc.value.retryable is False
    assert "Wr0ngPassw0rd" not in str(exc.value) and dsn not in str(exc.value)
    conn.close()


def test_health(world: World) -> None:
    conn = world.connector()
    assert conn.health().ok
    conn.close()
    assert conn.health().ok  # reconnects after close
    conn.close()


# ------------------------------------------------------------------ no MariaDB needed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_server_is_retryable_without_the_dsn() -> None:
    target = MariaDBTarget(type="mariadb", roles={"read": RolePrivileges(privileges=[])})
    resource = ResourceSpec(name="gone", roles=["read"], provision=target)
    dsn = f"mysql://root:S3cretPw@127.0.0.1:{_closed_port()}/"
    conn = MariaDBConnector(resource, target, dsn)
    g = GrantSpec(grant_id=1, user="alice", resource="gone", role="read",
                  ends_at=datetime.now(UTC), idempotency_key="k")
    for call in (lambda: conn.grant(g), lambda: conn.revoke(g), conn.granted):
        with pytest.raises(ConnectorError) as exc:
            call()
        assert exc.value.retryable is True
        assert "S3cretPw" not in str(exc.value) and dsn not in str(exc.value)
    health = conn.health()
    assert not health.ok and "S3cretPw" not in health.detail
    assert "S3cretPw" not in repr(conn)
    conn.close()


def test_invalid_dsn_is_permanent_and_not_echoed() -> None:
    target = MariaDBTarget(type="mariadb")
    resource = ResourceSpec(name="x", roles=["read"], provision=target)
    for dsn in ("postgresql://u:pw9@h/db", "mysql://u:pw9@h:notaport/", "mysql://u:pw9@h/?x=1"):
        with pytest.raises(ConnectorError) as exc:
            MariaDBConnector(resource, target, dsn)
        assert exc.value.retryable is False and "pw9" not in str(exc.value)


def test_admin_dsn_from_env_or_file(tmp_path: Path) -> None:
    dsn = "mysql://root:pw@127.0.0.1:3306/"
    file = tmp_path / "dsn"
    file.write_text(dsn + "\n")
    assert admin_dsn(MariaDBTarget(type="mariadb", dsn_env="DSN"), {"DSN": dsn}) == dsn
    assert admin_dsn(MariaDBTarget(type="mariadb", dsn_file=str(file)), {}) == dsn
    # an empty env var falls back to the file
    both = MariaDBTarget(type="mariadb", dsn_env="DSN", dsn_file=str(file))
    assert admin_dsn(both, {"DSN": ""}) == dsn

    for target, env in [
        (MariaDBTarget(type="mariadb"), {"DSN": dsn}),
        (MariaDBTarget(type="mariadb", dsn_env="DSN"), {}),
        (MariaDBTarget(type="mariadb", dsn_file=str(tmp_path / "missing")), {}),
    ]:
        with pytest.raises(ConnectorError) as exc:
            admin_dsn(target, env)
        assert exc.value.retryable is False and "pw" not in str(exc.value)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConnectorError, match="empty"):
        admin_dsn(MariaDBTarget(type="mariadb", dsn_file=str(empty)), {})


def test_names_are_deterministic_bounded_and_distinct() -> None:
    assert login_for("alice") == "accord_u_alice"
    assert login_for("alice.smith-jr").startswith("accord_u_alice_smith_jr_")
    # one-to-one: names that sanitize alike still get distinct accounts
    assert len({login_for(u) for u in ("mal.x", "mal-x", "mal_x")}) == 3
    long = "a-very-long-user-name.with.many.parts"
    assert login_for(long) == login_for(long)
    assert len(login_for(long)) == MAX_LOGIN
    assert login_for(long) != login_for(long + "x")  # truncated, but the hash differs
    assert personal_role("alice.smith") == "accord_p_alice.smith"  # the exact Accord name

    assert role_name("shop.db", "read") != role_name("shop_db", "read")
    assert role_name("a_b", "c") != role_name("a", "b_c")
    assert role_name("shop-db", "read").startswith("accord_r_shop_db_read_")
    assert len(role_name("r" * 63, "x" * 63)) <= 80
    # the verifier MariaDB's PASSWORD('abc') computes
    assert native_password_hash("abc") == "*0D3CED9BEC10A777AEC23CCC353A8C08A633045E"

"""The PostgreSQL connector against a real server: a fresh database and its own roles.

Role names are cluster-wide, so every resource and user name here carries this run's
random suffix; the module drops its database and every role carrying the suffix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from accord.provisioning.base import Connector, ConnectorError, GrantSpec
from accord.provisioning.postgres import (
    PostgresConnector,
    admin_dsn,
    group_name,
    login_name,
    user_of_login,
)
from accord.spec.base import NAME
from accord.spec.resources import PostgresTarget, ResourceSpec, RolePrivileges
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG

SUFFIX = uuid.uuid4().hex[:8]
PRIVILEGES = {
    "read": RolePrivileges(privileges=["SELECT ON ALL TABLES IN SCHEMA public"]),
    "write": RolePrivileges(privileges=["SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public"]),
}


@dataclass(frozen=True)
class Pg:
    database: str
    dsn: str


def _reachable() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module")
def pg() -> Iterator[Pg]:
    """A database of this module's own with `orders(id, total)` holding one row."""
    if not _reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (ACCORD_REQUIRE_POSTGRES=1) but "
                        f"{PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable")
    name = f"accord_prov_{SUFFIX}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int, total int)")
        conn.execute("INSERT INTO orders VALUES (1, 100)")
    try:
        yield Pg(database=name, dsn=dsn)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'accord\\_%%' "
                "AND strpos(rolname, %s) > 0", (SUFFIX,)).fetchall()
            for (role,) in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def resource(name: str = "res") -> ResourceSpec:
    return ResourceSpec(name=f"{name}{SUFFIX}", kind="postgres", roles=["read", "write"])


def connector(pg: Pg, res: ResourceSpec | None = None) -> PostgresConnector:
    res = res or resource()
    target = PostgresTarget(type="postgres", host="127.0.0.1", port=5432,
                            database=pg.database, roles=PRIVILEGES)
    return PostgresConnector(res, target, pg.dsn)


@pytest.fixture
def conn(pg: Pg) -> Iterator[PostgresConnector]:
    c = connector(pg)
    yield c
    c.close()


def spec(user: str, role: str = "read", hours: float = 1, res: str | None = None,
         grant_id: int = 1) -> GrantSpec:
    ends = (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=250000)
    return GrantSpec(grant_id=grant_id, user=user, resource=res or f"res{SUFFIX}", role=role,
                     ends_at=ends, idempotency_key=f"grant-{grant_id}-activate")


def user(name: str) -> str:
    return f"{name}{SUFFIX}"


def as_grantee(result: Any, pg: Pg) -> psycopg.Connection[Any]:
    c = result.connection
    return psycopg.connect(host=c["host"], port=c["port"], dbname=c["database"], user=c["user"],
                           password=result.secret, autocommit=True, connect_timeout=3)


def admin_query(pg: Pg, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        return c.execute(query, params).fetchall()


# ---------------------------------------------------------------- no server needed


def test_login_names_are_deterministic_injective_and_fit() -> None:
    assert login_name("alice", "orders").startswith("accord_u_alice_")
    assert login_name("alice", "orders") != login_name("alice", "billing")  # per resource
    names = {login_name(u, "r") for u in ("a.b", "a-b", "a_b", "ab")}
    assert len(names) == 4
    assert login_name("a.b", "r") == login_name("a.b", "r")
    assert login_name("a.b", "r").startswith("accord_u_a_b_")
    long = "x" * 63
    assert NAME.match(long)
    assert len(login_name(long, "r").encode()) <= 63
    assert login_name(long, "r") != login_name("x" * 62, "r")
    for u in ("alice", "a.b", "first.last-2", long):
        assert user_of_login(login_name(u, "r"), "r", f"accord:user={u}") == u


def test_group_names_never_collide_across_resources_or_with_logins() -> None:
    assert group_name("orders", "read") == "accord_orders_read"
    assert group_name("orders-db", "read") != group_name("orders", "db_read")
    assert group_name("orders_db", "read") != group_name("orders-db", "read")
    assert not group_name("u", "read").startswith("accord_u_")
    assert group_name("u", "read") != login_name("read", "u")
    assert len(group_name("r" * 63, "w" * 63).encode()) <= 63


def test_a_lying_comment_does_not_map_a_login_to_another_user() -> None:
    mallory = login_name("mallory", "r")
    assert user_of_login(mallory, "r", "accord:user=alice") == "mallory"
    assert user_of_login(login_name("a.b", "r"), "r", "accord:user=alice") is None
    assert user_of_login("accord_u_x_y", "r") is None


def test_admin_dsn_from_env_or_file(tmp_path: Path) -> None:
    dsn = "postgresql://admin:hunter2@db:5432/app"
    target = PostgresTarget(type="postgres", dsn_env="ORDERS_DSN")
    assert admin_dsn(target, {"ORDERS_DSN": dsn}) == dsn
    path = tmp_path / "dsn"
    path.write_text(dsn + "\n", encoding="utf-8")
    target = PostgresTarget(type="postgres", dsn_file=str(path))
    assert admin_dsn(target, {}) == dsn


def test_admin_dsn_errors_are_clear_and_never_show_the_dsn(tmp_path: Path) -> None:
    secret = "hunter2"
    env = {"OTHER": f"postgresql://admin:{secret}@db/app"}

    with pytest.raises(ConnectorError) as exc:
        admin_dsn(PostgresTarget(type="postgres"), env)
    assert not exc.value.retryable
    assert "dsn_env" in str(exc.value) and "dsn_file" in str(exc.value)

    with pytest.raises(ConnectorError) as exc:
        admin_dsn(PostgresTarget(type="postgres", dsn_env="ORDERS_DSN",
                                 dsn_file=str(tmp_path / "missing")), env)
    assert not exc.value.retryable
    assert "ORDERS_DSN" in str(exc.value) and "missing" in str(exc.value)

    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConnectorError, match="empty"):
        admin_dsn(PostgresTarget(type="postgres", dsn_file=str(empty)), env)

    for bad in (f"host=db password={secret} nonsense", f"postgresql://a:{secret}@db/x?bogus=1"):
        with pytest.raises(ConnectorError) as exc:
            admin_dsn(PostgresTarget(type="postgres", dsn_env="BAD"), {"BAD": bad})
        assert not exc.value.retryable
        assert exc.value.__context__ is None
        assert "BAD" in str(exc.value)
        assert secret not in str(exc.value) and "nonsense" not in str(exc.value)


def test_an_unreachable_target_is_retryable_and_does_not_leak_the_dsn() -> None:
    dsn = "postgresql://postgres:hunter2@127.0.0.1:1/nowhere"
    res = resource("down")
    c = PostgresConnector(res, PostgresTarget(type="postgres", roles=PRIVILEGES), dsn)
    assert isinstance(c, PostgresConnector)
    checked: Connector = c  # the Protocol is satisfied
    calls = [lambda: checked.grant(spec("alice", res=res.name)),
             lambda: checked.revoke(spec("alice", res=res.name)),
             checked.granted]
    for call in calls:
        with pytest.raises(ConnectorError) as exc:
            call()
        assert exc.value.retryable
        assert res.name in str(exc.value)
        assert "hunter2" not in str(exc.value) and dsn not in str(exc.value)
        assert exc.value.__cause__ is None and exc.value.__context__ is None
    health = c.health()
    assert not health.ok
    assert "hunter2" not in health.detail
    assert "hunter2" not in repr(c)
    c.close()


def test_an_invalid_dsn_is_not_retryable_and_not_shown() -> None:
    res = resource("bad")
    c = PostgresConnector(res, PostgresTarget(type="postgres", roles=PRIVILEGES),
                          "host=x password=hunter2 nonsense")
    with pytest.raises(ConnectorError) as exc:
        c.granted()
    assert not exc.value.retryable
    assert exc.value.__cause__ is None and exc.value.__context__ is None
    assert "hunter2" not in str(exc.value) and "nonsense" not in str(exc.value)


def test_an_unknown_role_or_a_foreign_resource_is_refused() -> None:
    c = PostgresConnector(resource(), PostgresTarget(type="postgres", roles=PRIVILEGES),
                          "postgresql://postgres@127.0.0.1:1/x")
    with pytest.raises(ConnectorError) as exc:
        c.grant(spec("alice", role="admin"))
    assert not exc.value.retryable and "admin" in str(exc.value)
    with pytest.raises(ConnectorError) as exc:
        c.grant(spec("alice", res="elsewhere"))
    assert not exc.value.retryable


# ------------------------------------------------------------------- real server


@pytest.mark.postgres
def test_read_grant_connects_and_selects_but_cannot_delete(
        pg: Pg, conn: PostgresConnector) -> None:
    result = conn.grant(spec(user("reader")))
    assert result.login == login_name(f"reader{SUFFIX}", f"res{SUFFIX}")
    assert result.connection == {"host": "127.0.0.1", "port": 5432, "database": pg.database,
                                 "user": result.login}
    assert result.secret and len(result.secret) >= 32
    assert result.secret not in repr(result)
    with as_grantee(result, pg) as c:
        assert c.execute("SELECT * FROM orders").fetchall() == [(1, 100)]
        assert c.execute("SELECT current_user").fetchone() == (result.login,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM orders")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("INSERT INTO orders VALUES (2, 1)")
    group = group_name(f"res{SUFFIX}", "read")
    rows = admin_query(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", group)
    assert rows == [(False,)]


@pytest.mark.postgres
def test_write_grant_allows_insert(pg: Pg, conn: PostgresConnector) -> None:
    result = conn.grant(spec(user("writer"), role="write"))
    with as_grantee(result, pg) as c:
        c.execute("INSERT INTO orders VALUES (2, 5)")
        assert c.execute("SELECT count(*) FROM orders WHERE id = 2").fetchone() == (1,)
    admin_query(pg, "DELETE FROM orders WHERE id = 2 RETURNING id")


@pytest.mark.postgres
def test_revoke_removes_access_blocks_login_and_ends_open_sessions(
        pg: Pg, conn: PostgresConnector) -> None:
    u = user("revokee")
    result = conn.grant(spec(u))
    assert (u, "read") in conn.granted()
    live = as_grantee(result, pg)
    assert live.execute("SELECT 1").fetchone() == (1,)

    conn.revoke(spec(u))

    assert (u, "read") not in conn.granted()
    with pytest.raises(psycopg.OperationalError):
        live.execute("SELECT 1")
    live.close()
    with pytest.raises(psycopg.OperationalError):
        as_grantee(result, pg).close()
    rows = admin_query(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", result.login)
    assert rows == [(False,)]
    assert admin_query(pg, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                       result.login) == [(0,)]


@pytest.mark.postgres
def test_grant_and_revoke_twice_are_idempotent_and_valid_until_is_set(
        pg: Pg, conn: PostgresConnector) -> None:
    u = user("twice")
    first = conn.grant(spec(u, hours=1))
    later = spec(u, hours=2)
    second = conn.grant(later)
    assert first.login == second.login
    assert first.secret != second.secret  # a fresh password each grant
    assert conn.granted() >= {(u, "read")}
    rows = admin_query(pg, "SELECT rolvaliduntil, rolcanlogin, rolpassword LIKE 'SCRAM-SHA-256$%%' "
                           "FROM pg_authid WHERE rolname = %s", second.login)
    assert rows == [(later.ends_at, True, True)]
    memberships = admin_query(
        pg, "SELECT count(*) FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member "
            "WHERE m.rolname = %s", second.login)
    assert memberships == [(1,)]

    conn.revoke(later)
    conn.revoke(later)
    assert (u, "read") not in conn.granted()
    conn.revoke(spec(user("never-granted")))  # nothing to revoke is fine too


@pytest.mark.postgres
def test_logins_are_per_resource_so_one_grant_never_disturbs_another(pg: Pg) -> None:
    other_res = resource("other")
    a, b = connector(pg), connector(pg, other_res)
    try:
        u = user("both")
        first = a.grant(spec(u, hours=3))
        short = spec(u, hours=1, res=other_res.name)
        second = b.grant(short)
        assert first.login != second.login
        with as_grantee(first, pg) as c:
            b.revoke(short)  # ends the other login's sessions only
            assert c.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        rows = admin_query(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                           first.login)
        assert rows == [(True,)]
        a.revoke(spec(u, hours=3))
        rows = admin_query(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                           first.login)
        assert rows == [(False,)]
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_dotted_users_map_back_through_a_fresh_connector(pg: Pg, conn: PostgresConnector) -> None:
    u = user("first.last-")
    result = conn.grant(spec(u))
    assert result.login != f"accord_u_{u}" and result.login.startswith("accord_u_first_last_")
    fresh = connector(pg)
    try:
        assert (u, "read") in fresh.granted()
    finally:
        fresh.close()
    conn.revoke(spec(u))


@pytest.mark.postgres
def test_a_membership_granted_by_hand_shows_up_as_drift(
        pg: Pg, conn: PostgresConnector) -> None:
    conn.grant(spec(user("seed")))  # makes sure the group exists
    group = group_name(f"res{SUFFIX}", "read")
    plain = login_name(f"hand{SUFFIX}", f"res{SUFFIX}")
    odd = f"accord_u_by_hand_{SUFFIX}"
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        for login in (plain, odd):
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
            c.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group),
                                                       sql.Identifier(login)))
    granted = conn.granted()
    assert (f"hand{SUFFIX}", "read") in granted
    assert (odd, "read") in granted  # cannot be mapped: reported by its raw name
    conn.revoke(spec(f"hand{SUFFIX}"))
    assert (f"hand{SUFFIX}", "read") not in conn.granted()


@pytest.mark.postgres
def test_an_existing_privileged_role_is_not_handed_out(pg: Pg, conn: PostgresConnector) -> None:
    u = user("sneaky")
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(
            sql.Identifier(login_name(u, f"res{SUFFIX}"))))
    with pytest.raises(ConnectorError) as exc:
        conn.grant(spec(u))
    assert not exc.value.retryable


@pytest.mark.postgres
def test_a_database_closed_to_public_still_admits_grantees(pg: Pg) -> None:
    res = resource("closed")
    c = connector(pg, res)
    database = sql.Identifier(pg.database)
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(database))
    try:
        result = c.grant(spec(user("closed"), res=res.name))
        with as_grantee(result, pg) as grantee:
            assert grantee.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        c.revoke(spec(user("closed"), res=res.name))
    finally:
        c.close()
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(database))


@pytest.mark.postgres
def test_health_reports_ok_without_secrets(pg: Pg, conn: PostgresConnector) -> None:
    health = conn.health()
    assert health.ok, health.detail
    assert pg.database in health.detail and "postgresql://" not in health.detail


@pytest.mark.postgres
def test_a_dropped_connection_is_replaced(pg: Pg, conn: PostgresConnector) -> None:
    assert conn.health().ok
    admin_query(pg, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE application_name = 'accord' AND datname = %s", pg.database)
    assert conn.health().ok  # the broken connection is retried once on a new one
    assert isinstance(conn.granted(), set)

"""A real gateway in front of a real MariaDB, with Accord's own database on PostgreSQL.

One module-scoped world per test module: an Accord database of its own (PostgreSQL: the
gateway's shipper and threads commit for real), a MariaDB database with an `orders` table, a
policy whose resource is provisioned on it by the mariadb connector (so the gateway logs in
as its own login for the granted role), and the gateway serving PostgreSQL and MySQL on free
ports in its own thread. MariaDB on 127.0.0.1:3306 as root (ACCORD_TEST_MARIADB overrides);
ACCORD_REQUIRE_MARIADB=1 turns "unreachable" into a failure, as ACCORD_REQUIRE_POSTGRES does
for PostgreSQL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql
import pytest
from psycopg import sql
from sqlalchemy import Engine, select

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.gateway.protocols import build
from accord.gateway.recording import as_dicts
from accord.gateway.server import GatewayServer
from accord.ledger.models import LedgerEntry
from accord.provisioning.mariadb import gateway_login_name, login_for, personal_role
from accord.worker.job_runner import JobRunner
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, Env, _pg_reachable, make_env
from tests.gateway.conftest import Granting

MARIADB = os.environ.get("ACCORD_TEST_MARIADB", "mysql://root@127.0.0.1:3306/")
REQUIRE_MARIADB = os.environ.get("ACCORD_REQUIRE_MARIADB") == "1"
_ADMIN = urlsplit(MARIADB)
HOST, PORT = _ADMIN.hostname or "127.0.0.1", _ADMIN.port or 3306
DSN_ENV = "ACCORD_TEST_GATEWAY_MARIADB_DSN"
USERS = ("alice", "bob", "carol", "dave", "erin")


def admin() -> pymysql.connections.Connection[Any]:
    return pymysql.connect(host=HOST, port=PORT, user=unquote(_ADMIN.username or "root"),
                           password=unquote(_ADMIN.password or ""), autocommit=True,
                           connect_timeout=3)


def mariadb_reachable() -> bool:
    try:
        admin().close()
    except pymysql.MySQLError:
        return False
    return True


def require_services() -> None:
    if not mariadb_reachable():
        if REQUIRE_MARIADB:
            pytest.fail(f"MariaDB is required but {HOST}:{PORT} is unreachable")
        pytest.skip("MariaDB is not reachable")
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but {PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable (Accord's own database)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_text(resource: str, database: str, port: int, mysql_port: int,
                gateway: str = "") -> str:
    return f"""\
users: [alice, bob, carol, dave, erin]
groups: {{engineers: [alice, erin], leads: [bob, carol], admins: [carol], auditors: [dave]}}
accord: {{admins: [admins], auditors: [auditors]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 5m, flush_interval: 50ms,
          startup_timeout: 10s, message_timeout: 2s,
          mysql: {{listen: "127.0.0.1:{mysql_port}"}}{gateway}}}
resources:
  - name: {resource}
    kind: mariadb
    labels: {{env: lab}}
    owners: [leads]
    roles: [read, write, admin]
    gateway: {{allow: {{write: [local_infile]}}}}
    provision:
      type: mariadb
      dsn_env: {DSN_ENV}
      database: {database}
      roles:
        read: {{privileges: ["SELECT ON `{database}`.*"]}}
        write: {{privileges: ["SELECT, INSERT, UPDATE, DELETE ON `{database}`.*"]}}
        admin: {{privileges: ["ALL ON `{database}`.*"]}}
workflows:
  - name: lab
    match: 'true'
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{{approvers: [leads]}}]
"""


@dataclass
class World(Granting):
    env: Env
    runner: JobRunner
    gateway: GatewayServer
    engine: Engine
    resource: str
    database: str

    @property
    def port(self) -> int:
        return self.gateway.fronts[0].port


    def connect(self, token: dict[str, Any], **kw: Any) -> pymysql.connections.Connection[Any]:
        params: dict[str, Any] = {"host": "127.0.0.1", "port": self.port,
                                  "user": token["user"], "password": token["token"],
                                  "database": self.resource, "connect_timeout": 5,
                                  "autocommit": True}
        params.update(kw)
        return pymysql.connect(**params)

    def cli(self, token: dict[str, Any], script: str, *args: str,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """The mariadb command-line client, batch mode."""
        env = {**os.environ, "MYSQL_PWD": token["token"]}
        return subprocess.run(
            ["mariadb", "--no-defaults", "--host=127.0.0.1", f"--port={self.port}",
             f"--user={user or token['user']}", "--skip-ssl", "--batch", *args,
             "-e", script, self.resource],
            env=env, capture_output=True, text=True, timeout=30, check=False)

    def flush(self) -> None:
        assert self.gateway.audit.drain(timeout=20), "the audit writer did not catch up"

    def events(self, type_: str, grant_id: int | None = None) -> list[dict[str, Any]]:
        self.flush()
        with transaction(self.env.st.sessions) as s:
            q = select(LedgerEntry.leaf).where(LedgerEntry.type == type_).order_by(LedgerEntry.id)
            if grant_id is not None:
                q = q.where(LedgerEntry.subject == f"grant:{grant_id}")
            return [json.loads(leaf) for leaf in s.execute(q).scalars()]

    def statements(self, grant_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in self.events("gateway.statement", grant_id):
            out.extend(as_dicts(event["data"]))
        return out

    def target(self, query: str, *params: Any) -> tuple[tuple[Any, ...], ...]:
        conn = admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f"USE `{self.database}`")
                cur.execute(query, params or None)
                return tuple(cur.fetchall())
        finally:
            conn.close()


def _drop_accounts(resource: str, database: str) -> None:
    conn = admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            safe = resource.replace("-", "_")
            cur.execute("SELECT User, Host FROM mysql.user WHERE User LIKE %s OR User IN %s",
                        (f"%{safe}%", tuple([login_for(u) for u in USERS]
                                            + [personal_role(u) for u in USERS]
                                            + [gateway_login_name(resource, r)
                                               for r in ("read", "write", "admin")])))
            for user, host in cur.fetchall():
                if host:
                    cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
                else:
                    cur.execute(f"DROP ROLE IF EXISTS `{user}`")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_services()
    suffix = uuid.uuid4().hex[:8]
    accord_db, target_db, resource = f"accord_gwm_{suffix}", f"accord_gwm_{suffix}", \
        f"shop-{suffix}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(accord_db)))
    conn_my = admin()
    with conn_my.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{target_db}`")
        cur.execute(f"USE `{target_db}`")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, total INT)")
        cur.execute("INSERT INTO orders SELECT seq, seq * 10 FROM seq_1_to_100")
    conn_my.close()
    engine = make_engine(f"{base}/{accord_db}", pool_size=8)
    migrations.upgrade(engine)
    mp = pytest.MonkeyPatch()
    mp.setenv(DSN_ENV, MARIADB)
    tmp = tmp_path_factory.mktemp("gateway-mysql")
    env = make_env(make_sessionmaker(engine), tmp, policy_text(resource, target_db,
                                                               free_port(), free_port()))
    runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                       env.clock)
    spec = env.st.policies.current.loaded.spec.gateway
    assert spec is not None
    gateway = build(env.st, spec)
    gateway.start_thread()
    world = World(env, runner, gateway, engine, resource, target_db)
    try:
        with env.client:
            yield world
    finally:
        gateway.stop_thread()
        env.st.connectors().close()
        engine.dispose()
        mp.undo()
        _drop_accounts(resource, target_db)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(accord_db)))

"""A real gateway in front of a real PostgreSQL, with Accord's own database committed for real.

One module-scoped world per test module: an Accord database of its own, a target database
with an `orders` table, a policy whose resource is provisioned on the target (so the
gateway logs in as its own login for the granted role, which it makes with the provision
DSN, never a session's login), and the gateway serving on a free port in its own thread.
Tests get grants through the real API and connect with psql and psycopg.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, select

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.gateway.models import GatewayToken
from accord.gateway.postgres.proxy import PostgresGateway as Gateway
from accord.gateway.recording import as_dicts
from accord.ledger.models import LedgerEntry
from accord.provisioning import postgres as pgconn
from accord.worker.job_runner import JobRunner
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, Env, _pg_reachable, make_env

PSQL = "/usr/bin/psql"
DSN_ENV = "ACCORD_TEST_GATEWAY_TARGET_DSN"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie counts: it holds no locks)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def policy_text(resource: str, database: str, extra: str = "", gateway: str = "",
                port: int = 0) -> str:
    return f"""\
users: [alice, bob, carol, dave, erin]
groups: {{engineers: [alice, erin], leads: [bob, carol], admins: [carol], auditors: [dave]}}
accord: {{admins: [admins], auditors: [auditors]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 5m, flush_interval: 50ms,
          startup_timeout: 2s, message_timeout: 1s{gateway}}}
resources:
  - name: {resource}
    labels: {{env: lab}}
    owners: [leads]
    roles: [read, write, admin]
    provision:
      type: postgres
      dsn_env: {DSN_ENV}
      database: {database}
      roles:
        read: {{privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}}
        write: {{privileges: ["SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"]}}
        admin: {{privileges: ["ALL ON ALL TABLES IN SCHEMA public"]}}
{extra}workflows:
  - name: lab
    match: 'true'
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{{approvers: [leads]}}]
"""


class Granting:
    """What every gateway test world does alike (PostgreSQL, MySQL, SSH): an active grant,
    then a connection token for it, through the real API and job runner."""

    env: Env
    runner: JobRunner
    resource: str
    default_role = "read"

    def grant(self, user: str = "alice", role: str | None = None) -> dict[str, Any]:
        """An active, provisioned grant (auto-approved for engineers, else bob approves)."""
        req = self.env.ask(user, resource=self.resource, role=role or self.default_role,
                           duration="1h")
        if req["status"] == "pending":
            assert self.env.act("bob", req["id"], "approve").status_code == 200
        while self.runner.run_once():
            pass
        req = self.env.get(user, f"/api/v1/requests/{req['id']}").json()
        assert req["grant"]["status"] == "active", req
        grant: dict[str, Any] = req["grant"]
        grant["request_id"] = req["id"]
        return grant

    def token(self, grant: dict[str, Any], user: str = "alice") -> dict[str, Any]:
        r = self.env.post(user, f"/api/v1/grants/{grant['id']}/connect")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@dataclass
class World(Granting):
    env: Env
    runner: JobRunner
    gateway: Gateway
    engine: Engine
    resource: str
    database: str
    target_dsn: str

    @property
    def port(self) -> int:
        return self.gateway.port


    def connect(self, token: dict[str, Any], **kw: Any) -> psycopg.Connection[Any]:
        params: dict[str, Any] = {"host": "127.0.0.1", "port": self.port,
                                  "dbname": self.resource, "user": token["user"],
                                  "password": token["token"], "connect_timeout": 5,
                                  "sslmode": "disable", "autocommit": True}
        params.update(kw)
        return psycopg.connect(**params)

    def psql(self, token: dict[str, Any], script: str, *args: str,
             user: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": token["token"], "PGCONNECT_TIMEOUT": "5"}
        return subprocess.run(
            [PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", user or token["user"], "-d", self.resource, *args, "-c", script],
            env=env, capture_output=True, text=True, timeout=30, check=False)

    def flush(self) -> None:
        """Wait until the audit writer has put everything queued so far in the ledger."""
        assert self.gateway.audit.drain(timeout=20), "the audit writer did not catch up"

    def events(self, type_: str, grant_id: int | None = None) -> list[dict[str, Any]]:
        import json

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

    def target(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.target_dsn, autocommit=True) as c:
            return c.execute(query, params).fetchall()


def _reachable_or_skip() -> None:
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but {PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable")


@contextlib.contextmanager
def open_world(tmp_path_factory: pytest.TempPathFactory, *, extra: str = "",
               setup: tuple[LiteralString, ...] = (), workflows: str = "") -> Iterator[World]:
    """A world (see the module's docstring); `extra` goes into the resource's entry of
    accord.yaml, `setup` runs on the target database before anything is granted, and
    `workflows` come before the policy's own."""
    _reachable_or_skip()
    suffix = uuid.uuid4().hex[:8]
    accord_db, target_db, resource = f"accord_gw_{suffix}", f"accord_gwt_{suffix}", f"gw{suffix}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(accord_db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target_db)))
    target_dsn = f"{base}/{target_db}"
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 100) g")
        for statement in setup:
            conn.execute(statement)
    engine = make_engine(f"{base}/{accord_db}", pool_size=8)
    migrations.upgrade(engine)
    mp = pytest.MonkeyPatch()
    mp.setenv(DSN_ENV, target_dsn)
    tmp = tmp_path_factory.mktemp("gateway")
    text = policy_text(resource, target_db, extra=extra, port=free_port())
    if workflows:
        text = text.replace("workflows:\n", "workflows:\n" + workflows, 1)
    env = make_env(make_sessionmaker(engine), tmp, text)
    runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                       env.clock)
    spec = env.st.policies.current.loaded.spec.gateway
    assert spec is not None
    gateway = Gateway(env.st, spec)
    gateway.start_thread()
    world = World(env, runner, gateway, engine, resource, target_db, target_dsn)
    try:
        with env.client:
            yield world
    finally:
        gateway.stop_thread()
        env.st.connectors().close()
        engine.dispose()
        mp.undo()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for db in (accord_db, target_db):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(db)))
            for (role,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                        (f"accord%{resource}%",)).fetchall():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            for user in ("alice", "erin", "bob", "carol"):
                login = pgconn.login_name(user, resource)
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(tmp_path_factory) as w:
        yield w


@pytest.fixture(scope="module")
def live_url(world: World) -> Iterator[str]:
    """The world's API served by a real uvicorn (for the CLI's HTTP client)."""
    with serve_api(world) as url:
        yield url


@contextlib.contextmanager
def serve_api(world: World) -> Iterator[str]:
    """`world`'s API served by a real uvicorn; yields its URL."""
    import socket
    import threading

    import uvicorn

    from accord.api.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(world.env.st), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(500):  # bounded: uvicorn sets `started` once it accepts connections
        if server.started:
            break
        started.wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def token_rows(world: World) -> list[GatewayToken]:
    with world.env.st.sessions() as s:
        return list(s.execute(select(GatewayToken)).scalars())


def tmp_dir(world: World) -> Path:
    return world.env.st.settings.data_dir

"""Shared fixtures: real databases (SQLite and PostgreSQL), a policy, an app, tokens.

Every test that takes `backend` (directly or through `env`) runs once on SQLite and
once on PostgreSQL. Each test runs inside an outer transaction that is rolled back;
the code under test commits to savepoints, exactly as it commits for real.
Set ACCORD_REQUIRE_POSTGRES=1 to turn "PostgreSQL unreachable" from a skip into a failure.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from accord import logs, migrations
from accord.api.app import create_app
from accord.bootstrap import ledger_config
from accord.db import make_engine, transaction
from accord.gateway.postgres.cases import guardrail_case
from accord.identity import service as identity
from accord.ledger.events import Actor
from accord.ledger.service import INLINE
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.provisioning.secrets import SecretBox
from accord.requests import reload as reloader
from accord.settings import Settings
from accord.spec.load import parse_policy_text
from accord.state import AppState

# The secret leak check of the whole run (tests/leakcheck/plugin.py); pytester for its tests
pytest_plugins = ["tests.leakcheck.plugin", "pytester"]

PG_ADMIN_URL = os.environ.get(
    "ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("ACCORD_REQUIRE_POSTGRES") == "1"

POLICY = """\
users: [alice, bob, carol, dave, erin, frank, gina]
groups:
  engineers: [alice, erin, gina]
  leads: [bob, gina]
  dba: [carol, erin]
  admins: [carol, frank]
  auditors: [dave]
accord: {admins: [admins], auditors: [auditors]}
resources:
  - {name: staging-db, kind: postgres, labels: {env: staging}, owners: [dba], roles: [read, write]}
  - {name: orders-db, kind: postgres, labels: {env: prod}, owners: [dba],
     roles: [read, write, admin]}
  - {name: lab, kind: generic, labels: {env: lab}, owners: [frank], roles: [use]}
workflows:
  - name: staging
    match: 'resource.labels.env == "staging"'
    max_duration: 8h
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups && request.role == "read"'
    steps: [{approvers: [leads]}]
  - name: prod
    match: 'resource.labels.env == "prod"'
    max_duration: 4h
    expire_after: 2h
    auto_deny: 'size(request.reason) < 10'
    steps:
      - {name: lead, approvers: [leads]}
      - {name: owner, approvers: [owners]}
    elevated:
      roles: [admin]
      steps: [{name: admins, approvers: [admins], min_approvals: 2}]
"""

USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]


@pytest.fixture(autouse=True)
def _no_stale_log_handler() -> Iterator[None]:
    """A command run in-process (CliRunner: `serve`, `gateway`) configures logging to the
    stderr it had, which CliRunner closes after it: take that handler off the root logger,
    or a later test's error line goes to a closed file ("--- Logging error ---")."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    stale = [h for h in root.handlers if h not in before
             and isinstance(h.formatter, logs.TextFormatter | logs.JsonFormatter)]
    for handler in stale:
        root.removeHandler(handler)
    if stale:
        root.setLevel(level)


def _pg_reachable() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_url(worker_id: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test process, migrated to head."""
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (ACCORD_REQUIRE_POSTGRES=1) but "
                        f"{PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable")
    name = f"accord_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "accord.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def engines() -> Iterator[dict[str, Engine]]:
    cache: dict[str, Engine] = {}
    yield cache
    for e in cache.values():
        e.dispose()


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    fixture = "pg_url" if backend == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def engine(db_url: str, engines: dict[str, Engine]) -> Engine:
    if db_url not in engines:
        engines[db_url] = make_engine(db_url)
    return engines[db_url]


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions inside one outer transaction that is rolled back after the test."""
    conn = engine.connect()
    outer = conn.begin()
    # Integrate ledger events inline on PostgreSQL too: nothing runs the background
    # integrator inside a rolled-back test transaction. Its own tests use real commits.
    factory = sessionmaker(bind=conn, expire_on_commit=False,
                           join_transaction_mode="create_savepoint", info={INLINE: True})
    try:
        yield factory
    finally:
        outer.rollback()
        conn.close()


class Clock:
    """A controllable clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.value = datetime.now(UTC).replace(microsecond=123456)

    def __call__(self) -> datetime:
        return self.value

    def advance(self, **kw: float) -> datetime:
        self.value += timedelta(**kw)
        return self.value


@dataclass
class Env:
    """An app on a real database with a token per user, and shortcuts to call it."""

    st: AppState
    client: TestClient
    tokens: dict[str, str]
    clock: Clock
    policy_path: Path
    last: Any = field(default=None)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def call(self, method: str, user: str | None, path: str, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if user is not None:
            headers = {**self.headers(user), **headers}
        self.last = self.client.request(method, path, headers=headers, **kw)
        return self.last

    def get(self, user: str | None, path: str, **kw: Any) -> Any:
        return self.call("GET", user, path, **kw)

    def post(self, user: str | None, path: str, **kw: Any) -> Any:
        return self.call("POST", user, path, **kw)

    def ask(self, user: str, resource: str = "orders-db", role: str = "read",
            duration: str = "1h", reason: str = "INC-1 investigate orders") -> dict[str, Any]:
        r = self.post(user, "/api/v1/requests",
                      json={"resource": resource, "role": role, "duration": duration,
                            "reason": reason})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def act(self, user: str, rid: int, command: str, **body: Any) -> Any:
        return self.post(user, f"/api/v1/requests/{rid}/{command}", json=body or None)

    def events(self, **params: Any) -> list[dict[str, Any]]:
        r = self.get("dave", "/api/v1/audit/events", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return [item["event"] for item in r.json()["items"]]

    def write_policy(self, text: str) -> None:
        self.policy_path.write_text(text, encoding="utf-8")


def make_env(sessions: sessionmaker[Session], tmp_path: Path, policy_text: str = POLICY) -> Env:
    path = tmp_path / "accord.yaml"
    path.write_text(policy_text, encoding="utf-8")
    clock = Clock()
    store = PolicyStore(path, Policy(parse_policy_text(policy_text, str(path))))
    store.statements = guardrail_case  # as bootstrap wires it
    settings = Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)})
    settings = Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)})
    st = AppState(settings=settings, sessions=sessions, policies=store, now=clock,
                  ledger=ledger_config(settings, store.current),
                  secrets=SecretBox.load_or_create(settings.secrets_key_file))
    with transaction(sessions) as session:
        result = reloader.reload(session, store=store, actor=Actor.system("cli"))
    reloader.install_after_commit(store, result)
    tokens = {}
    with transaction(sessions) as session:
        for user in store.current.users:
            _row, secret = identity.issue(session, policy=store.current, user=user,
                                          actor=Actor.system("cli"), now=clock())
            tokens[user] = secret
    client = TestClient(create_app(st), raise_server_exceptions=False)
    return Env(st=st, client=client, tokens=tokens, clock=clock, policy_path=path)


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path)
    with e.client:
        yield e


@pytest.fixture
def fresh_pg(worker_id: str) -> Iterator[Engine]:
    """A PostgreSQL database of this test's own, committed to for real (for concurrency)."""
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but {PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable")
    name = f"accord_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", pool_size=16)
    migrations.upgrade(engine)
    yield engine
    engine.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class LiveServer:
    url: str
    env: Env


@pytest.fixture
def live(env: Env) -> Iterator[LiveServer]:
    """The `env` app served by a real uvicorn on a free loopback port."""
    import socket
    import threading

    import uvicorn

    from accord.api.app import create_app as make_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(env.st), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(500):  # bounded: uvicorn sets `started` once it accepts connections
        if server.started:
            started.set()
            break
        started.wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", env=env)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

"""The gateway logs in upstream with SCRAM-SHA-256 against a real PostgreSQL that demands it.

The machine's shared PostgreSQL trusts every login, so this module starts a private
PostgreSQL 15 cluster of its own (initdb --auth=scram-sha-256: every local and host login
needs SCRAM, and passwords are stored as SCRAM verifiers). Accord's own database lives
there too, so nothing here needs the shared server. The gateway runs in a thread of this
process, in front of three resources whose upstream DSNs reach the private cluster: over
TCP, over its unix socket, and over TCP with a wrong password.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import select

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.gateway.postgres import upstream
from accord.gateway.postgres.proxy import PostgresGateway as Gateway
from accord.gateway.postgres.scram import ScramClient
from accord.gateway.recording import as_dicts
from accord.ledger.models import LedgerEntry
from accord.worker.job_runner import JobRunner
from tests.conftest import REQUIRE_PG, Env, make_env
from tests.gateway.conftest import free_port
from tests.gateway.rawclient import Raw, error_of

pytestmark = pytest.mark.postgres

PG_BIN = Path(os.environ.get("ACCORD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER, SUPERUSER_PASSWORD = "postgres", "private-superuser-pw"
# Upstream login for the resources: the password has a space, a comma, an '=', a quote and
# non-ASCII letters, so the DSN's quoting and the UTF-8 password bytes both matter.
# (NFKC leaves it unchanged, so SASLprep, which the gateway does not do, is not involved.)
OWNER, OWNER_PASSWORD = "shop_owner", "pä ss,w=rd'ü 42"
WRONG_PASSWORD = "not-the-password"
ENV_TCP, ENV_UNIX, ENV_WRONG = ("ACCORD_TEST_SCRAM_TCP", "ACCORD_TEST_SCRAM_UNIX",
                                "ACCORD_TEST_SCRAM_WRONG")


# ------------------------------------------------------------------ a private PostgreSQL


@dataclass(frozen=True)
class Cluster:
    root: Path  # also the unix socket directory
    port: int

    @property
    def log(self) -> Path:
        return self.root / "server.log"  # PostgreSQL's own log

    def dsn(self, *, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD,
            dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return make_conninfo(host=host, port=self.port, user=user, password=password,
                             dbname=dbname)


def _missing_postgres(reason: str) -> None:
    if REQUIRE_PG:
        pytest.fail(f"PostgreSQL 15 is required (ACCORD_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(reason)


def _as_postgres() -> list[str]:
    """Run PostgreSQL's binaries as the `postgres` OS user when we are root (initdb refuses
    root), as ourselves otherwise."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(cmd: list[str]) -> None:
    done = subprocess.run([*_as_postgres(), *cmd], capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A private PostgreSQL 15 cluster where every login needs SCRAM-SHA-256."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.exists() and pg_ctl.exists()):
        _missing_postgres(f"no PostgreSQL binaries in {PG_BIN}")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _missing_postgres("running as root, and runuser is missing")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _missing_postgres("running as root, and there is no `postgres` OS user")
    # Not under pytest's tmp dir: it is root's, mode 0700, and postgres must reach the socket
    # directory. A short path also keeps the socket's path under the 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="accord-scram-", dir="/tmp"))
    data = root / "data"
    started = False
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            for path in (root, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run([str(initdb), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
              "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
              "--no-instructions"])
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
                       "password_encryption = 'scram-sha-256'\nmax_connections = 40\n")
        log = root / "server.log"
        for attempt in range(3):  # the free port may be taken before the server binds it
            port = free_port()
            started = True  # from here on, stop it whatever happens
            # -w: pg_ctl itself waits until the server accepts connections.
            start = subprocess.run([*_as_postgres(), str(pg_ctl), "-D", str(data), "-l",
                                    str(log), "-o", f"-p {port}", "-w", "-t", "30", "start"],
                                   capture_output=True, text=True, timeout=60, check=False)
            if start.returncode == 0:
                break
            server_log = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            if attempt == 2 or "could not bind" not in server_log:
                raise AssertionError(f"pg_ctl start failed:\n{start.stderr}\n{server_log}")
        yield Cluster(root, port)
    finally:
        if started:
            subprocess.run([*_as_postgres(), str(pg_ctl), "-D", str(data), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ a gateway in front of it


def policy(listen_port: int) -> str:
    resources = "".join(f"""\
  - name: {name}
    kind: postgres
    labels: {{env: lab}}
    owners: [leads]
    roles: [read]
    gateway: {{dsn_env: {dsn_env}}}
""" for name, dsn_env in (("shop-tcp", ENV_TCP), ("shop-unix", ENV_UNIX),
                          ("shop-wrong", ENV_WRONG)))
    return f"""\
users: [alice, bob, dave]
groups: {{engineers: [alice], leads: [bob], auditors: [dave]}}
accord: {{admins: [leads], auditors: [auditors]}}
gateway: {{listen: "127.0.0.1:{listen_port}", token_ttl: 5m, flush_interval: 50ms,
          startup_timeout: 5s, message_timeout: 1s}}
resources:
{resources}workflows:
  - name: lab
    match: 'true'
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{{approvers: [leads]}}]
"""


@dataclass
class ScramWorld:
    cluster: Cluster
    env: Env
    runner: JobRunner
    gateway: Gateway

    def grant(self, resource: str, user: str = "alice") -> dict[str, Any]:
        req = self.env.ask(user, resource=resource, role="read", duration="1h")
        while self.runner.run_once():
            pass
        req = self.env.get(user, f"/api/v1/requests/{req['id']}").json()
        assert req["grant"]["status"] == "active", req
        grant: dict[str, Any] = req["grant"]
        return grant

    def token(self, grant: dict[str, Any], user: str = "alice") -> str:
        r = self.env.post(user, f"/api/v1/grants/{grant['id']}/connect")
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def connect(self, resource: str, token: str, user: str = "alice") -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.gateway.port, dbname=resource,
                               user=user, password=token, sslmode="disable",
                               connect_timeout=5, autocommit=True)

    def events(self, type_: str, grant_id: int) -> list[dict[str, Any]]:
        assert self.gateway.audit.drain(timeout=20), "the audit writer did not catch up"
        with transaction(self.env.st.sessions) as s:
            q = (select(LedgerEntry.leaf)
                 .where(LedgerEntry.type == type_, LedgerEntry.subject == f"grant:{grant_id}")
                 .order_by(LedgerEntry.id))
            return [json.loads(leaf) for leaf in s.execute(q).scalars()]

    def statements(self, grant_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in self.events("gateway.statement", grant_id):
            out.extend(as_dicts(event["data"]))
        return out


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramWorld]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        # The premise of this module: the server demands SCRAM of every login.
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        rules = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert rules == [("scram-sha-256",)], rules
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(OWNER), sql.Literal(OWNER_PASSWORD)))
        (verifier,) = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                   (OWNER,)).fetchone() or ("",)
        assert verifier.startswith("SCRAM-SHA-256$"), verifier
        conn.execute(f"CREATE DATABASE shop OWNER {OWNER}")
        conn.execute("CREATE DATABASE accord")
    with psycopg.connect(cluster.dsn(user=OWNER, password=OWNER_PASSWORD, dbname="shop"),
                         autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 100) g")

    engine = make_engine(f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:"
                         f"{cluster.port}/accord", pool_size=4)
    try:
        migrations.upgrade(engine)
        env = make_env(make_sessionmaker(engine), tmp_path_factory.mktemp("scram"),
                       policy(free_port()))
        runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                           env.st.secrets, env.clock)
        spec = env.st.policies.current.loaded.spec.gateway
        assert spec is not None
        upstreams = {
            ENV_TCP: cluster.dsn(user=OWNER, password=OWNER_PASSWORD, dbname="shop"),
            ENV_UNIX: cluster.dsn(user=OWNER, password=OWNER_PASSWORD, dbname="shop",
                                  host=str(cluster.root)),
            ENV_WRONG: cluster.dsn(user=OWNER, password=WRONG_PASSWORD, dbname="shop"),
        }
        gateway = Gateway(env.st, spec, env=upstreams, listen=("127.0.0.1", 0))
        gateway.start_thread()
        try:
            with env.client:
                yield ScramWorld(cluster, env, runner, gateway)
        finally:
            gateway.stop_thread()
            env.st.connectors().close()
    finally:
        engine.dispose()


@dataclass
class Exchanges:
    started: int = 0
    verified: int = 0


@pytest.fixture
def scram_exchanges(monkeypatch: pytest.MonkeyPatch) -> Exchanges:
    """Counts the gateway's SCRAM exchanges upstream, and those where the server proved
    itself (its signature checked by `ScramClient.verify`)."""
    seen = Exchanges()

    class Recording(ScramClient):
        def __init__(self, password: str, *, user: str = "", nonce: str | None = None) -> None:
            super().__init__(password, user=user, nonce=nonce)
            seen.started += 1

        def verify(self, server_final: bytes) -> None:
            super().verify(server_final)
            seen.verified += 1

    monkeypatch.setattr(upstream, "ScramClient", Recording)
    return seen


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("resource", "dsn_env"), [("shop-tcp", ENV_TCP),
                                                    ("shop-unix", ENV_UNIX)])
def test_the_gateway_logs_in_upstream_with_scram(world: ScramWorld, scram_exchanges: Exchanges,
                                                 resource: str, dsn_env: str) -> None:
    target = upstream.target_for(world.env.st.policies.current.resources[resource], "read",
                                 world.gateway.env)
    assert (target.user, target.password, target.database) == (OWNER, OWNER_PASSWORD, "shop")
    assert (target.unix_socket is not None) == (dsn_env == ENV_UNIX)
    assert target.role is None  # not provisioned: no SET ROLE, the session is the DSN's role

    grant = world.grant(resource)
    token = world.token(grant)
    with world.connect(resource, token) as conn:
        assert conn.execute("select current_user").fetchone() == (OWNER,)
        assert conn.execute("select count(*), sum(total) from orders").fetchone() == (100, 50500)
        address = conn.execute("select inet_server_addr()").fetchone()
    assert scram_exchanges.started == scram_exchanges.verified == 1
    # inet_server_addr() is NULL over a unix socket
    assert (address == (None,)) == (dsn_env == ENV_UNIX), address

    done = [(s["text"], s["tag"], s["rows"], s["outcome"]) for s in world.statements(grant["id"])]
    assert done == [("select current_user", "SELECT 1", 1, "ok"),
                    ("select count(*), sum(total) from orders", "SELECT 1", 1, "ok"),
                    ("select inet_server_addr()", "SELECT 1", 1, "ok")]
    for event in world.events("gateway.statement", grant["id"]):
        assert event["resource"] == {"name": resource, "role": "read"}
        assert event["actor"] == {"kind": "user", "id": "alice", "via": "gateway"}
    usage = world.env.get("alice", f"/api/v1/grants/{grant['id']}").json()["usage"]
    assert usage["statement_count"] == 3 and usage["session_count"] == 1


def test_a_wrong_upstream_password_is_a_clear_error_and_others_keep_working(
        world: ScramWorld, scram_exchanges: Exchanges, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="accord.gateway")
    log_before = world.cluster.log.stat().st_size
    good = world.connect("shop-tcp", world.token(world.grant("shop-tcp")))  # open across it
    bad_grant = world.grant("shop-wrong")

    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as exc:
        world.connect("shop-wrong", world.token(bad_grant))
    elapsed = time.monotonic() - start
    message = str(exc.value)
    assert "Accord gateway: the database behind this resource refused the gateway's login" \
        in message, message
    assert WRONG_PASSWORD not in message and OWNER_PASSWORD not in message
    assert elapsed < 3, elapsed  # refused at once: not the 5s startup timeout, no hang

    with Raw(world.gateway.port) as raw:  # the exact error the client gets
        answer = raw.login("alice", "shop-wrong", world.token(bad_grant))
        fields = error_of(answer)
        assert fields is not None, answer
        assert (fields["S"], fields["C"]) == ("FATAL", "08004")
        assert fields["M"] == ("Accord gateway: the database behind this resource refused the "
                               "gateway's login (see the gateway's log)")
        assert raw.message() is None  # and then the gateway hangs up
    # three exchanges: the good session's (verified), then two the server refused
    assert (scram_exchanges.started, scram_exchanges.verified) == (3, 1)

    # The gateway's log says why; PostgreSQL's says the SCRAM rule refused the password
    # (a server writes its log line before it sends the error, so both are there now).
    refused = [r.getMessage() for r in caplog.records if "refused the login" in r.getMessage()]
    assert len(refused) == 2, caplog.text
    assert f'28P01 password authentication failed for user "{OWNER}"' in refused[0]
    assert WRONG_PASSWORD not in caplog.text
    with world.cluster.log.open("rb") as server_log:
        server_log.seek(log_before)
        tail = server_log.read().decode()
    assert tail.count(f'FATAL:  password authentication failed for user "{OWNER}"') == 2, tail
    assert "scram-sha-256" in tail and "Connection matched pg_hba.conf line" in tail, tail

    # Nothing else was hurt: the open session and a new one both work.
    assert good.execute("select current_user").fetchone() == (OWNER,)
    good.close()
    with world.connect("shop-unix", world.token(world.grant("shop-unix"))) as fresh:
        assert fresh.execute("select count(*) from orders").fetchone() == (100,)
    assert (scram_exchanges.started, scram_exchanges.verified) == (4, 2)

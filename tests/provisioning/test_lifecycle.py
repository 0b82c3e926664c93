"""Grants made real on PostgreSQL: provision, reveal, use, revoke, expire, drift, failure.

The worker's jobs are run directly (`JobRunner.run_once`) with the test clock, so the
tests wait on nothing; the database and the target are real.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.provisioning import postgres as pgconn
from accord.provisioning import service as provisioning
from accord.worker.job_runner import JobRunner
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, Env, _pg_reachable, make_env


def _policy(resource: str, *, port: int = 5432, reconcile: str = "report") -> str:
    return f"""\
users: [alice, bob, carol, dave]
groups: {{engineers: [alice], leads: [bob], admins: [carol], auditors: [dave]}}
accord: {{admins: [admins], auditors: [auditors]}}
resources:
  - name: {resource}
    labels: {{env: lab}}
    owners: [leads]
    roles: [read, write]
    reconcile: {reconcile}
    provision:
      type: postgres
      dsn_env: ACCORD_TEST_TARGET_DSN
      port: {port}
      database: TARGETDB
      roles:
        read: {{privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}}
        write: {{privileges: ["SELECT, INSERT ON ALL TABLES IN SCHEMA public"]}}
workflows:
  - name: lab
    match: 'true'
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{{approvers: [leads]}}]
"""


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A database to grant access to, with an `orders` table; roles are cleaned up after."""
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail("PostgreSQL is required but unreachable")
        pytest.skip("PostgreSQL is not reachable")
    suffix = uuid.uuid4().hex[:8]
    db = f"accord_target_{suffix}"
    resource = f"lab{suffix}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int, total int)")
        conn.execute("INSERT INTO orders VALUES (1, 100)")
    monkeypatch.setenv("ACCORD_TEST_TARGET_DSN", dsn)
    yield {"db": db, "dsn": dsn, "resource": resource}
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for (role,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                    (f"accord_{resource}%",)).fetchall():
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        login = pgconn.login_name("alice", resource)
        others = conn.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON "
                              "r.oid = m.member WHERE r.rolname = %s", (login,)).fetchone()
        if others and others[0] == 0:
            conn.execute(f'DROP ROLE IF EXISTS "{login}"')


def _env(sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str],
         **kw: Any) -> tuple[Env, JobRunner]:
    text = _policy(target["resource"], **kw).replace("TARGETDB", target["db"])
    env = make_env(sessions, tmp_path, text)
    runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                       env.clock)
    return env, runner


def _connect(target: dict[str, str], login: str, password: str) -> psycopg.Connection[Any]:
    dsn = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgres@", f"{login}:{password}@")
    return psycopg.connect(f"{dsn}/{target['db']}", autocommit=True, connect_timeout=5)


def _ask(env: Env, target: dict[str, str], role: str = "read", duration: str = "1h") -> Any:
    return env.ask("alice", resource=target["resource"], role=role, duration=duration)


def test_grant_reveal_use_and_revoke(sessions: sessionmaker[Session], tmp_path: Path,
                                     target: dict[str, str]) -> None:
    env, runner = _env(sessions, tmp_path, target)
    with env.client:
        req = _ask(env, target)
        assert req["status"] == "approved"
        assert req["grant"]["status"] == "provisioning"
        assert runner.run_once() == 1
        req = env.get("alice", f"/api/v1/requests/{req['id']}").json()
        grant = req["grant"]
        assert (req["status"], grant["status"]) == ("active", "active")
        assert grant["connection"]["database"] == target["db"]
        assert grant["secret_available"] and "password" not in str(grant)

        assert env.post("bob", f"/api/v1/grants/{grant['id']}/reveal").status_code == 404
        r = env.post("alice", f"/api/v1/grants/{grant['id']}/reveal")
        assert r.status_code == 200, r.text
        secret = r.json()
        assert env.post("alice", f"/api/v1/grants/{grant['id']}/reveal").status_code == 409

        conn = _connect(target, secret["login"], secret["password"])
        assert conn.execute("SELECT total FROM orders").fetchall() == [(100,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders")

        assert env.act("bob", req["id"], "revoke", comment="done").status_code == 200
        assert runner.run_once() == 1  # the deprovision job
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the open session was terminated
        conn.close()
        with pytest.raises(psycopg.OperationalError):
            _connect(target, secret["login"], secret["password"])
        types = [e["type"] for e in env.events(subject=f"grant:{grant['id']}")]
        assert types == ["grant.provisioning", "grant.activated", "grant.secret_revealed",
                         "grant.revoked", "grant.deprovisioned"]


def test_expiry_runs_at_the_end_and_takes_access_away(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str]
) -> None:
    env, runner = _env(sessions, tmp_path, target)
    with env.client:
        req = _ask(env, target, duration="10m")
        runner.run_once()
        gid = env.get("alice", f"/api/v1/requests/{req['id']}").json()["grant"]["id"]
        secret = env.post("alice", f"/api/v1/grants/{gid}/reveal").json()
        conn = _connect(target, secret["login"], secret["password"])
        env.clock.advance(minutes=9, seconds=59)
        assert runner.run_once() == 0  # not yet
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        env.clock.advance(seconds=1)
        # The expiry job, due exactly now, and in the same pass the deprovision job it queued.
        assert runner.run_once() == 2
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the open session was ended with the grant
        conn.close()
        with pytest.raises(psycopg.OperationalError):
            _connect(target, secret["login"], secret["password"])
        types = [e["type"] for e in env.events(subject=f"grant:{gid}")]
        assert types[-2:] == ["grant.expired", "grant.deprovisioned"]
        assert target["resource"] and (target["resource"], "read") not in {
            (target["resource"], role) for _u, role in env.st.connectors()
            .get(target["resource"]).granted()}


def test_drift_is_reported_and_enforced(sessions: sessionmaker[Session], tmp_path: Path,
                                        target: dict[str, str]) -> None:
    env, runner = _env(sessions, tmp_path, target, reconcile="enforce")
    with env.client:
        group = pgconn.group_name(target["resource"], "read")
        # make the group role exist (as a first grant would), then hand it out by hand
        req = _ask(env, target)
        runner.run_once()
        env.act("bob", req["id"], "revoke")
        runner.run_once()
        with psycopg.connect(target["dsn"], autocommit=True) as conn:
            login = pgconn.login_name("alice", target["resource"])
            conn.execute(f'GRANT "{group}" TO "{login}"')
        runner.reconcile_all()  # this period's reconciliation, as a job
        assert runner.run_once() == 1
        drift = env.events(type="drift.detected")
        assert [(d["data"]["user"], d["data"]["role"]) for d in drift] == [("alice", "read")]
        assert [e["type"] for e in env.events(type="drift.revoked")] == ["drift.revoked"]
        assert env.st.connectors().get(target["resource"]).granted() == set()


def test_a_target_that_is_down_fails_provisioning_after_retries(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACCORD_TEST_TARGET_DSN", "postgresql://postgres@127.0.0.1:1/nowhere")
    env, runner = _env(sessions, tmp_path, target)
    with env.client:
        req = _ask(env, target)
        for _ in range(5):
            runner.run_once()
            env.clock.advance(minutes=11)  # past any backoff
        body = env.get("alice", f"/api/v1/requests/{req['id']}").json()
        assert body["status"] == "provision_failed"
        failed = env.events(type="grant.provision_failed")
        assert len(failed) == 1 and "nowhere" not in str(failed)


def test_removing_a_user_from_the_policy_revokes_their_access(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str]
) -> None:
    env, runner = _env(sessions, tmp_path, target)
    with env.client:
        req = _ask(env, target)
        runner.run_once()
        text = env.policy_path.read_text().replace("engineers: [alice]", "engineers: []")
        text = text.replace("users: [alice, bob, carol, dave]", "users: [bob, carol, dave]")
        env.write_policy(text)
        assert env.post("carol", "/api/v1/admin/reload").status_code == 200
        assert runner.run_once() == 1
        gid = req["grant"]["id"]
        types = [e["type"] for e in env.events(subject=f"grant:{gid}")]
        assert types[-2:] == ["grant.revoked", "grant.deprovisioned"]


def test_an_admin_denying_after_approval_takes_access_away(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str]
) -> None:
    env, runner = _env(sessions, tmp_path, target)
    with env.client:
        req = _ask(env, target)
        runner.run_once()
        r = env.act("carol", req["id"], "deny", comment="not during the freeze")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "revoked"
        assert runner.run_once() == 1
        with transaction(env.st.sessions):
            pass
        assert env.st.connectors().get(target["resource"]).granted() == set()


def test_drift_to_a_role_accord_never_made_is_found_and_removed(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str]
) -> None:
    env, runner = _env(sessions, tmp_path, target, reconcile="enforce")
    outsider = f"dba_friend_{target['resource']}"
    with env.client:
        req = _ask(env, target)
        runner.run_once()  # creates the group role
        env.act("bob", req["id"], "revoke")
        runner.run_once()
        group = pgconn.group_name(target["resource"], "read")
        with psycopg.connect(target["dsn"], autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{outsider}" LOGIN')
            conn.execute(f'GRANT "{group}" TO "{outsider}"')
        try:
            runner.reconcile_all()
            assert runner.run_once() == 1
            assert [d["data"]["user"] for d in env.events(type="drift.detected")] == [outsider]
            assert len(env.events(type="drift.revoked")) == 1
            assert env.st.connectors().get(target["resource"]).granted() == set()
        finally:
            with psycopg.connect(target["dsn"], autocommit=True) as conn:
                conn.execute(f'DROP ROLE IF EXISTS "{outsider}"')


def test_reconciliation_runs_once_a_period_however_many_processes_ask(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str]
) -> None:
    """Every process's runner enqueues each period's reconciliation; one runs it. (Each
    used to reconcile on its own timer: N processes reported each drift N times.)"""
    env, runner = _env(sessions, tmp_path, target)
    other = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                      env.clock)
    outsider = f"dba_friend_{target['resource']}"
    with env.client:
        req = _ask(env, target)
        runner.run_once()  # creates the group role
        env.act("bob", req["id"], "revoke")
        runner.run_once()
        group = pgconn.group_name(target["resource"], "read")
        with psycopg.connect(target["dsn"], autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{outsider}" LOGIN')
            conn.execute(f'GRANT "{group}" TO "{outsider}"')
        try:
            runner.reconcile_all()
            other.reconcile_all()
            assert runner.run_once() + other.run_once() == 1
            assert len(env.events(type="drift.detected")) == 1
            env.clock.advance(minutes=1)  # the next period: reported again, once
            other.reconcile_all()
            runner.reconcile_all()
            assert other.run_once() + runner.run_once() == 1
            assert len(env.events(type="drift.detected")) == 2
        finally:
            with psycopg.connect(target["dsn"], autocommit=True) as conn:
                conn.execute(f'DROP ROLE IF EXISTS "{outsider}"')


def test_a_grant_ended_but_not_yet_taken_away_is_not_drift(
    sessions: sessionmaker[Session], tmp_path: Path, target: dict[str, str]
) -> None:
    """Between a grant's end and its deprovisioning job the target still holds it: Accord
    knows and is taking it away, which is no drift (reconciling reported it as drift)."""
    env, runner = _env(sessions, tmp_path, target)
    with env.client:
        req = _ask(env, target)
        runner.run_once()
        assert env.act("bob", req["id"], "revoke").status_code == 200  # job not run yet
        with transaction(env.st.sessions) as session:
            drift = provisioning.reconcile(session, connectors=env.st.connectors(),
                                           resource=target["resource"], now=env.clock(),
                                           enforce=False)
        assert drift == []
        assert runner.run_once() == 1  # deprovisioned: the target holds nothing now
        assert env.st.connectors().get(target["resource"]).granted() == set()

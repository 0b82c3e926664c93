"""A policy that declares tests is loaded only when they pass (POST /admin/reload, SIGHUP,
start): a refusal leaves the running policy, is logged, and is a `policy.refused` event."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from accord.bootstrap import announce, build_state
from accord.cli.main import app
from accord.ledger.events import Actor
from accord.ledger.models import LedgerEntry
from accord.ledger.service import decode
from accord.requests.policy_tests import PolicyTestsFailed
from accord.settings import Settings
from tests.conftest import POLICY, Env

RELOAD = "/api/v1/admin/reload"
NEW = POLICY.replace("max_duration: 4h", "max_duration: 6h")

TESTS = """\
cases:
  - name: prod reads go to a lead, then the owners
    request: {requester: alice, resource: orders-db, role: read, duration: 1h,
              reason: "INC-1: look at orders"}
    expect: {outcome: pending, steps: [[bob, gina], [carol, erin]]}
  - name: five hours is too long
    request: {requester: alice, resource: orders-db, role: read, duration: 5h,
              reason: "INC-1: look at orders"}
    expect: {outcome: refused}
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def refused(env: Env) -> list[dict[str, Any]]:
    return env.events(type="policy.refused")


def test_reload_refuses_a_policy_whose_tests_fail(env: Env) -> None:
    running = env.st.policies.current.version
    loaded_before = env.events(type="policy.loaded")
    (env.policy_path.parent / "accord.tests.yaml").write_text(TESTS, encoding="utf-8")
    env.write_policy(NEW)  # 5h is no longer too long

    r = env.post("carol", RELOAD)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "https://accord.dev/problems/policy-tests-failed"
    assert body["failed_cases"] == ["five hours is too long"]
    assert body["version"] == sha(NEW)
    assert "five hours is too long" in body["detail"]
    assert "1 passed, 1 failed" in body["detail"] and "running policy is unchanged" in body[
        "detail"]

    assert env.st.policies.current.version == running  # nothing changed
    assert env.events(type="policy.loaded") == loaded_before
    r = env.post("alice", "/api/v1/requests", json={
        "resource": "orders-db", "role": "read", "duration": "5h",
        "reason": "INC-1: look at orders"})
    assert r.status_code == 422, r.text  # the running policy's 4h still holds
    [event] = refused(env)
    assert event["actor"] == {"kind": "user", "id": "carol", "via": "api"}
    assert event["subject"] == f"policy:{sha(NEW)[:12]}"
    data = event["data"]
    assert data["version"] == sha(NEW) and data["running"] == running
    assert data["reason"] == "tests_failed" and data["passed"] == 1
    assert data["failed"] == [{"file": str(env.policy_path.parent / "accord.tests.yaml"),
                               "case": "five hours is too long", "fields": ["outcome"]}]

    # The tests fixed with the policy: it loads.
    (env.policy_path.parent / "accord.tests.yaml").write_text(
        TESTS.replace("duration: 5h", "duration: 7h"), encoding="utf-8")
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert env.st.policies.current.version == sha(NEW)
    assert len(refused(env)) == 1


def test_policy_tests_key_and_a_broken_tests_file_load_nothing(env: Env) -> None:
    running = env.st.policies.current.version
    env.write_policy(NEW + "policy: {tests: checks/prod.yaml}\n")
    r = env.post("carol", RELOAD)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "its tests cannot run" in detail and "running policy is unchanged" in detail
    assert f"{env.policy_path.parent / 'checks' / 'prod.yaml'}: no such file" in detail

    (env.policy_path.parent / "checks").mkdir()
    tests = env.policy_path.parent / "checks" / "prod.yaml"
    tests.write_text(TESTS.replace("requester: alice, resource: orders-db, role: read, "
                                   "duration: 5h", "requester: zed, resource: orders-db, "
                                   "role: read, duration: 5 hours"), encoding="utf-8")
    r = env.post("carol", RELOAD)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f'{tests}: case 2 "five hours is too long": request.duration: \'5 hours\' is not ' \
           "a duration" in detail
    assert f'{tests}: case 2 "five hours is too long": request.requester: unknown user ' \
           '"zed"' not in detail  # a case that does not validate is not checked further
    assert env.st.policies.current.version == running
    assert refused(env) == []

    tests.write_text(TESTS.replace("duration: 5h", "duration: 7h"), encoding="utf-8")
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert env.st.policies.current.version == sha(NEW + "policy: {tests: checks/prod.yaml}\n")


def test_start_and_sighup_refuse_a_policy_whose_tests_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {"ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'accord.db'}",
           "ACCORD_DATA_DIR": str(tmp_path)}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    try:
        (tmp_path / "accord.tests.yaml").write_text(TESTS, encoding="utf-8")
        config.write_text(NEW, encoding="utf-8")
        # SIGHUP runs bootstrap.announce (and logs the refusal it raises again).
        with pytest.raises(PolicyTestsFailed):
            announce(st, Actor("system", "sighup", "cli"))
        assert st.policies.current.version == sha(POLICY)
        assert "refused" in caplog.text and "five hours is too long" in caplog.text
        with st.sessions() as session:
            rows = session.execute(select(LedgerEntry).where(
                LedgerEntry.type == "policy.refused")).scalars().all()
            [event] = [decode(row) for row in rows]
        assert event["actor"]["id"] == "sighup"
        assert event["data"]["version"] == sha(NEW)
        assert event["data"]["running"] == sha(POLICY)
    finally:
        st.sessions.kw["bind"].dispose()

    # A start (any command that loads the policy): a clear error, exit 1, recorded too.
    for name, value in {**env, "ACCORD_CONFIG": str(config)}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["token", "list"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert said.startswith(f"error: {config}: its tests failed")
    assert '"five hours is too long"' in said and "`accord policy test` shows why" in said
    st = build_state(Settings.from_env(env), config_path=config, upgrade="never",
                     announce_policy=False)
    try:
        with st.sessions() as session:
            rows = session.execute(select(LedgerEntry).where(
                LedgerEntry.type == "policy.refused")).scalars().all()
            assert [decode(row)["actor"]["id"] for row in rows] == ["sighup", "accord"]
    finally:
        st.sessions.kw["bind"].dispose()


def test_reload_runs_statement_cases_with_the_gateways_parser(env: Env) -> None:
    """Statement cases gate a load too: the entry point hands the server the gateway's
    parser (without it, they would all fail)."""
    cases = """\
cases:
  - name: orders-db has no guardrails
    statement: {resource: orders-db, role: read, sql: "DELETE FROM orders"}
    expect: {action: EXPECTED, rules: []}
"""
    tests = env.policy_path.parent / "accord.tests.yaml"
    tests.write_text(cases.replace("EXPECTED", "block"), encoding="utf-8")
    env.write_policy(NEW)
    r = env.post("carol", RELOAD)
    assert r.status_code == 409, r.text
    assert r.json()["failed_cases"] == ["orders-db has no guardrails"]
    assert refused(env)[-1]["data"]["failed"][0]["fields"] == ["action"]
    tests.write_text(cases.replace("EXPECTED", "none"), encoding="utf-8")
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert env.st.policies.current.version == sha(NEW)

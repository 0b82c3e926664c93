"""`accord policy replay` (an operator command on a real database: SQLite file and
PostgreSQL) and `accord policy explain` (a client of the API), end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from typer.testing import CliRunner

from accord.bootstrap import build_state
from accord.cli.main import app
from accord.db import Base, make_engine, transaction, utcnow
from accord.identity.caller import Caller
from accord.policy.models import PolicyVersion
from accord.requests import service
from accord.settings import Settings
from tests.conftest import POLICY, LiveServer

runner = CliRunner()
AUTO_APPROVE = "    auto_approve: '\"engineers\" in request.requester.groups && " \
               "request.role == \"read\"'\n"
REQUESTS = [("erin", "staging-db", "read", "debugging"),  # auto_approve
            ("gina", "staging-db", "read", "debugging"),  # auto_approve
            ("bob", "staging-db", "read", "debugging"),  # pending
            ("alice", "orders-db", "read", "short"),  # auto_deny
            ("alice", "orders-db", "write", "INC-1 fix the totals"),  # pending
            ("alice", "lab", "use", "")]  # default_deny


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        (tmp_path / "data").mkdir()
        yield f"sqlite:///{tmp_path / 'data' / 'accord.db'}"
    else:
        engine: Engine = request.getfixturevalue("fresh_pg")
        yield engine.url.render_as_string(hide_password=False)


def seeded(url: str, tmp_path: Path) -> dict[str, str]:
    """A database with the six requests of REQUESTS, committed for real."""
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {"ACCORD_DATA_DIR": str(tmp_path / "data"), "ACCORD_CONFIG": str(config),
           "ACCORD_DATABASE_URL": url}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    with transaction(st.sessions) as s:
        for user, resource, role, reason in REQUESTS:
            service.create(s, policy=st.policies.current, caller=Caller(user, "api"),
                           resource=resource, role=role, duration=timedelta(hours=1),
                           reason=reason, now=utcnow())
    st.sessions.kw["bind"].dispose()
    return env


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        out = {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
               for t in Base.metadata.sorted_tables}
    engine.dispose()
    return out


def test_replay_lists_the_changes_and_writes_nothing(database: str, tmp_path: Path) -> None:
    env = seeded(database, tmp_path)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(POLICY.replace(AUTO_APPROVE, ""), encoding="utf-8")
    files = sorted(p.name for p in (tmp_path / "data").iterdir())
    before = counts(database)

    r = runner.invoke(app, ["policy", "replay", str(candidate), "--json"], env=env)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["requests"], report["changed"]) == (6, 2)
    assert report["counts"] == {"outcome": 2, "workflow": 0, "rule": 2, "approvers": 0}
    assert [(c["requester"], c["changes"]) for c in report["changes"]] == [
        ("erin", ["outcome", "rule"]), ("gina", ["outcome", "rule"])]

    r = runner.invoke(app, ["policy", "replay", str(candidate), "--since", "1h"], env=env)
    assert r.exit_code == 0, r.output
    assert "Replayed 6 requests filed since " in r.stdout
    assert "2 would change: outcome 2, workflow 0, rule 2, approvers 0" in r.stdout
    assert "approved (staging, auto_approve)" in r.stdout
    assert "pending (staging, match): [bob, gina]" in r.stdout

    same = runner.invoke(app, ["policy", "replay", env["ACCORD_CONFIG"]], env=env)
    assert same.exit_code == 0 and "None would change." in same.stdout
    assert counts(database) == before  # the ledger's size and every table
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == files


BAD = [
    ("workflows:\n  - name: [", "line 2, column 12: not valid YAML"),
    (POLICY.replace("match: 'resource.labels.env == \"prod\"'",
                    "match: 'resource.labels.env = \"prod\"'"),
     "workflows[1] (prod).match: invalid CEL: "),
    (POLICY.replace("auto_deny: 'size(request.reason) < 10'",
                    "auto_deny: 'size(request.reasons) < 10'"), None),  # valid CEL, no error
    (POLICY.replace("steps: [{approvers: [leads]}]", "steps: [{approvers: [leeds]}]"),
     'workflows[0] (staging).steps[0].approvers[0]: unknown group "leeds"'),
]


def test_bad_candidates_are_clear_errors_and_change_nothing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'accord.db'}"
    env = seeded(url, tmp_path)
    before = counts(url)
    candidate = tmp_path / "candidate.yaml"
    for text, said in BAD:
        candidate.write_text(text, encoding="utf-8")
        r = runner.invoke(app, ["policy", "replay", str(candidate)], env=env)
        if said is None:  # an input the rule reads that does not exist: fails at evaluation
            assert r.exit_code == 2, r.output
            assert (f"error: {candidate}: workflows[1].auto_deny (prod): could not be "
                    "evaluated for 2 recorded request(s), first request 4: ") in r.stderr
            assert "fails closed" in r.stderr
            continue
        assert r.exit_code == 2, r.output
        assert r.stdout == ""
        assert f"error: {candidate}: {said}" in r.stderr, r.stderr
    missing = runner.invoke(app, ["policy", "replay", str(tmp_path / "nope.yaml")], env=env)
    assert missing.exit_code == 2 and "nope.yaml: no such file" in missing.stderr
    since = runner.invoke(app, ["policy", "replay", env["ACCORD_CONFIG"], "--since", "soon"],
                          env=env)
    assert since.exit_code == 2 and since.stderr.startswith("error: --since: ")
    nodb = runner.invoke(app, ["policy", "replay", env["ACCORD_CONFIG"]],
                         env={**env, "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert nodb.exit_code == 1 and "no Accord database at" in nodb.stderr
    assert not (tmp_path / "x.db").exists()
    assert counts(url) == before


def test_explain_prints_the_decision_and_a_mismatch_in_red(live: LiveServer) -> None:
    # Every write before the first call the server answers (the test's connection is the
    # server's too, and a call's session ends after its response).
    env = {"ACCORD_URL": live.url, "ACCORD_TOKEN": live.env.tokens["alice"]}
    rid = live.env.ask("alice", "orders-db", "read", reason="short")["id"]
    second = POLICY.replace("users: [alice,", "users: [hank, alice,")
    live.env.write_policy(second)
    assert live.env.post("carol", "/api/v1/admin/reload").status_code == 200
    tampered = live.env.ask("alice", "orders-db", "read", reason="short")["id"]
    with transaction(live.env.st.sessions) as s:
        s.execute(update(PolicyVersion)
                  .where(PolicyVersion.version == live.env.st.policies.current.version)
                  .values(text=second.replace("size(request.reason) < 10",
                                              "size(request.reason) < 3")))

    r = runner.invoke(app, ["policy", "explain", str(rid)], env=env)
    assert r.exit_code == 0, r.output
    assert "Recorded:   denied (workflow prod, rule auto_deny)" in r.stdout
    assert "Reproduced: denied (workflow prod, rule auto_deny)  ✔ reproduced" in r.stdout
    assert "not the version in force now" in r.stdout
    assert "  1. staging: no match" in r.stdout and "  2. prod: matched" in r.stdout
    assert "       auto_deny: size(request.reason) < 10 → true" in r.stdout
    assert '         request.reason = "short"' in r.stdout
    assert "MISMATCH" not in r.stdout

    r = runner.invoke(app, ["policy", "explain", str(tampered)], env=env)
    assert r.exit_code == 1, r.output
    assert "MISMATCH: outcome: recorded denied, reproduced pending" in r.stdout
    assert "MISMATCH: the stored text of policy version " in r.stdout
    assert "✔ reproduced" not in r.stdout
    as_json = runner.invoke(app, ["policy", "explain", str(tampered), "--json"], env=env)
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["mismatch"]

    bob = runner.invoke(app, ["policy", "explain", str(rid)],
                        env={**env, "ACCORD_TOKEN": live.env.tokens["bob"]})
    assert bob.exit_code == 1  # a lead sees the request, not its explanation
    assert bob.stderr == "error: a request's explanation is for its requester, admins and " \
                         "auditors\n"

"""Replaying recorded requests under a candidate policy (accord.requests.replay), on SQLite
and PostgreSQL: exactly the requests a change affects, counted by kind, and nothing written."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accord.db import Base
from accord.policy.engine import Policy
from accord.requests.replay import Report, replay
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY, Env


def file(env: Env) -> dict[str, int]:
    """Six requests, one of each kind of decision (their ids by name)."""
    return {
        "erin-staging": env.ask("erin", "staging-db", "read")["id"],  # auto_approve
        "gina-staging": env.ask("gina", "staging-db", "read")["id"],  # auto_approve
        "bob-staging": env.ask("bob", "staging-db", "read")["id"],  # pending: [gina]
        "short": env.ask("alice", "orders-db", "read", reason="short")["id"],  # auto_deny
        "prod-write": env.ask("alice", "orders-db", "write")["id"],  # pending: 2 steps
        "lab": env.ask("alice", "lab", "use")["id"],  # default_deny
    }


def candidate(text: str, env: Env) -> Policy:
    return Policy(parse_policy_text(text, "candidate.yaml"), env.st.policies.current.directory)


def swap(old: str, new: str, text: str = POLICY) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def run(env: Env, text: str, **window: Any) -> Report:
    now = env.clock()
    with env.st.sessions() as s:
        report = replay(s, candidate(text, env),
                        since=window.get("since", now - timedelta(days=30)),
                        until=window.get("until", now + timedelta(seconds=1)))
        s.rollback()
    return report


def changed(report: Report) -> dict[int, list[str]]:
    return {c.request_id: c.kinds for c in report.changes}


def test_the_policy_in_force_changes_nothing(env: Env) -> None:
    file(env)
    report = run(env, POLICY)
    assert report.requests == 6 and report.changes == [] and report.errors == []
    assert report.counts == {"outcome": 0, "workflow": 0, "rule": 0, "approvers": 0}
    assert dict(report.versions) == {env.st.policies.current.version: 6}


def test_a_changed_workflow_lists_exactly_the_requests_it_affects(env: Env) -> None:
    ids = file(env)
    text = swap("    auto_approve: '\"engineers\" in request.requester.groups && "
                "request.role == \"read\"'\n", "")
    report = run(env, text)
    assert changed(report) == {ids["erin-staging"]: ["outcome", "rule"],
                               ids["gina-staging"]: ["outcome", "rule"]}
    assert report.counts == {"outcome": 2, "workflow": 0, "rule": 2, "approvers": 0}
    first = report.changes[0].as_dict()
    assert first["recorded"] == {"outcome": "approved", "workflow": "staging",
                                 "rule": "auto_approve", "steps": []}
    assert first["candidate"] == {"outcome": "pending", "workflow": "staging", "rule": "match",
                                  "steps": [{"approvers": ["leads"], "min_approvals": 1,
                                             "eligible": ["bob", "gina"]}]}


def test_who_approves_is_a_change_of_its_own(env: Env) -> None:
    ids = file(env)
    report = run(env, swap("leads: [bob, gina]", "leads: [bob]"))
    # bob's own staging request now has nobody but him to approve it: refused when filed.
    assert changed(report) == {ids["bob-staging"]: ["outcome"],
                               ids["prod-write"]: ["approvers"]}
    change = next(c for c in report.changes if c.request_id == ids["prod-write"])
    assert [s["eligible"] for s in change.recorded["steps"]] == [["bob", "gina"],
                                                                  ["carol", "erin"]]
    assert [s["eligible"] for s in change.candidate["steps"]] == [["bob"], ["carol", "erin"]]
    refused = next(c for c in report.changes if c.request_id == ids["bob-staging"])
    assert refused.candidate["outcome"] == "refused"
    assert "nobody can give it" in refused.candidate["reason"]


def test_refused_workflows_and_dropped_resources(env: Env) -> None:
    ids = file(env)
    text = swap("max_duration: 4h", "max_duration: 30m")  # every prod request asked 1h
    text = swap("    match: 'resource.labels.env == \"staging\"'",
                "    match: 'resource.labels.env in [\"staging\", \"lab\"]'", text)
    report = run(env, text)
    assert changed(report) == {ids["short"]: ["outcome"], ids["prod-write"]: ["outcome"],
                               ids["lab"]: ["outcome", "workflow", "rule"]}
    short = next(c for c in report.changes if c.request_id == ids["short"])
    assert short.candidate["outcome"] == "refused" and short.candidate["workflow"] == "prod"
    assert "over the maximum of 30m" in short.candidate["reason"]
    lab = next(c for c in report.changes if c.request_id == ids["lab"])
    assert (lab.candidate["outcome"], lab.candidate["workflow"]) == ("pending", "staging")
    # A resource the candidate drops: what the API would refuse.
    gone = run(env, swap("  - {name: lab, kind: generic, labels: {env: lab}, owners: [frank], "
                         "roles: [use]}\n", ""))
    assert changed(gone) == {ids["lab"]: ["outcome"]}
    assert gone.changes[0].candidate["reason"].startswith('resource: unknown resource "lab"')


def test_the_window_and_the_rules_that_error(env: Env) -> None:
    first = env.ask("erin", "staging-db", "read")["id"]
    env.clock.advance(days=2)
    later = env.ask("gina", "staging-db", "read")["id"]
    text = swap("match: 'resource.labels.env == \"staging\"'",
                "match: 'resource.labels.team == \"web\"'")
    report = run(env, text, since=env.clock() - timedelta(days=1))
    assert report.requests == 1 and changed(report) == {later: ["outcome", "workflow", "rule"]}
    assert [(e.workflow, e.rule, e.requests, e.first_request) for e in report.errors] == [
        ("staging", "match", 1, later)]
    assert "team" in report.errors[0].error
    assert first not in changed(run(env, text, since=env.clock() - timedelta(hours=1)))


def counts(session: Session) -> dict[str, int]:
    return {t.name: session.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables}


def test_replay_writes_nothing(env: Env) -> None:
    file(env)
    with env.st.sessions() as s:
        before = counts(s)
        report = replay(s, candidate(swap("leads: [bob, gina]", "leads: [gina]"), env),
                        since=None, until=env.clock() + timedelta(seconds=1))
        assert report.changes and not s.new and not s.dirty and not s.deleted
        assert counts(s) == before
        s.rollback()
    assert before["ledger_entries"] > 6


def test_the_replay_api_is_for_auditors_and_admins_and_writes_nothing(env: Env) -> None:
    ids = file(env)
    text = swap("    auto_approve: '\"engineers\" in request.requester.groups && "
                "request.role == \"read\"'\n", "")
    with env.st.sessions() as s:
        before = counts(s)
    for user in ("dave", "carol"):  # an auditor, an admin
        r = env.post(user, "/api/v1/policy/replay", json={"candidate": text, "since": "1d"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["requests"], body["changed"]) == (6, 2)
        assert body["counts"] == {"outcome": 2, "workflow": 0, "rule": 2, "approvers": 0}
        assert [c["request_id"] for c in body["changes"]] == [ids["erin-staging"],
                                                               ids["gina-staging"]]
        assert body["candidate"] == "candidate.yaml" and body["errors"] == []
    r = env.post("alice", "/api/v1/policy/replay", json={"candidate": text})
    assert r.status_code == 403
    assert r.json()["detail"] == "this needs the Accord auditor or admin role"

    broken = swap("match: 'resource.labels.env == \"prod\"'", "match: 'resource.labels.env ='")
    r = env.post("dave", "/api/v1/policy/replay", json={"candidate": broken, "name": "new.yaml"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("new.yaml does not load: workflows[1].match: "
                                         "invalid CEL: ")
    assert [e["loc"] for e in r.json()["errors"]] == ["workflows[1].match"]
    r = env.post("dave", "/api/v1/policy/replay", json={"candidate": text, "since": "lately"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "since"
    with env.st.sessions() as s:
        assert counts(s) == before

"""GET /api/v1/requests/{id}/explain: a decision reproduced from what the ledger recorded,
under the policy version that made it, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.people.models import DirectoryChange
from accord.people.snapshot import Directory, Person
from accord.policy.models import PolicyVersion
from accord.requests import explain as explaining
from accord.requests.models import AccessRequest
from tests.conftest import POLICY, Env, make_env

# The shared policy, plus a workflow with no steps and no rule that decides (no_approvers)
# and break-glass for the admins.
EXPLAIN_POLICY = POLICY.replace(
    "  - {name: lab,",
    "  - {name: vault, kind: generic, labels: {env: vault}, owners: [frank], roles: [use]}\n"
    "  - {name: lab,",
) + """\
  - name: vault
    match: 'resource.labels.env == "vault"'
    auto_approve: 'request.duration < duration("1m")'
break_glass: {groups: [admins], reviewers: [auditors], max_duration: 1h}
"""


@pytest.fixture
def xenv(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, EXPLAIN_POLICY)
    with e.client:
        yield e


def ask(env: Env, user: str, resource: str, role: str, reason: str = "INC-1 investigate orders",
        **extra: Any) -> int:
    r = env.post(user, "/api/v1/requests", json={"resource": resource, "role": role,
                                                 "duration": "1h", "reason": reason, **extra})
    assert r.status_code == 201, r.text
    rid: int = r.json()["id"]
    return rid


def explain(env: Env, user: str, rid: int, status: int = 200) -> dict[str, Any]:
    r = env.get(user, f"/api/v1/requests/{rid}/explain")
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def statuses(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(w["name"], w["status"]) for w in body["workflows"]]


def test_each_kind_of_decision_is_reproduced(xenv: Env) -> None:
    auto = ask(xenv, "erin", "staging-db", "read")
    denied = ask(xenv, "alice", "orders-db", "read", reason="short")
    steps = ask(xenv, "alice", "orders-db", "admin")
    default = ask(xenv, "alice", "lab", "use")
    nobody = ask(xenv, "frank", "vault", "use")
    glass = ask(xenv, "carol", "orders-db", "write", reason="SEV1: checkout is down",
                emergency=True)

    body = explain(xenv, "erin", auto)
    assert body["mismatch"] == []
    assert body["recorded"]["outcome"] == body["reproduced"]["outcome"] == "approved"
    assert body["reproduced"]["rule"] == "auto_approve"
    assert statuses(body) == [("staging", "matched"), ("prod", "not reached"),
                              ("vault", "not reached")]
    checks = {c["rule"]: c for c in body["workflows"][0]["checks"]}
    assert checks["auto_approve"]["result"] is True
    assert checks["auto_approve"]["inputs"] == {
        "request.requester.groups": ["dba", "engineers"], "request.role": "read"}
    assert checks["match"]["inputs"] == {"resource.labels.env": "staging"}
    assert body["policy"] == {"version": xenv.st.policies.current.version,
                              "source": str(xenv.policy_path), "stored": True,
                              "intact": True, "in_force": True}
    assert isinstance(body["ledger_index"], int)

    body = explain(xenv, "alice", denied)
    assert body["mismatch"] == []
    assert (body["reproduced"]["outcome"], body["reproduced"]["rule"]) == ("denied", "auto_deny")
    assert statuses(body)[:2] == [("staging", "no match"), ("prod", "matched")]
    prod = {c["rule"]: c for c in body["workflows"][1]["checks"]}
    assert prod["auto_deny"]["result"] is True
    assert prod["auto_deny"]["inputs"] == {"request.reason": "short"}
    assert prod["max_duration"]["result"] is True

    body = explain(xenv, "alice", steps)
    assert body["mismatch"] == []
    assert body["reproduced"]["outcome"] == "pending"
    assert body["reproduced"]["eligible"] == [["bob", "gina"], ["carol", "erin"],
                                              ["carol", "frank"]]
    assert [s["elevated"] for s in body["reproduced"]["steps"]] == [False, False, True]
    assert body["approvers"] == {"stored": body["reproduced"]["eligible"],
                                 "reproduced": body["reproduced"]["eligible"], "same": True}

    body = explain(xenv, "alice", default)
    assert body["mismatch"] == []
    assert (body["reproduced"]["outcome"], body["reproduced"]["rule"],
            body["reproduced"]["workflow"]) == ("denied", "default_deny", None)
    assert [s for _, s in statuses(body)] == ["no match"] * 3

    body = explain(xenv, "frank", nobody)
    assert body["mismatch"] == []
    assert (body["reproduced"]["outcome"], body["reproduced"]["rule"]) == ("denied",
                                                                           "no_approvers")

    body = explain(xenv, "carol", glass)
    assert body["mismatch"] == []
    assert (body["reproduced"]["outcome"], body["reproduced"]["rule"]) == ("approved",
                                                                           "break_glass")
    assert body["workflows"] == [] and body["request"]["emergency"] is True


def test_who_may_read_an_explanation(xenv: Env) -> None:
    rid = ask(xenv, "alice", "orders-db", "write")
    for user in ("alice", "dave", "carol", "frank"):  # requester, auditor, admins
        explain(xenv, user, rid)
    forbidden = explain(xenv, "bob", rid, 403)  # an approver sees the request, not this
    assert forbidden["detail"] == ("a request's explanation is for its requester, admins and "
                                   "auditors")
    assert xenv.last.headers["content-type"].startswith("application/problem+json")
    explain(xenv, "gina", ask(xenv, "erin", "lab", "use"), 404)  # not visible: 404
    explain(xenv, "alice", 999_999, 404)
    assert xenv.get(None, f"/api/v1/requests/{rid}/explain").status_code == 401


def test_a_tampered_policy_text_is_a_mismatch(xenv: Env) -> None:
    rid = ask(xenv, "alice", "orders-db", "read", reason="too short")
    assert explain(xenv, "dave", rid)["mismatch"] == []
    version = xenv.st.policies.current.version
    with transaction(xenv.st.sessions) as s:
        s.execute(update(PolicyVersion).where(PolicyVersion.version == version).values(
            text=EXPLAIN_POLICY.replace("size(request.reason) < 10", "size(request.reason) < 5")))
    body = explain(xenv, "dave", rid)
    assert body["policy"]["intact"] is False
    assert body["mismatch"][0].startswith(f"the stored text of policy version {version[:12]} "
                                          "hashes to ")
    assert "outcome: recorded denied, reproduced pending" in body["mismatch"]
    assert "rule: recorded auto_deny, reproduced match" in body["mismatch"]


def test_a_changed_request_row_or_a_missing_version_is_a_mismatch(xenv: Env) -> None:
    rid = ask(xenv, "erin", "staging-db", "read")
    with transaction(xenv.st.sessions) as s:
        s.execute(update(AccessRequest).where(AccessRequest.id == rid).values(
            rule="match", workflow="prod"))
    body = explain(xenv, "dave", rid)
    assert body["mismatch"] == [
        "the request's row says workflow prod but the ledger recorded staging",
        "the request's row says rule match but the ledger recorded auto_approve"]
    assert body["reproduced"]["rule"] == "auto_approve"  # the ledger's word is reproduced

    other = ask(xenv, "alice", "orders-db", "read")
    with transaction(xenv.st.sessions) as s:
        s.query(PolicyVersion).delete()
    body = explain(xenv, "dave", other)
    assert body["policy"]["stored"] is False and body["reproduced"] is None
    assert body["mismatch"] == [
        f"policy version {xenv.st.policies.current.version[:12]} is not stored: the decision "
        "cannot be reproduced"]


def test_an_older_version_decided_and_is_reproduced_under_it(xenv: Env) -> None:
    rid = ask(xenv, "erin", "staging-db", "read")
    old = xenv.st.policies.current.version
    xenv.write_policy(EXPLAIN_POLICY.replace(
        "auto_approve: '\"engineers\" in request.requester.groups && request.role == \"read\"'",
        "auto_approve: 'false'"))
    assert xenv.post("carol", "/api/v1/admin/reload").status_code == 200
    assert ask(xenv, "erin", "staging-db", "read") != rid
    body = explain(xenv, "erin", rid)
    assert body["mismatch"] == []
    assert body["policy"]["version"] == old and body["policy"]["in_force"] is False
    assert body["reproduced"]["rule"] == "auto_approve"


def test_the_directory_as_it_is_now_is_said(xenv: Env) -> None:
    """Best effort: the decision is reproduced over today's directory; when the routing
    involved directory people and the directory changed since, the explanation says so."""
    rid = ask(xenv, "alice", "orders-db", "write")
    with xenv.st.sessions() as s:
        req = s.get(AccessRequest, rid)
        assert req is not None
        plain = explaining.explain(s, req=req, directory=Directory())
        assert plain["directory"] == {"used": False, "changed_since": None, "note": None}
        # The provider now puts alice in a group of its own, and bob in the leads' stead.
        moved = Directory(seq=3, users={"alice": Person("alice", True)},
                          groups={"oncall": frozenset({"alice"})},
                          groups_of={"alice": frozenset({"oncall"})})
        s.add(DirectoryChange(seq=1, kind="user", name="alice",
                              at=xenv.clock.advance(minutes=1)))
        s.flush()
        body = explaining.explain(s, req=req, directory=moved)
        s.rollback()
    assert body["directory"]["used"] is True and body["directory"]["changed_since"] == 1
    assert "changed 1 time(s) since the request was filed" in body["directory"]["note"]
    assert body["inputs_differ"] == [{"path": "request.requester.groups",
                                      "recorded": ["engineers"],
                                      "reproduced": ["engineers", "oncall"]}]
    assert body["mismatch"] == []  # the decision itself does not hang on that group

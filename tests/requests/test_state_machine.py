"""Every transition of the request state machine, through the HTTP API, with its ledger event.

Shared policy (tests.conftest.POLICY), the cast:
  engineers: alice, erin, gina   leads: bob, gina   dba: carol, erin
  admins: carol, frank           auditors: dave
  staging-db: staging workflow, leads approve, engineers' reads auto-approve
  orders-db:  prod workflow, lead then owner (dba), admin role adds two admins,
              expire_after 2h, auto_deny when the reason is under 10 characters
  lab:        no workflow matches (default deny)
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.worker.sweeper import sweep_once
from tests.conftest import POLICY, Env, make_env

TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
ENVELOPE_KEYS = {"v", "type", "time", "actor", "subject", "resource", "data"}


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _get(env: Env, user: str, rid: int) -> dict[str, Any]:
    r = env.get(user, f"/api/v1/requests/{rid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _types(env: Env, subject: str) -> list[str]:
    return [e["type"] for e in env.events(subject=subject)]


def _approve_prod(env: Env, rid: int) -> dict[str, Any]:
    """Take an orders-db read request through both steps (bob, then carol)."""
    assert env.act("bob", rid, "approve").status_code == 200, env.last.text
    r = env.act("carol", rid, "approve")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "active"
    return body


def _list(env: Env, user: str, **params: Any) -> list[dict[str, Any]]:
    r = env.get(user, "/api/v1/requests", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    assert r.json()["next_cursor"] is None
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _inbox(env: Env, user: str) -> set[int]:
    return {item["id"] for item in _list(env, user, awaiting="me")}


# ---------------------------------------------------------------- deny


def test_deny_by_an_eligible_approver_ends_the_request(env: Env) -> None:
    req = env.ask("alice")
    r = env.act("bob", req["id"], "deny", comment="no ticket")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "denied"
    assert body["decided_at"] is not None
    assert body["current_step"] is None
    assert body["pending_until"] is None
    assert "bob" in body["decision_reason"]
    assert "no ticket" in body["decision_reason"]
    assert body["grant"] is None
    assert body["steps"][0]["approvals"][0]["decision"] == "deny"
    assert body["steps"][0]["approvals"][0]["via"] == "api"

    subject = f"request:{req['id']}"
    assert _types(env, subject) == ["request.created", "approval.recorded", "request.denied"]
    recorded = env.events(subject=subject, type="approval.recorded")[0]
    assert recorded["actor"] == {"kind": "user", "id": "bob", "via": "api"}
    assert recorded["data"]["decision"] == "deny"
    assert recorded["data"]["comment"] == "no ticket"
    denied = env.events(subject=subject, type="request.denied")[0]
    assert denied["actor"] == {"kind": "user", "id": "bob", "via": "api"}

    # Finished: nobody can decide it any more.
    assert env.act("gina", req["id"], "approve").status_code == 409
    assert env.act("gina", req["id"], "deny").status_code == 409
    assert _types(env, subject) == ["request.created", "approval.recorded", "request.denied"]


def test_deny_needs_an_eligible_approver_of_the_current_step(env: Env) -> None:
    req = env.ask("alice")
    # carol approves the second step, not the first; alice is the requester.
    assert env.act("carol", req["id"], "deny").status_code == 403
    assert env.act("alice", req["id"], "deny").status_code == 403
    assert _get(env, "alice", req["id"])["status"] == "pending"
    # the requester's attempt is refused and recorded as such; nothing else happened
    assert _types(env, f"request:{req['id']}") == ["request.created", "approval.refused"]


# ---------------------------------------------------------------- cancel


def test_cancel_by_the_requester_while_pending(env: Env) -> None:
    req = env.ask("alice")
    r = env.act("alice", req["id"], "cancel", comment="fixed it myself")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled"
    assert body["decided_at"] is not None
    assert "fixed it myself" in body["decision_reason"]
    events = env.events(subject=f"request:{req['id']}")
    assert [e["type"] for e in events] == ["request.created", "request.cancelled"]
    assert events[1]["actor"] == {"kind": "user", "id": "alice", "via": "api"}
    # A cancelled request leaves every inbox.
    assert req["id"] not in _inbox(env, "bob")


def test_cancel_by_anyone_else_is_forbidden(env: Env) -> None:
    req = env.ask("alice")
    for user in ("bob", "carol", "dave"):  # an approver, an admin, an auditor
        r = env.act(user, req["id"], "cancel")
        assert r.status_code == 403, (user, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert _get(env, "alice", req["id"])["status"] == "pending"
    assert _types(env, f"request:{req['id']}") == ["request.created"]


def test_cancel_when_not_pending_is_a_conflict(env: Env) -> None:
    denied = env.ask("alice")
    assert env.act("bob", denied["id"], "deny").status_code == 200
    assert env.act("alice", denied["id"], "cancel").status_code == 409

    active = env.ask("alice")
    _approve_prod(env, active["id"])
    assert env.act("alice", active["id"], "cancel").status_code == 409

    cancelled = env.ask("alice")
    assert env.act("alice", cancelled["id"], "cancel").status_code == 200
    assert env.act("alice", cancelled["id"], "cancel").status_code == 409
    assert _types(env, f"request:{cancelled['id']}") == ["request.created", "request.cancelled"]


# ---------------------------------------------------------------- relinquish


def test_relinquish_by_the_grantee_while_active(env: Env) -> None:
    req = env.ask("alice")
    grant_id = _approve_prod(env, req["id"])["grant"]["id"]
    env.clock.advance(minutes=10)

    r = env.act("alice", req["id"], "relinquish", comment="done early")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "relinquished"
    assert body["grant"]["status"] == "relinquished"
    assert _ts(body["grant"]["ended_at"]) == env.clock()
    g = env.get("alice", f"/api/v1/grants/{grant_id}")
    assert g.status_code == 200, g.text
    assert g.json()["status"] == "relinquished"

    events = env.events(subject=f"grant:{grant_id}")
    assert [e["type"] for e in events] == ["grant.activated", "grant.relinquished"]
    assert events[1]["actor"] == {"kind": "user", "id": "alice", "via": "api"}
    assert events[1]["data"]["request_ids"] == [req["id"]]
    assert events[1]["data"]["comment"] == "done early"

    # Once over, it cannot end twice.
    assert env.act("alice", req["id"], "relinquish").status_code == 409
    assert env.act("bob", req["id"], "revoke").status_code == 409


def test_relinquish_needs_the_grantee_and_active_access(env: Env) -> None:
    pending = env.ask("alice")
    assert env.act("alice", pending["id"], "relinquish").status_code == 409

    req = env.ask("alice")
    _approve_prod(env, req["id"])
    assert env.act("bob", req["id"], "relinquish").status_code == 403
    assert env.act("carol", req["id"], "relinquish").status_code == 403
    assert _get(env, "alice", req["id"])["status"] == "active"


# ---------------------------------------------------------------- revoke


def test_revoke_by_an_approver_of_the_resource(env: Env) -> None:
    req = env.ask("alice")
    grant_id = _approve_prod(env, req["id"])["grant"]["id"]
    r = env.act("gina", req["id"], "revoke", comment="incident closed")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    assert r.json()["grant"]["status"] == "revoked"
    events = env.events(subject=f"grant:{grant_id}")
    assert [e["type"] for e in events] == ["grant.activated", "grant.revoked"]
    assert events[1]["actor"] == {"kind": "user", "id": "gina", "via": "api"}
    assert events[1]["data"]["comment"] == "incident closed"


def test_revoke_by_an_admin(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    # Without the elevated step frank approves nothing on orders-db: only his admin role counts.
    text = POLICY.replace(
        "    elevated:\n      roles: [admin]\n"
        "      steps: [{name: admins, approvers: [admins], min_approvals: 2}]\n", "")
    env = make_env(sessions, tmp_path, text)
    with env.client:
        assert "frank" in env.st.policies.current.admins
        assert "frank" not in env.st.policies.current.owners_of("orders-db")
        req = env.ask("alice")
        grant_id = _approve_prod(env, req["id"])["grant"]["id"]
        r = env.act("frank", req["id"], "revoke")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "revoked"
        revoked = env.events(subject=f"grant:{grant_id}", type="grant.revoked")
        assert len(revoked) == 1
        assert revoked[0]["actor"] == {"kind": "user", "id": "frank", "via": "api"}


def test_revoke_by_a_non_approver_is_forbidden(env: Env) -> None:
    req = env.ask("alice")
    grant_id = _approve_prod(env, req["id"])["grant"]["id"]
    # dave (an auditor) may see the request but approves nothing; alice is the grantee.
    for user in ("dave", "alice"):
        r = env.act(user, req["id"], "revoke")
        assert r.status_code == 403, (user, r.text)
    assert _get(env, "alice", req["id"])["status"] == "active"
    assert _types(env, f"grant:{grant_id}") == ["grant.activated"]


def test_owners_may_revoke_access_to_their_resource_without_being_step_approvers(
    env: Env,
) -> None:
    # erin (dba) owns staging-db, whose workflow asks only leads (bob, gina) to approve:
    # she cannot approve a staging-db request, but she can cut access to her resource.
    req = env.ask("alice", resource="staging-db", role="read", reason="")
    assert req["status"] == "active"
    write = env.ask("alice", resource="staging-db", role="write", reason="")
    assert [s["eligible"] for s in write["steps"]] == [["bob", "gina"]]
    assert env.act("erin", write["id"], "approve").status_code == 403

    r = env.act("erin", req["id"], "revoke")
    assert r.status_code == 200, r.text
    assert _get(env, "alice", req["id"])["status"] == "revoked"


def test_extend_creates_a_linked_request_that_moves_the_grant_end(env: Env) -> None:
    req = env.ask("alice")
    grant = _approve_prod(env, req["id"])["grant"]
    ends_at = _ts(grant["ends_at"])
    env.clock.advance(minutes=30)

    r = env.post("alice", f"/api/v1/requests/{req['id']}/extend",
                 json={"duration": "1h", "reason": "INC-1 still investigating"})
    assert r.status_code == 201, r.text
    ext = r.json()
    assert ext["id"] != req["id"]
    assert ext["extends_grant_id"] == grant["id"]
    assert ext["status"] == "pending"
    assert ext["workflow"]["name"] == "prod"
    assert ext["duration_seconds"] == 3600
    assert [s["eligible"] for s in ext["steps"]] == [["bob", "gina"], ["carol", "erin"]]
    created = env.events(subject=f"request:{ext['id']}", type="request.created")[0]
    assert created["data"]["extends_grant_id"] == grant["id"]
    assert created["data"]["inputs"]["request"]["extension"] is True
    # Nothing moves until the extension is approved.
    assert _ts(_get(env, "alice", req["id"])["grant"]["ends_at"]) == ends_at

    assert env.act("bob", ext["id"], "approve").status_code == 200
    r = env.act("erin", ext["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    assert r.json()["grant"]["id"] == grant["id"]

    after = _get(env, "alice", req["id"])
    assert after["status"] == "active"
    assert _ts(after["grant"]["ends_at"]) == ends_at + timedelta(hours=1)
    g = env.get("alice", f"/api/v1/grants/{grant['id']}").json()
    assert _ts(g["ends_at"]) == ends_at + timedelta(hours=1)

    events = env.events(subject=f"grant:{grant['id']}")
    assert [e["type"] for e in events] == ["grant.activated", "grant.extended"]
    extended = events[1]
    assert extended["actor"] == {"kind": "user", "id": "erin", "via": "api"}
    assert extended["data"]["request_id"] == ext["id"]
    assert extended["data"]["added_seconds"] == 3600
    assert _ts(extended["data"]["previous_ends_at"]) == ends_at
    assert _ts(extended["data"]["ends_at"]) == ends_at + timedelta(hours=1)
    # The grant stays one grant: no second activation.
    grants = env.get("carol", "/api/v1/grants", params={"user": "alice"}).json()["items"]
    assert [x["id"] for x in grants] == [grant["id"]]

    # The original hour is over, the extra hour is not.
    env.clock.advance(minutes=45)
    assert _get(env, "alice", req["id"])["status"] == "active"


def test_extend_is_routed_through_the_workflow_and_can_be_refused(env: Env) -> None:
    req = env.ask("alice")
    _approve_prod(env, req["id"])
    # Over prod's max_duration (4h): refused outright.
    r = env.post("alice", f"/api/v1/requests/{req['id']}/extend",
                 json={"duration": "5h", "reason": "INC-1 still investigating"})
    assert r.status_code == 422, r.text
    # prod's auto_deny applies to extensions too.
    r = env.post("alice", f"/api/v1/requests/{req['id']}/extend",
                 json={"duration": "1h", "reason": "more"})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "denied"
    assert r.json()["workflow"]["rule"] == "auto_deny"
    # Only the grantee asks; only active access can be extended.
    r = env.post("bob", f"/api/v1/requests/{req['id']}/extend",
                 json={"duration": "1h", "reason": "INC-1 still investigating"})
    assert r.status_code == 403
    pending = env.ask("alice")
    r = env.post("alice", f"/api/v1/requests/{pending['id']}/extend",
                 json={"duration": "1h", "reason": "INC-1 still investigating"})
    assert r.status_code == 409


# ---------------------------------------------------------------- policy decisions


def test_auto_deny_denies_with_the_policy_as_actor(env: Env) -> None:
    req = env.ask("alice", reason="short")
    assert req["status"] == "denied"
    assert req["workflow"] == {"name": "prod", "version": env.st.policies.current.version,
                               "rule": "auto_deny"}
    assert req["decision_reason"] == ("denied by workflow 'prod': a reason of at least 10 "
                                      "characters is required")  # in words, not CEL
    assert req["grant"] is None
    events = env.events(subject=f"request:{req['id']}")
    assert [e["type"] for e in events] == ["request.created", "request.denied"]
    denied = events[1]
    assert denied["actor"] == {"kind": "policy", "id": "prod", "via": "policy"}
    assert denied["policy"]["name"] == "prod"
    assert denied["policy"]["rule"] == "auto_deny"
    assert denied["policy"]["version"] == env.st.policies.current.version
    # Denied requests wait on nobody.
    assert req["id"] not in _inbox(env, "bob")


def test_default_deny_when_no_workflow_matches(env: Env) -> None:
    req = env.ask("alice", resource="lab", role="use")
    assert req["status"] == "denied"
    assert req["workflow"]["name"] is None
    assert req["workflow"]["rule"] == "default_deny"
    assert req["decision_reason"] == "no workflow matches lab/use"
    assert req["steps"] == []
    denied = env.events(subject=f"request:{req['id']}", type="request.denied")
    assert len(denied) == 1
    assert denied[0]["actor"]["kind"] == "policy"
    assert denied[0]["policy"]["rule"] == "default_deny"
    assert denied[0]["data"]["reason"] == "no workflow matches lab/use"


def test_default_deny_with_a_policy_that_routes_only_staging(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    text = POLICY.split("  - name: prod\n")[0]
    env = make_env(sessions, tmp_path, text)
    with env.client:
        assert [w.spec.name for w in env.st.policies.current.workflows] == ["staging"]
        req = env.ask("alice", resource="orders-db", role="read")
        assert req["status"] == "denied"
        assert req["workflow"]["rule"] == "default_deny"
        assert "no workflow matches orders-db/read" in req["decision_reason"]
        staging = env.ask("alice", resource="staging-db", role="read", reason="")
        assert staging["status"] == "active"


def test_a_match_that_errors_at_runtime_does_not_match(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # No resource has a `team` label, so the first workflow's match errors at runtime for all;
    # failing closed, it must simply not match and the request falls through to `staging`.
    text = POLICY.replace(
        "workflows:\n",
        "workflows:\n"
        "  - name: payments\n"
        "    match: 'resource.labels.team == \"payments\"'\n"
        "    auto_approve: 'true'\n", 1)
    env = make_env(sessions, tmp_path, text)
    with env.client:
        r = env.post("alice", "/api/v1/requests",
                     json={"resource": "staging-db", "role": "read", "duration": "1h"})
        assert r.status_code == 201, r.text
        assert r.json()["workflow"]["name"] == "staging"
        assert r.json()["status"] == "active"


def test_elevated_role_needs_two_distinct_admins(env: Env) -> None:
    req = env.ask("alice", role="admin")
    assert [s["name"] for s in req["steps"]] == ["lead", "owner", "admins"]
    admins = req["steps"][2]
    assert admins["elevated"] is True
    assert admins["min_approvals"] == 2
    assert admins["eligible"] == ["carol", "frank"]

    assert env.act("bob", req["id"], "approve").status_code == 200
    assert env.act("erin", req["id"], "approve").status_code == 200
    r = env.act("carol", req["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    assert r.json()["current_step"] == 2
    assert r.json()["steps"][2]["complete"] is False

    # The same admin cannot count twice.
    r = env.act("carol", req["id"], "approve")
    assert r.status_code == 409, r.text
    body = _get(env, "alice", req["id"])
    assert body["status"] == "pending"
    assert [a["approver"] for a in body["steps"][2]["approvals"]] == ["carol"]

    r = env.act("frank", req["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    assert r.json()["steps"][2]["complete"] is True
    recorded = env.events(subject=f"request:{req['id']}", type="approval.recorded")
    assert [e["actor"]["id"] for e in recorded] == ["bob", "erin", "carol", "frank"]
    assert recorded[2]["data"]["step_complete"] is False
    assert recorded[3]["data"]["approvals"] == 2
    assert recorded[3]["data"]["step_complete"] is True


def test_an_admin_who_approved_an_earlier_step_cannot_also_count_as_an_admin(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # A third admin, so carol may take the owner step and leave two admins for the last.
    # (With two, her approval there is refused: tests/requests/test_satisfiable.py.)
    env = make_env(sessions, tmp_path, POLICY.replace("admins: [carol, frank]",
                                                      "admins: [carol, frank, gina]"))
    with env.client:
        req = env.ask("alice", role="admin")
        assert env.act("bob", req["id"], "approve").status_code == 200
        # carol decides the owner step ...
        assert env.act("carol", req["id"], "approve").status_code == 200
        # ... and so cannot also be one of the two admins.
        assert env.act("carol", req["id"], "approve").status_code == 409
        assert env.act("frank", req["id"], "approve").status_code == 200
        body = _get(env, "alice", req["id"])
        assert body["status"] == "pending"
        assert body["current_step"] == 2
        assert req["id"] not in _inbox(env, "carol")
        assert req["id"] not in _inbox(env, "frank")
        assert req["id"] in _inbox(env, "gina")


def test_n_of_m_completes_at_min_approvals(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    text = POLICY.replace(
        "      - {name: lead, approvers: [leads]}\n      - {name: owner, approvers: [owners]}\n",
        "      - {name: quorum, approvers: [leads, dba], min_approvals: 2}\n")
    env = make_env(sessions, tmp_path, text)
    with env.client:
        req = env.ask("alice")
        assert len(req["steps"]) == 1
        assert req["steps"][0]["eligible"] == ["bob", "carol", "erin", "gina"]
        assert req["steps"][0]["min_approvals"] == 2

        r = env.act("bob", req["id"], "approve")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "pending"
        r = env.act("erin", req["id"], "approve")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "active"  # 2 of 4 is enough: >=, not ==, not all
        assert r.json()["steps"][0]["complete"] is True
        assert len(env.events(subject=f"request:{req['id']}", type="request.approved")) == 1

        # A denial after the quorum is reached changes nothing.
        assert env.act("gina", req["id"], "deny").status_code == 409
        assert _get(env, "alice", req["id"])["status"] == "active"


def test_n_of_m_one_denial_ends_the_request(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    text = POLICY.replace(
        "      - {name: lead, approvers: [leads]}\n      - {name: owner, approvers: [owners]}\n",
        "      - {name: quorum, approvers: [leads, dba], min_approvals: 3}\n")
    env = make_env(sessions, tmp_path, text)
    with env.client:
        req = env.ask("alice")
        assert env.act("bob", req["id"], "approve").status_code == 200
        assert env.act("gina", req["id"], "approve").status_code == 200
        r = env.act("carol", req["id"], "deny")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "denied"
        assert env.act("erin", req["id"], "approve").status_code == 409


# ---------------------------------------------------------------- expiry


def test_pending_request_expires_after_expire_after(env: Env) -> None:
    req = env.ask("alice")
    created = _ts(req["created_at"])
    assert _ts(req["pending_until"]) == created + timedelta(hours=2)

    env.clock.advance(hours=2, seconds=-1)
    assert _get(env, "alice", req["id"])["status"] == "pending"
    assert req["id"] in _inbox(env, "bob")

    env.clock.advance(seconds=2)
    body = _get(env, "alice", req["id"])
    assert body["status"] == "expired"
    assert body["pending_until"] is None
    assert req["id"] not in _inbox(env, "bob")
    assert [x["id"] for x in _list(env, "alice", status="expired")] == [req["id"]]
    assert _list(env, "alice", status="pending") == []
    # Reads show it before the sweeper records it.
    assert env.events(subject=f"request:{req['id']}", type="request.expired") == []
    assert env.act("bob", req["id"], "approve").status_code == 409
    assert env.act("alice", req["id"], "cancel").status_code == 409

    assert sweep_once(env.st.sessions, env.clock()) == 1
    assert sweep_once(env.st.sessions, env.clock()) == 0
    expired = env.events(subject=f"request:{req['id']}", type="request.expired")
    assert len(expired) == 1
    assert expired[0]["actor"]["kind"] == "system"
    assert _get(env, "alice", req["id"])["status"] == "expired"
    assert _types(env, f"request:{req['id']}") == ["request.created", "request.expired"]


def test_active_grant_expires_at_its_end(env: Env) -> None:
    req = env.ask("alice", resource="staging-db", role="read", duration="1h", reason="")
    assert req["status"] == "active"
    grant_id = req["grant"]["id"]
    assert _ts(req["grant"]["ends_at"]) == env.clock() + timedelta(hours=1)

    env.clock.advance(minutes=59, seconds=59)
    assert sweep_once(env.st.sessions, env.clock()) == 0
    assert _get(env, "alice", req["id"])["status"] == "active"

    env.clock.advance(seconds=1)
    body = _get(env, "alice", req["id"])
    assert body["status"] == "expired"
    assert body["grant"]["status"] == "expired"
    g = env.get("alice", f"/api/v1/grants/{grant_id}")
    assert g.json()["status"] == "expired"
    assert env.act("alice", req["id"], "relinquish").status_code == 409
    assert env.events(subject=f"grant:{grant_id}", type="grant.expired") == []

    assert sweep_once(env.st.sessions, env.clock()) == 1
    env.clock.advance(minutes=5)
    assert sweep_once(env.st.sessions, env.clock()) == 0
    expired = env.events(subject=f"grant:{grant_id}", type="grant.expired")
    assert len(expired) == 1
    assert expired[0]["actor"]["kind"] == "system"
    assert expired[0]["data"]["request_ids"] == [req["id"]]
    # It ended at its end, not when the sweeper noticed.
    assert _ts(expired[0]["data"]["ended_at"]) == _ts(req["grant"]["ends_at"])
    body = _get(env, "alice", req["id"])
    assert body["status"] == "expired"
    assert _ts(body["grant"]["ended_at"]) == _ts(req["grant"]["ends_at"])


# ---------------------------------------------------------------- inbox and lists


def test_awaiting_me_lists_exactly_what_the_caller_may_decide(env: Env) -> None:
    a = env.ask("alice")                                            # lead step: bob, gina
    b = env.ask("erin")                                             # lead step: bob, gina
    c = env.ask("alice", resource="staging-db", role="write", reason="")  # leads: bob, gina
    d = env.ask("alice", resource="staging-db", role="read", reason="")   # auto-approved
    e = env.ask("bob")                                              # lead step: gina only
    f = env.ask("alice", resource="lab", role="use")                # default deny
    g = env.ask("alice", reason="short")                            # auto-denied
    assert d["status"] == "active"
    assert f["status"] == g["status"] == "denied"

    assert _inbox(env, "bob") == {a["id"], b["id"], c["id"]}
    assert _inbox(env, "gina") == {a["id"], b["id"], c["id"], e["id"]}
    assert _inbox(env, "carol") == set()
    assert _inbox(env, "alice") == set()
    assert _inbox(env, "dave") == set()

    # bob decides a: it leaves his inbox and gina's, and reaches the owners (carol, erin).
    assert env.act("bob", a["id"], "approve").status_code == 200
    assert _inbox(env, "bob") == {b["id"], c["id"]}
    assert _inbox(env, "gina") == {b["id"], c["id"], e["id"]}
    assert _inbox(env, "carol") == {a["id"]}
    assert _inbox(env, "erin") == {a["id"]}

    # bob denies c: gone for everybody.
    assert env.act("bob", c["id"], "deny").status_code == 200
    assert _inbox(env, "bob") == {b["id"]}
    assert _inbox(env, "gina") == {b["id"], e["id"]}

    # gina moves b to its owner step: erin is the requester, so only carol may decide it.
    assert env.act("gina", b["id"], "approve").status_code == 200
    assert _inbox(env, "carol") == {a["id"], b["id"]}
    assert _inbox(env, "erin") == {a["id"]}
    assert _inbox(env, "bob") == set()

    # The inbox items are the full request objects, newest first.
    items = _list(env, "carol", awaiting="me")
    assert [x["id"] for x in items] == [b["id"], a["id"]]
    assert all(x["status"] == "pending" for x in items)
    assert all("carol" in x["steps"][x["current_step"]]["eligible"] for x in items)


def test_list_filters(env: Env) -> None:
    a = env.ask("alice")
    b = env.ask("erin")
    c = env.ask("alice", resource="staging-db", role="read", reason="")
    d = env.ask("alice", resource="staging-db", role="write", reason="")
    e = env.ask("gina", resource="staging-db", role="read", reason="")
    assert env.act("bob", d["id"], "deny").status_code == 200

    def ids(user: str, **params: Any) -> list[int]:
        return [x["id"] for x in _list(env, user, **params)]

    everything = [e["id"], d["id"], c["id"], b["id"], a["id"]]
    assert ids("carol") == everything  # admins see all, newest first
    assert ids("dave") == everything  # so do auditors
    assert ids("alice") == [d["id"], c["id"], a["id"]]  # a requester sees their own
    assert ids("carol", status="pending") == [b["id"], a["id"]]
    assert ids("carol", status="active") == [e["id"], c["id"]]
    assert ids("carol", status="denied") == [d["id"]]
    assert ids("carol", resource="staging-db") == [e["id"], d["id"], c["id"]]
    assert ids("carol", resource="orders-db") == [b["id"], a["id"]]
    assert ids("carol", requester="erin") == [b["id"]]
    assert ids("carol", requester="alice", resource="staging-db") == [d["id"], c["id"]]
    assert ids("carol", requester="alice", status="active") == [c["id"]]
    assert ids("carol", role="write") == [d["id"]]
    assert ids("alice", requester="erin") == []
    assert ids("carol", resource="lab") == []
    for item in _list(env, "carol", status="pending"):
        assert item["status"] == "pending"

    assert env.get("carol", "/api/v1/requests", params={"status": "bogus"}).status_code == 422
    assert env.get("carol", "/api/v1/requests", params={"awaiting": "you"}).status_code == 422


@pytest.mark.parametrize("limit", [1, 2, 3, 50])
def test_pagination_walks_every_item_once(env: Env, limit: int) -> None:
    made = []
    for i in range(7):
        who = ["alice", "erin", "gina"][i % 3]
        made.append(env.ask(who, resource="staging-db", role="read" if i % 2 else "write",
                            reason="")["id"])
    made.append(env.ask("alice")["id"])

    def walk(**params: Any) -> list[int]:
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            query = {"limit": limit, **params}
            if cursor is not None:
                query["cursor"] = cursor
            r = env.get("carol", "/api/v1/requests", params=query)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) <= limit
            seen += [x["id"] for x in page["items"]]
            cursor = page["next_cursor"]
            pages += 1
            assert pages <= 20
            if cursor is None:
                return seen

    all_ids = walk()
    assert all_ids == sorted(made, reverse=True)
    assert len(set(all_ids)) == len(all_ids)

    staging = walk(resource="staging-db")
    assert staging == sorted(made[:7], reverse=True)
    pending = walk(status="pending")
    expected = [x["id"] for x in _list(env, "carol", status="pending")]
    assert pending == expected
    assert len(set(pending)) == len(pending)

    assert env.get("carol", "/api/v1/requests", params={"cursor": "abc"}).status_code == 422


# ---------------------------------------------------------------- ledger


def _check_envelope(event: dict[str, Any]) -> None:
    keys = set(event)
    assert keys >= ENVELOPE_KEYS, event
    assert keys <= ENVELOPE_KEYS | {"policy"}, event
    assert event["v"] == 1
    assert isinstance(event["type"], str) and event["type"]
    assert TIME.match(event["time"]), event["time"]
    assert set(event["actor"]) == {"kind", "id", "via"}, event["actor"]
    assert event["actor"]["kind"] in ("user", "policy", "system")
    assert all(isinstance(v, str) and v for v in event["actor"].values()), event["actor"]
    assert isinstance(event["subject"], str) and ":" in event["subject"]
    assert event["resource"] is None or set(event["resource"]) == {"name", "role"}
    assert isinstance(event["data"], dict)
    if "policy" in event:
        assert set(event["policy"]) == {"name", "version", "rule"}


def _scenario(env: Env) -> Counter[str]:
    """Drive one of every transition; return the events each should have written."""
    want: Counter[str] = Counter()

    r1 = env.ask("alice")                                     # approved, then relinquished
    want["request.created"] += 1
    _approve_prod(env, r1["id"])
    want.update({"approval.recorded": 2, "request.approved": 1, "grant.activated": 1})
    assert env.act("alice", r1["id"], "relinquish").status_code == 200
    want["grant.relinquished"] += 1

    r2 = env.ask("alice")                                     # denied by a person
    assert env.act("bob", r2["id"], "deny").status_code == 200
    want.update({"request.created": 1, "approval.recorded": 1, "request.denied": 1})

    r3 = env.ask("alice")                                     # cancelled
    assert env.act("alice", r3["id"], "cancel").status_code == 200
    want.update({"request.created": 1, "request.cancelled": 1})

    r4 = env.ask("alice", resource="staging-db", role="read", reason="")  # auto, then revoked
    assert r4["status"] == "active"
    want.update({"request.created": 1, "request.approved": 1, "grant.activated": 1})
    assert env.act("bob", r4["id"], "revoke").status_code == 200
    want["grant.revoked"] += 1

    r5 = env.ask("alice", reason="short")                     # auto_deny
    r6 = env.ask("alice", resource="lab", role="use")         # default deny
    assert r5["status"] == r6["status"] == "denied"
    want.update({"request.created": 2, "request.denied": 2})

    r7 = env.ask("gina", resource="staging-db", role="read", reason="")  # auto, extended, expired
    want.update({"request.created": 1, "request.approved": 1, "grant.activated": 1})
    r = env.post("gina", f"/api/v1/requests/{r7['id']}/extend",
                 json={"duration": "1h", "reason": ""})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active"
    want.update({"request.created": 1, "request.approved": 1, "grant.extended": 1})

    r9 = env.ask("alice")                                     # nobody decides: expires
    want["request.created"] += 1
    # Refused commands write nothing.
    assert env.act("alice", r9["id"], "approve").status_code == 403
    want["approval.refused"] += 1  # a self-decision attempt is recorded, nothing else
    assert env.act("carol", r9["id"], "approve").status_code == 403
    assert env.act("bob", r2["id"], "approve").status_code == 409
    assert env.act("alice", r1["id"], "relinquish").status_code == 409

    env.clock.advance(hours=2, seconds=1)                     # r7's grant (1h + 1h) ends too
    assert sweep_once(env.st.sessions, env.clock()) == 2
    assert sweep_once(env.st.sessions, env.clock()) == 0
    want.update({"request.expired": 1, "grant.expired": 1})

    statuses = {rid: _get(env, "carol", rid)["status"] for rid in
                (r1["id"], r2["id"], r3["id"], r4["id"], r5["id"], r6["id"], r7["id"], r9["id"])}
    assert statuses == {r1["id"]: "relinquished", r2["id"]: "denied", r3["id"]: "cancelled",
                        r4["id"]: "revoked", r5["id"]: "denied", r6["id"]: "denied",
                        r7["id"]: "expired", r9["id"]: "expired"}
    return want


def test_no_transition_without_its_event(env: Env) -> None:
    before = Counter(e["type"] for e in env.events())
    want = _scenario(env)
    after = Counter(e["type"] for e in env.events())
    assert after - before == want


def test_every_event_has_the_envelope(env: Env) -> None:
    _scenario(env)
    events = env.events()
    types = {e["type"] for e in events}
    assert {"policy.loaded", "token.issued", "request.created", "request.approved",
            "request.denied", "request.cancelled", "request.expired", "approval.recorded",
            "grant.activated", "grant.extended", "grant.expired", "grant.revoked",
            "grant.relinquished"} <= types
    for event in events:
        _check_envelope(event)
    user_events = [e for e in events if e["actor"]["kind"] == "user"]
    assert user_events
    assert all(e["actor"]["via"] == "api" for e in user_events)
    for event in events:
        if event["type"].startswith(("request.", "approval.", "grant.")):
            assert event["resource"] is not None, event


def test_a_step_that_cannot_reach_its_quorum_is_refused_up_front(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    text = POLICY.replace(
        "      - {name: lead, approvers: [leads]}\n      - {name: owner, approvers: [owners]}\n",
        "      - {name: both-leads, approvers: [leads], min_approvals: 2}\n")
    env = make_env(sessions, tmp_path, text)
    with env.client:
        ok = env.ask("alice")
        assert ok["status"] == "pending"
        assert ok["steps"][0]["eligible"] == ["bob", "gina"]
        # gina is a lead herself: without her, one lead is left for a step that needs two.
        before = len(env.events())
        r = env.post("gina", "/api/v1/requests", json={
            "resource": "orders-db", "role": "read", "duration": "1h", "reason": "INC-1 look"})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["type"].endswith("/unsatisfiable")
        assert body["detail"] == (
            "workflow 'prod' cannot complete this request: step 1 (both-leads) needs 2 "
            "approvals from distinct people but only bob can give one, since gina is the "
            "requester")
        assert body["people"] == ["bob"] and body["missing"] == 2
        assert len(env.events()) == before  # nothing filed, nothing recorded
        assert _list(env, "gina", requester="gina") == []


def test_ending_a_grant_cancels_its_pending_extensions(env: Env) -> None:
    req = env.ask("alice")
    _approve_prod(env, req["id"])
    r = env.post("alice", f"/api/v1/requests/{req['id']}/extend",
                 json={"duration": "1h", "reason": "INC-1 still digging"})
    assert r.status_code == 201, r.text
    ext = r.json()
    assert env.act("frank", req["id"], "revoke").status_code == 200
    assert _get(env, "alice", ext["id"])["status"] == "cancelled"
    # and nothing can approve it into a fresh grant any more
    assert env.act("bob", ext["id"], "approve").status_code == 409
    assert _types(env, f"request:{ext['id']}")[-1] == "request.cancelled"


def test_requests_of_a_user_removed_from_the_policy_are_cancelled(env: Env) -> None:
    req = env.ask("gina", role="read")
    env.write_policy(POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]",
                                    "users: [alice, bob, carol, dave, erin, frank]")
                     .replace("engineers: [alice, erin, gina]", "engineers: [alice, erin]")
                     .replace("leads: [bob, gina]", "leads: [bob]"))
    assert env.post("carol", "/api/v1/admin/reload").status_code == 200
    assert _get(env, "carol", req["id"])["status"] == "cancelled"
    assert env.act("bob", req["id"], "approve").status_code == 409


def test_revoke_rights_follow_the_current_policy(env: Env) -> None:
    req = env.ask("alice")
    _approve_prod(env, req["id"])  # gina was an eligible lead of step 1
    env.write_policy(POLICY.replace("leads: [bob, gina]", "leads: [bob]"))
    assert env.post("carol", "/api/v1/admin/reload").status_code == 200
    r = env.act("gina", req["id"], "revoke")
    assert r.status_code == 403, r.text
    assert env.act("bob", req["id"], "revoke").status_code == 200

"""Requests nobody can complete (issue 23), through the API on SQLite and PostgreSQL.

The shared policy (tests.conftest.POLICY) has the defect the issue found in the demo: carol
is in dba (orders-db's owners) and in admins, and orders-db admin needs a lead, an owner and
two distinct admins from {carol, frank}. A person decides a request once, so the steps must
be filled jointly: refused at creation when they cannot be, an approval that would make it
so is refused, and a pending request that becomes so is escalated or denied at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import POLICY, Env, make_env

REQUESTS = "/api/v1/requests"
PROBLEM = "application/problem+json"
ESCALATE_TO_AUDITORS = "    expire_after: 2h\n    escalation: {to: [auditors]}\n"


def ask(env: Env, user: str, role: str = "admin") -> Any:
    return env.post(user, REQUESTS, json={"resource": "orders-db", "role": role,
                                          "duration": "1h", "reason": "INC-7 rotate keys"})


def show(env: Env, rid: int) -> dict[str, Any]:
    r = env.get("dave", f"{REQUESTS}/{rid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def with_escalation(text: str = POLICY) -> str:
    assert text.count("    expire_after: 2h\n") == 1
    return text.replace("    expire_after: 2h\n", ESCALATE_TO_AUDITORS)


# ------------------------------------------------------------------ creation


def test_a_plan_nobody_can_complete_is_refused_naming_steps_and_people(env: Env) -> None:
    before = len(env.events())
    # erin is an owner herself: carol is the only owner left, and carol and frank cannot
    # be both the owner and the two admins.
    r = ask(env, "erin")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["type"] == "https://accord.dev/problems/unsatisfiable"
    assert body["title"] == "Nobody can complete this request"
    assert body["detail"] == (
        "workflow 'prod' cannot complete this request: steps 2 (owner) and 3 (admins) need 3 "
        "approvals from distinct people but only carol and frank can give them, since erin is "
        "the requester")
    assert [(s["index"], s["name"]) for s in body["steps"]] == [(1, "owner"), (2, "admins")]
    assert body["people"] == ["carol", "frank"] and body["missing"] == 3
    assert len(env.events()) == before  # nothing filed, nothing recorded
    # carol asking: frank is the one admin left for a step that needs two.
    r = ask(env, "carol")
    assert r.status_code == 422
    assert "step 3 (admins) needs 2 approvals from distinct people but only frank can give " \
           "one, since carol is the requester" in r.json()["detail"]
    # alice's can be completed (bob, erin, carol and frank): it waits as before.
    assert ask(env, "alice").status_code == 201


def test_with_an_escalation_group_the_plan_takes_it_instead_of_refusing(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = make_env(sessions, tmp_path, with_escalation())
    with env.client:
        r = ask(env, "erin")
        assert r.status_code == 201, r.text
        req = r.json()
        assert req["status"] == "pending"
        steps = req["steps"]
        assert [s["escalated"] for s in steps] == [False, True, True]
        assert steps[1]["approvers"] == ["owners", "auditors"]
        assert steps[1]["eligible"] == ["carol", "dave"]
        assert steps[2]["eligible"] == ["carol", "dave", "frank"]
        assert "so the escalation group (auditors) also approves steps 2 (owner) and 3 " \
               "(admins)" in env.events(subject=f"request:{req['id']}",
                                        type="request.created")[0]["data"]["routing"]["reason"]
        [escalated] = env.events(subject=f"request:{req['id']}", type="request.escalated")
        assert escalated["actor"] == {"kind": "policy", "id": "prod", "via": "policy"}
        assert escalated["data"]["steps"] == [1, 2] and escalated["data"]["to"] == ["auditors"]
        assert escalated["data"]["added"] == []  # told when their step comes
        # and it can be completed: bob, then dave for the owners, then carol and frank
        for user in ("bob", "dave", "carol", "frank"):
            r = env.act(user, req["id"], "approve")
            assert r.status_code == 200, (user, r.text)
        assert r.json()["status"] == "active"


def test_an_escalation_group_that_cannot_help_is_said_so(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = make_env(sessions, tmp_path, with_escalation().replace(
        "escalation: {to: [auditors]}", "escalation: {to: [admins]}"))
    with env.client:
        r = ask(env, "erin")
        assert r.status_code == 422, r.text
        assert r.json()["detail"].endswith(
            "since erin is the requester; the escalation group (admins) cannot fill them "
            "either")


# ------------------------------------------------------------------ approvals


def test_an_approval_that_would_strand_a_later_step_is_refused_and_changes_nothing(
    env: Env,
) -> None:
    """The issue's walk-through: bob approves the lead step, carol the owners' step, and the
    admins' step would wait for two admins from {carol, frank} until it expired."""
    req = ask(env, "alice").json()
    assert env.act("bob", req["id"], "approve").status_code == 200
    before = show(env, req["id"])
    count = len(env.events())

    r = env.act("carol", req["id"], "approve", comment="looks fine")
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["type"] == "https://accord.dev/problems/unsatisfiable"
    assert body["detail"] == (
        f"approving step 2 (owner) now would leave request {req['id']} impossible to "
        "complete: step 3 (admins) needs 2 approvals from distinct people but only frank can "
        "give one, since carol approved step 2 (owner). erin can approve step 2 (owner) "
        "instead; your approval was not recorded")
    assert body["others"] == ["erin"] and body["people"] == ["frank"]

    assert show(env, req["id"]) == before  # no approval, no step moved
    events = env.events()
    assert len(events) == count + 1  # only the refusal, as its own event
    refused = events[-1]
    assert refused["type"] == "approval.refused"
    assert refused["actor"]["id"] == "carol" and refused["subject"] == f"request:{req['id']}"
    assert refused["data"]["reason"] == "unsatisfiable" and refused["data"]["step"] == 1
    assert refused["data"]["others"] == ["erin"]
    alerts = env.get("dave", "/api/v1/alerts", params={"rule": "self_approval"}).json()
    assert alerts["items"] == []  # not a self-approval

    # carol can still deny (that ends it), and the way through is erin, then both admins.
    assert env.act("erin", req["id"], "approve").status_code == 200
    assert env.act("carol", req["id"], "approve").status_code == 200
    r = env.act("frank", req["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"


def test_an_approval_of_the_last_admin_is_never_refused(env: Env) -> None:
    req = ask(env, "alice").json()
    for user in ("bob", "erin", "frank"):
        assert env.act(user, req["id"], "approve").status_code == 200
    r = env.act("carol", req["id"], "approve")
    assert r.status_code == 200 and r.json()["status"] == "active"


# ------------------------------------------------------------------ reloads


def _types(env: Env, rid: int) -> list[str]:
    return [e["type"] for e in env.events(subject=f"request:{rid}")]


def test_a_reload_that_leaves_a_pending_request_impossible_denies_it_at_once(
    env: Env,
) -> None:
    req = ask(env, "alice").json()
    read = ask(env, "alice", role="read").json()  # lead and owner: still possible
    assert env.act("bob", req["id"], "approve").status_code == 200
    env.write_policy(POLICY.replace("admins: [carol, frank]", "admins: [carol]"))
    assert env.post("carol", "/api/v1/admin/reload").status_code == 200

    body = show(env, req["id"])
    assert body["status"] == "denied"
    why = ("nobody can complete it any more: step 3 (admins) needs 2 approvals from distinct "
           "people but only carol can give one")
    assert body["decision_reason"] == why
    assert _types(env, req["id"])[-1] == "request.denied"
    denied = env.events(subject=f"request:{req['id']}", type="request.denied")[0]
    assert denied["actor"] == {"kind": "policy", "id": "prod", "via": "policy"}
    assert denied["policy"]["rule"] == "unsatisfiable"
    assert denied["policy"]["version"] == env.st.policies.current.version
    assert denied["data"]["reason"] == why and denied["data"]["shortfall"]["people"] == ["carol"]
    assert denied["data"]["trigger"]["id"] == "carol"  # who reloaded
    assert env.act("erin", req["id"], "approve").status_code == 409
    assert show(env, read["id"])["status"] == "pending"


def test_a_reload_escalates_a_request_it_leaves_impossible_when_the_workflow_can(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = make_env(sessions, tmp_path, with_escalation())
    with env.client:
        req = ask(env, "alice").json()
        assert env.act("bob", req["id"], "approve").status_code == 200
        assert env.act("erin", req["id"], "approve").status_code == 200  # now at the admins
        env.write_policy(with_escalation().replace("admins: [carol, frank]", "admins: [carol]"))
        assert env.post("carol", "/api/v1/admin/reload").status_code == 200

        body = show(env, req["id"])
        assert body["status"] == "pending"
        assert body["steps"][2]["escalated"] is True
        assert body["steps"][2]["eligible"] == ["carol", "dave"]
        [esc] = env.events(subject=f"request:{req['id']}", type="request.escalated")
        assert esc["data"]["added"] == ["dave"]  # the current step: dave is told now
        assert esc["data"]["reason"] == (
            "step 3 (admins) needs 2 approvals from distinct people but only carol can give "
            "one, so the escalation group (auditors) also approves step 3 (admins)")
        # A later reload (of anything) keeps the escalation: it is in the plan.
        env.write_policy(with_escalation().replace("admins: [carol, frank]", "admins: [carol]")
                         .replace("max_duration: 4h", "max_duration: 5h"))
        assert env.post("carol", "/api/v1/admin/reload").status_code == 200
        assert show(env, req["id"])["steps"][2]["eligible"] == ["carol", "dave"]
        assert env.act("dave", req["id"], "approve").status_code == 200
        r = env.act("carol", req["id"], "approve")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "active"

"""The request state machine end to end through the HTTP API."""

from __future__ import annotations

from tests.conftest import Env


def test_two_step_approval_activates_a_grant(env: Env) -> None:
    req = env.ask("alice")
    assert req["status"] == "pending"
    assert req["workflow"]["name"] == "prod"
    assert [s["eligible"] for s in req["steps"]] == [["bob", "gina"], ["carol", "erin"]]

    r = env.act("bob", req["id"], "approve", comment="ticket checked")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    assert r.json()["current_step"] == 1

    r = env.act("carol", req["id"], "approve")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "active"
    assert body["grant"]["status"] == "active"
    assert body["grant"]["user"] == "alice"

    types = [e["type"] for e in env.events(subject=f"request:{req['id']}")]
    assert types == ["request.created", "approval.recorded", "approval.recorded",
                     "request.approved"]
    grant_events = env.events(subject=f"grant:{body['grant']['id']}")
    assert [e["type"] for e in grant_events] == ["grant.activated"]


def test_auto_approve_records_the_policy_that_decided(env: Env) -> None:
    req = env.ask("alice", resource="staging-db", role="read", reason="")
    assert req["status"] == "active"
    approved = env.events(subject=f"request:{req['id']}", type="request.approved")[0]
    assert approved["actor"] == {"kind": "policy", "id": "staging", "via": "policy"}
    assert approved["policy"]["name"] == "staging"
    assert approved["policy"]["rule"] == "auto_approve"
    assert approved["policy"]["version"] == env.st.policies.current.version
    assert approved["data"]["inputs"]["request"]["requester"]["groups"] == ["engineers"]

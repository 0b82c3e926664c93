"""`via` in the ledger comes from how the caller authenticated, never from a header."""

from __future__ import annotations

import pytest

from tests.conftest import Env


@pytest.mark.parametrize("claimed", ["web", "cli", "slack", "gateway", "api"])
def test_a_bearer_token_is_recorded_as_the_api_whatever_client_it_claims(
        env: Env, claimed: str) -> None:
    headers = {"X-Accord-Client": claimed}
    r = env.post("alice", "/api/v1/requests", headers=headers,
                 json={"resource": "orders-db", "role": "read", "duration": "1h",
                       "reason": "INC-1 investigate orders"})
    assert r.status_code == 201, r.text
    assert r.json()["created_via"] == "api"
    rid = r.json()["id"]
    assert env.act("bob", rid, "approve").status_code == 200
    r = env.post("carol", f"/api/v1/requests/{rid}/approve", headers=headers, json=None)
    assert r.status_code == 200, r.text
    events = env.events(subject=f"request:{rid}")
    assert {e["actor"]["via"] for e in events if e["actor"]["kind"] == "user"} == {"api"}
    approvals = [a["via"] for s in r.json()["steps"] for a in s["approvals"]]
    assert approvals == ["api", "api"]

"""One smoke check that a SCIM change reaches access (the consequences have their own tests)."""

from __future__ import annotations

from tests.directory.scim.conftest import Scim


def test_deactivating_a_person_over_scim_ends_their_api_token(scim: Scim) -> None:
    assert scim.env.get("alice", "/api/v1/me").status_code == 200
    alice = scim.user("Alice", emails=[{"value": "alice@example.com"}])  # accord.yaml's alice
    assert scim.env.get("alice", "/api/v1/me").status_code == 200
    r = scim.patch(f"/Users/{alice['id']}", {"op": "replace", "value": {"active": False}})
    assert r.status_code == 200, r.text
    assert scim.env.get("alice", "/api/v1/me").status_code == 401
    revoked = [e for e in scim.env.events() if e["type"] == "token.revoked"]
    assert [e["data"]["user"] for e in revoked] == ["alice"]
    assert revoked[0]["actor"] == {"kind": "scim", "id": "okta", "via": "scim"}

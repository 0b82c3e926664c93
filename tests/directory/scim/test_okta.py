"""What Okta's SCIM 2.0 connector sends ("Okta and SCIM Version 2.0"), request by request,
and what each left in the directory and the ledger."""

from __future__ import annotations

from typing import Any

from tests.directory.scim.conftest import G, Scim, U

OKTA_USER: dict[str, Any] = {
    "schemas": [U], "userName": "Test.User@okta.local",
    "name": {"givenName": "Test", "familyName": "User"},
    "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
    "displayName": "Test User", "locale": "en-US", "externalId": "00ujl29u0le5T6Aj10h7",
    "groups": [], "password": "1mz050nq", "active": True,
}


def test_connector_test_and_a_missing_user(scim: Scim) -> None:
    r = scim.get("/Users", params={"startIndex": 1, "count": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/scim+json"
    assert r.json()["totalResults"] == 0 and r.json()["Resources"] == []
    found = scim.find("/Users", 'userName eq "test.user@okta.local"', startIndex=1, count=100)
    assert found["totalResults"] == 0


def test_user_lifecycle(scim: Scim) -> None:
    r = scim.post("/Users", OKTA_USER)
    assert r.status_code == 201, r.text
    user = r.json()
    uid = user["id"]
    assert r.headers["location"].endswith(f"/scim/v2/Users/{uid}")
    assert r.headers["etag"] == user["meta"]["version"] == 'W/"1"'
    assert user["userName"] == "Test.User@okta.local" and user["active"] is True
    assert user["emails"] == [{"value": "test.user@okta.local", "type": "work"}]
    assert "password" not in r.text and "1mz050nq" not in r.text and "locale" not in user

    # exists? (Okta's userName is the Okta login; Accord compares it case-insensitively)
    found = scim.find("/Users", 'userName eq "TEST.USER@okta.local"', startIndex=1, count=100)
    assert [u["id"] for u in found["Resources"]] == [uid]
    assert scim.get(f"/Users/{uid}").json()["displayName"] == "Test User"

    # a profile push: PUT of the whole user (with its id), here without `active`
    body = {**OKTA_USER, "id": uid, "displayName": "Tess User"}
    del body["active"]
    r = scim.put(f"/Users/{uid}", body)
    assert r.status_code == 200, r.text
    assert r.json()["displayName"] == "Tess User" and r.json()["active"] is True

    # deactivation, then a password sync (nothing Accord keeps), then reactivation
    r = scim.patch(f"/Users/{uid}", {"op": "replace", "value": {"active": False}})
    assert r.status_code == 200 and r.json()["active"] is False
    version = r.json()["meta"]["version"]
    r = scim.patch(f"/Users/{uid}", {"op": "replace", "value": {"password": "newpass1"}})
    assert r.status_code == 200 and r.json()["meta"]["version"] == version
    r = scim.patch(f"/Users/{uid}", {"op": "replace", "value": {"active": True}})
    assert r.status_code == 200 and r.json()["active"] is True

    types = [(e["type"], e["actor"]["kind"], e["actor"]["id"]) for e in scim.events()]
    assert types == [
        ("directory.user_created", "scim", "okta"),
        ("directory.user_updated", "scim", "okta"),  # the PUT
        ("directory.user_deactivated", "scim", "okta"),  # active alone: no empty update
        ("directory.user_reactivated", "scim", "okta"),
    ]
    created = scim.events()[0]["data"]
    assert created["user"] == "test.user@okta.local" and created["user_id"] == uid
    assert "1mz050nq" not in str(scim.events())


def test_group_push(scim: Scim) -> None:
    alice = scim.user("alice@okta.local")["id"]
    bob = scim.user("bob@okta.local")["id"]
    assert scim.get("/Groups", params={"startIndex": 1, "count": 100}).json()["totalResults"] == 0
    assert scim.find("/Groups", 'displayName eq "Test SCIMv2"')["totalResults"] == 0

    r = scim.post("/Groups", {"schemas": [G], "displayName": "Test SCIMv2", "members": []})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    assert scim.find("/Groups", 'displayName eq "test scimv2"')["Resources"][0]["id"] == gid

    # rename: Okta sends the group's own id in the value
    r = scim.patch(f"/Groups/{gid}", {"op": "replace",
                                      "value": {"id": gid, "displayName": "Engineering"}})
    assert r.status_code == 204, r.text
    # another id in the value is refused: id is read-only
    r = scim.patch(f"/Groups/{gid}", {"op": "replace",
                                      "value": {"id": alice, "displayName": "Other"}})
    assert r.status_code == 400 and r.json()["scimType"] == "mutability"

    r = scim.patch(f"/Groups/{gid}", {"op": "add", "path": "members", "value": [
        {"value": alice, "display": "alice@okta.local"},
        {"value": bob, "display": "bob@okta.local"}]})
    assert r.status_code == 204, r.text
    group = scim.get(f"/Groups/{gid}").json()
    assert group["displayName"] == "Engineering"
    assert sorted(m["value"] for m in group["members"]) == sorted([alice, bob])

    # one member per operation, by a value filter
    r = scim.patch(f"/Groups/{gid}", {"op": "remove", "path": f'members[value eq "{alice}"]'})
    assert r.status_code == 204, r.text
    assert [m["value"] for m in scim.get(f"/Groups/{gid}").json()["members"]] == [bob]
    # removing someone who is not a member changes nothing
    before = scim.get(f"/Groups/{gid}").headers["etag"]
    r = scim.patch(f"/Groups/{gid}", {"op": "remove", "path": f'members[value eq "{alice}"]'})
    assert r.status_code == 204 and r.headers["etag"] == before

    r = scim.delete(f"/Groups/{gid}")
    assert r.status_code == 204
    r = scim.get(f"/Groups/{gid}")
    assert r.status_code == 404 and r.json()["status"] == "404"

    types = [e["type"] for e in scim.events() if e["subject"].startswith("group:")]
    assert types == ["directory.group_created", "directory.group_updated",
                     "directory.member_added", "directory.member_removed",
                     "directory.group_deleted"]
    added = next(e for e in scim.events() if e["type"] == "directory.member_added")
    assert added["data"]["group"] == "Engineering"
    assert added["data"]["users"] == ["alice@okta.local", "bob@okta.local"]
    deleted = scim.events()[-1]["data"]
    assert deleted == {**deleted, "group": "Engineering", "users": ["bob@okta.local"]}

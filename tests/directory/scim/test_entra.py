"""What Microsoft Entra ID's provisioning service sends ("Develop and plan provisioning for a
SCIM endpoint", its known SCIM 2.0 compliance issues), request by request."""

from __future__ import annotations

import uuid
from typing import Any

from tests.directory.scim.conftest import E, G, Scim, U

FLAG = {"aadOptscim062020": ""}  # Entra appends it to every URL; it means nothing here


def entra_user(user_name: str, external_id: str, **extension: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": [U, E], "externalId": external_id, "userName": user_name, "active": True,
        "emails": [{"primary": True, "type": "work", "value": f"{user_name}@testuser.com"}],
        "meta": {"resourceType": "User"}, "roles": [],
        "name": {"formatted": "givenName familyName", "familyName": "familyName",
                 "givenName": "givenName"},
    }
    if extension:
        body[E] = extension
    return body


def test_credential_test_finds_nobody(scim: Scim) -> None:
    r = scim.get("/Users", params={"filter": f'userName eq "{uuid.uuid4()}"', **FLAG})
    assert r.status_code == 200
    assert r.json()["totalResults"] == 0
    assert r.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"]


def test_user_lifecycle(scim: Scim) -> None:
    boss = scim.post("/Users", entra_user("Boss_1", "ext-boss"), params=FLAG).json()["id"]
    r = scim.post("/Users", entra_user("Test_User_ab64", "0a21f0f2-8d2a",
                                       manager=boss, department="Ops"), params=FLAG)
    assert r.status_code == 201, r.text
    user = r.json()
    uid = user["id"]
    assert user[E] == {"department": "Ops", "manager": {
        "value": boss, "$ref": f"http://testserver/scim/v2/Users/{boss}"}}
    assert user["name"] == {"familyName": "familyName", "givenName": "givenName"}
    assert "roles" not in user

    found = scim.find("/Users", 'userName eq "test_user_AB64"', **FLAG)
    assert [u["id"] for u in found["Resources"]] == [uid]

    r = scim.patch(f"/Users/{uid}",
                   {"op": "Replace", "path": 'emails[type eq "work"].value',
                    "value": "updatedEmail@testuser.com"},
                   {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
                   params=FLAG)
    assert r.status_code == 200, r.text
    assert r.json()["emails"] == [{"value": "updatedEmail@testuser.com", "type": "work"}]
    assert r.json()["name"]["familyName"] == "updatedFamilyName"

    # a user without a work address gets one ("Add" to an unmatched filter)
    other = scim.post("/Users", {"schemas": [U], "userName": "nomail", "active": True}).json()
    r = scim.patch(f"/Users/{other['id']}", {"op": "Add", "path": 'emails[type eq "work"].value',
                                             "value": "nomail@testuser.com"})
    assert r.status_code == 200, r.text
    assert r.json()["emails"] == [{"value": "nomail@testuser.com", "type": "work"}]

    r = scim.patch(f"/Users/{uid}", {"op": "Replace", "path": "userName",
                                     "value": "Test_User_ab64@testuser.com"})
    assert r.status_code == 200 and r.json()["userName"] == "Test_User_ab64@testuser.com"

    # manager: set (a bare id), cleared with "", set again, removed
    r = scim.patch(f"/Users/{uid}", {"op": "Replace", "path": f"{E}:manager", "value": ""})
    assert r.status_code == 200, r.text
    assert "manager" not in r.json().get(E, {})
    r = scim.patch(f"/Users/{uid}", {"op": "Add", "path": f"{E}:manager", "value": boss})
    assert r.status_code == 200 and r.json()[E]["manager"]["value"] == boss
    r = scim.patch(f"/Users/{uid}", {"op": "Remove", "path": f"{E}:manager"})
    assert r.status_code == 200 and "manager" not in r.json().get(E, {})

    # soft delete: newer tenants send a boolean, older ones the string "False"
    r = scim.patch(f"/Users/{uid}", {"op": "Replace", "path": "active", "value": False})
    assert r.status_code == 200 and r.json()["active"] is False
    r = scim.patch(f"/Users/{uid}", {"op": "Replace", "path": "active", "value": "True"})
    assert r.status_code == 200 and r.json()["active"] is True
    r = scim.patch(f"/Users/{uid}", {"op": "Replace", "path": "active", "value": "False"})
    assert r.status_code == 200 and r.json()["active"] is False

    # hard delete, then the same person assigned again: same externalId, a new id
    assert scim.delete(f"/Users/{uid}").status_code == 204
    assert scim.get(f"/Users/{uid}").status_code == 404
    again = scim.post("/Users", entra_user("Test_User_ab64@testuser.com", "0a21f0f2-8d2a"))
    assert again.status_code == 201, again.text
    assert again.json()["id"] != uid
    assert scim.find("/Users", 'externalId eq "0a21f0f2-8d2a"')["totalResults"] == 1

    name = "test_user_ab64@testuser.com"
    mine = [e for e in scim.events() if e["data"].get("user") in ("test_user_ab64", name)]
    assert [e["type"] for e in mine] == [
        "directory.user_created",
        "directory.user_updated",  # email and family name
        "directory.user_updated",  # userName: a new Accord name
        "directory.user_updated", "directory.user_updated", "directory.user_updated",  # manager
        "directory.user_deactivated",  # active alone: its own event, no empty update
        "directory.user_reactivated",
        "directory.user_deactivated",
        "directory.user_deleted",
        "directory.user_created",
    ]
    renamed = mine[2]["data"]["changed"]
    assert renamed["user_name"] == ["Test_User_ab64", "Test_User_ab64@testuser.com"]
    assert mine[3]["data"]["changed"] == {"manager": ["boss_1", None]}
    assert all(e["actor"] == {"kind": "scim", "id": "okta", "via": "scim"} for e in mine)


def test_groups(scim: Scim) -> None:
    users = [scim.user(f"member{i}")["id"] for i in range(4)]
    assert scim.find("/Groups", 'displayName eq "Group1"',
                     excludedAttributes="members")["totalResults"] == 0
    r = scim.post("/Groups", {
        "schemas": [G, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
        "externalId": "8aa1a0c0-c4c3", "displayName": "Group1", "meta": {"resourceType": "Group"}})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]

    r = scim.patch(f"/Groups/{gid}", {"op": "Add", "path": "members", "value": [
        {"$ref": None, "value": u} for u in users]})
    assert r.status_code == 204, r.text
    r = scim.get(f"/Groups/{gid}", params={"excludedAttributes": "members"})
    assert r.status_code == 200 and "members" not in r.json()
    listed = scim.find("/Groups", 'displayName eq "group1"', excludedAttributes="members")
    assert listed["totalResults"] == 1 and "members" not in listed["Resources"][0]

    r = scim.patch(f"/Groups/{gid}", {"op": "Remove", "path": "members", "value": [
        {"$ref": None, "value": users[0]}, {"$ref": None, "value": users[1]}]})
    assert r.status_code == 204, r.text
    members = scim.get(f"/Groups/{gid}").json()["members"]
    assert sorted(m["value"] for m in members) == sorted(users[2:])

    r = scim.patch(f"/Groups/{gid}", {"op": "Replace", "path": "displayName",
                                      "value": "Group1updatedDisplayName"})
    assert r.status_code == 204, r.text
    assert scim.find("/Groups", 'externalId eq "8aa1a0c0-c4c3"')["Resources"][0][
        "displayName"] == "Group1updatedDisplayName"

    assert scim.delete(f"/Groups/{gid}").status_code == 204
    r = scim.post("/Groups", {"schemas": [G], "externalId": "8aa1a0c0-c4c3",
                              "displayName": "Group1"})
    assert r.status_code == 201 and r.json()["id"] != gid

    groups = [e for e in scim.events() if e["subject"].startswith("group:")]
    assert [e["type"] for e in groups] == [
        "directory.group_created", "directory.member_added", "directory.member_removed",
        "directory.group_updated", "directory.group_deleted", "directory.group_created"]
    assert groups[2]["data"]["users"] == ["member0", "member1"]
    assert groups[3]["data"]["changed"] == {
        "display_name": ["Group1", "Group1updatedDisplayName"]}

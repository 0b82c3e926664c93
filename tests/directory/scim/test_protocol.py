"""/scim/v2 as RFC 7644 describes it: discovery, filters, paging, PUT, ETags, and errors that
are always SCIM errors (never a 500)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.directory.scim.conftest import ERROR, SCIM_JSON, E, G, Scim, U


def error(r: Any, status: int, scim_type: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == SCIM_JSON
    body: dict[str, Any] = r.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    assert body.get("scimType") == scim_type, body
    return body


# ---------------------------------------------------------------- discovery


def test_discovery(scim: Scim) -> None:
    spc = scim.get("/ServiceProviderConfig").json()
    assert spc["patch"] == {"supported": True} and spc["etag"] == {"supported": True}
    assert spc["bulk"]["supported"] is False and spc["sort"] == {"supported": False}
    assert spc["filter"] == {"supported": True, "maxResults": 200}
    assert spc["authenticationSchemes"][0]["type"] == "oauthbearertoken"

    types = scim.get("/ResourceTypes").json()
    assert {t["id"]: t["endpoint"] for t in types["Resources"]} == {
        "User": "/Users", "Group": "/Groups"}
    assert scim.get("/ResourceTypes/User").json()["schemaExtensions"] == [
        {"schema": E, "required": False}]

    schemas = {s["id"]: s for s in scim.get("/Schemas").json()["Resources"]}
    assert set(schemas) == {U, E, G}
    user = {a["name"]: a for a in schemas[U]["attributes"]}
    assert list(user) == ["userName", "name", "displayName", "active", "emails"]
    assert user["userName"]["uniqueness"] == "server"
    assert [a["name"] for a in user["emails"]["subAttributes"]] == ["value", "type"]
    assert [a["name"] for a in schemas[E]["attributes"]] == [
        "employeeNumber", "department", "manager"]
    members = next(a for a in schemas[G]["attributes"] if a["name"] == "members")
    assert [a["name"] for a in members["subAttributes"]] == ["value", "$ref"]
    assert scim.get(f"/Schemas/{U}").json()["id"] == U


def test_unsupported_operations(scim: Scim) -> None:
    error(scim.post("/Bulk", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                              "Operations": []}), 501)
    error(scim.get("/Me"), 501)
    error(scim.get("/Widgets"), 404)
    error(scim.delete("/Users"), 405)
    error(scim.get("/", params={"filter": 'userName eq "x"'}), 501)
    r = scim.call("POST", "/Users", content=b"userName=x",
                  headers={"Content-Type": "text/plain"})
    error(r, 415)
    r = scim.call("POST", "/Users", content=b"{not json",
                  headers={"Content-Type": "application/scim+json"})
    error(r, 400, "invalidSyntax")


# ------------------------------------------------------------------ filters


@pytest.fixture
def people(scim: Scim) -> dict[str, str]:
    made = {
        "ann": scim.user("Ann@Example.com", externalId="Ext-1", displayName="Ann 50% Off",
                         emails=[{"value": "Ann@Example.COM", "type": "work"}],
                         name={"givenName": "Ann", "familyName": "Lee"}),
        "bob": scim.user("bob_smith", externalId="ext-2", active=False,
                         emails=[{"value": "bob@corp.local", "type": "home"}]),
        "cat": scim.user("cat", displayName="Cat"),
    }
    return {k: v["id"] for k, v in made.items()}


def ids(scim: Scim, flt: str, people: dict[str, str]) -> list[str]:
    found = scim.find("/Users", flt)
    assert found["totalResults"] == len(found["Resources"])
    who = {v: k for k, v in people.items()}
    return sorted(who[u["id"]] for u in found["Resources"])


FILTERS = [
    ('userName eq "ANN@example.com"', ["ann"]),
    ('userName ne "cat"', ["ann", "bob"]),
    ('userName co "_"', ["bob"]),  # LIKE's wildcard, escaped
    ('userName sw "B"', ["bob"]),
    ('userName ew ".COM"', ["ann"]),
    ('displayName co "50%"', ["ann"]),
    ('displayName co "%"', ["ann"]),
    ('displayName pr', ["ann", "cat"]),
    ('not (displayName pr)', ["bob"]),
    ('externalId eq "ext-1"', []),  # case-exact
    ('externalId eq "Ext-1"', ["ann"]),
    ('externalId sw "EXT"', []),
    ('externalId sw "ext"', ["bob"]),
    ('externalId co "xt-"', ["ann", "bob"]),
    ('externalId ne "ext-2"', ["ann", "cat"]),  # no externalId matches ne
    ('externalId pr', ["ann", "bob"]),
    ('emails.value eq "ann@example.com"', ["ann"]),
    ('emails co "corp"', ["bob"]),
    ('emails.value ew ".local"', ["bob"]),
    ('emails pr', ["ann", "bob"]),
    ('emails[type eq "work" and value co "ANN"]', ["ann"]),
    ('emails[type eq "home"]', ["bob"]),
    ('emails[not (type eq "home")]', ["ann"]),
    ('emails.type ne "home"', ["ann", "cat"]),
    ('active eq false', ["bob"]),
    ('active eq true and (emails pr or userName eq "cat")', ["ann", "cat"]),
    ('name.familyName eq "lee" or name.givenName sw "x"', ["ann"]),
    ('not (active eq true) or userName eq "cat"', ["bob", "cat"]),
]


@pytest.mark.parametrize(("flt", "expected"), FILTERS, ids=[f for f, _ in FILTERS])
def test_user_filters(scim: Scim, people: dict[str, str], flt: str,
                      expected: list[str]) -> None:
    assert ids(scim, flt, people) == expected


def test_filter_by_id_and_manager(scim: Scim, people: dict[str, str]) -> None:
    assert ids(scim, f'id eq "{people["cat"]}"', people) == ["cat"]
    r = scim.patch(f"/Users/{people['cat']}", {"op": "add", "path": f"{E}:manager",
                                                "value": {"value": people["ann"]}})
    assert r.status_code == 200, r.text
    assert ids(scim, f'{E}:manager.value eq "{people["ann"]}"', people) == ["cat"]
    assert ids(scim, f"{E}:manager pr", people) == ["cat"]


@pytest.mark.parametrize("flt", [
    'title eq "x"',  # not an attribute Accord publishes
    'nickName pr',
    f'{E}:manager.displayName eq "x"',  # published, not searchable
    'meta.resourceType eq "User"',
    'active co "tr"',  # not an operator for a boolean
    'userName eq',
    'userName eq "x" or 1 eq 1',
    'emails[display eq "x"]',
    'name[givenName eq "x"]',  # not multi-valued
])
def test_unsupported_filters_are_refused(scim: Scim, people: dict[str, str], flt: str) -> None:
    body = error(scim.get("/Users", params={"filter": flt}), 400, "invalidFilter")
    assert body["detail"]


def test_group_filters(scim: Scim, people: dict[str, str]) -> None:
    eng = scim.group("Engineering", [people["ann"], people["bob"]], externalId="g-1")["id"]
    ops = scim.group("Ops", [people["cat"]])["id"]
    empty = scim.group("Empty 50%")["id"]

    def groups(flt: str) -> list[str]:
        names = {eng: "eng", ops: "ops", empty: "empty"}
        return sorted(names[g["id"]] for g in scim.find("/Groups", flt)["Resources"])

    assert groups('displayName eq "ENGINEERING"') == ["eng"]
    assert groups('displayName co "50%"') == ["empty"]
    assert groups('externalId pr') == ["eng"]
    assert groups(f'members[value eq "{people["cat"]}"]') == ["ops"]
    assert groups(f'members eq "{people["ann"]}"') == ["eng"]
    assert groups(f'members.value ne "{people["ann"]}"') == ["empty", "ops"]
    assert groups('members pr') == ["eng", "ops"]
    assert groups(f'id eq "{ops}" or displayName sw "emp"') == ["empty", "ops"]
    error(scim.get("/Groups", params={"filter": 'members.display eq "x"'}), 400,
          "invalidFilter")
    error(scim.get("/Groups", params={"filter": 'userName eq "x"'}), 400, "invalidFilter")


# ------------------------------------------------------------------- paging


def test_paging(scim: Scim) -> None:
    made = []
    for i in range(7):
        made.append(scim.user(f"user{i}")["id"])
        scim.env.clock.advance(seconds=1)

    def page(**params: Any) -> dict[str, Any]:
        r = scim.get("/Users", params=params)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    first = page(startIndex=1, count=3)
    assert (first["totalResults"], first["startIndex"], first["itemsPerPage"]) == (7, 1, 3)
    pages = [u["id"] for n in (1, 4, 7) for u in page(startIndex=n, count=3)["Resources"]]
    assert pages == made  # in creation order, each once
    assert page(startIndex=8, count=3)["Resources"] == []
    assert page(startIndex=8, count=3)["totalResults"] == 7
    none = page(count=0)
    assert none["totalResults"] == 7 and none.get("Resources", []) == []
    assert page(startIndex=0, count=2)["startIndex"] == 1  # clamped, as the RFC says
    assert page(startIndex=2, count=5000)["itemsPerPage"] == 6  # maxResults bounds count
    assert page(filter='userName sw "user"', startIndex=6, count=5)["itemsPerPage"] == 2


# ------------------------------------------------------------ PUT and ETags


def test_put_replaces_and_keeps_active(scim: Scim) -> None:
    user = scim.user("dana", displayName="Dana", active=False, externalId="d-1",
                     emails=[{"value": "dana@x.test"}])
    r = scim.put(f"/Users/{user['id']}", {"schemas": [U], "userName": "Dana",
                                          "name": {"givenName": "Dana"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] is False  # omitted: kept
    assert "displayName" not in body and "emails" not in body and "externalId" not in body
    assert body["name"] == {"givenName": "Dana"} and body["userName"] == "Dana"
    # a PUT that changes nothing keeps the version
    r2 = scim.put(f"/Users/{user['id']}", {**body, "schemas": [U]})
    assert r2.status_code == 200 and r2.headers["etag"] == r.headers["etag"]


def test_etags(scim: Scim) -> None:
    user = scim.user("erin")
    uid, v1 = user["id"], user["meta"]["version"]
    r = scim.get(f"/Users/{uid}", headers={"If-None-Match": v1})
    assert r.status_code == 304 and r.headers["etag"] == v1
    r = scim.patch(f"/Users/{uid}", {"op": "replace", "path": "displayName", "value": "E"},
                   headers={"If-Match": v1})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"2"'
    error(scim.patch(f"/Users/{uid}", {"op": "replace", "path": "displayName", "value": "F"},
                     headers={"If-Match": v1}), 412)
    error(scim.put(f"/Users/{uid}", {"schemas": [U], "userName": "erin"},
                   headers={"If-Match": v1}), 412)
    error(scim.delete(f"/Users/{uid}", headers={"If-Match": v1}), 412)
    assert scim.get(f"/Users/{uid}").json()["displayName"] == "E"
    assert scim.delete(f"/Users/{uid}", headers={"If-Match": 'W/"2"'}).status_code == 204
    group = scim.group("G")
    error(scim.patch(f"/Groups/{group['id']}", {"op": "replace", "path": "displayName",
                                                "value": "H"}, headers={"If-Match": 'W/"9"'}),
          412)
    assert scim.get(f"/Groups/{group['id']}").headers["etag"] == 'W/"1"'


# ------------------------------------------------------------------- errors


def test_refusals(scim: Scim) -> None:
    ann = scim.user("ann")["id"]
    error(scim.post("/Users", {"schemas": [U], "userName": "ANN"}), 409, "uniqueness")
    body = error(scim.post("/Users", {"schemas": [U], "userName": "has space"}), 400,
                 "invalidValue")
    assert "cannot be an Accord user name" in body["detail"]
    error(scim.post("/Users", {"schemas": [U], "displayName": "no userName"}), 400,
          "invalidValue")
    error(scim.post("/Users", {"schemas": [U], "userName": "x", "displayName": "d" * 201}),
          400, "invalidValue")
    error(scim.post("/Users", {"schemas": [U], "userName": "y", "displayName": "a\x00b"}), 400,
          "invalidValue")
    error(scim.post("/Users", {"schemas": [U, E], "userName": "z", E: {"manager": "nobody"}}),
          400, "invalidValue")
    error(scim.patch(f"/Users/{ann}", {"op": "add", "path": f"{E}:manager", "value": ann}),
          400, "invalidValue")
    bob = scim.user("bob")["id"]
    error(scim.patch(f"/Users/{bob}", {"op": "replace", "path": "userName", "value": "Ann"}),
          409, "uniqueness")
    error(scim.patch(f"/Users/{bob}", {"op": "remove", "path": "userName"}), 400, "mutability")
    error(scim.patch(f"/Users/{bob}", {"op": "remove", "path": "active"}), 400, "mutability")
    error(scim.patch(f"/Users/{bob}", {"op": "move", "path": "active", "value": True}), 400,
          "invalidValue")
    error(scim.get("/Users/not-an-id"), 404)
    error(scim.delete("/Groups/not-an-id"), 404)

    # groups: one namespace with accord.yaml's, members are existing users
    error(scim.post("/Groups", {"schemas": [G], "displayName": "engineers"}), 409, "uniqueness")
    scim.group("Team")
    error(scim.post("/Groups", {"schemas": [G], "displayName": "TEAM"}), 409, "uniqueness")
    error(scim.post("/Groups", {"schemas": [G], "displayName": "New",
                                "members": [{"value": "nobody"}]}), 400, "invalidValue")
    assert scim.find("/Groups", 'displayName eq "New"')["totalResults"] == 0
    # nothing refused left an event
    assert [e["type"] for e in scim.events()] == [
        "directory.user_created", "directory.user_created", "directory.group_created"]


def test_bodies_may_be_larger_than_the_apis(scim: Scim) -> None:
    people = [scim.user(f"p{i}")["id"] for i in range(3)]
    group = scim.group("Big")["id"]
    # ~150 KiB: Okta's shape, with each member's display, and padding a provider might send
    members = [{"value": people[i % 3], "display": "x" * 1000} for i in range(150)]
    r = scim.patch(f"/Groups/{group}", {"op": "add", "path": "members", "value": members})
    assert r.status_code == 204, r.text
    assert len(scim.get(f"/Groups/{group}").json()["members"]) == 3
    r = scim.call("POST", "/Users", content=b" " * (3 * 1024 * 1024),
                  headers={"Content-Type": "application/scim+json"})
    assert r.status_code == 413
    r = scim.env.post("alice", "/api/v1/requests", content=b" " * (100 * 1024),
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413
